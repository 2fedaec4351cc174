"""The registry on a real MLflow store (SQLite in a temp dir): the one ``register_candidate`` every
model family calls, the promotion floor, lineage tags, the audit of alias changes made outside
scenerec, one-line CLI errors, and promotion / rollback as Prefect flows."""
import tempfile

import mlflow
import pytest
import yaml

from components import registry, tracking
from components.cli import main
from components.config import load_params
from tests.factories import REPO, make_project
from tests.registry_factories import quality_candidate

LINEAGE = {"model_family", "architecture", "params_hash", "data_version", "git_commit", "prefect_flow_run_id",
           registry.FINGERPRINT_TAG}
AUDIT = {"previous_champion", "last_action", "last_action_by", "last_action_at", "last_action_reason"}


@pytest.fixture
def params(tmp_path):
    root = make_project(tmp_path / "project")
    return load_params(root / "params.yaml")


def _client(params):
    return mlflow.MlflowClient(tracking.tracking_uri(params))


def _register(params, candidate):
    return registry.register_candidate(params, tracking.start_run(params, "register"), candidate)


def _cli(params, *args):
    return main(["--params", str(params.root / "params.yaml"), *args])


def test_a_first_candidate_must_clear_chance_and_the_baseline_by_the_floor_margin(params):
    # given an empty registry
    # when a first candidate beats chance but not the popularity baseline on the same rows
    below = _register(params, quality_candidate("m", auc=0.58, baseline_auc=0.60))
    # then it stays unpromoted and says why
    assert not below["promoted"] and below["alias"] == "challenger" and below["champion"] is None
    assert below["reason"].startswith("below the promotion floor") and "popularity baseline 0.6000" in below["reason"]
    # when one beats the baseline, but chance by no more than the floor margin (the baseline is worse than chance)
    near = _register(params, quality_candidate("m", auc=0.505, baseline_auc=0.40, floor_margin=0.01))
    # then it is refused too, naming chance
    assert not near["promoted"] and "chance 0.5000" in near["reason"]
    # when one clears both by the margin
    good = _register(params, quality_candidate("m", auc=0.62, baseline_auc=0.60, floor_margin=0.01))
    # then it is the first champion, and the report carries the baseline beside it
    assert good["promoted"] and good["reason"] == "no champion yet" and good["baseline_metrics"] == {"auc": 0.60}
    assert registry.alias_version(_client(params), "m", "champion") == good["version"]


def test_champion_changes_only_by_the_familys_own_margin(params):
    # given a champion at AUC 0.70 and a family margin of 0.02
    first = _register(params, quality_candidate("m", auc=0.70, margin=0.02))
    # when a challenger is better by less than the margin (scored with the champion on the same rows)
    second = _register(params, quality_candidate("m", auc=0.715, margin=0.02))
    # then the champion stays and the new version is challenger
    assert not second["promoted"] and second["champion_metrics"] == {"auc": 0.70}
    assert "margin 0.02" in second["reason"]
    # when one is better by more than the margin
    third = _register(params, quality_candidate("m", auc=0.73, margin=0.02))
    # then it is champion and remembers the one it replaced (what rollback follows)
    assert third["promoted"] and third["champion"] == third["version"]
    assert _client(params).get_model_version("m", third["version"]).tags["previous_champion"] == first["version"]


def test_temporary_files_are_removed_when_scoring_raises(params, tmp_path, monkeypatch):
    # given a private temp dir and a family whose scoring fails
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def broken(models):
        raise RuntimeError("scoring failed")

    # when it is registered
    with pytest.raises(RuntimeError, match="scoring failed"):
        _register(params, quality_candidate("m", auc=0.7, score=broken))
    # then nothing of ours is left behind
    assert not list(tmp.glob("scenerec-*"))


def test_a_version_carries_lineage_and_audit_tags_only(params):
    # given lineage tags built for a run started by a Prefect flow run
    tags = registry.lineage_tags(params, "toy", "quality_model", flow_run_id="0b1c-flow-run")
    # when a candidate with metrics is registered
    out = _register(params, quality_candidate("m", auc=0.8, tags=tags))
    # then the version names architecture, params hash, data version, flow run, and no metric
    mv = _client(params).get_model_version("m", out["version"])
    assert mv.tags["architecture"] == "quality_model" and mv.tags["model_family"] == "toy"
    assert mv.tags["params_hash"] == registry.params_hash(params) and len(mv.tags["params_hash"]) == 12
    assert mv.tags["data_version"] == "unversioned" and mv.tags["prefect_flow_run_id"] == "0b1c-flow-run"
    extra = {k for k in mv.tags if not k.startswith("audit.")} - LINEAGE - AUDIT
    assert not extra, f"per-version tags beyond lineage and audit: {extra}"
    # and the params hash follows the parameters
    other = params.model_copy(update={"seed": params.seed + 1})
    assert registry.params_hash(other) != registry.params_hash(params)


