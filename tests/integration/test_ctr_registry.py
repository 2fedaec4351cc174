"""The CTR stage on a tiny project with the real Feast, MLflow registry and pyfunc: training and
evaluation beside the oracle, champion / challenger by margin, manual promotion, rollback, audit."""
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from components import registry, steps
from components.tracking import tracking_uri
from tests.factories import featured_project, project_cwd, scoring_request

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """generate → ingest → features on tiny data, then one ID-only CTR model (no LLM stages needed)."""
    # Enough requests that a trained model ranks clearly better than chance, so "worse" means worse.
    params = featured_project(tmp_path_factory.mktemp("ctr") / "project",
                              {"generate": {"n_users": 200, "n_pois": 60, "n_requests": 2000},
                               "ctr": {"model": "id_only", "epochs": 6}})
    with project_cwd(params.root):
        yield params


def _run(params, name):
    from components import tracking

    return tracking.start_run(params, name)


def test_training_reports_metrics_beside_the_oracle(project):
    summary = steps.ctr_step(project, run_id=_run(project, "ctr"))
    # Better than chance by a margin, and below the oracle (each row's true probability) by some.
    assert 0.55 < summary["test.all.auc.ctr"] < summary["test.all.oracle_auc.ctr"]
    assert 0.5 < summary["test.all.auc.ctcvr"] < summary["test.all.oracle_auc.ctcvr"]
    # The reported figures are what the saved model gives when it scores the test rows again.
    from components.ctr.serving import CTRScorer
    from components.ctr.stage import compare_on_test

    model_dir = project.path("ctr_dir") / "model"
    again = compare_on_test(project, {"saved": CTRScorer.load(model_dir)}, model_dir)["saved"]
    for task in ("ctr", "ctcvr"):
        assert again[f"all.auc.{task}"] == pytest.approx(summary[f"test.all.auc.{task}"], abs=1e-3)
    assert "oracle" in summary["headline"]
    report = (project.path("reports_dir") / "ctr.json").read_text()
    assert "test.all.oracle_auc.ctr" in report
    roc = pd.read_csv(project.path("reports_dir") / "plots" / "ctr_roc.csv")
    assert {"fpr", "ctr", "ctcvr"} <= set(roc.columns) and len(roc) > 10
    model_dir = project.path("ctr_dir") / "model"
    if project.ctr.seed_bag > 1:  # a seed bag: each network's weights in its own member folder
        assert summary["train.bag_members"] == project.ctr.seed_bag and summary["train.bag_seconds"] > 0
        members = json.loads((model_dir / "ensemble.json").read_text())["members"]
        assert members == [project.ctr.model] + [f"{project.ctr.model}.seed{i}" for i in range(1, project.ctr.seed_bag)]
        assert all((model_dir / "members" / m / "model.pt").exists() for m in members)
    else:
        assert (model_dir / "model.pt").exists()


