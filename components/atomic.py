"""Writes that appear whole or not at all, and the crash points the tests kill a run at.

Every output file goes to a hidden temp name beside its target and is renamed over it (POSIX
rename is atomic on one file system), so a reader or a killed run never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Callable

CRASH_ENV = "SCENEREC_CRASH_AT"
PAUSE_ENV = "SCENEREC_PAUSE_AT"  # "name=seconds": hold a run there, so a test can start a rival
TMP_GLOB = ".*.tmp"


def file_digest(path: Path, h=None) -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks; ``h`` a hashlib object to update (SHA-256 by default)."""
    h = h if h is not None else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def crash_point(name: str) -> None:
    """Die here with SIGKILL (no cleanup, like ``kill -9``) when ``$SCENEREC_CRASH_AT`` is ``name``,
    or sleep when ``$SCENEREC_PAUSE_AT`` is ``name=seconds``: the hooks the crash and concurrency
    tests use to stop or hold a run between two writes."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause, _, seconds = os.environ.get(PAUSE_ENV, "").partition("=")
    if pause == name:
        time.sleep(float(seconds or 1))


def temp_path(path: Path) -> Path:
    """A hidden, unique temp name beside ``path`` (same file system, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` then rename tmp over ``path``; the temp file is removed if ``write`` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:  # the data reaches the disk before the name points at it
            os.fsync(f.fileno())
        crash_point(f"before_rename:{path.name}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Atomic ``Path.write_text``."""
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json_atomic(path: Path, data) -> Path:
    """Atomic JSON file (indented, keys sorted, non-JSON numbers as floats)."""
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


def write_parquet_atomic(df, path: Path) -> Path:
    """Atomic ``DataFrame.to_parquet`` (no index)."""
    return write_atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


def sweep_temp_files(folder: Path) -> list[Path]:
    """Remove the temp files a killed writer left in ``folder`` (not recursive); call it while
    holding the folder's lock, so no live writer's temp file is taken. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = [p for p in folder.glob(TMP_GLOB) if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
