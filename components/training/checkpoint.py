"""The one checkpoint format of every SceneRec training run, and its one fingerprint rule.

A checkpoint is a folder ``<ckpt_dir>/step_<N>`` holding, all from the same moment:

- ``model.safetensors``  the model's weights (``best.safetensors``: the best weights so far, with early stopping)
- ``state.pt``           optimizer, LR scheduler and the method's own state (e.g. HomoDistil's masks):
                         state dicts of tensors and numbers, loadable with ``weights_only=True``
- ``rng_<rank>.pt``      each process's torch / CUDA / numpy / python RNG states
- ``trainer.json``       where the loop stands (step, epoch, history, best value, patience count)
- ``manifest.json``      written last: the run's fingerprint and the SHA-256 of every file above

It is written into ``.tmp_step_<N>``, fsynced and renamed: a folder named ``step_<N>`` is complete
or absent. Resume takes the newest checkpoint whose manifest matches both the run's fingerprint and
its files; a partial or corrupt one is skipped with a warning, one of another run is deleted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from components.atomic import file_digest

log = logging.getLogger(__name__)

MANIFEST, MODEL, BEST, STATE, TRAINER = "manifest.json", "model.safetensors", "best.safetensors", "state.pt", "trainer.json"
_STEP = re.compile(r"^step_(\d+)$")
_TMP = ".tmp_step_"


def fingerprint(knobs: Mapping[str, Any], *data) -> str:
    """The run a checkpoint belongs to: SHA-256 of the knobs that decide training (JSON) and of its
    data (files, folders' files, data frames, bytes or strings). Same fingerprint, same trajectory."""
    import pandas as pd

    h = hashlib.sha256(json.dumps(knobs, sort_keys=True, default=str).encode())
    for d in data:
        if isinstance(d, pd.DataFrame):
            h.update(pd.util.hash_pandas_object(d, index=False).to_numpy().tobytes())
        elif isinstance(d, Path):
            for f in sorted(d.rglob("*")) if d.is_dir() else [d]:
                if f.is_file():
                    h.update(f.name.encode())
                    h.update(file_digest(f).encode())
        elif isinstance(d, bytes):
            h.update(d)
        else:
            h.update(str(d).encode())
    return h.hexdigest()[:16]


def checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders in ``ckpt_dir`` as (step, path), oldest first (intact or not)."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return sorted(found)


def check(path: Path, fp: str | None = None) -> str | None:
    """Why the checkpoint at ``path`` cannot be resumed (None: it can): no or bad manifest, another
    run's fingerprint (when ``fp`` is given), a file missing or changed."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return f"no readable {MANIFEST} ({e.__class__.__name__}): written partially"
    if fp is not None and manifest.get("fingerprint") != fp:
        return "another run (configuration or data changed)"
    for name, digest in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if file_digest(f) != digest:
            return f"{name} does not match its SHA-256 in {MANIFEST}"
    return None


def newest_intact(ckpt_dir: Path, fp: str) -> Path | None:
    """The newest checkpoint of run ``fp`` that is complete and unchanged; None when there is none."""
    for step, path in reversed(checkpoints(ckpt_dir)):
        why = check(path, fp)
        if why is None:
            return path
        log.warning("%s: skipped, %s", path, why)
    return None


def drop_stale(ckpt_dir: Path, fp: str, fresh: bool = False) -> list[Path]:
    """Delete leftover temporary folders, and checkpoints of another run (all of them when ``fresh``);
    resuming another run's checkpoint would mix two runs. Returns the checkpoints deleted."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    for p in ckpt_dir.iterdir():
        if p.name.startswith(_TMP):
            shutil.rmtree(p, ignore_errors=True)
    dropped = []
    for _, path in checkpoints(ckpt_dir):
        try:
            theirs = json.loads((path / MANIFEST).read_text()).get("fingerprint")
        except (OSError, ValueError):
            continue  # partial: skipped at resume, overwritten or rotated out later
        if fresh or theirs != fp:
            shutil.rmtree(path, ignore_errors=True)
            dropped.append(path)
    return dropped


def tmp_dir(ckpt_dir: Path, step: int) -> Path:
    """Where every process writes its part of the checkpoint of ``step`` before it is published."""
    return Path(ckpt_dir) / f"{_TMP}{step}"


def write_rng(folder: Path, rank: int) -> None:
    """This process's RNG states into ``folder/rng_<rank>.pt`` (called by every process)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _tuples_to_lists(random.getstate()),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    _save(state, folder / f"rng_{rank}.pt")


def publish(folder: Path, ckpt_dir: Path, step: int, fp: str, model: torch.nn.Module, state: Mapping[str, Any],
            trainer: Mapping[str, Any], best: Mapping[str, torch.Tensor] | None = None, keep: int = 2) -> Path:
    """Main process: write weights, state and trainer record into ``folder`` (the temporary folder the
    RNG files are already in), then the manifest, fsync, rename to ``step_<step>``, keep the newest ``keep``."""
    from safetensors.torch import save_file, save_model

    save_model(model, str(folder / MODEL))
    if best is not None:
        save_file({k: v.contiguous() for k, v in best.items()}, str(folder / BEST))
    _save(dict(state), folder / STATE)
    (folder / TRAINER).write_text(json.dumps(trainer, default=float))
    files = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
    for name in files:
        _fsync(folder / name)
    manifest = {"step": step, "fingerprint": fp, "files": {n: file_digest(folder / n) for n in files}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    _fsync(folder / MANIFEST)
    _fsync(folder)
    final = Path(ckpt_dir) / f"step_{step}"
    if final.exists():  # the same step saved again (e.g. a rerun after a corrupt newest checkpoint)
        shutil.rmtree(final)
    os.replace(folder, final)
    _fsync(Path(ckpt_dir))
    for _, old in checkpoints(ckpt_dir)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read(path: Path, model: torch.nn.Module, rank: int, device) -> dict:
    """Load the weights of checkpoint ``path`` into ``model`` and this process's RNG states; return
    ``{"state": ..., "trainer": ..., "best": weights or None}`` for the loop to restore."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(path / MODEL), strict=True, device=str(device))
    rng_file = path / f"rng_{rank}.pt"
    if rng_file.exists():  # a run resumed on more processes than it was saved from keeps its seeded RNG
        _restore_rng(torch.load(rng_file, weights_only=True))
    best = load_file(str(path / BEST), device=str(device)) if (path / BEST).exists() else None
    return {"state": torch.load(path / STATE, map_location="cpu", weights_only=True),
            "trainer": json.loads((path / TRAINER).read_text()), "best": best}


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_lists_to_tuples(state["python"]))


def _tuples_to_lists(x):
    return [_tuples_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _lists_to_tuples(x):
    return tuple(_lists_to_tuples(v) for v in x) if isinstance(x, list) else x


def _save(obj, path: Path) -> None:
    torch.save(obj, path)




def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
