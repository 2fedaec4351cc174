"""The one place that configures MLflow tracking, and the lineage tags every run carries.

Default store: ``sqlite:///mlflow.db`` in the project with artifacts in ``mlartifacts/``;
``MLFLOW_TRACKING_URI`` overrides it (e.g. a PostgreSQL-backed server for a team).
MLflow's active run is thread-local and Prefect runs tasks in worker threads, so everything
here takes an explicit ``run_id`` and goes through ``MlflowClient`` instead of the fluent API.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

from components.config import Params

PROCESS_TAG = "scenerec.process"  # host:pid:start-time of the process that opened the run
EXPERIMENT_KIND = "mlflow.experimentKind"


def tracking_uri(params: Params) -> str:
    """Tracking URI: $MLFLOW_TRACKING_URI, else params.tracking.tracking_uri with a relative
    SQLite path resolved against the project root (so it works from any working directory)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        uri = prefix + str((params.root / uri[len(prefix):]).resolve())
    return uri


def configure(params: Params) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # child processes (DVC stages, workers) agree
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(params.tracking.experiment)
    if exp is not None and exp.lifecycle_stage == "deleted":  # deleted in the UI: runs cannot start there
        raise ValueError(
            f"MLflow experiment {params.tracking.experiment!r} (id {exp.experiment_id}) at {uri} is deleted: "
            f"restore it (`mlflow experiments restore --experiment-id {exp.experiment_id}`, or in the UI), "
            f"delete it for good (`mlflow gc`), or set tracking.experiment in params.yaml to another name")
    if exp is not None:
        if EXPERIMENT_KIND not in exp.tags:  # made before the UI was told: open it on runs too
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, "custom_model_development")
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # Keep artifacts beside the database instead of in the current working directory.
        location = (params.root / "mlartifacts").resolve().as_uri()
    try:
        # MLflow 3's UI opens an experiment on its GenAI overview unless told it holds model runs.
        return client.create_experiment(params.tracking.experiment, artifact_location=location,
                                        tags={EXPERIMENT_KIND: "custom_model_development"})
    except MlflowException:  # created concurrently by another process; any other failure is raised
        exp = client.get_experiment_by_name(params.tracking.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def git_commit(root: Path) -> str:
    """HEAD commit of the project, with '-dirty' when tracked files have changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(root: Path) -> dict[str, str]:
    """Data lineage from dvc.lock: one short hash per stage output, plus one for the whole lock."""
    lock = root / "dvc.lock"
    if not lock.exists():
        return {"data_version": "unversioned"}
    import yaml

    text = lock.read_text()
    tags = {"data_version": hashlib.md5(text.encode()).hexdigest()[:12]}
    stages = (yaml.safe_load(text) or {}).get("stages", {})
    for stage, body in stages.items():
        for out in body.get("outs", []) or []:
            md5 = out.get("md5") or out.get("hash") or ""
            tags[f"dvc.{stage}.{out.get('path')}"] = str(md5)[:12]
    return tags


def lineage_tags(params: Params) -> dict[str, str]:
    """Tags that tie a run to the code and data it saw; dvc.lock's hashes only when the run's
    parameters are those dvc.lock records (params.yaml), else ``data_version: unversioned``."""
    from components.versioning import params_differ

    differ = params_differ(params)
    if differ is None:
        return {"git_commit": git_commit(params.root), **data_version(params.root)}
    return {"git_commit": git_commit(params.root), "data_version": "unversioned",
            "scenerec.params_differ": differ[:4000]}


def _process_tag(pid: int) -> str | None:
    """``host:pid:start-time`` of a live process (start time: /proc, so a reused pid differs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[1].split()[19]  # field 22, after the parenthesised command name
    return f"{socket.gethostname()}:{pid}:{start}"


def mark_dead_runs(params: Params, exp_id: str | None = None) -> list[str]:
    """Runs still ``RUNNING`` whose process on this machine is gone (killed, crashed) are marked
    ``KILLED``; returns their ids. Runs of other machines and of live processes are left alone."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(params))
    exp_id = exp_id or configure(params)
    host = socket.gethostname()
    runs = client.search_runs([exp_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    killed = []
    for run in runs:
        owner = run.data.tags.get(PROCESS_TAG, "")
        who, _, rest = owner.partition(":")
        if who != host or not rest:
            continue
        if _process_tag(int(rest.split(":")[0])) != owner:
            client.set_terminated(run.info.run_id, status="KILLED")
            client.set_tag(run.info.run_id, "scenerec.ended", "process gone; marked KILLED by the next run")
            killed.append(run.info.run_id)
    return killed


def start_run(params: Params, run_name: str, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None) -> str:
    """Open an MLflow run (nested under ``parent_run_id`` when given) and return its id; runs
    left ``RUNNING`` by dead processes are marked ``KILLED`` first."""
    import mlflow

    exp_id = configure(params)
    mark_dead_runs(params, exp_id)
    all_tags = {**lineage_tags(params), **(tags or {}), PROCESS_TAG: _process_tag(os.getpid()) or ""}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = mlflow.MlflowClient(tracking_uri(params)).create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def end_run(params: Params, run_id: str, status: str = "FINISHED") -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri(params)).set_terminated(run_id, status=status)


@contextmanager
def tracked_run(params: Params, run_name: str, parent_run_id: str | None = None,
                tags: Mapping[str, str] | None = None) -> Iterator[str]:
    """Context manager around start_run/end_run; the run is marked FAILED if the body raises."""
    run_id = start_run(params, run_name, parent_run_id, tags)
    try:
        yield run_id
    except BaseException:
        end_run(params, run_id, "FAILED")
        raise
    end_run(params, run_id)


def log_metrics(params: Params, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log numeric metrics (non-numeric values are skipped) to ``run_id``."""
    import mlflow
    from mlflow.entities import Metric
    import time

    now = int(time.time() * 1000)
    items = [Metric(_key(k), float(v), now, step) for k, v in metrics.items() if _numeric(v)]
    if items:
        mlflow.MlflowClient(tracking_uri(params)).log_batch(run_id, metrics=items)


def log_params(params: Params, run_id: str, values: Mapping[str, object]) -> None:
    """Log a flat mapping of parameters (nested dicts are flattened with dots)."""
    import mlflow
    from mlflow.entities import Param

    flat = _flatten(dict(values))
    items = [Param(_key(k), str(v)[:6000]) for k, v in flat.items()]
    client = mlflow.MlflowClient(tracking_uri(params))
    for i in range(0, len(items), 90):  # log_batch accepts at most 100 params
        client.log_batch(run_id, params=items[i:i + 90])


def log_artifact(params: Params, run_id: str, path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri(params)).log_artifact(run_id, str(path), artifact_path)


def log_dict(params: Params, run_id: str, data: dict, artifact_file: str) -> None:
    import mlflow

    mlflow.MlflowClient(tracking_uri(params)).log_text(run_id, json.dumps(data, indent=2, default=str), artifact_file)


def _numeric(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _key(k: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / ; map anything else to '_'.
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in str(k))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
