"""Where a training run runs: device and precision through `accelerate`, DDP from the environment,
seeded determinism, CPU threads.

Launch on one process as a plain function call; on several with
``accelerate launch -m components.cli pretrain`` or ``torchrun --nproc_per_node N -m components.cli pretrain``
(gloo on CPU, NCCL on GPU): ``Accelerator`` reads the environment those launchers set (nanoGPT's
``RANK`` / ``WORLD_SIZE``), and only the main process logs, tracks and writes checkpoints.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch


def make_accelerator(mixed_precision: str = "auto", seed: int = 0):
    """An ``Accelerator`` on CUDA with bf16 autocast when there is a GPU, on the CPU in fp32 otherwise."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(seed, device_specific=False)
    return acc


def world_size() -> int:
    """Number of processes the launcher started (1 for a plain call)."""
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
