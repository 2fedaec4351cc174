"""benchmarks/embedder_tables.py: the table variants it trains on (swap, rescale) and its spread measure."""
import sys

import numpy as np
import pandas as pd
import pytest

from tests.factories import REPO


@pytest.fixture(scope="module")
def tables():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import embedder_tables

    return embedder_tables


def _write(root, name, rng, offset):
    d = root / name
    d.mkdir(parents=True)
    for t, n in (("poi", 6), ("scene", 4)):
        x = offset + 0.1 * rng.standard_normal((n, 8))
        pd.DataFrame({"id": range(n), "embedding": list(x.astype(np.float32))}).to_parquet(d / f"{t}_embeddings.parquet")


def test_rescale_centres_and_sets_the_rms(tables):
    x = np.random.default_rng(0).standard_normal((20, 5)) + 3.0
    y = tables.rescaled(x, 0.3)
    assert np.allclose(y.mean(0), 0, atol=1e-9)
    assert np.sqrt((y ** 2).sum(1).mean()) == pytest.approx(0.3)
    s = tables.spread(y)
    assert s["centred_rms"] == pytest.approx(0.3, abs=1e-3)
    # a table dominated by its mean row: rows almost parallel
    assert tables.spread(x)["mean_cosine"] > 0.8 > abs(s["mean_cosine"])


def test_swap_takes_each_table_from_its_embedder(tables, tmp_path):
    rng = np.random.default_rng(1)
    _write(tmp_path, "a", rng, 0.0)
    _write(tmp_path, "b", rng, 5.0)
    out = tables.variant_tables(tmp_path, "swap", "a", "b")
    assert np.stack(out["poi"]["embedding"]).mean() < 1 < np.stack(out["scene"]["embedding"]).mean()
    scaled = tables.variant_tables(tmp_path, "scale", "b", "1.0")
    for t in tables.TABLES:
        assert len(scaled[t]) == len(pd.read_parquet(tmp_path / "b" / f"{t}_embeddings.parquet"))
        assert tables.spread(np.stack(scaled[t]["embedding"]))["centred_rms"] == pytest.approx(1.0, abs=1e-3)


def test_bad_variants_name_what_is_wrong(tables, tmp_path):
    with pytest.raises(SystemExit, match="POI:SCENE"):
        tables.parse_variant("student", "swap")
    with pytest.raises(SystemExit, match="positive"):
        tables.parse_variant("student:-1", "scale")
    _write(tmp_path, "a", np.random.default_rng(2), 0.0)
    with pytest.raises(SystemExit, match=r"not found.*\['a'\]"):
        tables.variant_tables(tmp_path, "swap", "a", "missing")


def test_shuffle_keeps_the_vectors_but_not_their_owners(tables, tmp_path):
    _write(tmp_path, "a", np.random.default_rng(3), 0.0)
    out = tables.variant_tables(tmp_path, "shuffle", "a", "7")
    for t in tables.TABLES:
        before = tables.table_matrix(pd.read_parquet(tmp_path / "a" / f"{t}_embeddings.parquet"))
        after = tables.table_matrix(out[t])
        assert list(out[t]["id"]) == list(range(len(before)))  # every id keeps a row
        assert sorted(map(tuple, after.round(6))) == sorted(map(tuple, before.round(6)))  # the same vectors
        assert not np.isclose(after, before).all(1).any()  # no id keeps its own vector
    again = tables.variant_tables(tmp_path, "shuffle", "a", "7")
    assert np.array_equal(tables.table_matrix(again["poi"]), tables.table_matrix(out["poi"]))  # seeded
    with pytest.raises(SystemExit, match="non-negative integer"):
        tables.parse_variant("a:x", "shuffle")
