"""``ctr.log_poi_dim``: the behaviour log's BPR PoI vectors as a frozen input of the CTR model, on the
world trained once per session (``trained_ctr``): computed point in time, read through the item
embedding (served too) and, with ``ctr.log_poi_profile``, compared with the history's in the profile;
left as they are by training, saved and loaded with the model."""
import dataclasses

import numpy as np
import pytest
import torch

from components.config import CTRConfig
from components.ctr import families
from components.ctr.id_pretrain import rescale
from components.ctr.serving import CTRScorer
from components.ctr.train import build_model, log_bpr, train_model
from components.serve.cofars import item_table

pytestmark = pytest.mark.slow


def _cfg(trained_ctr, **update):
    return trained_ctr.params.ctr.model_copy(update={"log_poi_dim": 8, "log_poi_epochs": 2, **update})


def test_the_vectors_come_from_the_log_before_the_validation_split(trained_ctr):
    ds, seed = trained_ctr.dataset, trained_ctr.params.seed
    cfg = _cfg(trained_ctr)
    model = build_model(cfg.model, cfg, ds, seed)
    vec = model.log_poi_vec
    assert vec.shape == (model.poi_emb.num_embeddings, 8)
    _, p = log_bpr(model, ds, cfg, 8, 2, seed)
    assert torch.equal(vec, rescale(p, 1.0))
    rows = vec.abs().sum(-1) > 0
    assert not rows[0] and rows.sum() > 0.5 * len(rows)  # the unknown PoI reads zeros; logged PoIs their vector
    assert float(vec[rows].pow(2).mean().sqrt()) == pytest.approx(1.0, abs=1e-5)
    # Point in time: rewriting every behaviour from the validation split on changes nothing.
    h = ds.history
    later = h.ts >= ds.valid_start_ns
    assert later.any() and (~later).any()
    shuffled = h.poi_row.copy()
    shuffled[later] = np.random.default_rng(0).permutation(shuffled[later])
    other = dataclasses.replace(ds, history=dataclasses.replace(h, poi_row=shuffled))
    assert torch.equal(build_model(cfg.model, cfg, other, seed).log_poi_vec, vec)
    # ... while an earlier behaviour does.
    moved = h.poi_row.copy()
    moved[~later] = np.random.default_rng(0).permutation(moved[~later])
    changed = dataclasses.replace(ds, history=dataclasses.replace(h, poi_row=moved))
    assert not torch.equal(build_model(cfg.model, cfg, changed, seed).log_poi_vec, vec)
    # As an input alone it leaves every other weight's start as it is without it (the profile's
    # comparison widens the MLP's input, so it cannot).
    alone = cfg.model_copy(update={"log_poi_profile": False})
    plain = build_model(cfg.model, cfg.model_copy(update={"log_poi_dim": 0}), ds, seed).state_dict()
    assert not any(k.startswith("log_poi") for k in plain)  # 0 turns it off, the profile's comparison too
    for k, v in build_model(cfg.model, alone, ds, seed).state_dict().items():
        if not k.startswith("log_poi"):
            assert torch.equal(v, plain[k]), k


def test_a_training_impression_s_own_feedback_does_not_reach_the_vectors(trained_ctr):
    """The log holds every training click seconds after its impression: the BPR must not read it, or
    the vectors tell the model its training labels (and only on its training rows)."""
    from components.ctr.train import training_feedback

    ds, seed = trained_ctr.dataset, trained_ctr.params.seed
    cfg = _cfg(trained_ctr)
    flagged = training_feedback(ds, cfg.log_feedback_window_s)
    h = ds.history
    clicks = int(ds.train.click[ds.train.mask].sum())
    is_click = h.behavior == 2  # view, click, favourite, order = 1..4
    assert (flagged & is_click & (h.ts < ds.valid_start_ns)).sum() >= 0.9 * clicks  # the clicks' log entries
    assert flagged.mean() < 0.5  # ... and not the whole log
    vec = build_model(cfg.model, cfg, ds, seed).log_poi_vec
    # Removing the flagged entries from the log changes nothing: they were not read.
    pruned = h.without(flagged)
    assert len(pruned.ts) == len(h.ts) - flagged.sum()
    assert torch.equal(build_model(cfg.model, cfg, dataclasses.replace(ds, history=pruned), seed).log_poi_vec, vec)
    # ... while reading them (window 0) does.
    leaky = cfg.model_copy(update={"log_feedback_window_s": 0.0})
    assert not torch.equal(build_model(cfg.model, leaky, ds, seed).log_poi_vec, vec)


@pytest.mark.parametrize("profile", [False, True], ids=["input", "input+profile"])
def test_the_model_reads_them_trains_its_map_only_and_saves_them(trained_ctr, tmp_path, profile):
    ds, seed = trained_ctr.dataset, trained_ctr.params.seed
    cfg = _cfg(trained_ctr, epochs=1, patience=1, log_poi_profile=profile)
    before = build_model(cfg.model, cfg, ds, seed)
    model, _ = train_model(cfg.model, ds, cfg, seed=seed, progress=False)
    assert torch.equal(model.log_poi_vec, before.log_poi_vec)  # frozen: a buffer, not a weight
    assert not torch.equal(model.log_poi_proj.weight, before.log_poi_proj.weight)
    assert "log_poi_vec" not in dict(model.named_parameters())
    # The item embedding (and the served catalogue table built from it) reads them.
    served = item_table(model, ds.pois)
    with torch.no_grad():
        saved = model.log_poi_vec.clone()
        model.log_poi_vec.zero_()
        without = item_table(model, ds.pois)
        model.log_poi_vec.copy_(saved)
    assert not torch.allclose(served, without)
    # Saved with the model: a loaded scorer holds the same vectors and scores as the trained model.
    CTRScorer(model, ds.encoder, cfg, trained_ctr.params.features).save(tmp_path / "model")
    back = CTRScorer.load(tmp_path / "model")
    assert torch.equal(back.model.log_poi_vec, model.log_poi_vec)
    np.testing.assert_allclose(families.scores(back.model, ds.test, ds, cfg)["ctr"],
                               families.scores(model, ds.test, ds, cfg)["ctr"], rtol=1e-5, atol=1e-7)


def test_log_poi_knobs_are_validated():
    with pytest.raises(ValueError, match="log_poi_dim"):
        CTRConfig(log_poi_dim=-1)
    with pytest.raises(ValueError, match="log_poi_epochs"):
        CTRConfig(log_poi_epochs=0)
