"""CTR building blocks: ESMM, CoFARS selection pieces, LARR aggregation. The shared MLP / target
attention / InfoNCE are tested in test_layers.py."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from components.ctr.cofars import (ContextPrototypes, GATLayer, ProbabilityEncoder, attribute_distribution,
                                   expand_to_candidates, gumbel_binarize, js_numpy, select_subsequence,
                                   subsequence_mask, symmetric_kl)
from components.ctr.esmm import ESMMHeads, esmm_loss
from components.ctr.larr import SceneAggregator
from components.layers import info_nce


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------------
# ESMM


def test_esmm_ctcvr_is_ctr_times_cvr_and_loss_stable():
    heads = ESMMHeads(6, hidden=(8,))
    out = heads(torch.randn(7, 6))
    assert torch.allclose(out["ctcvr"], out["ctr"] * out["cvr"])
    assert out["ctcvr"].shape == (7,)
    # Extreme logits, both labels: finite loss and finite gradients.
    ctr_logit = torch.tensor([200.0, -200.0, 200.0, -200.0, 0.0, 50.0], requires_grad=True)
    cvr_logit = torch.tensor([200.0, 200.0, -200.0, -200.0, 0.0, 50.0], requires_grad=True)
    click = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    order = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    parts = esmm_loss(ctr_logit, cvr_logit, click, order)
    assert all(torch.isfinite(v) for v in parts.values())
    parts["loss"].backward()
    assert torch.isfinite(ctr_logit.grad).all() and torch.isfinite(cvr_logit.grad).all()
    # Moderate logits: matches the naive formula.
    a, b = torch.randn(32), torch.randn(32)
    y, z = (torch.rand(32) < 0.5).float(), (torch.rand(32) < 0.3).float()
    p = torch.sigmoid(a) * torch.sigmoid(b)
    naive = torch.nn.functional.binary_cross_entropy(p, z)
    assert torch.allclose(esmm_loss(a, b, y, z)["ctcvr"], naive, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# CoFARS


def test_symmetric_kl_hand_worked():
    # p = [0.5, 0.5], q = [0.9, 0.1]
    # KL(p‖q) = 0.5·ln(0.5/0.9) + 0.5·ln(0.5/0.1) = 0.5·(−0.587787) + 0.5·(1.609438) = 0.510826
    # KL(q‖p) = 0.9·ln(0.9/0.5) + 0.1·ln(0.1/0.5) = 0.9·(0.587787) + 0.1·(−1.609438) = 0.368064
    # JS = ½(0.510826 + 0.368064) = 0.439445
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1])
    assert symmetric_kl(p, q).item() == pytest.approx(0.439445, abs=1e-5)
    assert symmetric_kl(q, p).item() == pytest.approx(symmetric_kl(p, q).item(), abs=1e-7)
    assert js_numpy([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.439445, abs=1e-6)


def test_symmetric_kl_batched_zero_and_numpy_twin():
    counts = torch.randint(0, 5, (6, 9)).double()
    p = attribute_distribution(counts, group_sizes=[4, 3, 2])
    q = attribute_distribution(counts.flip(0), group_sizes=[4, 3, 2])
    assert torch.allclose(p[:, :4].sum(-1), torch.ones(6, dtype=p.dtype))
    assert (p > 0).all()
    js = symmetric_kl(p, q)
    assert js.shape == (6,) and (js >= 0).all()
    assert torch.allclose(symmetric_kl(p, p), torch.zeros(6, dtype=p.dtype))
    assert torch.allclose(js, symmetric_kl(q, p))
    assert np.allclose(js_numpy(p.numpy(), q.numpy()), js.numpy())
    # numpy input gives the same distributions as torch input
    assert np.allclose(attribute_distribution(counts.numpy(), [4, 3, 2]), p.numpy())
    # Zeros are smoothed: a one-hot count still gives a finite divergence.
    onehot = attribute_distribution(np.array([[3, 0, 0], [0, 0, 3]]))
    assert np.isfinite(js_numpy(onehot[0], onehot[1]))


def test_probability_encoder_and_prototypes():
    enc = ProbabilityEncoder(8, group_sizes=[3, 2], hidden=(16,))
    protos = ContextPrototypes(8, n_prototypes=5)
    user = torch.randn(2, 8)
    o = protos(user)
    assert o.shape == (2, 5, 8)
    dist = enc(torch.zeros_like(o), o)
    assert dist.shape == (2, 5, 5)
    assert torch.allclose(dist[..., :3].sum(-1), torch.ones(2, 5))
    assert torch.allclose(dist[..., 3:].sum(-1), torch.ones(2, 5))
    l_ind = ContextPrototypes.independence_loss(dist)
    assert l_ind.item() <= 0
    l_mse = enc.mse_loss(dist, torch.rand(2, 5, 5))
    (l_ind + l_mse).backward()
    assert protos.prototypes.grad is not None and torch.isfinite(protos.prototypes.grad).all()


def test_gat_layer_shapes_and_isolated_nodes():
    gat = GATLayer(6, 4, heads=2, self_loops=False)
    x = torch.randn(3, 5, 6)
    adj = torch.zeros(5, 5, dtype=torch.bool)
    adj[0, 1] = adj[1, 0] = True
    out = gat(x, adj)
    assert out.shape == (3, 5, 8)
    assert torch.equal(out[:, 2:], torch.zeros(3, 3, 8))  # no neighbours -> zeros, not NaN
    assert GATLayer(6, 4, heads=2, concat=False)(x, adj).shape == (3, 5, 4)


def test_gumbel_binarize_is_binary_with_gradients():
    logits = torch.randn(64, requires_grad=True)
    z = gumbel_binarize(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(1))
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    (z * torch.arange(64.0)).sum().backward()
    assert logits.grad.abs().sum() > 0
    assert torch.equal(gumbel_binarize(logits, noise=False), (logits > 0).float())


def test_subsequence_mask_marks_selected_contexts():
    hist = torch.tensor([[3, 1, 3, 2, -1], [0, 0, 1, -1, -1]])
    sel = torch.tensor([[3, -1], [1, 2]])
    mask = subsequence_mask(hist, sel)
    assert mask.tolist() == [[True, False, True, False, False], [False, False, True, False, False]]
    assert not subsequence_mask(hist, sel, selected=torch.zeros(2, 2, dtype=torch.bool)).any()


def test_selection_is_candidate_independent():
    assert not any("cand" in name for name in inspect.signature(select_subsequence).parameters)
    r, k, d, c, n = 2, 4, 8, 6, 20
    sim, l, proto = torch.randn(r, k), torch.randn(r, d), torch.randn(r, k, d)
    attach = torch.rand(r, k, c) < 0.5
    context_ids = torch.arange(c).expand(r, c)
    hist = torch.randint(0, c, (r, n))
    kw = dict(tau=0.5, noise=True, generator=torch.Generator().manual_seed(7))
    per_request = select_subsequence(sim, l, proto, attach, context_ids, hist, **kw)
    masks = []
    for n_cand in (3, 11):  # two candidate sets of different sizes for the same two requests
        request_index = torch.arange(r).repeat_interleave(n_cand)
        cand_mask = expand_to_candidates(per_request, request_index)
        masks.append(cand_mask)
        for i in range(r):
            assert (cand_mask[request_index == i] == per_request[i]).all()
    assert torch.equal(masks[0][::3], masks[1][::11])
    # Without noise (evaluation) the selection is a pure function of the request: recomputing it
    # on a per-candidate expanded batch gives the very same rows.
    det = select_subsequence(sim, l, proto, attach, context_ids, hist, noise=False)
    idx = torch.tensor([0, 0, 0, 1, 1])
    rows = select_subsequence(sim[idx], l[idx], proto[idx], attach[idx], context_ids[idx], hist[idx], noise=False)
    assert torch.equal(rows, det[idx])


# ------------------------------------------------------------------------------------------------
# LARR


def test_scene_aggregator_shape_and_batch_permutation():
    agg = SceneAggregator(in_dim=12, n_features=5, d_model=16, n_heads=2, n_layers=1, collab_dim=8).eval()
    x = torch.randn(6, 5, 12)
    out = agg(x)
    assert out.shape == (6, 16) and agg.scene_vector(x).shape == (6, 8)
    perm = torch.randperm(6)
    assert torch.allclose(agg(x[perm]), out[perm], atol=1e-5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 4] = False  # a masked feature does not matter
    x2 = x.clone()
    x2[:, 4] = 100.0
    assert torch.allclose(agg(x, mask), agg(x2, mask), atol=1e-5)
    with pytest.raises(ValueError, match="scene features"):
        agg(torch.randn(2, 4, 12))


def test_served_aggregator_reads_precomputed_terms_and_gives_the_same_vector():
    agg = SceneAggregator(in_dim=12, n_features=5, d_model=16, n_heads=2, n_layers=1, collab_dim=8)
    for p in agg.parameters():  # away from the initial values, so every term matters
        p.data.add_(0.3 * torch.randn_like(p))
    agg.eval()
    table = torch.randn(30, 12)
    rows = torch.randint(0, 30, (7, 5))
    rows[1, 2] = -1  # a missing feature
    rows[3] = -1  # a scene with no feature known
    served = agg.served(table)
    with torch.no_grad():
        want = agg.scene_vector(table[rows.clamp(min=0)], rows >= 0)
    got = served(rows.numpy())
    assert got.dtype == np.float32 and got.shape == (7, 8)
    assert np.allclose(got, want.numpy(), atol=1e-5)
    assert np.allclose(served(rows[:1].numpy()), want[:1].numpy(), atol=1e-5), "one request alone"
    deep = SceneAggregator(in_dim=12, n_features=5, d_model=16, n_heads=2, n_layers=2, collab_dim=8).eval()
    assert deep.served(table) is None, "later layers mix the features: nothing to precompute per value"


def test_scene_alignment_loss_decreases():
    agg = SceneAggregator(in_dim=8, n_features=3, d_model=16, n_heads=2, n_layers=1, dropout=0.0, collab_dim=8)
    x, collab = torch.randn(8, 3, 8), torch.randn(8, 8)
    losses = []
    for _ in range(20):
        loss = info_nce(agg.scene_vector(x), collab, temperature=0.1, normalize=True)
        agg.zero_grad()
        loss.backward()
        # Plain gradient descent: torch.optim's first step imports dynamo, seconds on a busy CPU.
        with torch.no_grad():
            for p in agg.parameters():
                p -= 0.3 * p.grad
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
