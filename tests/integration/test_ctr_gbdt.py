"""The GBDT family through the platform's paths on a tiny project: `scenerec ctr --model lightgbm`
trains and evaluates beside the oracle, registers through the same registry step, and the
registered pyfunc scores a request like the neural models' does, and so does the online service
(`scenerec serve`: Feast online reads, the behaviour store)."""
import mlflow
import numpy as np
import pytest

from components import steps, tracking
from tests.factories import featured_project, project_cwd, served_request

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
        req, body = served_request(params, 5)
        scores = model.predict(req)
        assert scores["poi_id"].tolist() == req["poi_id"].tolist()
        assert np.all((scores["ctr"] > 0) & (scores["ctr"] < 1))
        assert np.all((scores["ctcvr"] > 0) & (scores["ctcvr"] <= scores["ctr"]))
        assert scores["ctr"].nunique() > 1  # the trees tell the candidates apart
        from fastapi.testclient import TestClient

        from components.serve.app import create_app

        with TestClient(create_app(params, watch=False)) as client:
            assert client.get("/ready").json()["ready"] is True, client.get("/ready").json()
            r = client.post("/score", json=body)
            assert r.status_code == 200, r.text
            served = r.json()["scores"]
            assert [s["poi_id"] for s in served] == req["poi_id"].tolist()
            assert all(0 < s["ctcvr"] <= s["ctr"] < 1 for s in served)
            assert len({s["ctr"] for s in served}) > 1
            # Feast's online rows and the behaviour store give the trees the pyfunc's inputs.
            np.testing.assert_allclose([s["ctr"] for s in served], scores["ctr"].to_numpy(), rtol=1e-5)
