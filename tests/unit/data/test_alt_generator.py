"""benchmarks/alt_generator.py: the second, independently written world passes the platform's own
ingestion door, is deterministic by seed, and its truth file is the oracle it claims to be."""
import sys

import numpy as np
import pandas as pd
import pytest

from tests.factories import REPO

SIZES = dict(n_users=80, n_pois=40, n_requests=400, impressions_per_request=6, days=20)


@pytest.fixture(scope="module")
def alt():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import alt_generator

    return alt_generator


@pytest.fixture(scope="module")
def batch(alt, tmp_path_factory):
    out = tmp_path_factory.mktemp("alt") / "batch"
    counts = alt.generate_alt_batch(out, seed=3, **SIZES)
    return out, counts


def test_the_batch_passes_contract_validation(batch):
    from components.config import Params
    from components.data.ingest import validate_batch

    out, counts = batch
    result = validate_batch(out, Params().ingest)
    assert result.success, result.failures
    assert counts["impressions"] == SIZES["n_requests"] * SIZES["impressions_per_request"]
    assert counts["users"] == SIZES["n_users"] and counts["pois"] == SIZES["n_pois"]


def test_same_seed_same_files_other_seed_other_files(alt, batch, tmp_path):
    out, _ = batch
    again = alt.generate_alt_batch(tmp_path / "again", seed=3, **SIZES)
    assert again == batch[1]
    for name in ("pois", "users", "behaviors", "impressions"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"),
                                      pd.read_parquet(tmp_path / "again" / f"{name}.parquet"))
    alt.generate_alt_batch(tmp_path / "other", seed=4, **SIZES)
    assert not pd.read_parquet(out / "impressions.parquet")["click"].equals(
        pd.read_parquet(tmp_path / "other" / "impressions.parquet")["click"])


def test_truth_is_a_probability_the_labels_follow(batch):
    out, _ = batch
    imp = pd.read_parquet(out / "impressions.parquet")
    truth = pd.read_parquet(out / "truth" / "impressions.parquet")
    m = imp.merge(truth, on=["request_id", "poi_id"], how="left", validate="one_to_one")
    assert m["p_click"].notna().all()
    assert ((m["p_order"] >= 0) & (m["p_order"] <= m["p_click"]) & (m["p_click"] <= 1)).all()
    assert (imp["order"] <= imp["click"]).all()
    # calibrated: the mean true probability is the click rate up to sampling error
    n = len(m)
    assert abs(m["click"].mean() - m["p_click"].mean()) < 4 * np.sqrt(m["p_click"].mean() / n)
    # every clicked impression is also in the behaviour log, after it
    beh = pd.read_parquet(out / "behaviors.parquet")
    clicks = beh[beh["behavior"] == "click"].merge(imp[imp["click"] == 1], on=["user_id", "poi_id"],
                                                   suffixes=("", "_imp"))
    assert set(map(tuple, imp.loc[imp["click"] == 1, ["user_id", "poi_id"]].to_numpy())) <= set(
        map(tuple, clicks[["user_id", "poi_id"]].to_numpy()))


def test_meal_shift_moves_the_busy_hours_and_the_meal_slots_together(alt):
    """``meal_shift``: the world's activity and its meal slots happen that many hours later."""
    rng = np.random.default_rng(0)
    w = alt.make_world(rng, 300, 40, 10)
    wstate, t_mean = alt.day_weather(rng, w["start"], 10)
    users = rng.integers(0, 300, 20_000)
    base = alt.scene(np.random.default_rng(1), w, 3, users, wstate, t_mean)
    late = alt.scene(np.random.default_rng(1), w, 3, users, wstate, t_mean, meal_shift=2)
    slot_of_hour = {int(h): int(s) for h, s in zip(base["hour"], base["slot"])}  # the unshifted slot edges
    assert len(slot_of_hour) == 24
    np.testing.assert_array_equal(late["slot"], [slot_of_hour[(h - 2) % 24] for h in late["hour"]])
    assert np.argmax(np.bincount(late["hour"], minlength=24)) == (np.argmax(alt.HOUR_W) + 2) % 24
    assert not np.array_equal(base["slot"], late["slot"])


def test_affinity_scale_multiplies_the_affinity_term_alone(alt):
    rng = np.random.default_rng(0)
    w = alt.make_world(rng, 50, 30, 10)
    wstate, t_mean = alt.day_weather(rng, w["start"], 10)
    users = rng.integers(0, 50, 40)
    sc = alt.scene(rng, w, 2, users, wstate, t_mean)
    h = np.zeros((50, 30))
    z1, o1, d1 = alt.logits(w, users, sc, 0.3, h, h)
    z2, o2, d2 = alt.logits(w, users, sc, 0.3, h, h, affinity_scale=2.0)
    aff = w["U"][users] @ w["V"].T / np.sqrt(alt.K * 0.74)
    np.testing.assert_allclose(z2 - z1, 0.65 * aff, atol=1e-9)
    np.testing.assert_array_equal(o2, o1)
    np.testing.assert_array_equal(d2, d1)
