"""Prefect flow `features`: feature tables, `feast apply`, materialisation, training set."""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from components import tracking
from components.config import DEFAULT_PARAMS, FeaturesConfig, Params
from components.steps import features_step
from flows.settings import flow_params, mlflow_links, mlflow_run
from flows.tasks import step_task


@step_task("features", log_prints=False, retries="io")
def features_task(params: Params, run_id: str) -> dict:
    metrics = features_step(params)
    tracking.log_metrics(params, run_id, {f"features.{k}": v for k, v in metrics.items()})
    create_table_artifact(
        key="feature-statistics",
        table=[{"metric": k, "value": v} for k, v in metrics.items()],
        description="Feature tables, materialisation and training-set statistics\n\n" + mlflow_links(params, run_id),
    )
    return metrics


@flow(name="features", log_prints=True)
def features(features: FeaturesConfig = FeaturesConfig(), params_file: str = DEFAULT_PARAMS,
             isolate: bool = True) -> dict:
    """Compute point-in-time feature tables from curated data and fill Feast's stores.

    Run after `ingest`; `llm`, `hkfr` and `ctr` read what it writes.

    Args:
        features: The features section of the params file. Fields you leave as shown keep the
            params file's values; a changed field is an override.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            write to their own folders; untick to write into the params file's.
    """
    params, _ = flow_params(params_file, "features", isolate, features=features)
    with mlflow_run(params, "features") as run_id:
        tracking.log_params(params, run_id, {"features": params.features.model_dump(mode="json")})
        return features_task(params, run_id)
