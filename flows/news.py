"""Prefect flow `news`: a MIND folder (synthetic by default, or `mind_dir`) → validation (GX) →
PerCoNet training and per-impression evaluation (AUC, MRR, nDCG@5/10) → registration as
`news-perconet`, champion only when better than the current one by the margin."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components import steps, tracking
from components.config import NewsConfig
from flows.settings import flow_params, flow_run_id, publish_comparison


@task(name="mind-data", tags=["io"], cache_policy=NO_CACHE)
def data_task(params) -> dict:
    return steps.news_data_step(params)


@task(name="train-perconet", tags=["gpu"], cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def train_task(params) -> dict:
    # A retry resumes from the last finished epoch.
    return steps.news_step(params)


@task(name="register-news-model", tags=["io"], cache_policy=NO_CACHE)
def register_task(params, run_id: str) -> dict:
    return steps.news_register_step(params, run_id=run_id, flow_run_id=flow_run_id())


@flow(name="news", log_prints=True)
def news(mind_dir: str | None = None, news: NewsConfig | None = None, params_file: str | None = None,
         parent_run_id: str | None = None) -> dict:
    """Train and register the news recommender on a MIND folder (path; empty = synthetic world)."""
    section = news.model_dump(mode="json") if news is not None else {}
    if mind_dir:
        section["mind_dir"] = mind_dir
    params, _ = flow_params(params_file, news=section or None)
    with tracking.tracked_run(params, "news", parent_run_id, tags={"scenerec.flow": "news"}) as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "news": params.news.model_dump(mode="json")})
        data = data_task(params)
        metrics = train_task(params)
        tracking.log_metrics(params, run_id, {**{f"data.{k}": v for k, v in data.items()}, **metrics})
        result = register_task(params, run_id)
    verdict = publish_comparison("news-champion-vs-challenger", result)
    print(verdict)
    return {"metrics": metrics, "registry": {k: v for k, v in result.items() if not k.endswith("_metrics")}}