def test_champion_challenger_promote_rollback(project):
    name = project.ctr.registered_name
    c = mlflow.MlflowClient(tracking_uri(project))
    # Given a fresh registry, a barely trained first model does not clear the floor (chance and the
    # PoI-popularity baseline on the same test rows, by ctr.promotion_floor_margin): it stays unpromoted.
    worse = project.model_copy(update={"ctr": project.ctr.model_copy(update={"lr": 1e-7, "epochs": 1})})
    steps.ctr_step(worse, run_id=_run(worse, "ctr-worse"))
    floored = steps.ctr_register_step(worse, run_id=_run(worse, "register-floored"))
    assert not floored["promoted"] and floored["champion"] is None
    assert floored["reason"].startswith("below the promotion floor") and "popularity baseline" in floored["reason"]
    baseline = floored["baseline_metrics"]["all.auc.ctr"]
    assert 0.5 < baseline < 1, "PoI popularity is a real (better than chance) baseline in this world"

    steps.ctr_step(project, run_id=_run(project, "ctr"))
    first = steps.ctr_register_step(project, run_id=_run(project, "register"), flow_run_id="flow-run-1")
    assert first["promoted"] and first["reason"] == "no champion yet", first["reason"]
    assert first["challenger_metrics"]["all.auc.ctr"] > baseline + project.ctr.promotion_floor_margin
    assert str(c.get_model_version_by_alias(name, "champion").version) == first["version"]
    # The version names what was trained and from what; its metrics stay on the run.
    tags = c.get_model_version(name, first["version"]).tags
    assert tags["architecture"] == "id_only" and tags["model_family"] == "ctr"
    assert tags["prefect_flow_run_id"] == "flow-run-1" and tags["params_hash"] and tags["data_version"]
    assert not [k for k in tags if k.startswith(("test.", "all."))]

    # The registered pyfunc scores a request: one row per candidate, in the caller's order.
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    req = scoring_request(project, 6)
    scores = model.predict(req)
    assert scores["poi_id"].tolist() == req["poi_id"].tolist()
    assert np.all((scores["ctr"] > 0) & (scores["ctr"] < 1) & (scores["ctcvr"] <= scores["ctr"]))

    # The first worse model trained again is the same model on the same data: its version is reused.
    steps.ctr_step(worse, run_id=_run(worse, "ctr-worse"))
    again = steps.ctr_register_step(worse, run_id=_run(worse, "register-worse-again"))
    assert again["reused"] and again["version"] == floored["version"] and again["alias"] == "challenger"
    # Another worse challenger (barely trained, another rate) is registered but never takes champion.
    worse = worse.model_copy(update={"ctr": worse.ctr.model_copy(update={"lr": 3e-7})})
    steps.ctr_step(worse, run_id=_run(worse, "ctr-worse-2"))
    second = steps.ctr_register_step(worse, run_id=_run(worse, "register-worse"))
    assert not second["promoted"], second["reason"]
    assert second["challenger_metrics"]["all.auc.ctr"] < second["champion_metrics"]["all.auc.ctr"] + 0.002
    assert str(c.get_model_version_by_alias(name, "champion").version) == first["version"]
    assert str(c.get_model_version_by_alias(name, "challenger").version) == second["version"]

    # Manual promotion leaves an audit trail and remembers the previous champion ...
    registry.promote(project, name, second["version"], reason="canary looked fine", by="alice")
    mv = c.get_model_version(name, second["version"])
    assert str(c.get_model_version_by_alias(name, "champion").version) == second["version"]
    assert mv.tags["previous_champion"] == first["version"]
    assert mv.tags["last_action_by"] == "alice" and mv.tags["last_action_reason"] == "canary looked fine"

    # ... which rollback restores.
    out = registry.rollback(project, name, reason="CTR dropped online", by="bob")
    assert out["champion"] == first["version"] and out["rolled_back"] == second["version"]
    assert str(c.get_model_version_by_alias(name, "champion").version) == first["version"]
    trail = registry.history(project, name)
    actions = [r["entry"].split()[0] for r in trail]
    assert "action=promote" in actions and "action=rollback" in actions and "action=challenger" in actions
    assert any("by=bob" in r["entry"] and "reason=CTR dropped online" in r["entry"] for r in trail)

    # A rollback with nothing before the first champion is refused clearly.
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        registry.rollback(project, name, reason="again")


class _Crash(Exception):
    pass


def test_training_resumes_from_the_last_epoch_and_matches_an_uninterrupted_run(project, tmp_path):
    import torch

    from components.ctr.data import build_dataset
    from components.ctr.train import train_model

    cfg = project.ctr.model_copy(update={"epochs": 3, "patience": 3})
    ds = build_dataset(project)
    straight, _ = train_model("id_only", ds, cfg, seed=1, progress=False)

    def crash_after_two(row, epoch):
        if epoch == 2:
            raise _Crash

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Crash):
        train_model("id_only", ds, cfg, seed=1, ckpt_dir=ckpt, log=crash_after_two, progress=False)
    # The crash happened in the epoch-2 log call, before its checkpoint: epoch 1 is what is saved.
    resumed, info = train_model("id_only", ds, cfg, seed=1, ckpt_dir=ckpt, progress=False)
    assert info["resumed_from_epoch"] == 1 and info["epochs_run"] == 3
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-5), k
