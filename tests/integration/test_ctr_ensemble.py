"""`ctr.model: ensemble` through the platform's paths on a tiny project: its members (a neural
CoFARS model and LightGBM, each a seed bag of two) train, the weights are chosen on validation, it
is saved as one model folder, registered, reloaded, and scores through the pyfunc and the online
service alike (each CoFARS network from its own served state)."""
import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from components import steps, tracking
from tests.factories import featured_project, project_cwd, served_request

pytestmark = pytest.mark.slow
pytest.importorskip("lightgbm")


def test_ensemble_trains_registers_and_serves(tmp_path):
    params = featured_project(tmp_path / "project", {"generate": {"n_users": 200, "n_pois": 60, "n_requests": 1500},
                                                     "ctr": {"model": "ensemble", "epochs": 2,
                                                             "ensemble_members": ["cofars", "lightgbm"],
                                                             "ensemble_weight_step": 0.1,
                                                             "gbdt_variants": ["tabular+history"],
                                                             "seed_bag": 2}})
    with project_cwd(params.root):
        run_id = tracking.start_run(params, "ctr")
        summary = steps.ctr_step(params, run_id=run_id)
        assert summary["model"] == "ensemble" and 0.55 < summary["test.all.auc.ctr"] < 1
        folder = next(params.path("data_dir").rglob("ensemble.json")).parent
        meta = json.loads((folder / "ensemble.json").read_text())
        # Each member a bag of two seeds, sharing the member's weight.
        assert meta["members"] == ["cofars", "cofars.seed1", "lightgbm", "lightgbm.seed1"]
        for task in ("ctr", "ctcvr"):
            w = meta["weights"][task]
            assert len(w) == 4 and abs(sum(w) - 1) < 1e-9 and all(round(x * 20, 6).is_integer() for x in w)
            assert w[0] == w[1] and w[2] == w[3]
        assert (folder / "members" / "cofars.seed1" / "model.pt").exists()
        assert (folder / "members" / "lightgbm.seed1" / "gbdt_ctr.txt").exists()
        # The ensemble is never worse on validation than its best member (a member alone is on the grid).
        alone = meta["info"]["members_valid_auc"]
        logged = mlflow.get_run(run_id).data.metrics  # the members' curves and the chosen weights
        assert {"train.cofars.valid_auc_ctr", "train.weight.ctr.cofars", "train.weight.ctcvr.lightgbm"} <= set(logged)
        assert abs(logged["train.weight.ctr.cofars"] - 2 * meta["weights"]["ctr"][0]) < 1e-9
        from components.ctr import families
        from components.ctr.data import build_dataset
        from components.ctr.serving import CTRScorer

        scorer = CTRScorer.load(folder)
        ds = build_dataset(params)
        valid = families.scores(scorer.model, ds.valid, ds, params.ctr)
        from components.ctr.metrics import auc

        assert auc(valid["click"], valid["ctr"]) >= max(a["ctr"] for a in alone.values()) - 1e-9
        result = steps.ctr_register_step(params, run_id=tracking.start_run(params, "register"))
        if not result["promoted"]:  # a 2-epoch member may miss the floor; serving is what is tested here
            from components import registry

            registry.promote(params, params.ctr.registered_name, result["version"], reason="test", by="test")
        model = mlflow.pyfunc.load_model(f"models:/{params.ctr.registered_name}@champion")
        req, body = served_request(params, 5)
        scores = model.predict(req)
        assert scores["poi_id"].tolist() == req["poi_id"].tolist()
        assert np.all((scores["ctcvr"] > 0) & (scores["ctcvr"] <= scores["ctr"]) & (scores["ctr"] < 1))
        from fastapi.testclient import TestClient

        from components.serve.app import create_app

        with TestClient(create_app(params, watch=False)) as client:
            r = client.post("/score", json=body)
            assert r.status_code == 200, r.text
            np.testing.assert_allclose([s["ctr"] for s in r.json()["scores"]], scores["ctr"].to_numpy(), rtol=1e-5)
            # The CoFARS member from its served per-user state (what /score does) = over the history.
            from components.serve.online import OnlineFeatures, behavior_store
            from components.serve.schema import parse_request
            from components.serve.scoring import StateCache, score_request, served_nets

            served_model = client.app.state.holder.current
            members = served_model.scorer.model.members
            assert served_nets(served_model.scorer.model) == [members["cofars"], members["cofars.seed1"]]
            online, store, states = OnlineFeatures(params), behavior_store(params), StateCache()
            users = pd.read_parquet(params.path("curated_dir") / "behaviors.parquet")["user_id"].value_counts()
            for user in users.index[:3].astype(str):
                req_u = parse_request({**body, "user_id": user}, 100)
                a = score_request(served_model, req_u, online, store, states)
                b = score_request(served_model, req_u, online, store, None)
                np.testing.assert_allclose([s["ctr"] for s in a["scores"]], [s["ctr"] for s in b["scores"]],
                                           rtol=1e-5, atol=1e-6)
            assert len(states.items) == 6  # a state per user and CoFARS network
