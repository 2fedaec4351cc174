"""Lineage that cannot lie: a run with another params file (or overridden sections) never writes
dvc.lock, so `dvc status` reports its outputs as changed and `dvc repro` rebuilds them from
params.yaml; a run with params.yaml's own values is recorded (real DVC, git, the pipeline's task)."""
import subprocess

import pandas as pd
import pytest
import yaml

from components import steps
from components.config import load_params
from components.tracking import lineage_tags
from components.versioning import record_run
from tests.factories import make_project

pytestmark = pytest.mark.slow


def dvc(root, *args):
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_small_profile_run_leaves_dvc_lock_alone_and_repro_rebuilds(tmp_path):
    from flows.pipeline import record_task

    root = make_project(tmp_path / "proj", git=True)
    dvc(root, "repro", "ingest")
    lock = (root / "dvc.lock").read_text()
    assert "up to date" in dvc(root, "status", "ingest").lower()

    small = yaml.safe_load((root / "params.yaml").read_text())
    small["generate"]["n_users"] = 30
    (root / "small.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    params = load_params(root / "small.yaml")
    steps.generate_step(params)
    steps.ingest_step(params)
    said = record_task.fn(params, custom_batch=False)  # what `scenerec --params small.yaml pipeline` ends with
    assert "not recorded" in said and "generate" in said
    assert (root / "dvc.lock").read_text() == lock
    assert lineage_tags(params)["data_version"] == "unversioned"  # MLflow runs of it do not claim dvc.lock

    status = dvc(root, "status", "generate", "ingest")
    assert "generate:" in status and "ingest:" in status and "modified" in status  # honest: the outputs are not params.yaml's
    rerun = dvc(root, "repro", "ingest")
    for stage in ("generate", "ingest"):  # rerun, or restored from DVC's run cache of params.yaml's run
        assert f"Running stage '{stage}'" in rerun or f"Stage '{stage}' is cached" in rerun, rerun
    users = pd.read_parquet(root / "data" / "curated" / "users.parquet")
    assert len(users) == yaml.safe_load((root / "params.yaml").read_text())["generate"]["n_users"]
    assert "up to date" in dvc(root, "status", "ingest").lower()

    # A run with params.yaml's own values is recorded, and dvc stays up to date.
    said = record_run(load_params(root / "params.yaml"), ["generate", "ingest"], custom_batch=False)
    assert "not recorded" not in said
    assert "up to date" in dvc(root, "status", "ingest").lower()
