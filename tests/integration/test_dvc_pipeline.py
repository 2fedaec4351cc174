"""`scenerec pipeline` leaves dvc.lock matching its outputs (`dvc repro` is then a no-op), changing a
parameter reruns only the stages that depend on it, and `dvc repro` on a fresh project runs every
stage (real DVC, real stages)."""
import json
import os
import subprocess

import pytest
import yaml

from components.steps import STEPS
from tests.factories import make_project

pytestmark = pytest.mark.slow

NEWS_STAGES = ("news_data", "news", "news_register")


def dvc(root, *args):
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def test_pipeline_flow_records_outputs_and_a_parameter_reruns_only_its_stages(tmp_path):
    """`scenerec pipeline` (what `make demo` runs), then `dvc repro` (a no-op) and a news parameter
    changed (its three stages rerun, the CTR side does not)."""
    root = make_project(tmp_path / "proj", git=True)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run(["scenerec", "pipeline"], cwd=root, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SceneRec pipeline finished" in proc.stdout
    assert (root / "dvc.lock").exists()
    again = dvc(root, "repro")
    assert "Running stage" not in again and "up to date" in again.lower()

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["news"]["click_noise"] = 0.6
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = dvc(root, "status")
    assert "news_data" in status and "features:" not in status and "generate:" not in status
    third = dvc(root, "repro")
    for stage in NEWS_STAGES:
        assert f"Running stage '{stage}'" in third
    for stage in set(STEPS) - set(NEWS_STAGES):
        assert f"Running stage '{stage}'" not in third

    flat = json.dumps(json.loads(dvc(root, "metrics", "show", "--json")))
    assert "validation.json" in flat and "features.json" in flat


@pytest.mark.full_repro
def test_repro_on_a_fresh_project_runs_every_stage_then_nothing(tmp_path):
    """Every stage's command through DVC, from scratch (minutes: a process per stage); `.ci/run`
    runs it after `make test`."""
    root = make_project(tmp_path / "proj", git=True)
    first = dvc(root, "repro")
    for stage in STEPS:
        assert f"Running stage '{stage}'" in first
    assert (root / "dvc.lock").exists()
    assert (root / "data" / "curated" / "impressions.parquet").exists()
    second = dvc(root, "repro")
    assert "Running stage" not in second
    assert "up to date" in second.lower()
