"""Prefect flow `ingest`: validate a batch against the contract and curate it.

A rejected batch fails the flow run; the failed rules are attached as a markdown artifact,
and the batch waits in the quarantine folder with its report.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import GenerateConfig, IngestConfig, Params
from components.data.validate import BatchRejected
from components.steps import generate_step, ingest_step
from flows.settings import flow_params


def _not_rejected(task, task_run, state) -> bool:
    """Retry transient I/O errors, never a batch that failed validation."""
    try:
        state.result()
    except BatchRejected:
        return False
    except Exception:  # noqa: BLE001 - anything else may be transient
        return True
    return True


@task(name="generate-batch", tags=["io"], retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def generate_task(params: Params, run_id: str, out_dir: str | None = None) -> dict:
    metrics = generate_step(params, Path(out_dir) if out_dir else None)
    tracking.log_metrics(params, run_id, {f"generate.{k}": v for k, v in metrics.items()})
    return metrics


@task(name="validate-and-curate", tags=["io"], retries=2, retry_delay_seconds=2,
      retry_condition_fn=_not_rejected, cache_policy=NO_CACHE)
def ingest_task(params: Params, run_id: str, batch_dir: str) -> dict:
    try:
        metrics = ingest_step(params, Path(batch_dir))
    except BatchRejected as e:
        rows = "\n".join(
            f"| {f.table} | {f.column} | {f.rule} | {f.count} | {', '.join(map(str, f.examples))[:120]} |"
            for f in e.failures
        )
        create_markdown_artifact(
            key="validation-summary",
            markdown=f"# Batch rejected: `{batch_dir}`\n\nQuarantined in `{e.quarantine_path}`.\n\n"
            f"| table | column | rule | rows | examples |\n|---|---|---|---|---|\n{rows}\n",
            description="Contract validation failed",
        )
        tracking.log_metrics(params, run_id, {"ingest.success": 0, "ingest.failed_rules": len(e.failures)})
        raise
    tracking.log_metrics(params, run_id, {f"ingest.{k}": v for k, v in metrics.items()})
    table = [{"metric": k, "value": v} for k, v in metrics.items()]
    create_table_artifact(key="validation-summary", table=table,
                          description=f"Batch `{batch_dir}` passed every contract rule")
    return metrics


@flow(name="ingest", log_prints=True)
def ingest(batch_dir: str | None = None, ingest: IngestConfig | None = None,
           params_file: str | None = None, parent_run_id: str | None = None) -> dict:
    """Validate a batch folder (default: paths.raw_batch) and write it as curated Parquet."""
    params, _ = flow_params(params_file, ingest=ingest)
    batch = batch_dir or str(params.path("raw_batch"))
    with tracking.tracked_run(params, "ingest", parent_run_id, tags={"scenerec.flow": "ingest"}) as run_id:
        tracking.log_params(params, run_id, {"ingest": params.ingest.model_dump(mode="json"), "batch_dir": batch})
        metrics = ingest_task(params, run_id, batch)
    get_run_logger().info("batch %s accepted: %s", batch, metrics)
    return metrics


@flow(name="generate", log_prints=True)
def generate(out_dir: str | None = None, generate: GenerateConfig | None = None, seed: int | None = None,
             params_file: str | None = None, parent_run_id: str | None = None) -> dict:
    """Write a synthetic batch in the raw data contract, with the oracle truth file."""
    params, _ = flow_params(params_file, generate=generate, seed=seed)
    with tracking.tracked_run(params, "generate", parent_run_id, tags={"scenerec.flow": "generate"}) as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "generate": params.generate.model_dump(mode="json")})
        return generate_task(params, run_id, out_dir)
