"""DVC bookkeeping for runs started outside `dvc repro` (the Prefect flows).

`dvc.lock` states "these outputs came from these deps and *these values of params.yaml*". A flow
run may only write it when that is true: the synthetic batch of the `generate` stage and the very
parameters of params.yaml (no other params file, no overridden section). Then `dvc commit` records
its outputs in dvc.lock and the local cache, and a following `dvc repro` has nothing to do. Any
other run leaves dvc.lock alone, so `dvc status` reports its outputs as changed and `dvc repro`
rebuilds them from params.yaml: DVC's own staleness check stays truthful. (Running such a run
through `dvc exp run -S` would also be honest, but it needs a git commit per run and a DVC
experiment workspace; refusing to commit costs nothing and lies about nothing.)
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from components.config import DEFAULT_PARAMS, Params, ParamsError, load_params


def is_dvc_project(root: Path) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()


def params_differ(params: Params) -> str | None:
    """Why ``params`` are not the values of ``<root>/params.yaml`` (what dvc.lock records), or None."""
    path = Path(params.root) / DEFAULT_PARAMS
    try:
        reference = load_params(path)
    except ParamsError as e:
        return f"{path} does not load ({str(e).splitlines()[0]})"
    if reference.model_dump(mode="json") == params.model_dump(mode="json"):
        return None
    ours, theirs = params.model_dump(mode="json"), reference.model_dump(mode="json")
    sections = sorted(k for k in ours if ours.get(k) != theirs.get(k))
    return f"parameters differ from {path} in: {', '.join(sections)}"


def record_run(params: Params, stages: list[str], custom_batch: bool) -> str:
    """`dvc commit` ``stages`` when the run is what dvc.yaml would have run; else say why not."""
    if custom_batch:
        return "custom batch: outputs not recorded in dvc.lock (dvc status shows them as changed)"
    differ = params_differ(params)
    if differ:
        return f"{differ}: outputs not recorded in dvc.lock (dvc status shows them as changed)"
    return record_outputs(params.root, stages)


def record_outputs(root: Path, stages: list[str]) -> str:
    """`dvc commit` the given stages; returns DVC's message, or why nothing was recorded."""
    if not is_dvc_project(root):
        return "not a DVC project: outputs not versioned"
    dvc = shutil.which("dvc")
    if dvc is None:
        return "dvc not on PATH: outputs not versioned"
    proc = subprocess.run([dvc, "commit", "--force", *stages], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc commit {' '.join(stages)} failed in {root}:\n{proc.stderr.strip()}")
    return (proc.stdout + proc.stderr).strip() or f"recorded {', '.join(stages)} in dvc.lock"
