"""Validate a raw batch against the data contract with Great Expectations 1.x.

Two stages, one outcome. Reading (plain pandas) catches what GX cannot see on a DataFrame: a
missing, empty or corrupt file and values of the wrong type; it hands GX typed frames. GX then
runs one suite per table, generated from ``contract.py``, in a fresh ephemeral context. Every
problem either stage finds becomes a :class:`Failure`, so every bad batch is rejected the same way.
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import IngestConfig
from components.data.contract import CONTRACT, RULES, TABLES, TRUTH_COLUMNS, Column, Table

log = logging.getLogger(__name__)

TRUTH = "truth"  # name of the optional oracle table in failures, stats and curated output
REPORT_NAME = "report.json"
DOCS_DIR = "data_docs"
_VALUE_SET_SHOWN = 20  # reference value sets are cut to this many values in report.json


@dataclass
class Failure:
    """One failed rule: where (table, column), which rule, how many rows, a few offending values."""

    table: str
    column: str
    rule: str
    count: int
    examples: list = field(default_factory=list)
    detail: str = ""  # the rule in words, when its name is not enough

    def __str__(self) -> str:
        s = f"{self.table}.{self.column}: {self.rule} — {self.count} rows"
        if self.examples:
            s += f", e.g. {self.examples}"
        return f"{s} ({self.detail})" if self.detail else s


@dataclass
class TableStats:
    rows: int = 0
    expectations_evaluated: int = 0
    expectations_passed: int = 0


class BatchRejected(Exception):
    """Input data broke its contract (a raw batch here, a MIND folder in news/mind.py as the subclass
    ``MindRejected``): it was quarantined and nothing downstream was written; ``failures`` name
    file, column and rule. The one exception flows and the CLI recognise as "rejected, never retry"."""

    def __init__(self, failures: list[Failure], quarantine_path: Path, batch_dir: Path | None = None):
        self.failures = failures
        self.quarantine_path = quarantine_path
        self.batch_dir = batch_dir
        super().__init__(str(self))

    def __reduce__(self):  # picklable (Prefect ships task exceptions between processes)
        return type(self), (self.failures, self.quarantine_path, self.batch_dir)

    def __str__(self) -> str:
        name = f"batch {self.batch_dir}" if self.batch_dir else "batch"
        lines = [f"{name} rejected: {len(self.failures)} contract rule(s) failed"]
        files = {}
        if self.batch_dir is not None and Path(self.batch_dir).is_dir():
            files = {p.stem: p.name for p in sorted(Path(self.batch_dir).iterdir()) if p.is_file()}
        lines += [f"  [{files.get(f.table, f.table)}] {f}" for f in self.failures]
        lines.append(
            f"Quarantined to {self.quarantine_path} (the batch, {REPORT_NAME}, {DOCS_DIR}/index.html); "
            "curated data is unchanged. Fix the data and ingest it again."
        )
        return "\n".join(lines)


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_batch`; ``tables`` holds the typed frames that could be read."""

    batch_dir: Path
    success: bool
    failures: list[Failure]
    stats: dict[str, TableStats]
    tables: dict[str, pd.DataFrame]
    warnings: list[str]
    reference_time: datetime
    expectations: list[dict] = field(default_factory=list)  # per-expectation results, JSON-ready
    _gx: Any = field(default=None, repr=False)  # the GX run (context, suites, results) for Data Docs

    def summary(self) -> dict:
        """Flat figures for ``dvc metrics show``: success, rows and expectations per table."""
        return {
            "success": self.success,
            "failed_rules": len(self.failures),
            "expectations_evaluated": sum(s.expectations_evaluated for s in self.stats.values()),
            "expectations_passed": sum(s.expectations_passed for s in self.stats.values()),
            "tables": {name: asdict(s) for name, s in self.stats.items()},
        }

    def to_dict(self) -> dict:
        """The full report: every failure, every expectation's result, warnings."""
        return {
            "batch": str(self.batch_dir),
            "reference_time": self.reference_time.isoformat(),
            **self.summary(),
            "failures": [asdict(f) for f in self.failures],
            "warnings": list(self.warnings),
            "expectations": self.expectations,
        }


