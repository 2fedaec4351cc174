"""Prefect flow `ingest`: validate a batch against the contract and curate it.

A rejected batch fails the flow run; the failed rules are attached as a markdown artifact,
and the batch waits in the quarantine folder with its report.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from components import tracking
from components.config import DEFAULT_PARAMS, SEED, GenerateConfig, IngestConfig, Params
from components.data.validate import BatchRejected
from components.steps import generate_step, ingest_step
from flows.settings import flow_params, mlflow_links, mlflow_run
from flows.tasks import step_task


@step_task("generate", retries="io")
def generate_task(params: Params, run_id: str, out_dir: str | None = None) -> dict:
    metrics = generate_step(params, Path(out_dir) if out_dir else None)
    tracking.log_metrics(params, run_id, {f"generate.{k}": v for k, v in metrics.items()})
    where = Path(out_dir) if out_dir else params.path("raw_batch")
    files = sorted(p.name for p in where.iterdir() if p.is_file()) if where.is_dir() else []
    create_table_artifact(key="generated-batch", table=[{"metric": k, "value": v} for k, v in metrics.items()],
                          description=f"Synthetic batch written to `{where}`: {', '.join(files)}\n\n"
                          + mlflow_links(params, run_id))
    return metrics


@step_task("ingest", retries="io")
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
                          description=f"Batch `{batch_dir}` passed every contract rule\n\n" + mlflow_links(params, run_id))
    return metrics


@flow(name="ingest", log_prints=True)
def ingest(batch_dir: str = "", ingest: IngestConfig = IngestConfig(), params_file: str = DEFAULT_PARAMS,
           isolate: bool = True) -> dict:
    """Validate a batch folder against the data contract and write it as curated Parquet.

    Run after `generate` (or on your own batch); `features` reads what it writes.

    Args:
        batch_dir: The batch folder; empty = paths.raw_batch of the params file (where `generate` writes).
        ingest: The ingest section of the params file. Fields you leave as shown keep the params file's
            values; a changed field is an override.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            write to their own folders; untick to write into the params file's.
    """
    params, _ = flow_params(params_file, "ingest", isolate, ingest=ingest)
    batch = batch_dir or str(params.path("raw_batch"))
    with mlflow_run(params, "ingest") as run_id:
        tracking.log_params(params, run_id, {"ingest": params.ingest.model_dump(mode="json"), "batch_dir": batch})
        metrics = ingest_task(params, run_id, batch)
    get_run_logger().info("batch %s accepted: %s", batch, metrics)
    return metrics


@flow(name="generate", log_prints=True)
def generate(out_dir: str = "", generate: GenerateConfig = GenerateConfig(), seed: int = SEED,
             params_file: str = DEFAULT_PARAMS, isolate: bool = True) -> dict:
    """Write a synthetic batch in the raw data contract, with the oracle truth file.

    The first flow of a tour: then `ingest`, `features`, `llm`, `hkfr`, `ctr`; `news` stands alone.

    Args:
        out_dir: Where to write the batch; empty = paths.raw_batch of the params file.
        generate: The generate section of the params file (size of the synthetic world). Fields you
            leave as shown keep the params file's values; a changed field is an override.
        seed: Random seed; as shown = the params file's.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            write to their own folders; untick to write into the params file's.
    """
    params, _ = flow_params(params_file, "generate", isolate, generate=generate,
                            seed=None if seed == SEED else seed)
    with mlflow_run(params, "generate") as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "generate": params.generate.model_dump(mode="json")})
        return generate_task(params, run_id, out_dir or None)
