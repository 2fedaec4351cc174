"""Pretraining under DDP: 2 CPU processes (gloo, via torchrun) take the same steps as 1 process
with the same global batch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from components.config import load_params
from components.llm.corpus import build_corpus
from tests.factories import make_llm_project

pytestmark = pytest.mark.slow


def _weights(root):
    from safetensors.torch import load_file

    return load_file(str(root / "data" / "llm" / "pretrained" / "model.safetensors"))


def test_two_processes_match_one(tmp_path):
    single = make_llm_project(tmp_path / "single", llm={"steps": 20, "checkpoint_every": 10})
    build_corpus(load_params(single / "params.yaml"))
    ddp = tmp_path / "ddp"
    shutil.copytree(single, ddp)  # same corpus and tokenizer, its own checkpoints and model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ddp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "components.llm.pretrain", "--params", "params.yaml", "--metrics-out", "metrics.json"]
    run = subprocess.run(cmd, cwd=ddp, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    ddp_metrics = json.loads((ddp / "metrics.json").read_text())

    from components.llm.pretrain import pretrain

    one = pretrain(load_params(single / "params.yaml"))
    assert ddp_metrics["processes"] == 2 and one["processes"] == 1
    assert ddp_metrics["steps"] == one["steps"] == 20
    # Same data, same steps; only the order of float sums differs (two half-batch means, averaged).
    assert ddp_metrics["loss"] == pytest.approx(one["loss"], rel=1e-3)
    assert ddp_metrics["heldout_ppl_after"] == pytest.approx(one["heldout_ppl_after"], rel=1e-3)
    a, b = _weights(single), _weights(ddp)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-3, atol=1e-4), (name, (a[name] - b[name]).abs().max())
