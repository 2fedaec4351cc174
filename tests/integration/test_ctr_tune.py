"""`scenerec tune` on a tiny project: Optuna trials on the validation split, each an MLflow run,
the best knobs written to params.tuned.yaml and picked up by the next load_params."""
import mlflow
import pytest
import yaml

from components import steps, tracking
from components.config import load_params
from components.tracking import tracking_uri
from tests.factories import featured_project, project_cwd

pytestmark = pytest.mark.slow
pytest.importorskip("optuna")


def test_tune_logs_every_trial_and_writes_the_override(tmp_path):
    params = featured_project(tmp_path / "project", {"generate": {"n_users": 120, "n_pois": 40, "n_requests": 600},
                                                     "ctr": {"model": "id_only", "epochs": 2}})
    root = params.root
    with project_cwd(root):
        with tracking.tracked_run(params, "tune") as run_id:
            out = steps.tune_step(params, trials=2, budget_seconds=600, run_id=run_id)
        assert out["trials"] == 2 and 0 < out["best_valid_auc_ctr"] < 1
        written = yaml.safe_load((root / "params.tuned.yaml").read_text())
        assert set(written["ctr"]) == set(out["best"])
        again = load_params(root / "params.yaml")
        assert again.ctr.lr == pytest.approx(out["best"]["lr"])
        assert again.ctr.embed_dim == out["best"]["embed_dim"]
        runs = mlflow.MlflowClient(tracking_uri(params)).search_runs(
            [mlflow.get_experiment_by_name(params.tracking.experiment).experiment_id],
            f"tags.mlflow.parentRunId = '{run_id}'")
        assert len(runs) == 2
        assert all("valid.auc.ctr" in r.data.metrics and "ctr.lr" in r.data.params for r in runs)
        # the first trial is the configuration as it stood: tuning never writes worse knobs than that
        baseline = [r for r in runs if float(r.data.params["ctr.lr"]) == params.ctr.lr
                    and float(r.data.params["ctr.text_dropout"]) == params.ctr.text_dropout]
        assert len(baseline) == 1
        assert out["best_valid_auc_ctr"] >= round(baseline[0].data.metrics["valid.auc.ctr"], 5)