# --------------------------------------------------------------------------------------------
# Reading: file -> typed DataFrame, or failures
# --------------------------------------------------------------------------------------------

_BOOL_WORDS = {"true": True, "false": False, "t": True, "f": False, "1": True, "0": False,
               "yes": True, "no": False}


def _kind(s: pd.Series) -> str:
    """The contract type family a stored column has: string, float, int, bool, timestamp."""
    dt = s.dtype
    if pd.api.types.is_bool_dtype(dt):
        return "bool"
    if pd.api.types.is_datetime64_any_dtype(dt):
        return "timestamp"
    if pd.api.types.is_integer_dtype(dt):
        return "int"
    if pd.api.types.is_float_dtype(dt):
        return "float"
    inferred = pd.api.types.infer_dtype(s, skipna=True)  # C speed, no Python loop over rows
    return {"string": "string", "empty": "empty", "boolean": "bool"}.get(inferred, inferred)


def _coerce(raw: pd.Series, dtype: str, from_text: bool) -> tuple[pd.Series, pd.Series | None, str]:
    """Convert ``raw`` to the contract ``dtype``.

    Returns (typed, bad, detail): ``bad`` marks the non-null values that are not of the type
    (None when all are). CSV text is parsed; a Parquet column stored as another type is schema
    drift, rejected even when its values would parse.
    """
    notna = raw.notna()
    kind = _kind(raw)
    # Ints with nulls are stored as floats by pandas; _coerce checks the values are whole.
    compatible = kind == "empty" or kind == dtype or {dtype, kind} == {"float", "int"}
    drift = not from_text and not compatible
    detail = f"expected {dtype}, file stores {kind}" if drift else f"expected {dtype}"

    if dtype == "string":
        if kind in ("string", "empty") or from_text:
            bad = None
        elif drift and kind in ("float", "int", "bool", "timestamp"):
            bad = notna
        else:  # object column mixing strings with other things
            bad = notna & ~raw.map(lambda v: isinstance(v, str)).astype(bool)
        typed = raw.astype(object).where(notna, None)
    elif dtype in ("float", "int"):
        if kind in ("float", "int"):
            num = raw.astype("float64") if kind == "float" or raw.hasnans else raw.astype("int64")
            bad = None
        elif kind in ("bool", "timestamp"):
            num, bad = pd.Series(np.nan, index=raw.index), notna
        else:
            num = pd.to_numeric(raw.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
            bad = notna & num.isna()
        if dtype == "int" and num.dtype.kind == "f":
            frac = notna & num.notna() & (num % 1 != 0)
            bad = frac if bad is None else bad | frac
        typed = num
        if dtype == "int" and num.dtype.kind == "f" and not num.isna().any():
            typed = num.astype("int64")
        elif dtype == "float":
            typed = num.astype("float64")
    elif dtype == "bool":
        if kind == "bool" and raw.dtype != object and not raw.hasnans:
            typed, bad = raw.astype(bool), None
        else:
            def word(v):
                if isinstance(v, (bool, np.bool_)):
                    return bool(v)
                return _BOOL_WORDS.get(v.strip().lower()) if isinstance(v, str) else None

            typed = raw.map(word)
            bad = notna & typed.isna()
            typed = typed.astype(bool) if typed.notna().all() else typed.astype(object)
    elif dtype == "timestamp":
        if kind == "timestamp":
            typed = raw.dt.tz_localize("UTC") if raw.dt.tz is None else raw.dt.tz_convert("UTC")
            bad = None
        elif kind in ("float", "int", "bool"):
            typed, bad = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]"), notna
        else:
            text = raw.where(raw.map(lambda v: isinstance(v, str)), None)
            typed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
            bad = notna & typed.isna()
    else:  # pragma: no cover - contract.py only uses the five types above
        raise ValueError(f"unknown contract dtype {dtype!r}")

    if drift and (bad is None or not bad.any()):
        bad = notna  # every value is stored with the wrong type
    if bad is not None and not bad.any():
        bad = None
    return typed, bad, detail


