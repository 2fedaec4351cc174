"""Ingest a raw batch: validate it against the contract, then curate it or quarantine it.

Accepted: the typed tables go to ``paths.curated_dir`` as Parquet (atomic per file; ``append``
mode merges on the table keys) and ``reports/validation.json`` gets the summary for
``dvc metrics show``. Rejected: the whole batch is copied to ``paths.quarantine_dir`` with its
report and Data Docs, curated data is not touched, and :class:`BatchRejected` says why.
"""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from components.config import Params
from components.data.contract import CONTRACT, TABLES
from components.data.validate import (  # noqa: F401 - BatchRejected is raised here and imported from here too
    TRUTH,
    BatchRejected,
    Failure,
    ValidationResult,
    validate_batch,
    write_json_atomic,
    write_report,
)

log = logging.getLogger(__name__)

METRICS_NAME = "validation.json"
# Rows that are "the same row" when appending: the contract keys; behaviours have none, so a
# behaviour is a duplicate only when every column matches.
TRUTH_KEY = ("request_id", "poi_id")


@dataclass
class IngestResult:
    """What an accepted batch added: rows per table in the batch and in curated data now."""

    batch_dir: Path
    rows: dict[str, int]
    curated_rows: dict[str, int]
    curated: dict[str, Path]
    metrics_path: Path
    mode: str
    expectations_evaluated: int = 0
    expectations_passed: int = 0
    warnings: list[str] = field(default_factory=list)


def table_key(name: str) -> list[str] | None:
    """Columns that identify a row when merging (None: the whole row)."""
    if name == TRUTH:
        return list(TRUTH_KEY)
    key = CONTRACT[name].key
    return list(key) if key else None


def curated_path(curated_dir: Path, name: str) -> Path:
    return curated_dir / TRUTH / "impressions.parquet" if name == TRUTH else curated_dir / f"{name}.parquet"


def ingest_batch(batch_dir: Path, params: Params) -> IngestResult:
    """Validate ``batch_dir``; curate it if it passes, else quarantine it and raise BatchRejected."""
    batch_dir = Path(batch_dir)
    cfg = params.ingest
    curated_dir = params.path("curated_dir")
    metrics_path = params.path("reports_dir") / METRICS_NAME
    result = validate_batch(batch_dir, cfg, curated_dir=curated_dir if cfg.mode == "append" else None)
    summary = result.summary()
    write_json_atomic(metrics_path, {"batch": batch_dir.name, **summary})
    if not result.success:
        where = quarantine(batch_dir, result, params.path("quarantine_dir"))
        raise BatchRejected(result.failures, where, batch_dir)

    curated_rows, paths = write_curated(result.tables, curated_dir, cfg.mode)
    rows = {name: len(df) for name, df in result.tables.items()}
    log.info("ingested %s: %s", batch_dir, rows)
    return IngestResult(batch_dir=batch_dir, rows=rows, curated_rows=curated_rows, curated=paths,
                        metrics_path=metrics_path, mode=cfg.mode,
                        expectations_evaluated=summary["expectations_evaluated"],
                        expectations_passed=summary["expectations_passed"], warnings=list(result.warnings))


def write_curated(tables: dict[str, pd.DataFrame], curated_dir: Path, mode: str) -> tuple[dict, dict]:
    """Write every table to a temp file, then rename them all into place (atomic per file).

    Staging all tables before the first rename keeps the window in which curated tables come
    from different batches as short as a few renames.
    """
    names = [n for n in (*TABLES, TRUTH) if n in tables]
    staged: list[tuple[Path, Path]] = []
    counts: dict[str, int] = {}
    try:
        for name in names:
            final = curated_path(curated_dir, name)
            final.parent.mkdir(parents=True, exist_ok=True)
            df = tables[name]
            if mode == "append" and final.is_file():
                df = merge(pd.read_parquet(final), df, table_key(name))
            tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.tmp")
            staged.append((tmp, final))  # before writing: a write that fails half-way is cleaned up too
            df.to_parquet(tmp, index=False)
            counts[name] = len(df)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    stale_truth = curated_path(curated_dir, TRUTH)
    if mode == "replace" and TRUTH not in tables and stale_truth.is_file():
        stale_truth.unlink()  # the oracle of an older batch would no longer match its impressions
    return counts, {name: curated_path(curated_dir, name) for name in names}


def merge(existing: pd.DataFrame, new: pd.DataFrame, key: list[str] | None) -> pd.DataFrame:
    """Existing rows plus new ones; on a repeated key the new batch's row wins."""
    if existing.empty:
        return new.reset_index(drop=True)
    both = pd.concat([existing[new.columns.intersection(existing.columns, sort=False)], new],
                     ignore_index=True)
    return both.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def quarantine_copy(src: Path, quarantine_dir: Path, write_reports, default_name: str = "batch") -> Path:
    """Copy folder ``src`` whole to ``quarantine_dir/<name>-<UTC time>/``; ``write_reports(folder)``
    adds the validation report beside it. The copy appears complete or not at all."""
    src, quarantine_dir = Path(src), Path(quarantine_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = quarantine_dir / f"{src.name or default_name}-{stamp}"
    staging = quarantine_dir / f".{dest.name}.tmp"
    try:
        if src.is_dir():
            shutil.copytree(src, staging)
        else:
            staging.mkdir(parents=True)
        write_reports(staging)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


def quarantine(batch_dir: Path, result: ValidationResult, quarantine_dir: Path) -> Path:
    """Copy the batch to ``quarantine_dir/<name>-<UTC time>/`` with report.json and Data Docs."""
    dest = quarantine_copy(batch_dir, quarantine_dir, lambda folder: write_report(result, folder))
    log.info("batch %s rejected (%d failures); quarantined to %s", batch_dir, len(result.failures), dest)
    return dest
