"""``ctr.seed_bag``: the model and more of its family replaying its schedule from the next seeds,
scored as the mean of their logits, on the model trained once per session (``trained_ctr``)."""
import numpy as np
import pytest

from components.config import CTRConfig
from components.ctr import families
from components.ctr.ensemble import EnsembleModel, logit
from components.ctr.serving import CTRScorer

pytestmark = pytest.mark.slow


def test_a_bag_averages_the_logits_of_networks_from_consecutive_seeds(trained_ctr, tmp_path):
    ds, info, seed = trained_ctr.dataset, trained_ctr.info, trained_ctr.params.seed
    cfg = trained_ctr.params.ctr.model_copy(update={"seed_bag": 3})
    model = trained_ctr.scorer.model
    bagged, again = families.bag(cfg.model, model, info, ds, cfg, seed=seed, progress=False)
    assert isinstance(bagged, EnsembleModel) and bagged.name == cfg.model
    assert list(bagged.members) == [cfg.model, f"{cfg.model}.seed1", f"{cfg.model}.seed2"]
    assert bagged.members[cfg.model] is model  # the first network is the model trained as usual
    assert bagged.weights == {"ctr": [0.333333] * 3, "ctcvr": [0.333333] * 3}
    assert again["bag"]["members"] == 3 and again["seconds"] > info["seconds"]
    # The second network replays the first one's schedule from the next seed: the same model as a
    # replay called directly, and not the first one.
    twin, steps = families.replay(cfg.model, model, info, ds, cfg, seed + 1, progress=False)
    assert steps["epochs"] == info["best_epoch"]
    member = [families.scores(m, ds.test, ds, cfg) for m in bagged.members.values()]
    np.testing.assert_allclose(families.scores(twin, ds.test, ds, cfg)["ctr"], member[1]["ctr"], rtol=1e-5, atol=1e-7)
    assert not np.allclose(member[0]["ctr"], member[1]["ctr"])
    # Scored as the mean logit (CTCVR capped at CTR).
    out = families.scores(bagged, ds.test, ds, cfg)
    for task in ("ctr", "ctcvr"):
        mean = np.mean([logit(s[task]) for s in member], 0)
        expected = 1 / (1 + np.exp(-mean))
        if task == "ctcvr":
            expected = np.minimum(expected, out["ctr"])
        np.testing.assert_allclose(out[task], expected, rtol=1e-5, atol=1e-7)
    # Saved and loaded under its family's name, as one model folder.
    CTRScorer(bagged, ds.encoder, cfg, trained_ctr.params.features).save(tmp_path / "model")
    back = CTRScorer.load(tmp_path / "model")
    assert isinstance(back.model, EnsembleModel) and back.model.name == cfg.model
    assert list(back.model.members) == list(bagged.members)
    np.testing.assert_allclose(families.scores(back.model, ds.test, ds, cfg)["ctr"], out["ctr"], rtol=1e-5, atol=1e-7)


def test_a_bag_of_one_is_the_model_itself(trained_ctr):
    ds, info = trained_ctr.dataset, trained_ctr.info
    model = trained_ctr.scorer.model
    cfg = trained_ctr.params.ctr.model_copy(update={"seed_bag": 1})
    same, same_info = families.bag(cfg.model, model, info, ds, cfg)
    assert same is model and same_info is info


def test_seed_bag_is_validated():
    with pytest.raises(ValueError, match="seed_bag"):
        CTRConfig(seed_bag=0)
    with pytest.raises(ValueError, match="seed_bag"):
        CTRConfig(seed_bag=9)
