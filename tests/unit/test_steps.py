"""The step registry (components/steps.py: STEPS) against dvc.yaml, the CLI and params.yaml: a step
declared once, and a test that fails when the user-readable dvc.yaml says something else."""
import inspect
import re

import pytest
import yaml

from components.cli import build_parser
from components.config import load_params
from components.steps import STEPS
from tests.factories import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _is_code(dep: str) -> bool:
    """dvc.yaml also lists source files as deps; the registry declares only the data."""
    return dep.startswith("components/") or dep.startswith("${paths.feature_repo}")


def _argv(cmd: str) -> list[str]:
    """A stage's cmd as the argv the `scenerec` parser sees (DVC's ${...} templating filled in)."""
    words = re.sub(r"\$\{[^}]+\}", "data/x", cmd).split()
    assert words[0] == "scenerec", f"{cmd!r} does not run the scenerec command"
    return words[1:]


def test_dvc_yaml_has_exactly_the_registered_steps():
    assert list(STAGES) == list(STEPS), "dvc.yaml's stages and STEPS differ (names or order)"


@pytest.mark.parametrize("name", list(STEPS))
def test_stage_matches_its_step(name):
    step, stage = STEPS[name], STAGES.get(name)
    assert stage is not None, f"dvc.yaml has no stage {name!r}"
    assert stage["cmd"] == step.cmd
    assert stage.get("params", []) == list(step.params), f"{name}: params in dvc.yaml vs Step.params"
    deps = stage.get("deps", [])
    assert len(set(deps)) == len(deps), f"{name}: a dep is listed twice in dvc.yaml"
    data_deps = [d for d in deps if not _is_code(d)]
    assert sorted(data_deps) == sorted(step.inputs), f"{name}: data deps in dvc.yaml vs Step.inputs"
    assert sorted(stage.get("outs", [])) == sorted(step.outputs), f"{name}: outs in dvc.yaml vs Step.outputs"


@pytest.mark.parametrize("name", list(STEPS))
def test_stage_cmd_runs_its_own_step(name, monkeypatch):
    """The CLI resolves each stage's cmd to the very step it is named after, with arguments the
    step function accepts."""
    step = STEPS[name]
    args = build_parser().parse_args(_argv(step.cmd))
    called = {}

    def fake_tracked(params, run_name, fn, **kwargs):
        called.update(name=run_name, fn=fn, kwargs=kwargs)
        takes_run = "run_id" in inspect.signature(fn).parameters
        inspect.signature(fn).bind(params, **kwargs, **({"run_id": "run"} if takes_run else {}))
        return {"name": "m", "version": 1, "alias": "champion", "reason": "r", "champion": 1}

    monkeypatch.setattr("components.cli._tracked", fake_tracked)
    assert args.func(args, load_params(REPO / "params.yaml")) == 0
    assert called["name"] == name and called["fn"] is step.function


def test_every_param_key_and_section_exists():
    params = load_params(REPO / "params.yaml").model_dump()
    for step in STEPS.values():
        assert step.section in params, f"{step.name}: section {step.section!r} is not in params.yaml"
        assert any(k.split(".")[0] == step.section for k in step.params), (
            f"{step.name}: its section {step.section!r} is not among the keys DVC watches {step.params}")
        for key in step.params:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{step.name}: params key {key!r} does not exist"
                node = node[part]


def test_steps_run_in_an_order_that_has_their_inputs():
    """Every data folder a step reads is the output of an earlier step (inputs chosen by a knob,
    like ``encoder_${embed.encoder}``, and files of the project such as params.tuned.yaml are left out)."""
    made: set[str] = set()
    for step in STEPS.values():
        for inp in step.inputs:
            if inp.startswith("${paths.") and not re.search(r"\$\{(?!paths\.)", inp):
                assert inp in made, f"{step.name} reads {inp}, which no earlier step writes"
        made.update(step.outputs)


def test_register_steps_take_their_mlflow_run():
    for step in STEPS.values():
        takes_run = inspect.signature(step.function).parameters.get("run_id")
        if step.registers:
            assert takes_run is not None and takes_run.default is inspect.Parameter.empty, step.name


def test_an_overriding_argument_changes_the_knob_not_the_call(monkeypatch):
    """``arg(..., overrides="ctr.model")``: the run gets params with that knob replaced (and logs
    it); the step function gets no such keyword."""
    import argparse

    from components.cli import _step_command
    from components.steps import Step, arg

    seen = {}

    def fit_it(params, epochs=None):
        seen.update(model=params.ctr.model, epochs=epochs)
        return {}

    step = Step("probe", fit_it, "ctr", help="h", flow="ctr", task="t",
                arguments=(arg("--model", overrides="ctr.model"), arg("--epochs", type=int)))
    monkeypatch.setattr("components.cli._tracked", lambda params, name, fn, **kw: fn(params, **kw))
    params = load_params(REPO / "params.yaml")
    run = _step_command([step])
    run(argparse.Namespace(model="din_full", epochs=3), params)
    assert seen == {"model": "din_full", "epochs": 3}
    run(argparse.Namespace(model=None, epochs=None), params)
    assert seen == {"model": params.ctr.model, "epochs": None}
