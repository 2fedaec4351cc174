"""Ingestion: accepted batches become curated Parquet; rejected ones are quarantined whole and
leave curated data byte-for-byte unchanged."""
from __future__ import annotations

import hashlib
import json
import logging
import pickle
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from components.config import Params
from components.data.contract import TABLES
from components.data.ingest import BatchRejected, ingest_batch
from tests.factories import tiny_batch, tiny_truth, write_batch

REFERENCE = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _params(root: Path, mode: str = "replace") -> Params:
    return Params(root=root, ingest={"reference_time": REFERENCE, "mode": mode})


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _curated(params: Params, name: str) -> pd.DataFrame:
    return pd.read_parquet(params.path("curated_dir") / f"{name}.parquet")


def test_accepted_batch_is_curated(tmp_path):
    params = _params(tmp_path)
    tables = tiny_batch()
    batch = write_batch({**tables, "truth": tiny_truth(tables)}, tmp_path / "batch-001")

    result = ingest_batch(batch, params)

    assert result.rows == {**{n: len(tables[n]) for n in TABLES}, "truth": len(tables["impressions"])}
    assert result.curated_rows == result.rows
    assert result.expectations_passed == result.expectations_evaluated > 0
    for name in TABLES:
        pd.testing.assert_frame_equal(_curated(params, name), tables[name])
    truth = pd.read_parquet(params.path("curated_dir") / "truth" / "impressions.parquet")
    assert list(truth.columns) == ["request_id", "poi_id", "p_click", "p_order"] and len(truth) == 12
    metrics = json.loads((params.path("reports_dir") / "validation.json").read_text())
    assert metrics["success"] is True and metrics["failed_rules"] == 0
    assert metrics["tables"]["impressions"]["rows"] == 12
    assert metrics["expectations_passed"] == metrics["expectations_evaluated"] > 0
    assert not list(params.path("curated_dir").rglob(".*tmp*")), "temp files left behind"


def test_rejected_batch_is_quarantined_and_curated_is_untouched(tmp_path):
    params = _params(tmp_path)
    ingest_batch(write_batch(tiny_batch(), tmp_path / "good"), params)
    before = _hashes(params.path("curated_dir"))

    bad = tiny_batch()
    bad["impressions"].loc[0, "click"] = 2
    bad["pois"].loc[1, "price"] = -3.0
    batch = write_batch(bad, tmp_path / "batch-002")
    with pytest.raises(BatchRejected) as info:
        ingest_batch(batch, params)

    err = info.value
    assert {(f.table, f.column, f.rule) for f in err.failures} == {
        ("impressions", "click", "value_set"), ("pois", "price", "range")}
    message = str(err)
    assert "impressions.click: value_set — 1 rows, e.g. [2]" in message
    assert "pois.price: range — 1 rows, e.g. [-3.0]" in message
    assert str(err.quarantine_path) in message

    q = err.quarantine_path
    assert q.parent == params.path("quarantine_dir") and q.name.startswith("batch-002-")
    for name in TABLES:  # the whole batch, copied as it came
        assert (q / f"{name}.parquet").read_bytes() == (batch / f"{name}.parquet").read_bytes()
    report = json.loads((q / "report.json").read_text())
    assert report["success"] is False and len(report["failures"]) == 2
    assert any(e["rule"] == "value_set" and not e["success"] for e in report["expectations"])
    assert (q / "data_docs" / "index.html").is_file()
    assert list(q.rglob("validations/**/*.html")), "no validation page in the Data Docs"

    assert _hashes(params.path("curated_dir")) == before
    metrics = json.loads((params.path("reports_dir") / "validation.json").read_text())
    assert metrics["success"] is False
    # Flows ship exceptions between processes: the rejection must survive pickling intact.
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == message and again.quarantine_path == q


