"""DVC bookkeeping for runs started outside `dvc repro` (the Prefect flows).

When a flow ran the very stages of dvc.yaml with params.yaml unchanged, `dvc commit` records
their outputs in dvc.lock and the local cache, so the data is versioned and a following
`dvc repro` has nothing to do.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def is_dvc_project(root: Path) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()


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
