"""Prefect flow `hkfr`: each user's heterogeneous behaviours fused into knowledge snapshots → the
instruction dataset (CTR time split) → instruction tuning of our LLM (LoRA by default; a GPU task)
→ P("yes") evaluated on the test impressions, overall and for cold-start users → the user knowledge
embedding into Feast → registration as `hkfr-instruct`, champion only when better by the margin."""
from __future__ import annotations

from prefect import flow

from components import steps, tracking
from components.config import DEFAULT_PARAMS, HKFRConfig
from flows.settings import (flow_params, flow_run_id, mlflow_links, mlflow_run, prefect_run, publish_comparison,
                            registry_summary, tag_version)
from flows.tasks import step_task


@step_task("knowledge", retries="io")
def knowledge_task(params) -> dict:
    return steps.knowledge_step(params)


@step_task("instruct", retries="train")
def instruct_task(params, run_id: str) -> dict:
    # A retry resumes from the newest checkpoint.
    return steps.instruct_step(params, run_id=run_id)


@step_task("hkfr_register", retries="io")
def register_task(params, run_id: str) -> dict:
    return steps.hkfr_register_step(params, run_id=run_id, flow_run_id=flow_run_id())


@flow(name="hkfr", log_prints=True)
def hkfr(hkfr: HKFRConfig = HKFRConfig(), params_file: str = DEFAULT_PARAMS, isolate: bool = True) -> dict:
    """Instruction-tune the LLM on heterogeneous-knowledge tasks and export the user knowledge feature.

    Run after `llm` (it tunes the LLM that flow trained); `ctr` with ctr.user_knowledge reads its output.

    Args:
        hkfr: The hkfr section of the params file. Fields you leave as shown keep the params file's
            values; a changed field is an override.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            registered model and write to their own folders; untick to write into the params file's.
    """
    params, _ = flow_params(params_file, "hkfr", isolate, hkfr=hkfr)
    with mlflow_run(params, "hkfr") as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "hkfr": params.hkfr.model_dump(mode="json")})
        data = knowledge_task(params)
        metrics = instruct_task(params, run_id)
        tracking.log_metrics(params, run_id, {f"knowledge.{k}": v for k, v in data.items()})
        result = register_task(params, run_id)
        tag_version(params, result, prefect_run())
    verdict = publish_comparison("hkfr-champion-vs-challenger", result, mlflow_links(params, run_id, result))
    print(verdict)
    return {"metrics": metrics, "registry": registry_summary(result)}
