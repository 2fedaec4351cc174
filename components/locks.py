"""File locks that keep two commands from writing the same state at once.

Three resources: ``curated`` (paths.curated_dir), ``features`` (the feature tables and the Feast
registry / online store) and ``registry`` (the MLflow model registry: aliases and the audit trail).
A lock is an ``flock`` on ``<paths.data_dir>/.locks/<resource>.lock`` (for a SQLite tracking store,
beside the database, so every project sharing it agrees). The kernel drops it when its holder
dies, so a killed run never leaves a lock behind; the file only tells waiters who holds it.
Locks guard one machine: a team sharing a remote MLflow server or Feast store needs that
service's own concurrency control.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from components.config import Params

RESOURCES = ("curated", "features", "registry")
_POLL_S = 0.2
# Locks this thread holds (resource -> depth): re-entering one in the same thread is a no-op, so
# a step that holds `features` can call another that takes it too. Per thread, because Prefect
# runs tasks in threads of one process, and two of them must still exclude each other.
_LOCAL = threading.local()


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than ``reliability.lock_timeout_s``."""


def lock_path(params: Params, resource: str) -> Path:
    """The lock file of ``resource``."""
    if resource not in RESOURCES:
        raise ValueError(f"unknown lock {resource!r}; one of {RESOURCES}")
    if resource == "registry":
        from components.tracking import tracking_uri

        uri = tracking_uri(params)
        if uri.startswith("sqlite:///"):
            db = Path(uri[len("sqlite:///"):])
            return db.with_name(f".{db.name}.registry.lock")
    return params.path("data_dir") / ".locks" / f"{resource}.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "command (holder unknown: readers) is running"
    return (f"{info.get('what', 'command')} is running since {info.get('since', '?')} "
            f"(pid {info.get('pid', '?')} on {info.get('host', '?')})")


@contextmanager
def hold(params: Params, resource: str, what: str, shared: bool = False,
         timeout_s: float | None = None) -> Iterator[Path]:
    """Hold the lock of ``resource`` for the body (``shared``: readers may hold it together).

    Waits up to ``timeout_s`` (default ``reliability.lock_timeout_s``), then raises LockTimeout
    naming the holder: "another ingest is running since <time> (pid N)".
    """
    held = _LOCAL.__dict__.setdefault("held", {})
    if held.get(resource):
        held[resource] += 1
        try:
            yield lock_path(params, resource)
        finally:
            held[resource] -= 1
        return
    path = lock_path(params, resource)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeout = params.reliability.lock_timeout_s if timeout_s is None else timeout_s
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{resource} is locked ({path}): another {_holder(path)}; "
                        f"waited {timeout:g} s (reliability.lock_timeout_s). Wait for it to finish, "
                        "or raise the timeout.") from None
                if not told:
                    print(f"scenerec: waiting for the {resource} lock: another {_holder(path)}",
                          file=sys.stderr)
                    told = True
                time.sleep(_POLL_S)
        if not shared:  # who holds it, for the waiters' message
            info = {"what": what, "pid": os.getpid(), "host": socket.gethostname(),
                    "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
        held[resource] = 1
        try:
            yield path
        finally:
            held.pop(resource, None)
            if not shared:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
