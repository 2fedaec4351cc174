"""Prefect flow `features`: feature tables, `feast apply`, materialisation, training set."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import tracking
from components.config import FeaturesConfig, Params
from components.steps import features_step
from flows.settings import IO_RETRIES, flow_params


@task(name="build-and-materialise-features", tags=["io"], log_prints=False, cache_policy=NO_CACHE,
      **IO_RETRIES)
def features_task(params: Params, run_id: str) -> dict:
    metrics = features_step(params)
    tracking.log_metrics(params, run_id, {f"features.{k}": v for k, v in metrics.items()})
    create_table_artifact(
        key="feature-statistics",
        table=[{"metric": k, "value": v} for k, v in metrics.items()],
        description="Feature tables, materialisation and training-set statistics",
    )
    return metrics


@flow(name="features", log_prints=True)
def features(features: FeaturesConfig | None = None, params_file: str | None = None,
             parent_run_id: str | None = None) -> dict:
    """Compute point-in-time feature tables from curated data and fill Feast's stores."""
    params, _ = flow_params(params_file, features=features)
    with tracking.tracked_run(params, "features", parent_run_id, tags={"scenerec.flow": "features"}) as run_id:
        tracking.log_params(params, run_id, {"features": params.features.model_dump(mode="json")})
        return features_task(params, run_id)
