"""Contract validation: the tiny valid batch passes; one crafted bad batch per contract rule fails
with a Failure naming the right table, column and rule.

The rule cases are generated from contract.py, so a rule added to the contract gets a test here
(and fails until the GX suite covers it).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from components.config import IngestConfig
from components.data.contract import CONTRACT, RULES, TABLES
from components.data.validate import ValidationResult, validate_batch
from tests.factories import tiny_batch, write_batch

CFG = IngestConfig(reference_time=datetime(2026, 6, 1, tzinfo=timezone.utc), max_examples=3)
FUTURE = pd.Timestamp("2100-01-01", tz="UTC")


def _set(table: str, column: str, value, row: int = 0):
    def mutate(tables):
        df = tables[table]
        if value is None or isinstance(value, str) and df[column].dtype != object:
            df[column] = df[column].astype(object)  # room for a null / text in an int or bool column
        df.loc[row, column] = value
    return mutate


def _out_of_range(col, side: str):
    if side == "min":
        return col.min_value if col.strict_min else col.min_value - 1
    return col.max_value + 1


def _rule_cases() -> list:
    """(table, column, rule, mutate(tables)) for every column rule and table rule of contract.py."""
    cases, seen = [], set()
    for name, table in CONTRACT.items():
        for col in table.columns:
            # Scene columns are one Column object shared by behaviors and impressions: their rules
            # run once here (in behaviors); test_every_contract_rule_is_in_the_suites checks that
            # both tables' suites carry them. Saves ten GX runs on identical rules.
            if id(col) in seen:
                continue
            seen.add(id(col))
            c = col.name
            if not col.nullable:
                cases.append((name, c, "not_null", _set(name, c, None)))
            if col.unique:
                cases.append((name, c, "unique", _set(name, c, tiny_batch()[name][c].iloc[1])))
            if col.value_set is not None:
                bogus = 2 if col.dtype == "int" else "bogus"
                cases.append((name, c, "value_set", _set(name, c, bogus)))
            for side in ("min", "max"):
                if getattr(col, f"{side}_value") is not None:
                    value = _out_of_range(col, side)
                    value = int(value) if col.dtype == "int" else float(value)
                    cases.append((name, c, "range", _set(name, c, value), side))
            if col.regex:
                cases.append((name, c, "regex", _set(name, c, "WX4G0")))  # upper case: not base32
            if col.not_future:
                cases.append((name, c, "not_future", _set(name, c, FUTURE)))
            if col.references:
                cases.append((name, c, "references", _set(name, c, "ghost")))
        if len(table.key) > 1:
            # Second row of the first request shows the PoI of the first row again.
            cases.append((name, "+".join(table.key), "compound_unique",
                          _set(name, table.key[-1], tiny_batch()[name][table.key[-1]].iloc[0], row=1)))
    # Table-level rules (contract.RULES): row 0 of behaviors is a `view`, of impressions a click.
    table_rules = {
        "poi_null_only_for_search": ("behaviors", "poi_id", _set("behaviors", "poi_id", None)),
        "query_only_for_search": ("behaviors", "query", _set("behaviors", "query", "noodles")),
        "order_le_click": ("impressions", "order", _set("impressions", "order", 1, row=1)),
    }
    assert set(table_rules) == set(RULES), "a contract rule has no test case"
    cases += [(t, c, rule, m) for rule, (t, c, m) in table_rules.items()]
    return [pytest.param(*case[:4], id=".".join([case[0], case[1], case[2], *case[4:]])) for case in cases]


def _failures(result: ValidationResult) -> set[tuple[str, str, str]]:
    return {(f.table, f.column, f.rule) for f in result.failures}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[ValidationResult, Path]:
    batch = write_batch(tiny_batch(), tmp_path_factory.mktemp("valid"))
    report_dir = tmp_path_factory.mktemp("report")
    return validate_batch(batch, CFG, report_dir=report_dir), report_dir


def test_tiny_valid_batch_passes(valid):
    result, _ = valid
    assert result.success, [str(f) for f in result.failures]
    assert result.failures == [] and result.warnings == []
    for name in TABLES:
        stats = result.stats[name]
        assert stats.rows == len(tiny_batch()[name])
        assert stats.expectations_evaluated > 0
        assert stats.expectations_passed == stats.expectations_evaluated


def test_valid_batch_tables_keep_contract_dtypes(valid):
    for name, df in tiny_batch().items():
        pd.testing.assert_frame_equal(valid[0].tables[name], df)


def test_report_dir_gets_json_and_data_docs(valid):
    result, report_dir = valid
    report = json.loads((report_dir / "report.json").read_text())
    assert report["success"] is True and report["failures"] == []
    assert report["expectations_evaluated"] == len(report["expectations"]) > 0
    assert (report_dir / "data_docs" / "index.html").is_file()


@pytest.mark.parametrize("table,column,rule,mutate", _rule_cases())
def test_rule_violation_is_rejected(tmp_path, table, column, rule, mutate):
    tables = tiny_batch()
    mutate(tables)
    result = validate_batch(write_batch(tables, tmp_path), CFG)
    assert not result.success
    assert (table, column, rule) in _failures(result), [str(f) for f in result.failures]
    failure = next(f for f in result.failures if (f.table, f.column, f.rule) == (table, column, rule))
    assert failure.count >= 1 and len(failure.examples) <= CFG.max_examples
    if rule not in ("not_null", "poi_null_only_for_search"):
        assert failure.examples, failure  # the offending value is quoted


# --- file-level and type problems: the same Failure path, never a traceback -------------------


def _drop_column(tmp_path):
    tables = tiny_batch()
    tables["impressions"] = tables["impressions"].drop(columns=["click"])
    return write_batch(tables, tmp_path)


def _missing_file(tmp_path):
    batch = write_batch(tiny_batch(), tmp_path)
    (batch / "users.parquet").unlink()
    return batch


def _empty_file(tmp_path):
    batch = write_batch(tiny_batch(), tmp_path)
    (batch / "pois.parquet").write_bytes(b"")
    return batch


def _header_only_csv(tmp_path):
    tables = tiny_batch()
    tables["users"] = tables["users"].iloc[:0]
    return write_batch(tables, tmp_path, fmt="csv")


def _corrupt_parquet(tmp_path):
    batch = write_batch(tiny_batch(), tmp_path)
    data = (batch / "behaviors.parquet").read_bytes()
    (batch / "behaviors.parquet").write_bytes(data[: len(data) // 2] + b"garbage")
    return batch


def _text_in_price_parquet(tmp_path):
    tables = tiny_batch()
    tables["pois"]["price"] = tables["pois"]["price"].astype(str)  # schema drift: a text column
    tables["pois"].loc[0, "price"] = "cheap"
    return write_batch(tables, tmp_path)


def _text_in_position_csv(tmp_path):
    tables = tiny_batch()
    _set("impressions", "position", "top")(tables)
    return write_batch(tables, tmp_path, fmt="csv")


def _fractional_click(tmp_path):
    tables = tiny_batch()
    tables["impressions"]["click"] = tables["impressions"]["click"].astype(float)
    tables["impressions"].loc[2, "click"] = 0.5
    return write_batch(tables, tmp_path)


def _unparseable_timestamp_csv(tmp_path):
    batch = write_batch(tiny_batch(), tmp_path, fmt="csv")
    path = batch / "behaviors.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[3, "ts"] = "yesterday at noon"
    df.to_csv(path, index=False)
    return batch


def _schema_drift_id_as_int(tmp_path):
    tables = tiny_batch()
    tables["users"]["user_id"] = range(len(tables["users"]))
    return write_batch(tables, tmp_path)


FILE_CASES = [
    pytest.param(_drop_column, ("impressions", "click", "missing_column"), id="missing_column"),
    pytest.param(_missing_file, ("users", "*", "missing_file"), id="missing_file"),
    pytest.param(_empty_file, ("pois", "*", "empty_table"), id="empty_file"),
    pytest.param(_header_only_csv, ("users", "*", "empty_table"), id="empty_csv_header_only"),
    pytest.param(_corrupt_parquet, ("behaviors", "*", "file_unreadable"), id="corrupt_parquet"),
    pytest.param(_text_in_price_parquet, ("pois", "price", "type"), id="text_in_price"),
    pytest.param(_text_in_position_csv, ("impressions", "position", "type"), id="text_in_int_csv"),
    pytest.param(_fractional_click, ("impressions", "click", "type"), id="fraction_in_int"),
    pytest.param(_unparseable_timestamp_csv, ("behaviors", "ts", "type"), id="unparseable_timestamp_csv"),
    pytest.param(_schema_drift_id_as_int, ("users", "user_id", "type"), id="schema_drift_int_id"),
]


@pytest.mark.parametrize("make_batch,expected", FILE_CASES)
def test_file_and_type_problems_are_failures(tmp_path, make_batch, expected):
    result = validate_batch(make_batch(tmp_path), CFG)
    assert not result.success
    assert expected in _failures(result), [str(f) for f in result.failures]


def test_type_failure_quotes_the_bad_values(tmp_path):
    result = validate_batch(_unparseable_timestamp_csv(tmp_path), CFG)
    (failure,) = [f for f in result.failures if f.rule == "type"]
    assert failure.count == 1 and failure.examples == ["yesterday at noon"]
    assert "behaviors.ts: type — 1 rows, e.g. ['yesterday at noon']" in str(failure)


def test_extra_column_warns_and_is_dropped(tmp_path):
    tables = tiny_batch()
    tables["pois"]["owner_email"] = "x@example.com"
    result = validate_batch(write_batch(tables, tmp_path), CFG)
    assert result.success
    assert "owner_email" not in result.tables["pois"].columns
    assert any("owner_email" in w for w in result.warnings)


def test_csv_batch_is_typed_like_parquet(tmp_path):
    result = validate_batch(write_batch(tiny_batch(), tmp_path, fmt="csv"), CFG)
    assert result.success, [str(f) for f in result.failures]
    for name, df in tiny_batch().items():
        # CSV cannot tell an empty string from a null: description "" comes back as None.
        expected = df.replace({"": None}) if name == "pois" else df
        pd.testing.assert_frame_equal(result.tables[name], expected)
