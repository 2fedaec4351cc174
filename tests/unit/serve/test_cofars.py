"""CoFARS served from its offline state gives the scores of CTRModel.forward on the same history,
whatever the history's length, and its online part never reads the history."""
import numpy as np
import pytest
import torch

from components.ctr.model import CTRModel
from components.serve.cofars import HIST_KEYS, build_state, served_forward
from tests.factories import CTR_CFG as CFG, CTR_SHAPES as SHAPES, make_ctr_batch as make_batch


def one_request(b, i, length):
    """Request i of a batch as its own batch, its history cut to its real length (as served)."""
    out = {k: v[i:i + 1] for k, v in b.items()}
    for k in HIST_KEYS + ("hist_mask",):
        out[k] = out[k][:, :max(length, 1)]
    return out


def window(b1, length):
    return {k: b1[k][0, :length].numpy() for k in HIST_KEYS}


@pytest.mark.parametrize(("name", "update"), [("cofars", {}), ("larr_cofars", {}), ("larr_cofars", {"page_context": True}),
                                             ("larr_cofars", {"log_poi_dim": 8, "log_poi_profile": True})],
                         ids=["cofars", "larr_cofars", "larr_cofars-page_context", "larr_cofars-log_poi_profile"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_served_cofars_scores_equal_the_model_forward(name, update, seed):
    torch.manual_seed(seed)
    model = CTRModel(name, CFG.model_copy(update=update), SHAPES).eval()
    if update.get("log_poi_dim"):  # the log's PoI vectors (train.build_model fills them): some PoIs without any
        with torch.no_grad():
            model.log_poi_vec.normal_().mul_((torch.arange(SHAPES.n_pois) % 3 != 0).float().unsqueeze(1))
    lengths = [0, 1, 2, 3, 7, 40, 64]
    b = make_batch(lengths, k=5, seed=seed)
    for i, n in enumerate(lengths):
        b1 = one_request(b, i, n)
        state = build_state(model, window(b1, n))
        # Twice (the second reuses the selection cached on the state), then in every other context
        # (a selection of its own per context) and back.
        contexts = [int(b1["context"][0])] * 2 + [c for c in range(SHAPES.n_contexts) if c != int(b1["context"][0])]
        for c in contexts + contexts[:1]:
            bc = {**b1, "context": torch.tensor([c])}
            with torch.no_grad():
                want = model(bc)
            got = served_forward(model, bc, state)
            for key in ("ctr", "ctcvr"):
                np.testing.assert_allclose(got[key].numpy(), want[key].numpy(), rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name} request with {n} behaviours in context {c}: {key}")
        assert sorted(c for _, c in state.selected) == sorted(set(contexts))  # one selection per context


def test_served_cofars_never_reads_the_history_arrays():
    torch.manual_seed(0)
    model = CTRModel("cofars", CFG, SHAPES).eval()
    b1 = one_request(make_batch([40], k=3), 0, 40)
    state = build_state(model, window(b1, 40))
    want = served_forward(model, b1, state)["ctr"]
    scrambled = {**b1, **{k: torch.zeros_like(b1[k]) for k in HIST_KEYS}}
    assert torch.equal(served_forward(model, scrambled, state)["ctr"], want)
    # What the state keeps per request is bounded by the window's contexts, not its length.
    assert len(state.behaviours["_pos"]) <= CFG.short_term + CFG.max_contexts * CFG.max_subsequence
