"""Prefect flow `news`: a MIND folder (synthetic by default, or `mind_dir`) → validation (GX) →
PerCoNet training and per-impression evaluation (AUC, MRR, nDCG@5/10) → registration as
`news-perconet`, champion only when better than the current one by the margin."""
from __future__ import annotations

from prefect import flow

from components import steps, tracking
from components.config import DEFAULT_PARAMS, NewsConfig
from flows.settings import (flow_params, flow_run_id, mlflow_links, mlflow_run, prefect_run, publish_comparison,
                            registry_summary, tag_version)
from flows.tasks import step_task


@step_task("news_data", retries="io")
def data_task(params) -> dict:
    return steps.news_data_step(params)


@step_task("news", retries="train")
def train_task(params) -> dict:
    # A retry resumes from the last finished epoch.
    return steps.news_step(params)


@step_task("news_register", retries="io")
def register_task(params, run_id: str) -> dict:
    return steps.news_register_step(params, run_id=run_id, flow_run_id=flow_run_id())


@flow(name="news", log_prints=True)
def news(mind_dir: str = "", news: NewsConfig = NewsConfig(), params_file: str = DEFAULT_PARAMS,
         isolate: bool = True) -> dict:
    """Train and register the news recommender on a MIND folder (empty = synthetic world).

    Independent of the other flows: it needs no earlier step.

    Args:
        mind_dir: A folder with train/ and dev/ in the MIND format; empty = news.mind_dir of the params
            file (null there = generate the synthetic world).
        news: The news section of the params file. Fields you leave as shown keep the params file's
            values; a changed field is an override.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            registered model and write to their own folders; untick to write into the params file's.
    """
    section = news.model_dump(mode="json", exclude_defaults=True)
    if mind_dir:
        section["mind_dir"] = mind_dir
    params, _ = flow_params(params_file, "news", isolate, news=section)
    with mlflow_run(params, "news") as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "news": params.news.model_dump(mode="json")})
        data = data_task(params)
        metrics = train_task(params)
        tracking.log_metrics(params, run_id, {**{f"data.{k}": v for k, v in data.items()}, **metrics})
        result = register_task(params, run_id)
        tag_version(params, result, prefect_run())
    verdict = publish_comparison("news-champion-vs-challenger", result, mlflow_links(params, run_id, result))
    print(verdict)
    return {"metrics": metrics, "registry": registry_summary(result)}
