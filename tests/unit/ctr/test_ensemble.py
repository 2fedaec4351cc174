"""The ensemble's arithmetic: the weight grid, the per-task choice on validation, the combination."""
import numpy as np
import pytest

from components.ctr.ensemble import combine, fit_weights, logit, weight_grid


def test_weight_grid_is_the_simplex_at_the_step():
    g = weight_grid(2, 0.25)
    np.testing.assert_allclose(g, [[1, 0], [0.75, 0.25], [0.5, 0.5], [0.25, 0.75], [0, 1]])
    g3 = weight_grid(3, 0.1)
    assert len(g3) == 66 and np.allclose(g3.sum(1), 1) and (g3 >= 0).all()
    assert len({tuple(r) for r in g3.round(6)}) == 66


def _scores(rng, n, y, signal, noise):
    """A member whose logit is signal * (label part) + noise; flat dict as train.predict returns."""
    z = signal * (y - 0.5) + rng.normal(0, noise, n)
    p = 1 / (1 + np.exp(-z))
    return {"ctr": p, "ctcvr": p * 0.5, "click": y, "order": y, "user": np.arange(n) % 7,
            "row": np.arange(n) // 4, "slot": np.arange(n) % 4}


def test_weights_follow_the_better_member_and_mixing_independent_errors_helps():
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.3).astype(np.float32)
    good, weak = _scores(rng, n, y, 2.0, 1.0), _scores(rng, n, y, 0.5, 1.0)
    w, best = fit_weights([good, weak], 0.05)
    assert w["ctr"][0] > 0.6 and abs(sum(w["ctr"]) - 1) < 1e-9
    # Two members as good as each other with independent noise: the average beats either alone.
    a, b = _scores(rng, n, y, 1.0, 1.0), _scores(rng, n, y, 1.0, 1.0)
    w, best = fit_weights([a, b], 0.05)
    from components.ctr.metrics import auc

    assert 0.3 <= w["ctr"][0] <= 0.7
    assert best["ctr"] > max(auc(y, a["ctr"]), auc(y, b["ctr"])) + 0.01
    # A useless member gets (close to) no weight.
    useless = _scores(rng, n, y, 0.0, 1.0)
    w, _ = fit_weights([a, useless], 0.05)
    assert w["ctr"][1] <= 0.15


def test_combine_is_the_weighted_logit_average_and_keeps_ctcvr_under_ctr():
    rng = np.random.default_rng(1)
    y = (rng.random(40) < 0.5).astype(np.float32)
    a, b = _scores(rng, 40, y, 1.0, 1.0), _scores(rng, 40, y, 1.0, 1.0)
    b["ctcvr"] = np.full(40, 0.99)  # a member with CTCVR above its CTR
    out = combine([a, b], {"ctr": [0.25, 0.75], "ctcvr": [0.0, 1.0]})
    want = 1 / (1 + np.exp(-(0.25 * logit(a["ctr"]) + 0.75 * logit(b["ctr"]))))
    np.testing.assert_allclose(out["ctr"], want)
    assert (out["ctcvr"] <= out["ctr"]).all()
    np.testing.assert_array_equal(out["row"], a["row"])
    with pytest.raises(ValueError, match="different candidates"):
        combine([a, {**b, "slot": b["slot"][::-1]}], {"ctr": [0.5, 0.5], "ctcvr": [0.5, 0.5]})


def test_tune_searches_an_ensembles_neural_member_and_refuses_trees_alone():
    from pathlib import Path

    from components.config import load_params
    from components.ctr.tune import tune_ctr

    params = load_params(Path(__file__).resolve().parents[3] / "params.yaml")
    trees = params.model_copy(update={"ctr": params.ctr.model_copy(update={"model": "lightgbm"})})
    with pytest.raises(ValueError, match="ctr.model is lightgbm with no neural model"):
        tune_ctr(trees, trials=1, budget_seconds=1)


def test_a_mix_that_wins_validation_by_noise_falls_back_to_the_best_member():
    rng = np.random.default_rng(3)
    n = 3000
    y = (rng.random(n) < 0.01).astype(np.float32)  # ~30 positives: a CTCVR-like validation split
    strong, weak = _scores(rng, n, y, 2.0, 1.0), _scores(rng, n, y, 0.3, 1.0)
    mixed, _ = fit_weights([strong, weak], 0.05, confidence=0.0)
    kept, _ = fit_weights([strong, weak], 0.05, confidence=0.9, seed=0)
    assert kept["ctr"] == [1.0, 0.0]
    assert mixed["ctr"] != [1.0, 0.0]  # without the rule the weak member gets a weight by chance
