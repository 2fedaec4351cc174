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
from components.config import DEFAULT_PARAMS, CTRConfig
from flows.settings import (flow_params, flow_run_id, mlflow_links, mlflow_run, prefect_run,
                            registry_summary, tag_version)
from flows.tasks import step_task


@step_task("ctr", retries="train")
def train_task(params, run_id: str) -> dict:
    # A retry resumes from the last finished epoch (checkpoints under paths.ctr_dir).
    return steps.ctr_step(params, run_id=run_id)


@step_task("ctr_register", retries="io")
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
def ctr(ctr: CTRConfig = CTRConfig(), params_file: str = DEFAULT_PARAMS, isolate: bool = True) -> dict:
    """Train, evaluate, register and (maybe) promote the CTR / CTCVR model.

    Run after `features` (and `llm` for the LARR models, `hkfr` for ctr.user_knowledge).

    Args:
        ctr: The ctr section of the params file; pick the model from the drop-down. Fields you
            leave as shown keep the params file's values; a changed field is an override.
        params_file: Parameters file, relative to the project folder (e.g. params/small.yaml for the
            two-minute tour).
        isolate: Runs with overrides or another params file log to their own MLflow experiment and
            registered model and write to their own folders; untick to write into the params file's.
    """
    params, _ = flow_params(params_file, "ctr", isolate, ctr=ctr)
    tags = steps.ctr_prerequisites(params)
    with mlflow_run(params, "ctr", tags=tags) as run_id:
        tracking.log_params(params, run_id, {"seed": params.seed, "ctr": params.ctr.model_dump(mode="json")})
        summary = train_task(params, run_id)
        tracking.log_metrics(params, run_id, {k: v for k, v in summary.items() if isinstance(v, (int, float))})
        print(f"{summary['model']}: {summary['headline']}")
        result = register_task(params, run_id)
        tag_version(params, result, {**prefect_run(), **tags})
    links = mlflow_links(params, run_id, result)
    verdict = (f"**{result['name']} v{result['version']}** → "
               + ("`champion`" if result["promoted"] else "`challenger`") + f": {result['reason']}")
    create_table_artifact(key="ctr-champion-vs-challenger", table=comparison_rows(result),
                          description=verdict + "\n\n" + links)
    create_markdown_artifact(key="ctr-summary",
                             markdown=f"{verdict}\n\n{summary['model']}: {summary['headline']}\n\n{links}")
    print(verdict.replace("**", "").replace("`", ""))
    return {"summary": summary, "run_id": run_id,
            "registry": registry_summary(result)}


@task(name="tune-ctr", tags=["gpu"], cache_policy=NO_CACHE)
def tune_task(params, run_id: str, trials: int, budget_seconds: float) -> dict:
    return steps.tune_step(params, trials, budget_seconds, run_id=run_id)


@flow(name="ctr-tune", log_prints=True)
def ctr_tune(trials: int = 20, budget_seconds: float = 1800.0, ctr: CTRConfig = CTRConfig(),
             params_file: str = DEFAULT_PARAMS, isolate: bool = True) -> dict:
    """Optuna search over the CTR knobs on the validation split; every trial an MLflow run.

    The best knobs are written to params.tuned.yaml, which the next `ctr` run and `dvc repro` merge
    over params.yaml.

    Args:
        trials: Most trials to run.
        budget_seconds: Wall-clock budget of the whole search; no trial starts after it.
        ctr: The ctr section the search starts from; fields left as shown keep the params file's values.
        params_file: Parameters file, relative to the project folder.
        isolate: Runs with overrides or another params file log to their own MLflow experiment.
    """
    params, _ = flow_params(params_file, "ctr", isolate, ctr=ctr)
    with mlflow_run(params, "ctr-tune") as run_id:
        out = tune_task(params, run_id, trials, budget_seconds)
        tracking.log_metrics(params, run_id, {"best_valid_auc_ctr": out["best_valid_auc_ctr"], "trials": out["trials"]})
    create_markdown_artifact(key="ctr-tune", markdown=f"best validation CTR AUC **{out['best_valid_auc_ctr']}** after "
                             f"{out['trials']} trials: `{out['best']}` → `{out['written']}`\n\n"
                             + mlflow_links(params, run_id))
    print(f"best validation CTR AUC {out['best_valid_auc_ctr']} after {out['trials']} trials -> {out['written']}")
    return out