def _read_file(path: Path) -> pd.DataFrame:
    if path.suffix == ".csv":
        # Everything as text: the contract's types are applied by _coerce, value by value.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    return pd.read_parquet(path)


def _find_table_file(batch_dir: Path, name: str) -> list[Path]:
    return [p for p in (batch_dir / f"{name}.parquet", batch_dir / f"{name}.csv") if p.is_file() or p.is_symlink()]


def _symlink_failure(table: str, path: Path) -> Failure:
    """A batch holds real files: a link could point anywhere (or change after validation)."""
    return Failure(table, "*", "symlink", 0, [f"{path.name} -> {os.readlink(path)}"],
                   f"{path} is a symbolic link; copy the file into the batch folder instead")


def read_table(path: Path, table: Table, max_examples: int) -> tuple[pd.DataFrame | None, list[Failure], list[str]]:
    """Read one table file and give it the contract's types.

    Returns (frame or None when unreadable, failures, warnings). Missing columns are left for
    the GX suite to report; columns with type failures keep their coerced (NaN) values.
    """
    name = table.name
    if path.stat().st_size == 0:
        return None, [Failure(name, "*", "empty_table", 0, [], f"{path.name} is an empty file")], []
    try:
        raw = _read_file(path)
    except pd.errors.EmptyDataError:
        return None, [Failure(name, "*", "empty_table", 0, [], f"{path.name} has no header and no rows")], []
    except Exception as e:  # noqa: BLE001 - any reader error means the same thing to the user
        msg = f"{path.name} cannot be read as {path.suffix[1:]}: {type(e).__name__}: {e}"
        return None, [Failure(name, "*", "file_unreadable", 0, [], msg[:500])], []

    failures: list[Failure] = []
    warnings: list[str] = []
    raw.columns = [str(c) for c in raw.columns]
    if raw.columns.duplicated().any():
        dup = sorted(set(raw.columns[raw.columns.duplicated()]))
        return None, [Failure(name, ",".join(dup), "duplicate_column", 0, [], f"{path.name} repeats column(s) {dup}")], []
    extra = [c for c in raw.columns if c not in table.column_names]
    if extra:
        warnings.append(f"{name}: column(s) {extra} are not in the contract; ignored and dropped")
    if len(raw) == 0:
        failures.append(Failure(name, "*", "empty_table", 0, [], f"{path.name} has a header but no rows"))

    typed = {}
    for col in table.columns:
        if col.name not in raw.columns:
            continue
        values, bad, detail = _coerce(raw[col.name], col.dtype, from_text=path.suffix == ".csv")
        if bad is not None:
            examples = _distinct(raw[col.name][bad].head(max_examples * 4).tolist(), max_examples)
            failures.append(Failure(name, col.name, "type", int(bad.sum()), examples, detail))
        typed[col.name] = values
    return pd.DataFrame(typed, index=raw.index), failures, warnings


def _read_batch(batch_dir: Path, cfg: IngestConfig):
    tables: dict[str, pd.DataFrame] = {}
    failures: list[Failure] = []
    warnings: list[str] = []
    bad_columns: dict[str, set[str]] = {}
    if not batch_dir.is_dir():
        warnings.append(f"{batch_dir} is not a folder")
    for name in TABLES:
        files = _find_table_file(batch_dir, name) if batch_dir.is_dir() else []
        if not files:
            failures.append(Failure(name, "*", "missing_file", 0, [],
                                    f"expected {name}.parquet or {name}.csv in {batch_dir}"))
            continue
        if len(files) > 1:
            failures.append(Failure(name, "*", "ambiguous_file", 0, [f.name for f in files],
                                    "keep exactly one of the Parquet and CSV files"))
            continue
        if files[0].is_symlink():
            failures.append(_symlink_failure(name, files[0]))
            continue
        df, fails, warns = read_table(files[0], CONTRACT[name], cfg.max_examples)
        failures += fails
        warnings += warns
        if df is not None:
            tables[name] = df
            # An empty table is rejected already; checking its columns (or others against its
            # keys) would only bury that one failure under consequences.
            bad_columns[name] = set(df.columns) if df.empty else {f.column for f in fails if f.rule == "type"}

    truth_path = batch_dir / TRUTH / "impressions.parquet"
    for link in (batch_dir / TRUTH, truth_path):
        if link.is_symlink():
            failures.append(_symlink_failure(TRUTH, link))
            return tables, failures, warnings, bad_columns
    if (batch_dir / TRUTH).is_dir():
        truth, fails = _read_truth(truth_path, cfg.max_examples)
        failures += fails
        if truth is not None:
            tables[TRUTH] = truth
    return tables, failures, warnings, bad_columns


