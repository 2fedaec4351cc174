"""The GBDT family through the platform's paths on a tiny project: `scenerec ctr --model lightgbm`
trains and evaluates beside the oracle, registers through the same registry step, and the
registered pyfunc scores a request like the neural models' does."""
import mlflow
import numpy as np
import pytest

from components import steps, tracking
from tests.factories import featured_project, project_cwd, scoring_request

pytestmark = pytest.mark.slow
pytest.importorskip("lightgbm")


def test_lightgbm_trains_registers_and_serves(tmp_path):
    params = featured_project(tmp_path / "project", {"generate": {"n_users": 200, "n_pois": 60, "n_requests": 1500},
                                                     "ctr": {"model": "lightgbm",
                                                             "gbdt_variants": ["tabular", "tabular+history"]}})
    with project_cwd(params.root):
        summary = steps.ctr_step(params, run_id=tracking.start_run(params, "ctr"))
        assert summary["model"] == "lightgbm"
        import json  # params.yaml's ctr.gbdt_* reach LightGBM: only the two variants asked for were tried

        info = json.loads(next(params.path("data_dir").rglob("gbdt.json")).read_text())["info"]
        assert sorted(info["variants"]) == ["tabular", "tabular+history"] and info["variant"] in info["variants"]
        assert 0.55 < summary["test.all.auc.ctr"] < 1 and 0 < summary["test.all.oracle_auc.ctr"] <= 1
        result = steps.ctr_register_step(params, run_id=tracking.start_run(params, "register"))
        assert result["promoted"], result["reason"]
        model = mlflow.pyfunc.load_model(f"models:/{params.ctr.registered_name}@champion")
        req = scoring_request(params, 5)
        scores = model.predict(req)
        assert scores["poi_id"].tolist() == req["poi_id"].tolist()
        assert np.all((scores["ctr"] > 0) & (scores["ctr"] < 1))
        assert np.all((scores["ctcvr"] > 0) & (scores["ctcvr"] <= scores["ctr"]))
        assert scores["ctr"].nunique() > 1  # the trees tell the candidates apart
