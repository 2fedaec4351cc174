"""Prefect flow `hkfr`: each user's heterogeneous behaviours fused into knowledge snapshots → the
instruction dataset (CTR time split) → instruction tuning of our LLM (LoRA by default; a GPU task)
→ P("yes") evaluated on the test impressions, overall and for cold-start users → the user knowledge
embedding into Feast → registration as `hkfr-instruct`, champion only when better by the margin."""
from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from components import steps, tracking
from components.config import HKFRConfig
from flows.settings import flow_params, flow_run_id, publish_comparison


@task(name="knowledge-and-instructions", tags=["io"], cache_policy=NO_CACHE)
def knowledge_task(params) -> dict:
    return steps.knowledge_step(params)


@task(name="instruction-tuning", tags=["gpu"], cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def instruct_task(params, run_id: str) -> dict:
    # A retry resumes from the newest checkpoint.
    return steps.instruct_step(params, run_id=run_id)


@task(name="register-hkfr-model", tags=["io"], cache_policy=NO_CACHE)
def register_task(params, run_id: str) -> dict:
    return steps.hkfr_register_step(params, run_id=run_id, flow_run_id=flow_run_id())


@flow(name="hkfr", log_prints=True)
def hkfr(hkfr: HKFRConfig | None = None, params_file: str | None = None, parent_run_id: str | None = None) -> dict:
    """Instruction-tune the LLM on heterogeneous-knowledge tasks and export the user knowledge feature."""
    params, _ = flow_params(params_file, hkfr=hkfr)
    with tracking.tracked_run(params, "hkfr", parent_run_id, tags={"scenerec.flow": "hkfr"}) as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "hkfr": params.hkfr.model_dump(mode="json")})
        data = knowledge_task(params)
        metrics = instruct_task(params, run_id)
        tracking.log_metrics(params, run_id, {f"knowledge.{k}": v for k, v in data.items()})
        result = register_task(params, run_id)
    verdict = publish_comparison("hkfr-champion-vs-challenger", result)
    print(verdict)
    return {"metrics": metrics, "registry": {k: v for k, v in result.items() if not k.endswith("_metrics")}}