def _read_truth(path: Path, max_examples: int) -> tuple[pd.DataFrame | None, list[Failure]]:
    """The optional oracle file: only its shape is checked (it never feeds training)."""
    spec = Table(TRUTH, (Column("request_id", "string"), Column("poi_id", "string"),
                         Column("p_click", "float"), Column("p_order", "float")), key=("request_id", "poi_id"))
    if not path.is_file():
        return None, [Failure(TRUTH, "*", "missing_file", 0, [], f"truth/ holds no impressions.parquet ({path})")]
    df, failures, _ = read_table(path, spec, max_examples)
    if df is None:
        return None, failures
    missing = [c for c in TRUTH_COLUMNS if c not in df.columns]
    failures += [Failure(TRUTH, c, "missing_column", len(df), [], "required by the contract") for c in missing]
    return df, failures


# --------------------------------------------------------------------------------------------
# GX suites, generated from contract.py
# --------------------------------------------------------------------------------------------


# Key sets that ``references`` rules check against, bound for the duration of one run. A plain
# in-set expectation would carry the whole key set in its configuration, which GX copies and
# serialises per metric: 20k user ids made validation 3x slower. A ContextVar keeps concurrent
# validations (threads of one flow) apart.
_REFERENCE_KEYS: ContextVar[dict[str, pd.Index]] = ContextVar("scenerec_reference_keys")
_GX_CUSTOM: dict[str, type] = {}


def _reference_expectation() -> type:
    """The custom GX expectation ``expect_column_values_to_exist_in_reference`` (defined once)."""
    if "expectation" in _GX_CUSTOM:
        return _GX_CUSTOM["expectation"]
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

    class ColumnValuesInReference(ColumnMapMetricProvider):
        condition_metric_name = "column_values.in_reference"
        condition_value_keys = ("reference",)

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, reference, **kwargs):
            keys = _REFERENCE_KEYS.get({}).get(reference)
            if keys is None:
                raise LookupError(f"no key set bound for reference {reference!r}")
            return column.isin(keys)

    class ExpectColumnValuesToExistInReference(ColumnMapExpectation):
        """Expect every non-null value to exist in another table's key column ("table.column")."""

        reference: str
        map_metric = "column_values.in_reference"
        success_keys = ("reference", "mostly")
        args_keys = ("column", "reference")

    _GX_CUSTOM["expectation"] = ExpectColumnValuesToExistInReference
    return ExpectColumnValuesToExistInReference


