"""What every SceneRec training loop shares: device and precision, DDP through `accelerate`,
seeded determinism, checkpoints every N steps and resume from the last one.

Launch on one process as a plain function call; on several with
``accelerate launch -m components.cli pretrain`` or ``torchrun --nproc_per_node N -m components.cli pretrain``
(gloo on CPU, NCCL on GPU): ``Accelerator`` reads the environment those launchers set.
"""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

_CKPT = re.compile(r"^step_(\d+)$")


def make_accelerator(mixed_precision: str = "auto", seed: int = 0):
    """An ``Accelerator`` on CUDA with bf16 autocast when there is a GPU, on the CPU in fp32 otherwise."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(seed, device_specific=False)
    return acc


def checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """Checkpoints in ``ckpt_dir`` as (step, path), oldest first."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(ckpt_dir).iterdir() if (m := _CKPT.match(p.name)) and p.is_dir()]
    return sorted(found)


def save_checkpoint(accelerator, ckpt_dir: Path, step: int, keep: int = 2) -> Path:
    """Save model, optimizer, scheduler and RNG states (``accelerator.save_state``); keep the last ``keep``."""
    path = Path(ckpt_dir) / f"step_{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for _, old in checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def resume(accelerator, ckpt_dir: Path) -> int:
    """Load the newest checkpoint into the prepared objects; return its step (0 when none)."""
    found = checkpoints(ckpt_dir)
    if not found:
        return 0
    step, path = found[-1]
    accelerator.load_state(str(path))
    return step


def reset_stale_checkpoints(ckpt_dir: Path, fingerprint: str, main: bool = True) -> bool:
    """Keep ``ckpt_dir`` only if it belongs to the run ``fingerprint`` names (knobs, seed, data);
    otherwise delete it, since resuming another run's checkpoint would mix two runs. The main
    process alone touches the folder. Returns whether stale checkpoints were dropped."""
    if not main:
        return False
    ckpt_dir = Path(ckpt_dir)
    stamp = ckpt_dir / "fingerprint.txt"
    stale = ckpt_dir.exists() and (not stamp.exists() or stamp.read_text().strip() != fingerprint)
    if stale:
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return stale


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


@contextmanager
def cpu_threads(n: int | None):
    """Run the body with ``n`` torch CPU threads, then restore the old setting (0/None, or a GPU:
    leave torch alone). On cores shared with other jobs OpenMP workers spin-wait for each other,
    and one thread ran several times faster than two here."""
    if not n or torch.cuda.is_available():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
