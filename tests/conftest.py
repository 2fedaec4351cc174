"""Shared fixtures: a throw-away SceneRec project (params, DVC, Feast repo, git) on tiny data."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.cli import OFFLINE_ENV
from tests.factories import REPO, TINY, make_project  # noqa: F401  (older imports of tests.conftest keep working)

# The same offline, no-telemetry defaults as the `scenerec` command.
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)
# Tests never write to a developer's real MLflow store.
os.environ.pop("MLFLOW_TRACKING_URI", None)


@pytest.fixture(autouse=True)
def _own_mlflow_store():
    """tracking.configure exports MLFLOW_TRACKING_URI for child processes, and tracking_uri prefers
    it; without this, a test would log into the store of the project a session- or module-scoped
    fixture configured before it. Each test starts with none: its project's own store is used."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


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


# A world big enough that a trained CTR model ranks clearly better than chance (the size the CTR
# registry tests use), trained briefly: a CoFARS model on ID features only (no LLM stages needed).
CTR_WORLD = {"generate": {"n_users": 200, "n_pois": 60, "n_requests": 2000}, "ctr": {"model": "cofars", "epochs": 4}}


@dataclass
class TrainedCTR:
    """A trained CTR model with what scoring a hand-made request needs."""

    params: object  # components.config.Params
    sources: object  # components.ctr.data.CTRSources
    dataset: object  # components.ctr.data.CTRDataset
    scorer: object  # components.ctr.serving.CTRScorer
    info: dict  # train_model's history


@pytest.fixture(scope="session")
def trained_ctr(tmp_path_factory) -> TrainedCTR:
    """generate → ingest (GX) → features (Feast) on ``CTR_WORLD``, then ``ctr.model`` trained on it, once
    per session (slow: minutes on two shared cores)."""
    from components import steps
    from components.config import load_params
    from components.ctr.data import build_dataset, load_sources
    from components.ctr.serving import CTRScorer
    from components.ctr.train import train_model

    root = make_project(tmp_path_factory.mktemp("ctr_world") / "project", CTR_WORLD)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = load_params(root / "params.yaml")
        for step in (steps.generate_step, steps.ingest_step, steps.features_step):
            step(params)
        sources = load_sources(params)
        ds = build_dataset(params, sources)
        model, info = train_model(params.ctr.model, ds, params.ctr, seed=params.seed, progress=False)
    finally:
        os.chdir(cwd)
    return TrainedCTR(params, sources, ds, CTRScorer(model, ds.encoder, params.ctr, params.features), info)