def build_suites(usable: dict[str, set[str]]) -> dict:
    """One ExpectationSuite per contract table, covering every rule of contract.py.

    ``usable`` maps a table to the columns that are present and typed; expectations on other
    columns are left out (those columns already failed). The "now" of not-in-the-future is a
    suite parameter and the reference key sets are bound per run, so a suite is data-free.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column as Row

    ExpectColumnValuesToExistInReference = _reference_expectation()

    def table_checks(name: str, cols: set[str], add) -> None:
        """Table-level rules named in contract.RULES, and how each is expressed in GX."""
        for check in CONTRACT[name].checks:
            words = RULES[check]  # also the description Data Docs show for the expectation
            if check == "poi_null_only_for_search":
                if {"poi_id", "behavior"} <= cols:
                    add("poi_id", check, gxe.ExpectColumnValuesToNotBeNull(
                        column="poi_id", row_condition=Row("behavior") != "search", description=words), words)
            elif check == "query_only_for_search":
                if {"query", "behavior"} <= cols:
                    add("query", check, gxe.ExpectColumnValuesToBeNull(
                        column="query", row_condition=Row("behavior") != "search", description=words), words)
            elif check == "order_le_click":
                if {"order", "click"} <= cols:
                    add("order", check, gxe.ExpectColumnPairValuesAToBeGreaterThanB(
                        column_A="click", column_B="order", or_equal=True, description=words), words)
            else:
                raise NotImplementedError(f"contract check {check!r} has no GX expectation; add it to build_suites")

    suites = {}
    for name in TABLES:
        table = CONTRACT[name]
        cols = usable.get(name, set(table.column_names))
        expectations = []

        def add(column: str, rule: str, exp, detail: str = "") -> None:
            # meta carries the contract's names for the rule back into each result.
            exp.meta = {"rule": rule, "column": column, "detail": detail}
            expectations.append(exp)

        add("*", "missing_column", gxe.ExpectTableColumnsToMatchSet(
            column_set=table.column_names, exact_match=False), "required by the contract")
        for c in table.columns:
            if c.name not in cols:
                continue
            if not c.nullable:
                add(c.name, "not_null", gxe.ExpectColumnValuesToNotBeNull(column=c.name))
            if c.unique:
                add(c.name, "unique", gxe.ExpectColumnValuesToBeUnique(column=c.name), "repeated values")
            if c.value_set is not None:
                add(c.name, "value_set", gxe.ExpectColumnValuesToBeInSet(column=c.name, value_set=list(c.value_set)),
                    f"allowed: {list(c.value_set)}")
            if c.min_value is not None or c.max_value is not None:
                lo = "" if c.min_value is None else f"{c.min_value} {'<' if c.strict_min else '<='} "
                hi = "" if c.max_value is None else f" <= {c.max_value}"
                add(c.name, "range", gxe.ExpectColumnValuesToBeBetween(
                    column=c.name, min_value=c.min_value, max_value=c.max_value, strict_min=c.strict_min),
                    f"must be {lo}{c.name}{hi}")
            if c.regex:
                add(c.name, "regex", gxe.ExpectColumnValuesToMatchRegex(column=c.name, regex=c.regex),
                    f"must match {c.regex}")
            if c.not_future:
                add(c.name, "not_future", gxe.ExpectColumnValuesToBeBetween(
                    column=c.name, max_value={"$PARAMETER": "reference_time"}),
                    "later than the reference time (ingest.reference_time, default now)")
            if c.references:
                ref_table, ref_col = c.references.split(".")
                if ref_col in usable.get(ref_table, set()):
                    words = f"every {c.name} must exist in {c.references}"
                    add(c.name, "references", ExpectColumnValuesToExistInReference(
                        column=c.name, reference=c.references, description=words), words)
        if len(table.key) > 1 and set(table.key) <= cols:
            add("+".join(table.key), "compound_unique", gxe.ExpectCompoundColumnsToBeUnique(
                column_list=list(table.key)), f"({', '.join(table.key)}) must be unique together")
        table_checks(name, cols, add)
        # Passing the list at once skips add_expectation's quadratic duplicate check.
        suites[name] = gx.ExpectationSuite(name=f"scenerec.{name}", expectations=expectations)
    return suites


def _new_context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


@dataclass
class _GXRun:
    """What Data Docs need later: the context, the suites and their results."""

    context: Any
    suites: dict
    results: dict
    run_time: datetime
    errors: dict = field(default_factory=dict)  # table -> message, when GX raised instead of reporting
    docs_ready: bool = False


def _run_suites(tables: dict[str, pd.DataFrame], usable: dict[str, set[str]], params: dict,
                reference_keys: dict[str, pd.Index], cfg: IngestConfig) -> _GXRun:
    """Run each readable table's suite in a fresh ephemeral context."""
    token = _REFERENCE_KEYS.set(reference_keys)
    try:
        context = _new_context()
        source = context.data_sources.add_pandas("batch")
        suites = build_suites(usable)
        # BASIC has the unexpected count and the first unexpected values, all a Failure needs;
        # SUMMARY adds index lists and value counts at 30% more time. Ask for more values than
        # we quote: the first unexpected rows often repeat one value.
        result_format = {"result_format": "BASIC", "partial_unexpected_count": cfg.max_examples * 4}
        run_time = datetime.now(timezone.utc)
        run = _GXRun(context, suites, {}, run_time)
        for name, df in tables.items():
            # Batch.validate, not ValidationDefinition.run: the latter serialises every result
            # into the context's store (a third of the time on small batches). Data Docs store
            # them later, only for the runs that need docs.
            try:
                batch = (source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
                         .get_batch(batch_parameters={"dataframe": df}))
                run.results[name] = batch.validate(suites[name], result_format=result_format,
                                                   expectation_parameters=params)
            except Exception as e:  # noqa: BLE001 - GX errors per expectation are in the results;
                # this is GX failing as a whole, which must still reject the batch cleanly.
                log.exception("GX could not validate %s", name)
                run.errors[name] = f"GX could not validate the table: {type(e).__name__}: {e}"[:500]
        return run
    finally:
        _REFERENCE_KEYS.reset(token)


