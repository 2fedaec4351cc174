"""Kill -9 at chosen points and two commands at once: curated data stays one batch, no temp file
is left in an output, nothing is lost, killed MLflow runs are closed, waiters name the holder.
Kills are real SIGKILLs in a child process (``$SCENEREC_CRASH_AT``, components/atomic.py)."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components import steps
from components.config import load_params
from components.data.ingest import recover_curated, staging_dir
from components.locks import LockTimeout, hold, lock_path
from tests.factories import REPO
from tests.factories import tiny_batch, write_batch

REFERENCE = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _project(root: Path, mode: str = "replace"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"ingest": {"reference_time": REFERENCE.isoformat(), "mode": mode}, "reliability": {"lock_timeout_s": 120}}))
    return load_params(root / "params.yaml")


def _later_batch() -> dict[str, pd.DataFrame]:
    """tiny_batch with other prices and every behaviour 30 min later: new rows in every table."""
    b = tiny_batch()
    b["pois"]["price"] = b["pois"]["price"] + 1.0
    b["users"]["age_group"] = b["users"]["age_group"].iloc[::-1].to_numpy()
    b["behaviors"]["ts"] = b["behaviors"]["ts"] + pd.Timedelta(minutes=30)
    return b


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _child(params, code: str, crash_at: str | None = None, wait: bool = True, pause_at: str | None = None):
    """Run ``code`` in a fresh interpreter with ``params`` loaded (optionally killed at ``crash_at``,
    or held at ``pause_at`` = "name=seconds")."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SCENEREC_CRASH_AT", None)
    env.pop("SCENEREC_PAUSE_AT", None)
    if crash_at:
        env["SCENEREC_CRASH_AT"] = crash_at
    if pause_at:
        env["SCENEREC_PAUSE_AT"] = pause_at
    prog = ("from pathlib import Path\nfrom components.config import load_params\n"
            f"params = load_params({str(params.root / 'params.yaml')!r})\n" + textwrap.dedent(code))
    proc = subprocess.Popen([sys.executable, "-c", prog], cwd=params.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _ingest(params, batch: Path, crash_at: str | None = None):
    return _child(params, f"from components import steps\nsteps.ingest_step(params, Path({str(batch)!r}))\n", crash_at)


def test_ingest_killed_before_its_commit_point_changes_nothing(tmp_path):
    params = _project(tmp_path / "p")
    steps.ingest_step(params, write_batch(tiny_batch(), tmp_path / "a"))
    curated = params.path("curated_dir")
    before = _hashes(curated)
    rc, _, err = _ingest(params, write_batch(_later_batch(), tmp_path / "b"), crash_at="ingest.staging")
    assert rc == -9, err[-2000:]
    assert _hashes(curated) == before  # no table replaced, and no temp file inside the DVC output
    assert recover_curated(curated).startswith("discarded")
    assert not staging_dir(curated).exists() and _hashes(curated) == before


def test_ingest_killed_between_renames_is_completed_as_one_batch(tmp_path):
    params = _project(tmp_path / "p")
    steps.ingest_step(params, write_batch(tiny_batch(), tmp_path / "a"))
    curated = params.path("curated_dir")
    rc, _, err = _ingest(params, write_batch(_later_batch(), tmp_path / "b"), crash_at="ingest.between_renames")
    assert rc == -9, err[-2000:]
    assert list(curated.glob(".*.tmp")) == []
    # The kill came after the commit point: the next ingest / features run finishes the batch.
    assert recover_curated(curated).startswith("completed")
    assert pd.read_parquet(curated / "pois.parquet")["price"].tolist() == (tiny_batch()["pois"]["price"] + 1).tolist()
    assert pd.read_parquet(curated / "users.parquet")["age_group"].tolist() == \
        _later_batch()["users"]["age_group"].tolist()
    assert not staging_dir(curated).exists()


def test_killed_feature_write_leaves_no_temp_file_after_the_rerun(tmp_path):
    params = _project(tmp_path / "p")
    steps.ingest_step(params, write_batch(tiny_batch(), tmp_path / "a"))
    build = ("from components.features.engineering import build_feature_tables\n"
             "build_feature_tables(params.path('curated_dir'), params.features, params.path('features_dir'))\n")
    rc, _, err = _child(params, build, crash_at="before_rename:poi_stats.parquet")
    assert rc == -9, err[-2000:]
    features = params.path("features_dir")
    assert len(list(features.glob(".poi_stats.parquet.*.tmp"))) == 1  # what kill -9 leaves mid-write
    rc, _, err = _child(params, build)
    assert rc == 0, err[-2000:]
    assert list(features.glob("*.tmp")) + list(features.glob(".*.tmp")) == []
    assert len(pd.read_parquet(features / "poi_stats.parquet")) > 0


def test_two_append_ingests_at_once_lose_nothing(tmp_path):
    params = _project(tmp_path / "p", mode="append")
    a, b = write_batch(tiny_batch(), tmp_path / "a"), write_batch(_later_batch(), tmp_path / "b")
    code = "from components import steps\nsteps.ingest_step(params, Path({!r}))\n"
    # The first is held after staging its merged tables, uncommitted; the second starts then.
    first = _child(params, code.format(str(a)), wait=False, pause_at="ingest.staging=6")
    deadline = time.monotonic() + 600
    while not staging_dir(params.path("curated_dir")).exists() and first.poll() is None:
        assert time.monotonic() < deadline, "the first ingest never reached its staging step"
        time.sleep(0.1)
    second = _child(params, code.format(str(b)), wait=False)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    assert [rc for rc, _ in results] == [0, 0], [e[-1500:] for _, e in results]
    beh = pd.read_parquet(params.path("curated_dir") / "behaviors.parquet")
    assert len(beh) == 2 * len(tiny_batch()["behaviors"])  # both batches' behaviours, none lost


def test_a_waiter_names_the_holder_and_a_killed_holder_frees_the_lock(tmp_path):
    params = _project(tmp_path / "p")
    holder = _child(params, "from components.locks import hold\nimport time\n"
                            "with hold(params, 'curated', 'ingest (batch x)'):\n    print('held', flush=True)\n"
                            "    time.sleep(120)\n", wait=False)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockTimeout) as err:
        with hold(params, "curated", "ingest (batch y)", timeout_s=0.5):
            pass
    message = str(err.value)
    assert f"another ingest (batch x) is running since {datetime.now(timezone.utc):%Y-%m-%d}" in message
    assert f"(pid {holder.pid} " in message and "reliability.lock_timeout_s" in message
    holder.kill()
    holder.wait()
    t0 = time.monotonic()
    with hold(params, "curated", "ingest (batch y)", timeout_s=10):
        assert time.monotonic() - t0 < 5  # the kernel dropped the dead holder's lock
    assert lock_path(params, "curated").read_text() == ""


def test_a_run_killed_while_running_is_marked_killed_at_the_next_start(tmp_path):
    import mlflow

    from components import tracking

    params = _project(tmp_path / "p")
    code = ("import os, signal\nfrom components import tracking\n"
            "print(tracking.start_run(params, 'doomed'), flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    rc, out, err = _child(params, code)
    assert rc == -9, err[-2000:]
    dead = out.strip().splitlines()[-1]
    client = mlflow.MlflowClient(tracking.tracking_uri(params))
    assert client.get_run(dead).info.status == "RUNNING"
    live = tracking.start_run(params, "next")
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(live).info.status == "RUNNING"  # our own, live run is left alone
    tracking.end_run(params, live)
