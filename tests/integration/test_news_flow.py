"""The `news` flow on a real (temporary) Prefect server with MLflow: a MIND folder given by path
trains, evaluates per impression and registers `news-perconet` with champion / challenger rules."""
import os

import mlflow
import pandas as pd
import pytest

from components import registry
from components.config import load_params
from components.news.mind import generate_mind
from components.tracking import tracking_uri
from tests.factories import make_project, mean_impression_auc

pytestmark = pytest.mark.slow


def test_news_flow_on_a_mind_folder_given_by_path(prefect_harness, tmp_path):
    from flows.news import news

    root = make_project(tmp_path / "project")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = load_params(root / "params.yaml")
        folder = tmp_path / "MINDsmall"  # a MIND folder outside the project, train/ and dev/ as MIND ships them
        generate_mind(folder, params.news, seed=3)
        first = news(mind_dir=str(folder), params_file=str(root / "params.yaml"))
        name = first["registry"]["name"]  # an override run (mind_dir) registers in its own namespace
        if not first["registry"]["promoted"]:
            # The tiny world's one-epoch model sits near chance: the promotion floor holds it back.
            assert first["registry"]["reason"].startswith("below the promotion floor"), first["registry"]["reason"]
            registry.promote(params, name, first["registry"]["version"], reason="test: tiny model", by="test")

        second = news(mind_dir=str(folder), params_file=str(root / "params.yaml"))
        assert not second["registry"]["promoted"], "the same model again is not better by the margin"

        client = mlflow.MlflowClient(tracking_uri(params))
        assert str(client.get_model_version_by_alias(name, "champion").version) == first["registry"]["version"]
        assert str(client.get_model_version_by_alias(name, "challenger").version) == second["registry"]["version"]

        # The registered model ranks a user's candidates and names the persona entities behind them.
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        beh = pd.read_csv(folder / "dev" / "behaviors.tsv", sep="\t", header=None)
        hist, imps = beh.iloc[0, 3], beh.iloc[0, 4]
        cands = " ".join(t.split("-")[0] for t in imps.split())
        out = model.predict(pd.DataFrame({"history": [hist if isinstance(hist, str) else ""], "candidates": [cands]}))
        assert sorted(out["news_id"]) == sorted(cands.split())
        assert out["score"].is_monotonic_decreasing
        assert "persona" in out

        # The reported dev AUC is what the registered model gives, recomputed independently (sklearn,
        # mean over the dev impressions with a click and a non-click).
        n, mean_auc = mean_impression_auc(model, folder / "dev")
        assert n == first["metrics"]["dev.impressions"] > 10
        assert mean_auc == pytest.approx(first["metrics"]["dev.auc"], abs=1e-6)
    finally:
        os.chdir(cwd)