def test_unreadable_batch_is_rejected_without_traceback(tmp_path):
    params = _params(tmp_path)
    batch = write_batch(tiny_batch(), tmp_path / "broken")
    (batch / "users.parquet").write_bytes(b"PAR1 this is not parquet")
    (batch / "pois.parquet").unlink()
    with pytest.raises(BatchRejected) as info:
        ingest_batch(batch, params)
    rules = {(f.table, f.rule) for f in info.value.failures}
    assert {("users", "file_unreadable"), ("pois", "missing_file")} <= rules
    assert (info.value.quarantine_path / "data_docs" / "index.html").is_file()
    assert not params.path("curated_dir").exists()


def test_extra_column_warns_and_is_dropped(tmp_path, caplog):
    params = _params(tmp_path)
    tables = tiny_batch()
    tables["users"]["favourite_colour"] = "blue"
    with caplog.at_level(logging.WARNING):
        result = ingest_batch(write_batch(tables, tmp_path / "extra"), params)
    assert any("favourite_colour" in w for w in result.warnings)
    assert "favourite_colour" in caplog.text
    assert "favourite_colour" not in _curated(params, "users").columns


def test_csv_batch_is_curated_like_parquet(tmp_path):
    params = _params(tmp_path)
    ingest_batch(write_batch(tiny_batch(), tmp_path / "csv-batch", fmt="csv"), params)
    for name, df in tiny_batch().items():
        expected = df.replace({"": None}) if name == "pois" else df  # CSV: empty text reads as null
        pd.testing.assert_frame_equal(_curated(params, name), expected)


def test_append_mode_merges_and_drops_duplicates(tmp_path):
    params = _params(tmp_path, mode="append")
    first = tiny_batch()
    ingest_batch(write_batch(first, tmp_path / "day1"), params)

    second = tiny_batch()  # every row again, plus a changed price and one new row per table
    second["pois"].loc[0, "price"] = 35.0
    second["pois"] = pd.concat([second["pois"], second["pois"].iloc[[5]].assign(poi_id="p7")], ignore_index=True)
    second["users"] = pd.concat([second["users"], second["users"].iloc[[0]].assign(user_id="u6")], ignore_index=True)
    second["behaviors"] = pd.concat(
        [second["behaviors"], second["behaviors"].iloc[[0]].assign(poi_id="p7")], ignore_index=True)
    second["impressions"] = pd.concat(
        [second["impressions"], second["impressions"].iloc[[0]].assign(poi_id="p7")], ignore_index=True)
    result = ingest_batch(write_batch(second, tmp_path / "day2"), params)

    assert result.curated_rows == {n: len(first[n]) + 1 for n in TABLES}
    pois = _curated(params, "pois").set_index("poi_id")
    assert pois.loc["p1", "price"] == 35.0  # the newer batch wins on a repeated key
    assert not _curated(params, "impressions").duplicated(["request_id", "poi_id"]).any()
    assert not _curated(params, "behaviors").duplicated().any()


def test_append_mode_accepts_references_to_curated_keys(tmp_path):
    params = _params(tmp_path, mode="append")
    ingest_batch(write_batch(tiny_batch(), tmp_path / "day1"), params)
    later = tiny_batch()
    later["users"] = later["users"][later["users"].user_id != "u5"]  # u5 is only in curated data
    ingest_batch(write_batch(later, tmp_path / "day2"), params)
    assert "u5" in set(_curated(params, "users").user_id)


def test_crash_mid_write_leaves_curated_unchanged(tmp_path, monkeypatch):
    params = _params(tmp_path)
    ingest_batch(write_batch(tiny_batch(), tmp_path / "good"), params)
    before = _hashes(params.path("curated_dir"))

    calls = {"n": 0}
    real = pd.DataFrame.to_parquet

    def flaky(self, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the third table dies half-written
            Path(path).write_bytes(b"PAR1 half a table")
            raise OSError("disk full")
        return real(self, path, *args, **kwargs)

    changed = tiny_batch()
    changed["pois"].loc[0, "price"] = 99.0
    batch = write_batch(changed, tmp_path / "next")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", flaky)
    with pytest.raises(OSError, match="disk full"):
        ingest_batch(batch, params)
    assert _hashes(params.path("curated_dir")) == before  # no table replaced, no temp file left
