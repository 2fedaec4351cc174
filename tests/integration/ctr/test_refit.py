"""``ctr.refit``: after early stopping, the model is trained again on train + valid with the first
fit's schedule, on the model trained once per session on a tiny generated world (``trained_ctr``)."""
import numpy as np
import pytest

from components.ctr import families
from components.ctr.data import concat_requests, with_valid_in_train
from components.ctr.metrics import auc

pytestmark = pytest.mark.slow


def test_joining_splits_pads_the_narrower_one_and_keeps_every_request(trained_ctr):
    ds = trained_ctr.dataset
    k = ds.train.poi_row.shape[1]
    narrow = ds.valid.take(np.arange(len(ds.valid)))
    for name in ("poi_row", "position", "numeric", "distance", "click", "order", "mask", "cold_poi", "p_click", "p_order"):
        setattr(narrow, name, getattr(narrow, name)[:, : k - 1])
    both = concat_requests(ds.train, narrow)
    assert len(both) == len(ds.train) + len(ds.valid) and both.poi_row.shape[1] == k
    assert int(both.mask.sum()) == int(ds.train.mask.sum()) + int(narrow.mask.sum())
    assert not both.mask[len(ds.train):, k - 1].any()  # the padded slot is masked out
    np.testing.assert_array_equal(both.click[: len(ds.train)], ds.train.click)
    assert list(both.request_id[len(ds.train):]) == list(ds.valid.request_id)
    full = with_valid_in_train(ds)
    assert len(full.train) == len(ds.train) + len(ds.valid) and full.valid is ds.valid and full.test is ds.test


def test_a_neural_refit_replays_the_schedule_on_train_and_valid(trained_ctr):
    ds, cfg, info = trained_ctr.dataset, trained_ctr.params.ctr, trained_ctr.info
    model = trained_ctr.scorer.model
    new, again = families.refit(cfg.model, model, info, ds, cfg, seed=trained_ctr.params.seed, progress=False)
    rows = int(ds.train.mask.sum()) + int(ds.valid.mask.sum())
    assert again["refit"]["rows"] == rows
    assert again["refit"]["epochs"] == info["best_epoch"] >= 1  # stopped at the first fit's best epoch
    # the first fit's learning rate epoch by epoch (its decays replayed), as far as its best epoch
    first = [h.get("train_lr") for h in info["history"][: info["best_epoch"]]]
    assert again["refit"]["lr_per_epoch"] == first and len(first) == info["best_epoch"]
    before = families.scores(model, ds.test, ds, cfg)
    after = families.scores(new, ds.test, ds, cfg)
    assert not np.allclose(before["ctr"], after["ctr"])  # it learnt from the validation requests too
    assert auc(after["click"], after["ctr"]) > 0.55
    # Deterministic: the same seed and schedule give the same model.
    twin, _ = families.refit(cfg.model, model, info, ds, cfg, seed=trained_ctr.params.seed, progress=False)
    np.testing.assert_allclose(families.scores(twin, ds.test, ds, cfg)["ctr"], after["ctr"], rtol=1e-5, atol=1e-7)


def test_a_lightgbm_refit_keeps_the_variant_and_the_boosting_rounds(trained_ctr):
    pytest.importorskip("lightgbm")
    ds = trained_ctr.dataset
    cfg = trained_ctr.params.ctr.model_copy(update={"gbdt_variants": ["tabular+history"], "refit": False,
                                                    "seed_bag": 1})  # the refit alone (tests/.../test_seed_bag.py)
    model, info = families.train("lightgbm", ds, cfg, seed=0)
    assert "refit" not in info  # ctr.refit off: the early-stopped fit alone
    new, again = families.refit("lightgbm", model, info, ds, cfg, seed=0)
    chosen = info["variants"][model.variant]
    assert new.variant == model.variant
    assert new.boosters["ctr"].num_trees() == chosen["rounds_ctr"]
    assert new.boosters["ctcvr"].num_trees() == chosen["rounds_ctcvr"]
    assert again["refit"]["rounds_ctr"] == chosen["rounds_ctr"]
    scores = families.scores(new, ds.test, ds, cfg)
    assert auc(scores["click"], scores["ctr"]) > 0.55


def test_an_ensemble_chooses_its_weights_before_refitting_its_members(trained_ctr):
    pytest.importorskip("lightgbm")
    ds = trained_ctr.dataset
    cfg = trained_ctr.params.ctr.model_copy(update={"model": "ensemble", "ensemble_members": ["cofars", "lightgbm"],
                                                    "gbdt_variants": ["tabular+history"], "epochs": 2,
                                                    "ensemble_weight_step": 0.25, "refit": True,
                                                    "seed_bag": 1})
    model, info = families.train("ensemble", ds, cfg, seed=0, progress=False)
    # The weights were chosen on out-of-sample validation scores: the members' own figures are those
    # of their first fits, and each member was then refit on train + valid.
    rows = int(ds.train.mask.sum()) + int(ds.valid.mask.sum())
    assert set(info["members"]) == {"cofars", "lightgbm"}
    assert 0 < info["members_valid_auc"]["cofars"]["ctr"] < 1
    cof = model.members["cofars"]
    solo, solo_info = families.train("cofars", ds, cfg.model_copy(update={"refit": False}), seed=0, progress=False)
    refit, _ = families.refit("cofars", solo, solo_info, ds, cfg, seed=0, progress=False)
    # The weights are those the first fits' (out-of-sample) validation scores give.
    from components.ctr.ensemble import EnsembleModel, fit_weights

    gbdt, _ = families.train("lightgbm", ds, cfg.model_copy(update={"refit": False}), seed=0)
    firsts = EnsembleModel({"cofars": solo, "lightgbm": gbdt}, {}, cfg).member_scores(ds.valid, ds)
    assert fit_weights(firsts, cfg.ensemble_weight_step, cfg.ensemble_confidence, seed=0)[0] == model.weights
    # The member served is the refit of its first fit (same seed): the same scores.
    np.testing.assert_allclose(families.scores(cof, ds.test, ds, cfg)["ctr"],
                               families.scores(refit, ds.test, ds, cfg)["ctr"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(families.scores(cof, ds.test, ds, cfg)["ctr"], families.scores(solo, ds.test, ds, cfg)["ctr"])
    assert info["members"]["cofars"]["refit"]["rows"] == info["members"]["lightgbm"]["refit"]["rows"] == rows
