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
