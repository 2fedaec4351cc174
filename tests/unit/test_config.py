"""params.yaml is validated into typed sections with errors a user can act on."""
from pathlib import Path

import pytest
import yaml

from components.config import ParamsError, load_params

REPO = Path(__file__).resolve().parents[2]


def test_repository_params_load():
    p = load_params(REPO / "params.yaml")
    assert p.generate.n_users > 0
    assert p.path("curated_dir") == REPO / "data" / "curated"
    assert p.generate.start.tzinfo is not None


@pytest.mark.parametrize("profile", sorted(p.name for p in (REPO / "params").glob("*.yaml")))
def test_shipped_profiles_load(profile):
    """Every profile in params/ validates merged over params.yaml (a typo in one fails here, not in a
    user's run); what a profile sets is what the run gets."""
    path = REPO / "params" / profile
    p = load_params(path)
    for section, knobs in (yaml.safe_load(path.read_text()) or {}).items():
        if isinstance(knobs, dict):
            for key, value in knobs.items():
                if not isinstance(value, dict):
                    got = getattr(getattr(p, section), key)
                    assert (list(got) if isinstance(got, tuple) else got) == value, f"{profile}: {section}.{key}"


@pytest.mark.parametrize(
    "override, where",
    [
        ({"generate": {"n_users": -1}}, "generate.n_users"),
        ({"generate": {"n_userz": 3}}, "generate.n_userz"),
        ({"generate": {"format": "xlsx"}}, "generate.format"),
        ({"generate": {"start": "2026-01-01T00:00:00"}}, "generate.start"),
        ({"features": {"price_band_edges": [50, 10]}}, "features.price_band_edges"),
        ({"ingest": {"mode": "merge"}}, "ingest.mode"),
        ({"seed": "abc"}, "seed"),
        ({"ctr": {"lr_decay": 1.5}}, "ctr.lr_decay"),
        ({"ctr": {"lr_decay": 0}}, "ctr.lr_decay"),
    ],
)
def test_bad_values_name_the_knob(override, where):
    with pytest.raises(ParamsError) as e:
        load_params(REPO / "params.yaml", overrides=override)
    assert where in str(e.value)
    assert "params.yaml" in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("generate: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_relative_paths_resolve_against_the_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"paths": {"curated_dir": "x/cur"}}))
    p = load_params(tmp_path / "params.yaml")
    assert p.path("curated_dir") == tmp_path / "x" / "cur"


def test_overrides_merge_without_dropping_siblings():
    p = load_params(REPO / "params.yaml", overrides={"generate": {"n_users": 77}})
    base = load_params(REPO / "params.yaml")
    assert p.generate.n_users == 77
    assert p.generate.n_pois == base.generate.n_pois


def test_tuned_params_file_is_merged_over_params_yaml(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").ctr.lr == raw["ctr"]["lr"]
    (tmp_path / "params.tuned.yaml").write_text("ctr: {lr: 0.00123, embed_dim: 8}\n")
    p = load_params(tmp_path / "params.yaml")
    assert (p.ctr.lr, p.ctr.embed_dim) == (0.00123, 8)
    assert p.ctr.epochs == raw["ctr"]["epochs"]  # siblings kept
    assert load_params(tmp_path / "params.yaml", {"ctr": {"lr": 0.5}}).ctr.lr == 0.5  # explicit overrides win
    (tmp_path / "params.tuned.yaml").write_text("ctr: {lr: -1}\n")
    with pytest.raises(ParamsError, match="ctr.lr"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.tuned.yaml").write_text("- not a mapping\n")
    with pytest.raises(ParamsError, match="params.tuned.yaml"):
        load_params(tmp_path / "params.yaml")


def test_a_recent_window_shorter_than_a_snapshot_is_refused(tmp_path):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["features"].update(recent_days=0.5, snapshot_hours=24)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match="recent_days .*shorter than one snapshot period"):
        load_params(tmp_path / "params.yaml")
    raw["features"].update(recent_days=0)  # off
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").features.recent_days == 0
