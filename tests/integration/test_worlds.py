"""benchmarks/worlds.py build_project: a world is rebuilt when what its build reads changes, not
when a model knob does (a CTR knob used to rebuild every world, LLM stages included)."""
import sys

import yaml

from tests.factories import REPO


def test_a_model_knob_rewrites_the_world_params_without_rebuilding_it(tiny_project):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from worlds import build_project

    from components.config import load_params

    base_file = tiny_project / "params.yaml"
    base = load_params(base_file)
    root = tiny_project / "data" / "worlds" / "w"
    first = build_project(base, root, {"position_bias": 0.05}, log=lambda *a, **k: None)
    built = (root / ".built").stat().st_mtime_ns
    curated = sorted(p.name for p in first.path("curated_dir").iterdir())
    assert curated and first.generate.position_bias == 0.05

    raw = yaml.safe_load(base_file.read_text())
    raw["ctr"]["lr"] = 0.0123  # a model knob: same data, new params
    base_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    second = build_project(load_params(base_file), root, {"position_bias": 0.05}, log=lambda *a, **k: None)
    assert second.ctr.lr == 0.0123
    assert (root / ".built").stat().st_mtime_ns == built  # not rebuilt

    raw["generate"] = dict(reversed(list(raw["generate"].items())))  # the same values, written in another order
    base_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    build_project(load_params(base_file), root, {"position_bias": 0.05}, log=lambda *a, **k: None)
    assert (root / ".built").stat().st_mtime_ns == built  # not rebuilt either

    del raw["generate"]["taste_effect"]  # a knob at its default, written on one side only: reads the same
    base_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    build_project(load_params(base_file), root, {"position_bias": 0.05}, log=lambda *a, **k: None)
    assert (root / ".built").stat().st_mtime_ns == built  # not rebuilt

    key = yaml.safe_load((root / ".built").read_text())
    del key["build_revision"]  # built by the code before the last change to what a build produces
    (root / ".built").write_text(yaml.safe_dump(key))
    build_project(load_params(base_file), root, {"position_bias": 0.05}, log=lambda *a, **k: None)
    assert (root / ".built").stat().st_mtime_ns != built  # rebuilt
    built = (root / ".built").stat().st_mtime_ns

    third = build_project(load_params(base_file), root, {"position_bias": 0.2}, log=lambda *a, **k: None)
    assert third.generate.position_bias == 0.2 and third.ctr.lr == 0.0123
    assert (root / ".built").stat().st_mtime_ns != built  # what the build reads changed: rebuilt
    assert sorted(p.name for p in third.path("curated_dir").iterdir()) == curated


def test_a_world_of_the_other_generator_builds_through_ingestion_and_features(tiny_project):
    """OTHER_GENERATOR worlds: the batch comes from benchmarks/alt_generator.py, then the same ingest ->
    features path; other sizes rebuild it, the same ones do not."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import pandas as pd
    from worlds import build_project

    from components.config import load_params

    base = load_params(tiny_project / "params.yaml")
    root = tiny_project / "data" / "worlds" / "alt"
    sizes = dict(n_users=60, n_pois=30, n_requests=300, impressions_per_request=6, days=20)
    params = build_project(base, root, {}, log=lambda *a, **k: None, generator=sizes)
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet")
    assert len(imp) == 300 * 6 and imp["click"].sum() > 0
    assert (params.path("features_dir")).exists() and any(params.path("features_dir").iterdir())
    built = (root / ".built").stat().st_mtime_ns
    build_project(base, root, {}, log=lambda *a, **k: None, generator=sizes)
    assert (root / ".built").stat().st_mtime_ns == built
    build_project(base, root, {}, log=lambda *a, **k: None, generator={**sizes, "n_requests": 200})
    assert (root / ".built").stat().st_mtime_ns != built
    assert len(pd.read_parquet(params.path("curated_dir") / "impressions.parquet")) == 200 * 6
