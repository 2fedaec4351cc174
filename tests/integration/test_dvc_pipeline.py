"""`dvc repro` on a fresh project runs every stage, a second run is a no-op, and changing a
feature parameter reruns only the stages that depend on it (real DVC, real stages)."""
import json
import subprocess

import pytest
import yaml

from components.steps import STEPS
from tests.factories import make_project

pytestmark = pytest.mark.slow


def dvc(root, *args):
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_repro_noop_and_partial_rerun(tmp_path):
    root = make_project(tmp_path / "proj", git=True)

    first = dvc(root, "repro")
    for stage in STEPS:
        assert f"Running stage '{stage}'" in first
    assert (root / "dvc.lock").exists()
    assert (root / "data" / "curated" / "impressions.parquet").exists()

    second = dvc(root, "repro")
    assert "Running stage" not in second
    assert "up to date" in second.lower()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["features"]["snapshot_hours"] = 12
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(root, "status")
    assert "features" in status and "generate:" not in status

    third = dvc(root, "repro")
    assert "Running stage 'features'" in third
    assert "Running stage 'generate'" not in third
    assert "Running stage 'ingest'" not in third

    shown = json.loads(dvc(root, "metrics", "show", "--json"))
    flat = json.dumps(shown)
    assert "validation.json" in flat and "features.json" in flat


def test_pipeline_flow_records_outputs_so_repro_is_a_noop(tmp_path):
    """`scenerec pipeline` (what `make demo` runs) leaves dvc.lock matching its outputs."""
    root = make_project(tmp_path / "proj", git=True)
    env = {**__import__("os").environ, "PREFECT_HOME": str(tmp_path / "prefect_home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(["scenerec", "pipeline"], cwd=root, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SceneRec pipeline finished" in proc.stdout
    assert (root / "dvc.lock").exists()
    again = dvc(root, "repro")
    assert "Running stage" not in again