# --------------------------------------------------------------------------------------------
# Results -> failures and report
# --------------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, bool, int)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, (pd.Timestamp, datetime, date)):
        return None if pd.isna(v) else v.isoformat()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, np.ndarray)):
        return [_jsonable(x) for x in v]
    if v is pd.NA or v is pd.NaT:
        return None
    return str(v)


def _distinct(values: list, n: int) -> list:
    out, seen = [], set()
    for v in map(_jsonable, values):
        key = json.dumps(v, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(v)
        if len(out) == n:
            break
    return out


def _kwargs_for_report(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        if k == "batch_id":
            continue
        if isinstance(v, (list, tuple)) and len(v) > _VALUE_SET_SHOWN:
            v = [*list(v)[:_VALUE_SET_SHOWN], f"... ({len(v)} values)"]
        out[k] = _jsonable(v)
    return out


def _collect(name: str, suite_result, rows: int, max_examples: int) -> tuple[list[Failure], list[dict], TableStats]:
    failures, records = [], []
    stats = TableStats(rows=rows)
    for r in suite_result.results:
        conf = r.expectation_config
        meta = conf.meta or {}
        rule, column = meta.get("rule", conf.type), meta.get("column", conf.kwargs.get("column", "*"))
        res = r.result or {}
        error = (r.exception_info or {}).get("exception_message") if (r.exception_info or {}).get(
            "raised_exception") else None
        unexpected = res.get("partial_unexpected_list") or []
        if "column_A" in conf.kwargs:  # pair rules: name the two values of each offending row
            pair = (conf.kwargs["column_A"], conf.kwargs["column_B"])
            unexpected = [dict(zip(pair, v)) if isinstance(v, (list, tuple)) else v for v in unexpected]
        examples = _distinct(unexpected, max_examples)
        stats.expectations_evaluated += 1
        stats.expectations_passed += bool(r.success)
        records.append({
            "table": name, "column": column, "rule": rule, "expectation": conf.type,
            "kwargs": _kwargs_for_report(conf.kwargs), "success": bool(r.success),
            "element_count": res.get("element_count"), "unexpected_count": res.get("unexpected_count"),
            "unexpected_percent": _jsonable(res.get("unexpected_percent")),
            "examples": examples, "exception": error,
        })
        if r.success:
            continue
        if rule == "missing_column" and not error:
            missing = ((res.get("details") or {}).get("mismatched") or {}).get("missing") or []
            failures += [Failure(name, c, "missing_column", rows, [], "required by the contract")
                         for c in missing]
        elif error:
            failures.append(Failure(name, column, rule, rows, [], f"expectation could not run: {error}"[:300]))
        else:
            failures.append(Failure(name, column, rule, int(res.get("unexpected_count") or 0), examples,
                                    meta.get("detail", "")))
    return failures, records, stats


def _reference_keys(tables: dict[str, pd.DataFrame], usable: dict[str, set[str]],
                    curated_dir: Path | None) -> dict[str, pd.Index]:
    """Key sets that referencing columns must fall in; in append mode, curated keys count too."""
    refs = {c.references for t in CONTRACT.values() for c in t.columns if c.references}
    out = {}
    for ref in sorted(refs):
        table, col = ref.split(".")
        if col not in usable.get(table, set()):
            continue
        keys = tables[table][col].dropna()
        existing = curated_dir / f"{table}.parquet" if curated_dir else None
        if existing is not None and existing.is_file():
            try:
                keys = pd.concat([keys, pd.read_parquet(existing, columns=[col])[col].dropna()])
            except Exception as e:  # noqa: BLE001 - an unreadable curated table only loses its keys
                log.warning("append mode: cannot read keys from %s (%s); checking against the batch only", existing, e)
        out[ref] = pd.Index(keys.unique())
    return out


def validate_batch(batch_dir: Path, cfg: IngestConfig, report_dir: Path | None = None,
                   curated_dir: Path | None = None) -> ValidationResult:
    """Check a batch folder against the contract; never raises for bad data.

    ``report_dir``: also write report.json and GX Data Docs there. ``curated_dir``: keys
    already curated also satisfy references (append mode).
    """
    batch_dir = Path(batch_dir)
    now = cfg.reference_time or datetime.now(timezone.utc)
    now = now if now.tzinfo else now.replace(tzinfo=timezone.utc)  # contract timestamps are UTC

    tables, failures, warnings, bad_columns = _read_batch(batch_dir, cfg)
    usable = {name: set(df.columns) - bad_columns.get(name, set()) for name, df in tables.items()}
    keys = _reference_keys(tables, usable, curated_dir)
    contract_tables = {n: df for n, df in tables.items() if n in CONTRACT}
    run = _run_suites(contract_tables, usable, {"reference_time": now}, keys, cfg)

    stats = {name: TableStats(rows=len(tables[name]) if name in tables else 0) for name in TABLES}
    records: list[dict] = []
    for name, suite_result in run.results.items():
        fails, recs, stats[name] = _collect(name, suite_result, len(tables[name]), cfg.max_examples)
        failures += fails
        records += recs
    for name, error in run.errors.items():  # GX itself broke on a table: still a Failure, not a traceback
        failures.append(Failure(name, "*", "validation_error", len(tables[name]), [], error))
    if TRUTH in tables:
        stats[TRUTH] = TableStats(rows=len(tables[TRUTH]))

    result = ValidationResult(batch_dir=batch_dir, success=not failures, failures=failures, stats=stats,
                              tables=tables, warnings=warnings, reference_time=now, expectations=records,
                              _gx=run)
    for w in warnings:
        log.warning(w)
    if report_dir is not None:
        write_report(result, Path(report_dir))
    return result


def write_report(result: ValidationResult, report_dir: Path, docs: bool = True) -> Path:
    """Write ``report.json`` (every failure and expectation result) and GX Data Docs under report_dir.

    Returns the path of report.json; the docs site is ``report_dir/data_docs/index.html``.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / REPORT_NAME
    write_json_atomic(path, result.to_dict())
    if docs and result._gx is not None:
        build_data_docs(result, report_dir / DOCS_DIR)
    return path


def build_data_docs(result: ValidationResult, site_dir: Path) -> Path:
    """Render the run's suites and validation results as a static GX Data Docs site."""
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    run = result._gx
    context = run.context
    if not run.docs_ready:  # put the run into the context's stores, which the site renders
        run_id = RunIdentifier(run_name=result.batch_dir.name, run_time=run.run_time)
        for name, suite in run.suites.items():
            context.suites.add(suite)
            if name in run.results:
                suite_result = run.results[name]
                suite_result.meta.update(run_id=run_id, validation_time=run.run_time)
                suite_id = ExpectationSuiteIdentifier(name=suite.name)
                context.validation_results_store.store_validation_results(
                    suite_validation_result=suite_result,
                    suite_validation_result_identifier=ValidationResultIdentifier(
                        expectation_suite_identifier=suite_id, run_id=run_id,
                        batch_identifier=suite_result.batch_id),
                    expectation_suite_identifier=suite_id,
                )
        run.docs_ready = True
    site = f"site_{len(context.variables.data_docs_sites or {})}"
    context.add_data_docs_site(site, {
        "class_name": "SiteBuilder",
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site_dir)},
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    })
    context.build_data_docs(site_names=[site])
    return site_dir / "index.html"


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over, so readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