def test_audit_flags_an_alias_moved_in_mlflows_own_editor(params, capsys):
    # given v1 champion and v2 challenger, both set by scenerec
    _register(params, quality_candidate("m", auc=0.70))
    _register(params, quality_candidate("m", auc=0.705))  # another model, within the margin
    assert _cli(params, "audit", "--name", "m") == 0
    assert "aliases now: challenger = version 2, champion = version 1" in capsys.readouterr().out
    # when someone moves @champion to v2 with MLflow's API (what its alias editor calls)
    _client(params).set_registered_model_alias("m", "champion", "2")
    # then audit shows the aliases now and flags the change that has no audit entry
    out = registry.audit(params, "m")
    assert out["aliases"] == {"champion": "2", "challenger": "2"}
    assert out["unaudited"] == [{"alias": "champion", "now": "2", "audited": "1"}]
    assert _cli(params, "audit", "--name", "m") == 1
    printed = capsys.readouterr().out
    assert "UNAUDITED: @champion is version 2 but the last audit entry left it at version 1" in printed
    # when the change is recorded through scenerec
    assert _cli(params, "promote", "--name", "m", "--version", "2", "--reason", "moved in the UI by carol") == 0
    # then the trail is whole again
    assert registry.audit(params, "m")["unaudited"] == []
    assert "reason=moved in the UI by carol" in registry.history(params, "m")[-1]["entry"]


def test_registry_cli_errors_are_one_line_and_debug_shows_the_traceback(params, capsys):
    # given a registry whose only champion is its first
    _register(params, quality_candidate("m", auc=0.70))
    capsys.readouterr()  # MLflow's own logging while registering
    # when the user rolls back
    assert _cli(params, "rollback", "--name", "m", "--reason", "oops") == 1
    # then one line says there is nothing to roll back to
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing to roll back to: m version 1 is the first champion" in err[0]
    # when the model or the version does not exist: one line each, naming what there is
    assert _cli(params, "rollback", "--name", "nope", "--reason", "x") == 1
    assert capsys.readouterr().err.strip() == ("scenerec rollback: no registered model 'nope' in this MLflow store "
                                               "(registered: m); pass --name (--debug for the traceback)")
    assert _cli(params, "promote", "--name", "m", "--version", "7", "--reason", "x") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "m has no version 7 (versions: 1)" in err[0]
    # and --debug raises with the full traceback
    with pytest.raises(registry.RegistryError, match="nothing to roll back to"):
        main(["--debug", "--params", str(params.root / "params.yaml"), "rollback", "--name", "m", "--reason", "x"])


@pytest.mark.slow
def test_promotion_and_rollback_flows_are_the_audited_path(prefect_harness, params):
    from flows.registry import audit, promote, rollback

    # given v1 champion and v2 challenger
    _register(params, quality_candidate("m", auc=0.70))
    _register(params, quality_candidate("m", auc=0.705))  # another model, within the margin
    file = str(params.root / "params.yaml")
    # when v2 is promoted from the Prefect flow
    promote(version="2", reason="canary looked fine", name="m", params_file=file)
    # then it is champion with an audit entry naming the flow run
    c = _client(params)
    assert registry.alias_version(c, "m", "champion") == "2"
    entry = registry.history(params, "m")[-2]["entry"]  # the last is v1's "replaced_by_promote"
    assert entry.startswith("action=promote aliases=champion:2,challenger:-") and "by=prefect:" in entry
    assert audit(name="m", params_file=file)["unaudited"] == []
    # when rolled back from the flow
    out = rollback(reason="CTR dropped", name="m", params_file=file)
    # then v1 is champion again, v2 challenger, and the audit trail agrees
    assert out["champion"] == "1" and registry.alias_version(c, "m", "challenger") == "2"
    assert audit(name="m", params_file=file)["aliases"] == {"champion": "1", "challenger": "2"}
    # and both are deployments of prefect.yaml
    deployments = {d["name"]: d["entrypoint"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    assert deployments["promote"] == "flows/registry.py:promote"
    assert deployments["rollback"] == "flows/registry.py:rollback"


def test_an_unchanged_model_reuses_its_version(params):
    # given a registered candidate
    first = _register(params, quality_candidate("m", auc=0.62, baseline_auc=0.55))
    assert first["promoted"]
    # when the same model files (same data version) are registered again
    again = _register(params, quality_candidate("m", auc=0.62, baseline_auc=0.55))
    # then no version is added, nothing moves, and the report says so with its metrics
    assert again["reused"] and again["version"] == first["version"] and not again["promoted"]
    assert again["alias"] == "champion" and again["reason"].startswith(f"unchanged: v{first['version']}")
    assert again["challenger_metrics"] == {"auc": 0.62}
    assert [str(v.version) for v in _client(params).search_model_versions("name='m'")] == [first["version"]]
    # when the model changes, or reuse is switched off, a new version is registered
    changed = _register(params, quality_candidate("m", auc=0.63, baseline_auc=0.55))
    assert not changed.get("reused") and int(changed["version"]) == int(first["version"]) + 1
    off = params.model_copy(update={"reliability": params.reliability.model_copy(update={"reuse_unchanged_models": False})})
    forced = _register(off, quality_candidate("m", auc=0.63, baseline_auc=0.55))
    assert not forced.get("reused") and int(forced["version"]) == int(changed["version"]) + 1


def test_an_experiment_deleted_in_the_ui_is_a_clear_error_not_a_failed_run(params):
    exp_id = tracking.configure(params)
    _client(params).delete_experiment(exp_id)
    with pytest.raises(ValueError, match=r"is deleted: restore it .*mlflow experiments restore --experiment-id"):
        tracking.configure(params)
    _client(params).restore_experiment(exp_id)
    assert tracking.configure(params) == exp_id
