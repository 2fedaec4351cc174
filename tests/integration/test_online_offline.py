"""Online = offline after every batch: a replaced batch, an appended one, a killed materialisation
and a view a killed run left MATERIALIZING all end with the Feast online store holding exactly
the latest row per key of the offline feature tables (real generator, GX, Feast, SQLite)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from components import steps
from components.config import load_params
from components.data.generate import generate_batch
from components.features.engineering import KEYS, TIMESTAMP
from components.features.store import SERVICE, _view_refs, get_store, online_features
from tests.factories import REPO, make_project

VIEWS = ("user_stats", "user_profile", "poi_profile", "poi_stats", "context_stats")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("online") / "project")
    params = load_params(root / "params.yaml")
    batches = {}
    for name, seed, users in (("a", 1, 60), ("b", 2, 40)):  # B: other users' values, older timestamps too
        cfg = params.generate.model_copy(update={"n_users": users})
        batches[name] = generate_batch(cfg, seed, root / "batches" / name) and root / "batches" / name
    return params, batches


def _offline_latest(params, view: str, end: pd.Timestamp, ttl: pd.Timedelta) -> pd.DataFrame:
    """What the online store must hold: the latest row per key within the view's ttl of ``end``."""
    df = pd.read_parquet(params.path("features_dir") / f"{view}.parquet")
    ts = pd.to_datetime(df[TIMESTAMP], utc=True)
    keep = (ts <= end) & ((ts >= end - ttl) if ttl > pd.Timedelta(0) else True)
    df = df[keep].assign(_ts=ts[keep]).sort_values("_ts")
    return df.drop_duplicates(KEYS[view], keep="last").drop(columns="_ts").set_index(KEYS[view])


def _same(a, b) -> bool:
    none = lambda v: v is None or (isinstance(v, float) and math.isnan(v))  # noqa: E731
    if none(a) or none(b):
        return none(a) and none(b)
    if isinstance(a, (list, np.ndarray)):
        return np.allclose(np.asarray(a, float), np.asarray(b, float))
    if isinstance(a, (float, np.floating)) or isinstance(b, (float, np.floating)):
        return math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-6)
    return a == b


def assert_online_equals_offline(params, stale_keys: dict[str, set] | None = None) -> int:
    """Every online value of every view equals the offline latest row; keys the offline tables no
    longer hold (``stale_keys``) read as missing. Returns the number of values compared."""
    store = get_store(params)
    end = pd.Timestamp(max(pd.read_parquet(params.path("features_dir") / f"{v}.parquet", columns=[TIMESTAMP])
                           [TIMESTAMP].max() for v in VIEWS)).tz_convert("UTC") + pd.Timedelta(seconds=1)
    compared, wrong = 0, []
    for view, keys, features in _view_refs(store, store.get_feature_service(SERVICE)):
        ttl = pd.Timedelta(store.get_feature_view(view).ttl or 0)
        offline = _offline_latest(params, view, end, ttl)
        ids = [str(k) for k in offline.index] + sorted((stale_keys or {}).get(view, set()) - set(offline.index))
        got = store.get_online_features(features=[f"{view}:{f}" for f in features],
                                        entity_rows=[{keys[0]: k} for k in ids], full_feature_names=True).to_dict()
        for i, key in enumerate(ids):
            for f in features:
                want = offline.at[key, f] if key in offline.index else None
                have = got[f"{view}__{f}"][i]
                compared += 1
                if not _same(have, want):
                    wrong.append(f"{view}[{key}].{f}: online {have!r} != offline {want!r}")
    assert not wrong, f"{len(wrong)} of {compared} online values differ, e.g.:\n" + "\n".join(wrong[:10])
    return compared


def _keys(params) -> dict[str, set]:
    return {v: set(pd.read_parquet(params.path("features_dir") / f"{v}.parquet", columns=[KEYS[v]])[KEYS[v]].astype(str))
            for v in VIEWS}


def test_replaced_then_appended_batch_online_equals_offline(project):
    params, batches = project
    steps.ingest_step(params, batches["a"])
    steps.features_step(params)
    assert assert_online_equals_offline(params) > 1000
    keys_a = _keys(params)

    steps.ingest_step(params, batches["b"])  # replace mode: B's values, many of them older
    mat = steps.features_step(params)
    assert assert_online_equals_offline(params, stale_keys=keys_a) > 500  # A's users are gone online too
    assert mat["materialize.views_reloaded"] == len(VIEWS)

    appended = params.model_copy(update={"ingest": params.ingest.model_copy(update={"mode": "append"})})
    steps.ingest_step(appended, batches["a"])  # append mode: A merged into B
    steps.features_step(appended)
    assert assert_online_equals_offline(appended) > 1000


def test_killed_materialisation_and_stuck_view_recover(project):
    """A run killed right after emptying a view's online table reloads it on the next run, although
    the tables did not change; a view left MATERIALIZING is reloaded on the next online read."""
    params, batches = project
    steps.ingest_step(params, batches["b"])  # replace mode: every table changes, every view reloads
    env = {**os.environ, "SCENEREC_CRASH_AT": "materialize.after_reset", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "components.cli", "features"], cwd=params.root, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    steps.features_step(params)
    assert_online_equals_offline(params)

    from feast.feature_view import FeatureViewState

    store = get_store(params)
    store.set_feature_view_state("user_stats", FeatureViewState.MATERIALIZING)  # what a kill mid-materialize leaves
    user = pd.read_parquet(params.path("features_dir") / "user_stats.parquet")["user_id"].iloc[0]
    poi = pd.read_parquet(params.path("features_dir") / "poi_stats.parquet")["poi_id"].iloc[0]
    values = online_features(params, user, poi)
    assert "user_stats__n_click" in values
    assert get_store(params).get_feature_view("user_stats").state == FeatureViewState.AVAILABLE_ONLINE
    assert_online_equals_offline(params)
