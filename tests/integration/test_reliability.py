"""Small reliability guarantees: retries only for transient errors, symbolic links in a batch,
quarantine retention, reports that stay true (generate --out, a rerun of a finished pretrain)."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from components.config import Params
from components.data.ingest import BatchRejected, ingest_batch
from tests.factories import tiny_batch, write_batch

REFERENCE = datetime(2026, 6, 1, tzinfo=timezone.utc)


def _params(root: Path, **ingest) -> Params:
    return Params(root=root, ingest={"reference_time": REFERENCE, **ingest})


def test_retries_are_for_transient_errors_only():
    from prefect.states import Failed

    from components.locks import LockTimeout
    from flows import ctr, features, hkfr, ingest, llm, news, pipeline
    from flows.settings import transient_only

    assert transient_only(None, None, Failed(data=sqlite3.OperationalError("database is locked")))
    assert transient_only(None, None, Failed(data=OSError("stale NFS handle")))
    for permanent in (ValueError("bad value"), FileNotFoundError("no curated data"), LockTimeout("held"),
                      BatchRejected([], Path("q"))):
        assert not transient_only(None, None, Failed(data=permanent)), permanent
    # Every task that touches MLflow, Feast or files retries, under that condition.
    tasks = [ingest.generate_task, ingest.ingest_task, features.features_task, llm.corpus_task, llm.pairs_task,
             llm.embed_task, hkfr.knowledge_task, hkfr.register_task, ctr.register_task, news.data_task,
             news.register_task, pipeline.record_task, llm.pretrain_task, ctr.train_task]
    for t in tasks:
        assert t.retries >= 1 and t.retry_condition_fn is transient_only, t.name


def test_retry_counts_come_from_the_runs_params(prefect_harness, tmp_path):
    from prefect import flow, task

    from flows.tasks import params_retries

    attempts = []

    @params_retries("io")
    @task
    def locked_twice(params):
        attempts.append(1)
        if len(attempts) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return len(attempts)

    @flow
    def run(params):
        return locked_twice(params)

    # io_retries 1: the second failure is the last attempt; io_retries 2: the third attempt succeeds.
    one = Params(root=tmp_path, reliability={"io_retries": 1, "retry_backoff_s": 0})
    with pytest.raises(sqlite3.OperationalError):
        run(one)
    assert len(attempts) == 2
    attempts.clear()
    assert run(Params(root=tmp_path, reliability={"io_retries": 2, "retry_backoff_s": 0})) == 3


def test_symlink_in_a_batch_is_rejected_and_quarantined_as_a_link(tmp_path):
    params = _params(tmp_path / "p")
    batch = write_batch(tiny_batch(), tmp_path / "batch")
    secret = tmp_path / "elsewhere.parquet"
    (batch / "users.parquet").rename(secret)
    (batch / "users.parquet").symlink_to(secret)
    with pytest.raises(BatchRejected) as err:
        ingest_batch(batch, params)
    message = str(err.value)
    assert "users.*: symlink" in message and "copy the file" in message
    copy = err.value.quarantine_path / "users.parquet"
    assert copy.is_symlink() and Path(copy.readlink()) == secret  # a link copied as a link, not followed
    assert not params.path("curated_dir").exists()


def test_quarantine_keeps_the_newest_copies_only(tmp_path):
    params = _params(tmp_path / "p", quarantine_keep=2)
    bad = tiny_batch()
    bad["pois"].loc[0, "price"] = -1.0
    kept = []
    for i in range(3):
        with pytest.raises(BatchRejected) as err:
            ingest_batch(write_batch(bad, tmp_path / f"bad{i}"), params)
        kept.append(err.value.quarantine_path)
    assert sorted(p.name for p in params.path("quarantine_dir").iterdir()) == sorted(p.name for p in kept[1:])


def test_generate_elsewhere_does_not_overwrite_the_stage_report(tmp_path):
    from components import steps

    params = Params(root=tmp_path, generate={"n_users": 20, "n_pois": 20, "n_requests": 40,
                                             "mean_behaviors_per_user": 5, "days": 10})
    steps.generate_step(params)
    report = params.path("reports_dir") / "generate.json"
    before = report.read_text()
    small = params.model_copy(update={"generate": params.generate.model_copy(update={"n_users": 12})})
    steps.generate_step(small, tmp_path / "elsewhere")
    assert report.read_text() == before  # still describes paths.raw_batch
    steps.generate_step(small)
    assert report.read_text() != before


def test_rerun_of_a_finished_pretrain_keeps_its_loss_in_the_report(tmp_path, monkeypatch):
    import components.llm.pretrain as pretrain_mod
    from components import steps

    params = Params(root=tmp_path)
    trained = {"loss": 2.5, "loss_first": 6.0, "heldout_ppl_after": 12.0, "steps_run": 150}
    rerun = {"loss": float("nan"), "loss_first": float("nan"), "heldout_ppl_after": 12.0, "steps_run": 0}
    runs = iter([trained, rerun])
    monkeypatch.setattr(pretrain_mod, "pretrain", lambda params, run_id=None: next(runs))
    steps.pretrain_step(params)
    steps.pretrain_step(params)  # resumed at the last step: trained nothing
    text = (params.path("reports_dir") / "pretrain.json").read_text()
    assert "NaN" not in text
    assert json.loads(text) == {"loss": 2.5, "loss_first": 6.0, "heldout_ppl_after": 12.0, "steps_run": 0}
