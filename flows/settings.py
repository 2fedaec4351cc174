"""How a flow run turns its UI form / call arguments into one validated ``Params``, opens its MLflow
run linked to the Prefect run, and links its artifacts back to MLflow."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, Mapping

from prefect.tasks import exponential_backoff
from pydantic import BaseModel, ValidationError

from components import tracking
from components.config import (DEFAULT_PARAMS, Params, ParamsError, ReliabilityConfig, for_overrides, for_profile, is_profile,
                               load_params)

# Set by the pipeline flow for the flows it calls: its MLflow run (the parent of theirs) and its
# namespace decision, so that parent_run_id is no form parameter and every step agrees.
_PIPELINE: ContextVar[dict | None] = ContextVar("scenerec_pipeline", default=None)

# The `paths` fields each flow writes: an overridden run writes these into folders of its own.
FLOW_OUTPUTS = {"generate": ("raw_batch",), "ingest": ("curated_dir", "quarantine_dir"),
                "features": ("features_dir",), "llm": ("llm_dir", "embeddings_dir"), "hkfr": ("hkfr_dir",),
                "ctr": ("ctr_dir",), "news": ("news_dir",)}

# Failures a retry cannot fix: the data, the parameters or the code are wrong (a pydantic
# ValidationError is a ValueError), a required input is missing, or the lock wait was already
# as long as the user allowed (LockTimeout, by name). A network timeout (socket.timeout, a
# TimeoutError) is transient and retried.
PERMANENT_ERRORS = (ValueError, TypeError, KeyError, IndexError, AssertionError, NotImplementedError,
                    FileNotFoundError, ValidationError, ParamsError)
PERMANENT_NAMES = {"BatchRejected", "MindRejected", "ParamsError", "LockTimeout"}


def transient_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry I/O trouble (a locked SQLite store, a network blip, a full
    queue), never an error that would fail again the same way."""
    try:
        state.result()
    except Exception as e:  # noqa: BLE001 - classifying the failure only
        return not isinstance(e, PERMANENT_ERRORS) and type(e).__name__ not in PERMANENT_NAMES
    return True


def retry_options(reliability: ReliabilityConfig, kind: str) -> dict:
    """Prefect task options for ``kind`` "io" (MLflow, Feast, files: ``io_retries`` with exponential
    backoff and jitter) or "train" (``train_retries``, a fixed wait; the task resumes from its
    checkpoint); both retry transient failures only."""
    if kind == "io":
        return {"retries": reliability.io_retries, "retry_jitter_factor": 0.5, "retry_condition_fn": transient_only,
                "retry_delay_seconds": exponential_backoff(backoff_factor=reliability.retry_backoff_s)}
    if kind == "train":
        return {"retries": reliability.train_retries, "retry_delay_seconds": reliability.retry_backoff_s,
                "retry_condition_fn": transient_only}
    raise ValueError(f"retry kind must be 'io' or 'train', got {kind!r}")


# The defaults (params.yaml's reliability section as shipped); a run's own values apply per call (flows/tasks.py).
IO_RETRIES = retry_options(ReliabilityConfig(), "io")
TRAIN_RETRIES = retry_options(ReliabilityConfig(), "train")


def overrides_of(**sections: BaseModel | dict | int | None) -> dict:
    """The parts of the given sections that differ from what the form showed (params.yaml's values,
    the models' defaults); an untouched section is no override."""
    out = {}
    for name, value in sections.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json", exclude_defaults=True)
        if value is None or value == {}:
            continue
        out[name] = value
    return out


def flow_params(params_file: str | None, flow: str | None = None, isolate: bool = True,
                **sections: BaseModel | dict | int | None) -> tuple[Params, bool]:
    """Load params.yaml (or ``params_file``) and lay the changed fields of the sections over it.

    Returns the params and whether anything was overridden. With ``isolate`` (default), another
    params file runs in its own namespace (experiment, registered models, data folder named after
    it) and an overridden run in ``-overrides`` ones, writing ``flow``'s outputs to folders of its
    own; inside a pipeline run, every flow takes the pipeline's decision.
    """
    overrides = overrides_of(**sections)
    params_file = None if params_file in (None, "", DEFAULT_PARAMS) else params_file
    params = load_params(params_file, overrides=overrides)
    outer = _PIPELINE.get()
    if outer is not None:
        overridden, isolate, outputs = outer["overridden"], outer["isolate"], None
    else:
        overridden, outputs = bool(overrides), FLOW_OUTPUTS.get(flow or "")
    if isolate and is_profile(params_file):
        params = for_profile(params, params_file)
    if isolate and overridden:
        params = for_overrides(params, outputs)
    return params, overridden


