"""Ingest a raw batch: validate it against the contract, then curate it or quarantine it.

Accepted: the typed tables go to ``paths.curated_dir`` as Parquet, committed as one unit (see
:func:`write_curated`; ``append`` mode merges on the table keys) and ``reports/validation.json`` gets the summary for
``dvc metrics show``. Rejected: the whole batch is copied to ``paths.quarantine_dir`` with its
report and Data Docs, curated data is not touched, and :class:`BatchRejected` says why.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from components.atomic import crash_point, sweep_temp_files, write_parquet_atomic, write_text_atomic
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
        where = quarantine(batch_dir, result, params.path("quarantine_dir"), cfg.quarantine_keep)
        raise BatchRejected(result.failures, where, batch_dir)

    curated_rows, paths = write_curated(result.tables, curated_dir, cfg.mode, str(batch_dir))
    rows = {name: len(df) for name, df in result.tables.items()}
    log.info("ingested %s: %s", batch_dir, rows)
    return IngestResult(batch_dir=batch_dir, rows=rows, curated_rows=curated_rows, curated=paths,
                        metrics_path=metrics_path, mode=cfg.mode,
                        expectations_evaluated=summary["expectations_evaluated"],
                        expectations_passed=summary["expectations_passed"], warnings=list(result.warnings))


COMMIT_MARKER = "COMMIT.json"


def staging_dir(curated_dir: Path) -> Path:
    """Where an ingest stages its tables: beside ``curated_dir`` (same file system, so renames are
    atomic) and outside it (a DVC output never holds a half-written file)."""
    curated_dir = Path(curated_dir)
    return curated_dir.parent / f".{curated_dir.name}.ingest"


def recover_curated(curated_dir: Path) -> str | None:
    """Finish or undo an ingest that was killed while committing; returns what was done.

    A staging folder with its commit marker was complete: its renames are replayed (roll
    forward). Without the marker the batch never committed: the staging folder is removed and
    curated data stays as it was. Either way curated tables all come from one batch.
    """
    curated_dir = Path(curated_dir)
    stage = staging_dir(curated_dir)
    if not stage.exists():
        return None
    marker = stage / COMMIT_MARKER
    if not marker.is_file():
        shutil.rmtree(stage, ignore_errors=True)
        return f"discarded an uncommitted ingest in {stage}"
    plan = json.loads(marker.read_text())
    _apply_plan(stage, curated_dir, plan)
    return f"completed the ingest of {plan.get('batch', '?')} committed in {stage}"


def _apply_plan(stage: Path, curated_dir: Path, plan: dict) -> None:
    """Move the staged files over the curated ones and delete the listed ones (idempotent)."""
    for rel in plan["write"]:
        src, dst = stage / rel, curated_dir / rel
        if src.exists():  # already moved by an earlier, interrupted replay otherwise
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            crash_point("ingest.between_renames")
    for rel in plan["delete"]:
        (curated_dir / rel).unlink(missing_ok=True)
    shutil.rmtree(stage, ignore_errors=True)


def write_curated(tables: dict[str, pd.DataFrame], curated_dir: Path, mode: str,
                  batch: str = "") -> tuple[dict, dict]:
    """Commit the batch's tables to ``curated_dir`` as one unit: all of them or none.

    Every table is written to a staging folder beside curated_dir; one atomic write of the commit
    marker is the commit point; the renames into curated_dir follow. A kill before the marker
    leaves curated data untouched, a kill after it is completed by :func:`recover_curated`
    (which every ingest and features run calls first), so curated tables never mix batches.
    """
    curated_dir = Path(curated_dir)
    recover_curated(curated_dir)
    sweep_temp_files(curated_dir)  # orphans of writers from before the staging folder existed
    names = [n for n in (*TABLES, TRUTH) if n in tables]
    stage = staging_dir(curated_dir)
    stage.mkdir(parents=True)
    counts: dict[str, int] = {}
    write: list[str] = []
    try:
        for name in names:
            final = curated_path(curated_dir, name)
            rel = final.relative_to(curated_dir).as_posix()
            df = tables[name]
            if mode == "append" and final.is_file():
                df = merge(pd.read_parquet(final), df, table_key(name))
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            write_parquet_atomic(df, stage / rel)
            counts[name] = len(df)
            write.append(rel)
            crash_point("ingest.staging")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    delete = []
    stale_truth = curated_path(curated_dir, TRUTH)
    if mode == "replace" and TRUTH not in tables and stale_truth.is_file():
        delete.append(stale_truth.relative_to(curated_dir).as_posix())  # an older batch's oracle
    plan = {"batch": batch, "mode": mode, "write": write, "delete": delete}
    write_text_atomic(stage / COMMIT_MARKER, json.dumps(plan, indent=1))  # the commit point
    crash_point("ingest.committed")
    curated_dir.mkdir(parents=True, exist_ok=True)
    _apply_plan(stage, curated_dir, plan)
    return counts, {name: curated_path(curated_dir, name) for name in names}


def merge(existing: pd.DataFrame, new: pd.DataFrame, key: list[str] | None) -> pd.DataFrame:
    """Existing rows plus new ones; on a repeated key the new batch's row wins."""
    if existing.empty:
        return new.reset_index(drop=True)
    both = pd.concat([existing[new.columns.intersection(existing.columns, sort=False)], new],
                     ignore_index=True)
    return both.drop_duplicates(subset=key, keep="last").reset_index(drop=True)


def quarantine_copy(src: Path, quarantine_dir: Path, write_reports, default_name: str = "batch",
                    keep: int | None = None) -> Path:
    """Copy folder ``src`` whole to ``quarantine_dir/<name>-<UTC time>/``; ``write_reports(folder)``
    adds the validation report beside it. The copy appears complete or not at all; symbolic links
    are copied as links (never followed out of the batch); only the newest ``keep`` copies stay."""
    src, quarantine_dir = Path(src), Path(quarantine_dir)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    dest = quarantine_dir / f"{src.name or default_name}-{stamp}"
    staging = quarantine_dir / f".{dest.name}.tmp"
    try:
        if src.is_dir():
            shutil.copytree(src, staging, symlinks=True)
        else:
            staging.mkdir(parents=True)
        write_reports(staging)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if keep is not None:
        prune_quarantine(quarantine_dir, keep)
    return dest


def prune_quarantine(quarantine_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` quarantined copies (``ingest.quarantine_keep``)."""
    copies = [p for p in Path(quarantine_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    stamp = lambda p: p.name.rsplit("-", 1)[-1]  # noqa: E731 - the UTC time the copy was made
    old = sorted(copies, key=stamp)[:-keep] if len(copies) > keep else []
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old


def quarantine(batch_dir: Path, result: ValidationResult, quarantine_dir: Path, keep: int | None = None) -> Path:
    """Copy the batch to ``quarantine_dir/<name>-<UTC time>/`` with report.json and Data Docs."""
    dest = quarantine_copy(batch_dir, quarantine_dir, lambda folder: write_report(result, folder), keep=keep)
    log.info("batch %s rejected (%d failures); quarantined to %s", batch_dir, len(result.failures), dest)
    return dest
