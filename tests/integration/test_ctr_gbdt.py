"""The GBDT family through the platform's paths on a tiny project: `scenerec ctr --model lightgbm`
trains and evaluates beside the oracle, registers through the same registry step, and the
registered pyfunc scores a request like the neural models' does."""
import os

import mlflow
import numpy as np
import pandas as pd
import pytest

from components import steps, tracking
from components.config import load_params
from tests.factories import make_project

pytestmark = pytest.mark.slow
pytest.importorskip("lightgbm")


def test_lightgbm_trains_registers_and_serves(tmp_path):
    root = make_project(tmp_path / "project", {"generate": {"n_users": 200, "n_pois": 60, "n_requests": 1500},
                                               "ctr": {"model": "lightgbm"}})
    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = load_params(root / "params.yaml")
        steps.generate_step(params)
        steps.ingest_step(params)
        steps.features_step(params)
        summary = steps.ctr_step(params, run_id=tracking.start_run(params, "ctr"))
        assert summary["model"] == "lightgbm"
        assert 0.55 < summary["test.all.auc.ctr"] < 1 and 0 < summary["test.all.oracle_auc.ctr"] <= 1
        result = steps.ctr_register_step(params, run_id=tracking.start_run(params, "register"))
        assert result["promoted"], result["reason"]
        model = mlflow.pyfunc.load_model(f"models:/{params.ctr.registered_name}@champion")
        pois = pd.read_parquet(params.path("curated_dir") / "pois.parquet")["poi_id"].tolist()
        imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet").iloc[0]
        req = pd.DataFrame({"request_id": "r1", "user_id": imp["user_id"], "poi_id": pois[:5][::-1],
                            "ts": str(imp["ts"]), "geohash": imp["geohash"], "location_type": imp["location_type"],
                            "weather": imp["weather"], "temperature_c": imp["temperature_c"],
                            "is_holiday": bool(imp["is_holiday"])})
        scores = model.predict(req)
        assert scores["poi_id"].tolist() == req["poi_id"].tolist()
        assert np.all((scores["ctr"] > 0) & (scores["ctr"] < 1))
        assert np.all((scores["ctcvr"] > 0) & (scores["ctcvr"] <= scores["ctr"]))
        assert scores["ctr"].nunique() > 1  # the trees tell the candidates apart
    finally:
        os.chdir(cwd)
