"""The ctr flow on a real Prefect server and MLflow store (issue 16): the run logs the model it
trained (finding 1), an overridden run keeps out of the project's namespace and a LARR model without
scene embeddings stops (finding 2), Prefect and MLflow link to each other (finding 5)."""
import mlflow
import pytest
from prefect.client.orchestration import get_client

from components import steps
from components.config import CTRConfig, load_params
from components.tracking import EXPERIMENT_KIND, tracking_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def features_project(tmp_path_factory):
    from tests.factories import make_project

    root = make_project(tmp_path_factory.mktemp("ui") / "project")
    params = load_params(root / "params.yaml")
    steps.generate_step(params)
    steps.ingest_step(params, params.path("raw_batch"))
    steps.features_step(params)
    return root


def test_ctr_run_logs_what_it_trained_in_its_own_namespace_linked_to_prefect(prefect_harness, features_project):
    from flows.ctr import ctr

    params_file = str(features_project / "params.yaml")
    out = ctr(ctr=CTRConfig(model="id_only", epochs=1), params_file=params_file)
    base = load_params(params_file)
    client = mlflow.MlflowClient(tracking_uri(base))

    # finding 1: the run logs the model actually trained; the version names its architecture
    run = client.get_run(out["run_id"])
    assert out["summary"]["model"] == "id_only" and run.data.params["ctr.model"] == "id_only"
    assert run.data.params["ctr.epochs"] == "1"
    reg = out["registry"]
    version = client.get_model_version(reg["name"], reg["version"])
    assert version.tags["architecture"] == "id_only"

    # finding 2: overrides went to their own experiment, registered model and folder
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == f"{base.tracking.experiment}-overrides"
    assert reg["name"] == f"{base.ctr.registered_name}-overrides"
    assert not client.search_registered_models(f"name='{base.ctr.registered_name}'")
    assert (base.path("ctr_dir").parent / "ctr-overrides" / "model").is_dir()
    assert not (base.path("ctr_dir") / "model").exists()

    # finding 5: names and tags both ways; the experiment opens on its runs
    with get_client(sync_client=True) as pc:
        flow_run = pc.read_flow_run(run.data.tags["prefect.flow_run_id"])
        arts = {a.key: a for a in pc.read_artifacts() if a.key and a.flow_run_id == flow_run.id}
    assert run.info.run_name == f"ctr/{flow_run.name}"
    assert run.data.tags["prefect.flow_run_name"] == flow_run.name
    assert version.tags["prefect.flow_run_id"] == str(flow_run.id)
    assert exp.tags[EXPERIMENT_KIND] == "custom_model_development"
    summary = arts["ctr-summary"].data
    assert f"/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}" in summary
    assert f"/#/models/{reg['name']}/versions/{reg['version']}" in summary


def test_larr_without_scene_embeddings_stops_or_says_so(prefect_harness, features_project):
    from flows.ctr import ctr

    params_file = str(features_project / "params.yaml")
    with pytest.raises(steps.MissingPrerequisite, match="run the `llm` flow"):
        ctr(ctr=CTRConfig(model="larr_din", epochs=1), params_file=params_file)
    out = ctr(ctr=CTRConfig(model="larr_din", epochs=1, require_scene_embeddings=False), params_file=params_file)
    client = mlflow.MlflowClient(tracking_uri(load_params(params_file)))
    tags = client.get_run(out["run_id"]).data.tags
    assert tags["scenerec.scene_embeddings"] == "missing" and "WITHOUT scene embeddings" in tags["scenerec.warning"]
    version = client.get_model_version(out["registry"]["name"], out["registry"]["version"])
    assert version.tags["scenerec.scene_embeddings"] == "missing"
