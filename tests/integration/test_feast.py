"""Feast for real on a hand-made curated set in a temp copy of the project: apply, materialise,
online reads, and a point-in-time training frame that provably leaks nothing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import load_params
from components.features.engineering import build_feature_tables
from components.features.store import (
    apply_definitions,
    build_training_set,
    get_store,
    materialize,
    online_features,
    training_frame,
)

REPO = Path(__file__).resolve().parents[2]
T = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731
SCENE = {"geohash": "wx4g0", "location_type": "office", "weather": "sunny", "temperature_c": 15.0,
         "is_holiday": False}

# u1 clicks on three days, once exactly on the Jan 3 snapshot boundary and once 5 s after the
# impression of request r2; u2 is active on Jan 2 and Jan 5.
BEHAVIORS = [
    ("2026-01-01T09:00:00Z", "u1", "p1", "click"),
    ("2026-01-01T12:00:00Z", "u1", "p1", "view"),
    ("2026-01-01T12:30:00Z", "u1", "p1", "order"),
    ("2026-01-02T10:00:00Z", "u1", "p2", "click"),
    ("2026-01-03T00:00:00Z", "u1", "p1", "click"),  # at the boundary: not in the row stamped then
    ("2026-01-03T12:00:05Z", "u1", "p3", "click"),  # right after impression r2
    ("2026-01-04T08:00:00Z", "u1", "p1", "click"),
    ("2026-01-02T13:00:00Z", "u2", "p1", "click"),
    ("2026-01-05T13:00:00Z", "u2", "p2", "click"),
    ("2026-01-05T13:05:00Z", "u2", None, "search"),
]
# request -> (time, user); every request shows p1, p2, p3
REQUESTS = {
    "r0": ("2026-01-01T10:00:00Z", "u1"),  # before any snapshot of u1: features missing, row kept
    "r1": ("2026-01-03T00:00:00Z", "u1"),  # exactly at a snapshot time
    "r2": ("2026-01-03T12:00:00Z", "u1"),  # u1 clicks p3 five seconds later
    "r3": ("2026-01-05T09:00:00Z", "u1"),
    "r4": ("2026-01-03T14:00:00Z", "u2"),
}


def _curated() -> dict[str, pd.DataFrame]:
    pois = pd.DataFrame({
        "poi_id": ["p1", "p2", "p3"], "name": ["a", "b", "c"], "category": ["noodles", "coffee", "noodles"],
        "price": [20.0, 60.0, 100.0], "rating": [4.5, None, 3.0],
        "delivery_minutes": pd.Series([15, 40, 60], dtype="int64"), "geohash": ["wx4g0"] * 3,
        "description": ["", "", ""], "opened_at": [T("2025-06-01")] * 3,
    })
    users = pd.DataFrame({"user_id": ["u1", "u2"], "age_group": ["18-24", None], "gender": ["f", None],
                          "home_geohash": [None, None], "registered_at": [T("2025-01-01")] * 2})
    beh = pd.DataFrame(BEHAVIORS, columns=["ts", "user_id", "poi_id", "behavior"])
    beh["ts"] = pd.to_datetime(beh["ts"], utc=True)
    beh["query"] = np.where(beh["behavior"] == "search", "noodles", None)
    beh = beh.assign(**SCENE)
    shown = [(r, ts, u, p, pos) for r, (ts, u) in REQUESTS.items() for pos, p in enumerate(["p1", "p2", "p3"])]
    imp = pd.DataFrame(shown, columns=["request_id", "ts", "user_id", "poi_id", "position"])
    imp["ts"] = pd.to_datetime(imp["ts"], utc=True)
    imp = imp.assign(**SCENE)
    imp["position"] = imp["position"].astype("int64")
    imp["click"] = (imp["request_id"] == "r2") & (imp["poi_id"] == "p3")
    imp["click"] = imp["click"].astype("int64")
    imp["order"] = 0
    return {"pois": pois, "users": users, "behaviors": beh, "impressions": imp}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast_project")
    shutil.copytree(REPO / "feature_repo", root / "feature_repo",
                    ignore=shutil.ignore_patterns("__pycache__", "data", "*.db"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["features"]["top_categories"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml")
    tables = _curated()
    cur = params.path("curated_dir")
    cur.mkdir(parents=True)
    for name, df in tables.items():
        df.to_parquet(cur / f"{name}.parquet", index=False)
    build_feature_tables(cur, params.features, params.path("features_dir"))
    apply_definitions(params)
    mat = materialize(params)
    return params, tables, mat


def _clicks_before(beh: pd.DataFrame, user: str, t: pd.Timestamp) -> int:
    b = beh[(beh.user_id == user) & (beh.behavior == "click")]
    return int((b.ts < t).sum())


def test_apply_and_materialize_under_the_data_folder(project):
    params, _, mat = project
    root = params.root
    assert (root / "data" / "feast" / "registry.db").exists()
    assert (root / "data" / "feast" / "online_store.db").exists()
    assert mat["rows"] == {"context_stats": 3, "poi_profile": 3, "poi_stats": 3, "user_stats": 2, "user_profile": 2}
    assert mat["rows_per_s"] > 0
    store = get_store(params)
    assert {v.name for v in store.list_feature_views()} == {
        "user_stats", "user_profile", "poi_profile", "poi_stats", "context_stats", "scene_embeddings",
        "poi_embeddings", "user_knowledge"}
    assert {p.name for p in store.get_feature_service("ctr_training").feature_view_projections} == \
        {"user_stats", "user_profile", "poi_profile", "poi_stats", "context_stats"}
    # Sources are recorded relative to the feature repo, so the registry survives a move.
    assert {s.path for s in store.list_data_sources()} == {
        f"../data/features/{t}.parquet" for t in ("user_stats", "user_profile", "poi_profile", "poi_stats",
                                                  "context_stats")} | {
        f"../data/embeddings/{t}.parquet" for t in ("scene_embeddings", "poi_embeddings")} | {
        "../data/hkfr/user_knowledge.parquet"}
    # A second run over unchanged tables reloads nothing and reads only past the last end
    # (Jan 6 00:00:01), where there is no row.
    again = materialize(params, end=T("2026-01-07").to_pydatetime())
    assert again["reloaded"] == [] and again["rows_read"]["user_stats"] == 0


def test_online_features_match_the_latest_snapshot(project):
    params, tables, _ = project
    beh = tables["behaviors"]
    got = online_features(params, "u1", "p1", "office|lunch|sunny")
    assert got["user_id"] == "u1" and got["poi_id"] == "p1"
    assert got["user_stats__n_click"] == _clicks_before(beh, "u1", T("2026-01-05")) == 5
    assert got["user_stats__n_order"] == 1
    assert got["user_stats__n_active_days"] == 4
    assert got["user_stats__last_behavior_ts"] == T("2026-01-04T08:00:00Z").timestamp()
    assert got["poi_profile__price"] == pytest.approx(20.0) and got["poi_profile__rating_missing"] == 0
    assert got["poi_stats__n_click"] == 4 and got["poi_stats__n_view"] == 1
    assert got["context_stats__n_order"] == 1  # the 12:30 order; lunch = 10:00-14:00
    # D(lunch): 5 clicks/orders, 3 of them on noodles (p1, p3) and 2 on coffee (p2)
    assert got["context_stats__cat_00"] == pytest.approx(0.6) and got["context_stats__cat_01"] == pytest.approx(0.4)
    assert got["user_profile__age_18_24"] == 1.0 and got["user_profile__gender_f"] == 1.0
    assert got["user_profile__age_55plus"] == 0.0
    without_context = online_features(params, "u2", "p2")
    assert "context_stats__n_total" not in without_context
    assert without_context["user_stats__n_click"] == 2


def test_training_frame_is_point_in_time_correct(project):
    params, tables, _ = project
    imp, beh = tables["impressions"], tables["behaviors"]
    df = training_frame(params, imp)
    assert len(df) == len(imp)  # one row per impression, none collapsed or dropped
    assert list(df["request_id"]) == list(imp["request_id"]) and list(df["poi_id"]) == list(imp["poi_id"])
    assert list(df["click"]) == list(imp["click"])
    assert {"hour", "time_slot", "context_id", "temperature_band"} <= set(df.columns)
    clicks = df["user_stats__n_click"]
    for i, r in df.iterrows():
        snapshot = r.event_timestamp.floor("24h")  # latest snapshot at or before the impression
        before = beh[(beh.user_id == r.user_id) & (beh.ts < snapshot)]
        if before.empty:
            assert np.isnan(clicks[i])
        else:
            assert clicks[i] == _clicks_before(beh, r.user_id, snapshot)
    by_req = df.groupby("request_id")["user_stats__n_click"].first()
    assert np.isnan(by_req["r0"])  # no snapshot yet: missing, and the rows are still there
    assert (df.loc[df.request_id == "r0", "poi_profile__price"].notna()).all()
    # The profile (stamped at registration) joins even before the user's first snapshot.
    assert (df.loc[df.user_id == "u1", "user_profile__age_18_24"] == 1.0).all()
    assert (df.loc[df.user_id == "u2", [c for c in df if c.startswith("user_profile__")]] == 0.0).all().all()
    # r2 at 12:00:00; u1 clicks p3 at 12:00:05: the click is NOT in the feature.
    assert by_req["r2"] == 2
    assert by_req["r2"] < _clicks_before(beh, "u1", T("2026-01-03T12:00:06Z"))
    # r1 at exactly the snapshot time: the row stamped then is used, the click at that instant is not.
    assert by_req["r1"] == 2
    assert by_req["r3"] == 5 and by_req["r4"] == 1
    r2p3 = df[(df.request_id == "r2") & (df.poi_id == "p3")].iloc[0]
    # p3's only behaviour is that click after the impression: no p3 snapshot exists yet at r2.
    assert np.isnan(r2p3["poi_stats__n_click"])
    r3p3 = df[(df.request_id == "r3") & (df.poi_id == "p3")].iloc[0]
    assert r3p3["poi_stats__n_click"] == 1  # ... and by r3 (Jan 5) it is counted
    assert r2p3["click"] == 1


def test_build_training_set_writes_parquet(project):
    params, tables, _ = project
    path = build_training_set(params)
    assert path == params.path("features_dir") / "training_set.parquet"
    df = pd.read_parquet(path)
    assert len(df) == len(tables["impressions"])
    assert str(df["event_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_feast_cli_apply_works_in_the_copied_repo(project):
    params, _, _ = project
    env = {k: v for k, v in os.environ.items() if k not in ("SCENEREC_PARAMS", "SCENEREC_FEATURES_DIR")}
    env["FEAST_USAGE"] = "False"
    feast = Path(sys.executable).parent / "feast"
    out = subprocess.run([str(feast), "apply"], cwd=params.path("feature_repo"), env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # Same registry as the programmatic path: nothing new to create, the service is there.
    store = get_store(params)
    assert store.get_feature_service("ctr_training").name == "ctr_training"
