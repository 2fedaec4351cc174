"""What a user does from the Prefect UI: a real server, the deployments of prefect.yaml on a
process work pool, a worker, and a flow run started through the API the UI uses."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.factories import REPO, free_port, make_project, stop_process_group

pytestmark = [pytest.mark.slow]



def test_flow_run_from_a_deployment_on_a_worker(tmp_path):
    root = make_project(tmp_path / "proj")
    shutil.copytree(REPO / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "prefect.yaml", root / "prefect.yaml")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect_home"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT__TEST_MODE", None)
    env.pop("PREFECT_TESTING_TEST_MODE", None)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = None
    try:
        import urllib.request

        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("Prefect server did not start: " + (tmp_path / "server.log").read_text()[-2000:])

        def prefect(*args):
            p = subprocess.run(["prefect", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
            assert p.returncode == 0, f"prefect {' '.join(args)}:\n{p.stdout}\n{p.stderr}"
            return p.stdout

        prefect("work-pool", "create", "scenerec-local", "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        listed = prefect("deployment", "ls")
        for name in ("pipeline", "ingest", "generate", "features", "llm", "hkfr", "ctr", "news", "promote", "rollback",
                     "audit"):
            assert name in listed

        wlog = open(tmp_path / "worker.log", "w")
        worker = subprocess.Popen(["prefect", "worker", "start", "--pool", "scenerec-local"], cwd=root, env=env,
                                  stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True)
        out = prefect("deployment", "run", "generate/generate",
                      "--param", f"params_file={root / 'params.yaml'}", "--watch", "--watch-timeout", "240")
        assert "Completed" in out, out + (tmp_path / "worker.log").read_text()[-3000:]
        assert (root / "data" / "raw" / "synthetic" / "impressions.parquet").exists() or any(
            Path(root / "data" / "raw" / "synthetic").glob("impressions.*"))
    finally:
        if worker is not None:
            stop_process_group(worker)
        stop_process_group(server)
