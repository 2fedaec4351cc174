"""Two `scenerec ctr-register` at once (real MLflow registry, real CLI processes): both register a
version, exactly one champion change is audited and it names the right previous champion."""
import os
import subprocess
import sys

import mlflow
import pytest

from components import registry, steps
from components.tracking import start_run, tracking_uri
from tests.factories import REPO, featured_project, project_cwd

pytestmark = pytest.mark.slow


def test_two_registrations_at_once_make_one_champion_change(tmp_path):
    # A world and training long enough that the model clears the promotion floor (the CTR registry
    # test's size): otherwise neither registration may take champion and there is no race to see.
    params = featured_project(tmp_path / "project", {
        "generate": {"n_users": 200, "n_pois": 60, "n_requests": 2000}, "ctr": {"model": "id_only", "epochs": 6},
        "reliability": {"reuse_unchanged_models": False}})  # the same model twice: two versions, not one reused
    root = params.root
    with project_cwd(root):
        steps.ctr_step(params, run_id=start_run(params, "ctr"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": tracking_uri(params)}
    procs = [subprocess.Popen([sys.executable, "-m", "components.cli", "ctr-register"], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]

    name = params.ctr.registered_name
    c = mlflow.MlflowClient(tracking_uri(params))
    versions = sorted(int(mv.version) for mv in c.search_model_versions(f"name='{name}'"))
    assert versions == [1, 2]
    trail = [r["entry"] for r in registry.history(params, name)]
    promotions = [e for e in trail if e.startswith("action=promote")]
    assert len(promotions) == 1, trail
    champion = registry.alias_version(c, name, registry.CHAMPION)
    challenger = registry.alias_version(c, name, registry.CHALLENGER)
    assert {champion, challenger} == {"1", "2"}
    assert [e for e in trail if e.startswith("action=challenger")] == \
        [e for e in trail if e.startswith("action=challenger") and f"champion={champion}" in e] != []
    printed = "".join(out for out, _ in outs)
    assert printed.count("registered as champion") == 1
