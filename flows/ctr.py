"""Prefect flow `ctr`: train the CTR / CTCVR model (LARR + CoFARS by default) → evaluate it on the
test split beside the oracle → register it in MLflow → promote it to `champion` only when it beats
the current champion on the same test rows by `ctr.promotion_margin` and clears the promotion floor
(else it is `challenger`; components/registry.py:register_candidate).

The training task carries the tag `gpu` (see flows/llm.py for GPU pools and concurrency limits).
"""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from components import steps, tracking
from components.config import CTRConfig
from flows.settings import flow_params, flow_run_id


@task(name="train-and-evaluate-ctr", tags=["gpu"], cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def train_task(params, run_id: str, model: str | None) -> dict:
    # A retry resumes from the last finished epoch (checkpoints under paths.ctr_dir).
    return steps.ctr_step(params, run_id=run_id, model=model)


@task(name="register-and-promote-ctr", tags=["io"], cache_policy=NO_CACHE)
def register_task(params, run_id: str) -> dict:
    return steps.ctr_register_step(params, run_id=run_id, flow_run_id=flow_run_id())


def comparison_rows(result: dict) -> list[dict]:
    """Champion vs challenger (and the floor's popularity baseline) on the same test rows, for the Prefect artifact."""
    ch, cp = result.get("challenger_metrics") or {}, result.get("champion_metrics") or {}
    base = result.get("baseline_metrics") or {}
    rows = []
    for key in sorted(k for k in ch if k.startswith("all.") and not k.endswith("rows")):
        rows.append({"metric": key[4:], "challenger": ch.get(key), "champion": cp.get(key, "—"),
                     "popularity baseline": base.get(key, "—")})
    return rows


@flow(name="ctr", log_prints=True)
def ctr(ctr: CTRConfig | None = None, model: str | None = None, params_file: str | None = None,
        parent_run_id: str | None = None) -> dict:
    """Train, evaluate, register and (maybe) promote the CTR / CTCVR model."""
    params, _ = flow_params(params_file, ctr=ctr)
    with tracking.tracked_run(params, "ctr", parent_run_id, tags={"scenerec.flow": "ctr"}) as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "ctr": params.ctr.model_dump(mode="json")})
        summary = train_task(params, run_id, model)
        tracking.log_metrics(params, run_id, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        print(f"{summary['model']}: {summary['headline']}")
        result = register_task(params, run_id)
    verdict = (f"**{result['name']} v{result['version']}** → "
               + ("`champion`" if result["promoted"] else "`challenger`") + f": {result['reason']}")
    create_table_artifact(key="ctr-champion-vs-challenger", table=comparison_rows(result),
                          description=verdict)
    create_markdown_artifact(key="ctr-summary", markdown=f"{verdict}\n\n{summary['model']}: {summary['headline']}")
    print(verdict.replace("**", "").replace("`", ""))
    return {"summary": summary, "registry": {k: v for k, v in result.items() if not k.endswith("_metrics")}}
