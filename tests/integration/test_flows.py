"""The Prefect flows on a real (temporary) Prefect server, with MLflow, GX and Feast for real."""
import shutil

import mlflow
import pandas as pd
import pytest
from prefect.client.orchestration import get_client

from components import registry
from components.config import load_params
from components.steps import STEPS
from components.tracking import tracking_uri
from tests.factories import mean_impression_auc

pytestmark = pytest.mark.slow


def _artifact_keys() -> set[str]:
    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key}


def test_pipeline_flow_end_to_end(prefect_harness, tiny_project):
    from flows.pipeline import pipeline

    result = pipeline(params_file=str(tiny_project / "params.yaml"))
    params = load_params(tiny_project / "params.yaml")

    # data flowed through every stage
    for table in ("pois", "users", "behaviors", "impressions"):
        assert (params.path("curated_dir") / f"{table}.parquet").exists()
    assert (params.path("features_dir") / "training_set.parquet").exists()
    assert result["features"]["rows.training_set"] > 0
    assert "SceneRec pipeline finished" in result["summary"]

    # online features for a known user and PoI
    from components.features.store import online_features

    online = online_features(params, result["example_user"], result["example_poi"], None)
    assert any(v is not None for k, v in online.items() if k not in ("user_id", "poi_id"))

    # MLflow: a parent run and nested step runs, tagged with code and data versions
    client = mlflow.MlflowClient(tracking_uri(params))
    exp = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([exp.experiment_id])
    names = {r.data.tags["scenerec.step"] for r in runs}
    # the llm flow opens an MLflow run per step, every other flow one run for its steps
    steps = {s.name if s.flow == "llm" else s.flow for s in STEPS.values()}
    assert {"pipeline"} | steps <= names
    parent = next(r for r in runs if r.data.tags["scenerec.step"] == "pipeline")
    children = {r.data.tags["scenerec.step"] for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == steps
    # named <flow>/<Prefect run name>[/<step>] and tagged with the Prefect flow run
    assert all(r.info.run_name.startswith(r.data.tags["scenerec.flow"] + "/") for r in runs)
    assert all(r.data.tags.get("prefect.flow_run_id") for r in runs)

    # both encoders registered; the scene embeddings are in the online store
    registered = {m.name for m in client.search_registered_models()}
    assert {"scene-encoder", "scene-encoder-student", params.ctr.registered_name,
            params.news.registered_name, params.hkfr.registered_name} <= registered
    # HKFR's and news's reported AUCs are recomputed independently (sklearn): HKFR's from its saved
    # test scores, news's by the registered news model on the dev impressions.
    from sklearn.metrics import roc_auc_score

    from components.hkfr.stage import eval_dir

    scored = pd.read_parquet(eval_dir(params) / "test_scores.parquet")
    assert result["hkfr"]["metrics"]["test.auc"] == pytest.approx(roc_auc_score(scored["label"], scored["p_yes"]))
    assert "HKFR:" in result["summary"]
    from components.news.stage import mind_dir

    news_version = result["news"]["registry"]["version"]  # champion or not (promotion floor)
    news_model = mlflow.pyfunc.load_model(f"models:/{params.news.registered_name}/{news_version}")
    n, mean_auc = mean_impression_auc(news_model, mind_dir(params) / "dev")
    assert n == result["news"]["metrics"]["dev.impressions"] > 0
    assert result["news"]["metrics"]["dev.auc"] == pytest.approx(mean_auc, abs=1e-6) and "news:" in result["summary"]
    # the default model (LARR + CoFARS) was trained, evaluated beside the oracle and registered
    assert result["ctr"]["summary"]["model"] == "larr_cofars"
    assert "oracle" in result["ctr"]["summary"]["headline"]
    # the first CTR model of a fresh store is champion only when it clears the promotion floor
    reg = result["ctr"]["registry"]
    champion = registry.alias_version(client, params.ctr.registered_name, "champion")
    if reg["promoted"]:
        assert champion == str(reg["version"])
    else:
        assert champion is None and reg["reason"].startswith("below the promotion floor"), reg["reason"]
    assert "CTR model:" in result["summary"] and reg["reason"] in result["summary"]
    from components.llm.embed import online_scene_embeddings

    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet").iloc[0].to_dict()
    emb = online_scene_embeddings(params, imp)
    assert all(v is not None and v.ndim == 1 and v.size > 0 for v in emb.values())
    for r in runs:
        assert "git_commit" in r.data.tags and "data_version" in r.data.tags
    ingest_run = next(r for r in runs if r.data.tags["scenerec.step"] == "ingest")
    assert ingest_run.data.metrics, "validation metrics were logged"

    # Prefect artifacts with the validation summary and feature statistics
    keys = _artifact_keys()
    assert {"validation-summary", "feature-statistics", "llm-summary", "pipeline-summary",
            "ctr-champion-vs-challenger", "ctr-summary", "hkfr-champion-vs-challenger"} <= keys


def test_rejected_batch_fails_the_flow_and_changes_nothing(prefect_harness, tiny_project, tmp_path):
    import hashlib

    import pandas as pd
    from flows.ingest import generate, ingest

    params_file = str(tiny_project / "params.yaml")
    params = load_params(params_file)
    generate(params_file=params_file)
    ingest(params_file=params_file)
    curated = params.path("curated_dir")
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in curated.rglob("*.parquet")}

    bad = tmp_path / "bad_batch"
    shutil.copytree(params.path("raw_batch"), bad)
    imp = pd.read_parquet(bad / "impressions.parquet")
    imp.loc[imp.index[:3], "click"] = 0
    imp.loc[imp.index[:3], "order"] = 1  # order without click
    imp.to_parquet(bad / "impressions.parquet", index=False)

    state = ingest(batch_dir=str(bad), params_file=params_file, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="order"):
        state.result()
    after = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in curated.rglob("*.parquet")}
    assert after == before
    quarantined = list(params.path("quarantine_dir").iterdir())
    assert len(quarantined) == 1 and (quarantined[0] / "impressions.parquet").exists()