@contextmanager
def pipeline_context(run_id: str, overridden: bool, isolate: bool) -> Iterator[None]:
    """Inside this block, flows called by the pipeline nest their MLflow runs under ``run_id``."""
    token = _PIPELINE.set({"run_id": run_id, "overridden": overridden, "isolate": isolate})
    try:
        yield
    finally:
        _PIPELINE.reset(token)


def prefect_run() -> dict[str, str]:
    """Id, name and UI address of the current Prefect flow run (empty outside one)."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if not run_id:
        return {}
    out = {"prefect.flow_run_id": str(run_id), "prefect.flow_run_name": str(flow_run.get_name() or "")}
    url = flow_run.get_flow_run_ui_url()
    if url:
        out["prefect.flow_run_url"] = str(url)
    return out


def flow_run_id() -> str | None:
    """The id of the Prefect flow run this code runs in (None outside one); components take it as a value."""
    from prefect.runtime import flow_run

    return flow_run.id or None


@contextmanager
def mlflow_run(params: Params, flow: str, step: str | None = None,
               tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """The flow's MLflow run, named ``<flow>/<prefect run name>[/<step>]`` and tagged with the Prefect
    flow run (id, name, UI URL); nested under the pipeline's run inside a pipeline."""
    prefect = prefect_run()
    name = "/".join(x for x in (flow, prefect.get("prefect.flow_run_name"), step) if x)
    all_tags = {"scenerec.flow": flow, "scenerec.step": step or flow, **prefect, **(tags or {})}
    parent = (_PIPELINE.get() or {}).get("run_id")
    with tracking.tracked_run(params, name, parent, tags=all_tags) as run_id:
        yield run_id


def mlflow_links(params: Params, run_id: str, registry: Mapping | None = None) -> str:
    """Markdown links to the MLflow run (and the registered model version, when given)."""
    base = params.tracking.ui_url.rstrip("/")
    exp = tracking.configure(params)
    lines = [f"- MLflow run: [{run_id}]({base}/#/experiments/{exp}/runs/{run_id})"]
    if registry:
        name, version = registry["name"], registry["version"]
        lines.append(f"- Model version: [{name} v{version}]({base}/#/models/{name}/versions/{version})"
                     + (f" (alias `{registry['alias']}`)" if registry.get("alias") else ""))
    return "\n".join(lines)


def tag_version(params: Params, registry: Mapping, tags: Mapping[str, str]) -> None:
    """Tag the version the register step just created with the Prefect flow run that made it (id,
    name, UI link) and the run's warnings; a reused version keeps the tags of the run that made it."""
    import mlflow

    if registry.get("reused"):
        return
    client = mlflow.MlflowClient(tracking.tracking_uri(params))
    for k, v in tags.items():
        client.set_model_version_tag(registry["name"], str(registry["version"]), k, v)


def registry_summary(result: Mapping) -> dict:
    """The register step's result as a flow returns it: the verdict, version, alias and floor with the
    baseline it was judged against; the challenger's and champion's metrics are left to MLflow."""
    return {k: v for k, v in result.items() if k == "baseline_metrics" or not k.endswith("_metrics")}


def publish_comparison(key: str, result: dict, links: str = "") -> str:
    """A Prefect table artifact ``key``: the register step's metrics, challenger beside champion on
    the same data, described by the verdict and the MLflow links; returns the verdict (one line)."""
    from prefect.artifacts import create_table_artifact

    rows = [{"metric": k, "challenger": v, "champion": (result["champion_metrics"] or {}).get(k, "—"),
             "popularity baseline": (result.get("baseline_metrics") or {}).get(k, "—")}
            for k, v in result["challenger_metrics"].items()]
    verdict = (f"{result['name']} v{result['version']} -> {result['alias']}: "
               f"{result['reason']}")
    create_table_artifact(key=key, table=rows, description=verdict + ("\n\n" + links if links else ""))
    return verdict
