"""The Prefect forms explain themselves and choose the model one way (issue 16, findings 1 and 4);
runs off the project's params.yaml get their own namespace (finding 2)."""
import pytest
import yaml
from prefect.utilities.callables import parameter_schema

from components.config import (CTR_MODELS, DEFAULT_PARAMS, CTRConfig, Params, for_overrides, for_profile,
                               load_params, yaml_comments)
from flows.ctr import ctr
from flows.features import features
from flows.hkfr import hkfr
from flows.ingest import generate, ingest
from flows.llm import llm
from flows.news import news
from flows.pipeline import pipeline
from flows.settings import flow_params, transient_only as retry_transient
from tests.factories import REPO

FLOWS = [pipeline, generate, ingest, features, llm, hkfr, ctr, news]


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_form_field_has_a_type_a_description_and_no_plumbing(flow):
    schema = parameter_schema(flow.fn).model_dump_for_openapi()
    props = schema["properties"]
    assert "parent_run_id" not in props and "model" not in props
    for name, prop in props.items():
        # a real type (no `anyOf [..., null]`, which the UI shows as `Property is type "None"`)
        assert "type" in prop or "$ref" in prop or "allOf" in prop, (name, prop)
        assert "null" not in str(prop.get("anyOf", "")), (name, prop)
        assert prop.get("description"), f"{flow.name}.{name} has no Args entry in the docstring"


def test_the_model_is_a_drop_down_and_a_wrong_one_fails_before_any_work():
    schema = parameter_schema(ctr.fn).model_dump_for_openapi()
    assert schema["definitions"]["CTRConfig"]["properties"]["model"]["enum"] == list(CTR_MODELS)
    with pytest.raises(Exception, match="ctr.model: Input should be .id_only"):
        ctr.validate_parameters({"ctr": {"model": "larr-cofars"}})


def test_section_defaults_and_descriptions_come_from_params_yaml():
    raw = yaml.safe_load((REPO / DEFAULT_PARAMS).read_text())
    notes = yaml_comments((REPO / DEFAULT_PARAMS).read_text())
    for field in ("model", "epochs", "promotion_margin"):
        assert CTRConfig.model_fields[field].default == raw["ctr"][field]
        assert CTRConfig.model_fields[field].description == notes["ctr"][field]
    assert Params.model_fields["seed"].default == raw["seed"]
    desc = parameter_schema(ctr.fn).model_dump_for_openapi()["definitions"]["CTRConfig"]["properties"]
    assert "larr_cofars |" in desc["model"]["description"]


def test_every_params_field_is_explained_in_params_yaml():
    """The forms show params.yaml's comments: a field without one is a knob nobody can read about."""
    bare = [f"{name}.{field}" for name, info in Params.model_fields.items() if hasattr(info.annotation, "model_fields")
            for field, f in info.annotation.model_fields.items() if not f.description]
    assert bare == [], f"params.yaml fields without a comment: {bare}"


def test_yaml_comments_reads_headers_and_continuations():
    text = ("seed: 1  # the seed\nsec:   # a section\n  # Group header\n  a: 1\n  b: 2  # own note\n"
            "                  # continued\n  c: 'x # not a comment'\n")
    notes = yaml_comments(text)
    assert notes[""]["seed"] == "the seed" and notes["sec"][""] == "a section"
    assert notes["sec"]["a"] == "Group header" and notes["sec"]["b"] == "own note continued"
    assert "c" not in notes["sec"]


def test_untouched_section_is_no_override_and_a_changed_field_is():
    params, overridden = flow_params(str(REPO / DEFAULT_PARAMS), "ctr", ctr=CTRConfig())
    assert not overridden and params.tracking.experiment == "scenerec"
    params, overridden = flow_params(str(REPO / DEFAULT_PARAMS), "ctr", ctr=CTRConfig(model="id_only"))
    assert overridden and params.ctr.model == "id_only"
    # own experiment, registered model and output folder; inputs still read from the params file's
    assert params.tracking.experiment == "scenerec-overrides"
    assert params.ctr.registered_name == "scenerec-ctr-overrides"
    assert params.paths.ctr_dir == "data/ctr-overrides" and params.paths.features_dir == "data/features"
    shared, _ = flow_params(str(REPO / DEFAULT_PARAMS), "ctr", isolate=False, ctr=CTRConfig(model="id_only"))
    assert shared.ctr.registered_name == "scenerec-ctr" and shared.ctr.model == "id_only"


def test_a_profile_runs_in_its_own_namespace():
    small = REPO / "params" / "small.yaml"
    params, overridden = flow_params(str(small), "ctr")
    assert not overridden and params.root == REPO
    assert params.tracking.experiment == "scenerec-small" and params.ctr.registered_name == "scenerec-ctr-small"
    assert params.contrastive.registered_name == "scene-encoder-small"
    assert params.path("features_dir") == REPO / "data" / "small" / "features"
    assert params.path("reports_dir") == REPO / "reports" / "small"
    assert params.generate.n_users < load_params(REPO / DEFAULT_PARAMS).generate.n_users
    whole = for_overrides(for_profile(load_params(small), small), None)
    assert whole.paths.features_dir == "data/small-overrides/features"


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_permanent_errors_are_not_retried():
    assert not retry_transient(None, None, _State(ValueError("bad value")))
    assert not retry_transient(None, None, _State(FileNotFoundError("run features first")))
    assert retry_transient(None, None, _State(ConnectionError("flaky")))


def test_the_cli_calls_the_pipeline_flow_with_parameters_its_form_accepts(tmp_path):
    # `scenerec pipeline` passed batch_dir=None to a flow whose form types it as a string: make demo
    # failed at parameter validation.
    from components.cli import build_parser, pipeline_arguments
    from flows.pipeline import pipeline

    params = load_params()
    for argv in (["pipeline"], ["pipeline", "--batch", str(tmp_path)]):
        kwargs = pipeline_arguments(build_parser().parse_args(argv), params)
        assert pipeline.validate_parameters(kwargs)["batch_dir"] == (str(tmp_path) if "--batch" in argv else "")
