"""Shared fixtures: a throw-away SceneRec project (params, DVC, Feast repo, git) on tiny data."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from components.cli import OFFLINE_ENV

REPO = Path(__file__).resolve().parents[1]

# Small enough for seconds per stage, large enough that every table has cold-start rows,
# clicks and orders.
TINY = {
    "generate": {
        "n_users": 60,
        "n_pois": 40,
        "n_requests": 300,
        "impressions_per_request": 5,
        "mean_behaviors_per_user": 30,
        "days": 20,
    },
    # A 2-layer, 32-wide Llama and a few steps per LLM stage: seconds, not minutes.
    "llm": {"vocab_size": 400, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
            "seq_len": 64, "batch_size": 4, "steps": 8, "warmup_steps": 2, "checkpoint_every": 4,
            "eval_every": 4, "eval_blocks": 4},
    "contrastive": {"pairs_per_strategy": 40, "heldout_pairs": 20, "head_hidden": 32, "embed_dim": 16,
                    "max_length": 64, "steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                    "log_every": 2},
    "distill": {"steps": 16, "warmup_steps": 2, "recovery_steps": 4, "prune_every": 2, "seq_len": 64,
                "batch_size": 4, "lr_warmup_steps": 2, "checkpoint_every": 8, "log_every": 4, "eval_blocks": 4},
    "ctr": {"epochs": 2, "batch_requests": 32, "max_history": 32, "embed_dim": 8, "mlp_hidden": [16, 8],
            "tower_hidden": [8], "attention_hidden": [8], "larr_d_model": 8, "collab_dim": 8, "n_prototypes": 4,
            "max_contexts": 8, "max_subsequence": 8, "sim_max": 8, "short_term": 4},
    "news": {"n_users": 40, "n_news": 200, "n_entities": 30, "train_impressions": 150, "dev_impressions": 60,
             "impression_size": 10, "epochs": 1, "embed_dim": 16, "num_heads": 2, "attention_hidden": 16,
             "batch_size": 32, "max_history": 10, "history_len": 10},
    # The tiny teacher (no distillation needed), a handful of steps and scored requests.
    "hkfr": {"base": "pretrained", "steps": 6, "batch_size": 4, "train_examples": 40, "max_knowledge_tokens": 48,
             "max_length": 96, "eval_requests": 20, "eval_option_examples": 10, "embedding_dim": 4,
             "checkpoint_every": 3, "log_every": 2, "snapshot_days": 5, "knowledge_max_chars": 300},
}

# The same offline, no-telemetry defaults as the `scenerec` command.
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
# Tests never write to a developer's real MLflow store.
os.environ.pop("MLFLOW_TRACKING_URI", None)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_project(dest: Path, overrides: dict | None = None, git: bool = False) -> Path:
    """Copy what a pipeline run needs into ``dest`` and write a tiny params.yaml there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "feature_repo", "components"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(_merge(params, TINY), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True, text=True)  # noqa: E731
        run("git", "init", "-q")
        run("git", "config", "user.email", "test@scenerec.invalid")
        run("git", "config", "user.name", "test")
        run("dvc", "init", "-q")
        (dest / ".gitignore").write_text("/data/\n/mlflow.db\n/mlartifacts/\n")
        run("git", "add", "-A")
        run("git", "commit", "-qm", "project")
    return dest


@pytest.fixture(autouse=True)
def _own_mlflow_store():
    """tracking.configure exports MLFLOW_TRACKING_URI for child processes; without this, a test
    would log into the store of the project of the test before it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture
def tiny_project(tmp_path) -> Path:
    """A tiny project folder (no git); chdir into it for the test."""
    root = make_project(tmp_path / "project")
    cwd = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(cwd)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real, temporary Prefect server for the whole session (flows run against it)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
