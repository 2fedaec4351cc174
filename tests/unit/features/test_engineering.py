"""Feature engineering on hand-made frames: worked examples, point-in-time correctness, shares,
scene derivations. Pure pandas, no Feast."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.config import FeaturesConfig
from components.features.engineering import (
    TABLES,
    band_columns,
    resolve_band_edges,
    saved_band_edges,
    build_feature_tables,
    category_columns,
    feature_schema,
    scene_features,
)

T = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731


def _pois() -> pd.DataFrame:
    return pd.DataFrame({
        "poi_id": ["p1", "p2", "p3"],
        "name": ["a", "b", "c"],
        "category": ["noodles", "coffee", "noodles"],  # noodles: 2 PoIs -> index 0
        "price": [20.0, 60.0, 100.0],  # bands 0, 2, 3 with edges 25/50/90
        "rating": [4.5, None, 3.0],  # missing -> mean 3.75
        "delivery_minutes": pd.Series([15, 40, 60], dtype="int64"),
        "geohash": ["wx4g0"] * 3,
        "description": ["", "", ""],
        "opened_at": [T("2025-12-01"), T("2025-12-02"), T("2025-12-03")],
    })


def _users() -> pd.DataFrame:
    return pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age_group": ["18-24", "55+", None],
                         "gender": ["f", None, "u"], "home_geohash": [None] * 3,
                         "registered_at": [T("2025-06-01"), T("2025-12-31"), T("2026-02-01")]})


def _behaviors(rows: list[tuple], **scene) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["ts", "user_id", "poi_id", "behavior"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True, format="ISO8601")
    df["query"] = np.where(df["behavior"] == "search", "noodles", None)
    df["geohash"] = "wx4g0"
    df["location_type"] = scene.get("location_type", "office")
    df["weather"] = scene.get("weather", "sunny")
    df["temperature_c"] = 15.0
    df["is_holiday"] = False
    return df


WORKED = [
    ("2026-01-01T08:00:00Z", "u1", "p1", "view"),
    ("2026-01-01T08:01:00Z", "u1", "p1", "click"),
    ("2026-01-01T12:00:00Z", "u1", "p2", "order"),
    ("2026-01-02T09:00:00Z", "u1", None, "search"),
    ("2026-01-03T23:59:59Z", "u1", "p3", "click"),
    ("2026-01-01T13:00:00Z", "u2", "p1", "click"),
]


# The worked examples use fixed edges (params.yaml learns them by default; see the tests at the end).
FIXED_EDGES = {"price_band_edges": [25, 50, 90], "rating_band_edges": [3.5, 4.2, 4.7], "delivery_band_edges": [20, 35, 50]}
FIXED = FeaturesConfig(top_categories=1, **FIXED_EDGES)


def _build(tmp_path, behaviors: pd.DataFrame, cfg: FeaturesConfig | None = None, pois=None):
    cur, out = tmp_path / "curated", tmp_path / "features"
    cur.mkdir(exist_ok=True)
    (pois if pois is not None else _pois()).to_parquet(cur / "pois.parquet", index=False)
    behaviors.to_parquet(cur / "behaviors.parquet", index=False)
    _users().to_parquet(cur / "users.parquet", index=False)
    rows = build_feature_tables(cur, cfg or FIXED, out)
    return rows, {t: pd.read_parquet(out / f"{t}.parquet") for t in TABLES}, out


def test_user_stats_worked_example(tmp_path):
    rows, t, _ = _build(tmp_path, _behaviors(WORKED))
    us = t["user_stats"]
    assert rows["user_stats"] == len(us) == 4
    u1 = us[us.user_id == "u1"].reset_index(drop=True)
    # One row per active day, stamped at the day's end, cumulative over everything before it.
    assert list(u1.event_timestamp) == [T("2026-01-02"), T("2026-01-03"), T("2026-01-04")]
    assert list(u1.n_view) == [1, 1, 1]
    assert list(u1.n_click) == [1, 1, 2]
    assert list(u1.n_order) == [1, 1, 1]
    assert list(u1.n_search) == [0, 1, 1]
    assert list(u1.n_total) == [3, 4, 5]
    assert list(u1.n_interactions) == [2, 2, 3]  # clicks + orders
    assert list(u1.n_active_days) == [1, 2, 3]
    # category mix of clicks+orders with top_categories=1: noodles (p1, p3) vs other (p2)
    np.testing.assert_allclose(u1.cat_00, [0.5, 0.5, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(u1.cat_other, [0.5, 0.5, 1 / 3], rtol=1e-6)
    # price bands: p1 -> 0, p2 -> 2, p3 -> 3
    bands = u1[band_columns("price_band", 4)].iloc[2]
    np.testing.assert_allclose(bands, [1 / 3, 0, 1 / 3, 1 / 3], rtol=1e-6)
    assert u1.last_behavior_ts.iloc[0] == T("2026-01-01T12:00:00Z").timestamp()
    assert u1.last_behavior_ts.iloc[2] == T("2026-01-03T23:59:59Z").timestamp()
    assert str(us.event_timestamp.dtype) == "datetime64[ns, UTC]"


def test_no_row_counts_behaviour_at_or_after_its_timestamp(tmp_path):
    rng = np.random.default_rng(7)
    n = 400
    ts = T("2026-01-01") + pd.to_timedelta(rng.integers(0, 10 * 86400, n), unit="s")
    rows = list(zip(ts.astype(str), rng.choice(["u1", "u2", "u3"], n), rng.choice(["p1", "p2", "p3"], n),
                    rng.choice(["view", "click", "order", "favorite"], n)))
    # A click exactly on a snapshot boundary belongs to the next snapshot, not to the one stamped then.
    rows += [("2026-01-04T23:00:00Z", "u1", "p2", "view"), ("2026-01-05T00:00:00Z", "u1", "p1", "click")]
    beh = _behaviors(rows)
    _, t, _ = _build(tmp_path, beh, FeaturesConfig(snapshot_hours=6, top_categories=1, **FIXED_EDGES))
    us = t["user_stats"]
    for r in us.itertuples():
        before = beh[(beh.user_id == r.user_id) & (beh.ts < r.event_timestamp)]
        assert r.n_total == len(before)
        assert r.n_click == (before.behavior == "click").sum()
        assert r.last_behavior_ts == before.ts.max().timestamp()
    clicks = beh[(beh.user_id == "u1") & (beh.behavior == "click")]
    boundary = us[(us.user_id == "u1") & (us.event_timestamp == T("2026-01-05"))]
    assert boundary.n_click.iloc[0] == (clicks.ts < T("2026-01-05")).sum()
    assert boundary.n_click.iloc[0] == (clicks.ts <= T("2026-01-05")).sum() - 1
    after = us[(us.user_id == "u1") & (us.event_timestamp == T("2026-01-05T06:00:00Z"))]
    assert len(after) == 1  # the boundary click makes u1 active in [00:00, 06:00)
    ps = t["poi_stats"]
    for r in ps.itertuples():
        before = beh[(beh.poi_id == r.poi_id) & (beh.ts < r.event_timestamp)]
        assert r.n_view == (before.behavior == "view").sum() and r.n_order == (before.behavior == "order").sum()


def test_shares_sum_to_one_or_zero(tmp_path):
    rows = WORKED + [("2026-01-05T10:00:00Z", "u3", "p2", "view"), ("2026-01-05T11:00:00Z", "u3", None, "search")]
    cfg = FeaturesConfig(top_categories=1)  # learned edges, quartiles
    _, t, _ = _build(tmp_path, _behaviors(rows), cfg)
    groups = {
        "user_stats": [category_columns(cfg), band_columns("price_band", 4)],
        "context_stats": [category_columns(cfg)] + [band_columns(p, 4) for p in ("price_band", "rating_band",
                                                                                    "delivery_band")],
    }
    for table, column_groups in groups.items():
        df = t[table]
        for cols in column_groups:
            sums = df[cols].sum(axis=1).to_numpy()
            expected = np.where(df["n_interactions"] > 0, 1.0, 0.0)
            np.testing.assert_allclose(sums, expected, atol=1e-5, err_msg=f"{table} {cols}")
    u3 = t["user_stats"][t["user_stats"].user_id == "u3"]
    assert (u3.n_interactions == 0).all() and (u3[category_columns(cfg)].to_numpy() == 0).all()


def test_poi_profile_and_stats(tmp_path):
    _, t, out = _build(tmp_path, _behaviors(WORKED), FeaturesConfig(top_categories=1, popularity_prior=20, **FIXED_EDGES))
    prof = t["poi_profile"].set_index("poi_id")
    assert list(prof.index) == ["p1", "p2", "p3"]
    assert prof.loc["p2", "rating"] == pytest.approx(3.75) and prof.loc["p2", "rating_missing"] == 1
    assert prof.loc["p1", "rating_missing"] == 0
    assert list(prof.category_idx) == [0, 1, 0]
    assert list(prof.price_band) == [0, 2, 3]
    assert list(prof.rating_band) == [2, 1, 0]  # 4.5 in [4.2, 4.7), 3.75 in [3.5, 4.2), 3.0 < 3.5
    assert list(prof.delivery_band) == [0, 2, 3]
    assert prof.loc["p3", "event_timestamp"] == T("2025-12-03")
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["categories"] == ["noodles", "coffee"] and vocab["rating_mean"] == pytest.approx(3.75)
    # poi_stats: p1 at the end of Jan 1 has 1 view and 2 clicks; the global priors then are
    # ctr0 = 2 clicks / 1 view and cvr0 = 1 order / 2 clicks (p2's order).
    p1 = t["poi_stats"].set_index("poi_id").loc["p1"]
    assert (p1.n_view, p1.n_click, p1.n_order) == (1, 2, 0)
    assert p1.ctr_smoothed == pytest.approx((2 + 20 * 2.0) / (1 + 20), rel=1e-6)
    assert p1.cvr_smoothed == pytest.approx((0 + 20 * 0.5) / (2 + 20), rel=1e-6)


def test_poi_recent_window_counts_only_the_last_days(tmp_path):
    """features.recent_days: per snapshot, the behaviour of the window ending with it; the recent CTR
    is shrunk to the PoI's own long-run rate. Days 1, 2 and 5 active; a 2-day window."""
    rows = [("2026-01-01T08:00:00Z", "u1", "p1", "view"), ("2026-01-01T08:01:00Z", "u1", "p1", "click"),
            ("2026-01-02T08:00:00Z", "u1", "p1", "view"), ("2026-01-02T09:00:00Z", "u2", "p1", "view"),
            ("2026-01-05T08:00:00Z", "u2", "p1", "view"), ("2026-01-05T08:01:00Z", "u2", "p1", "click"),
            ("2026-01-05T08:02:00Z", "u2", "p1", "order")]
    cfg = FeaturesConfig(top_categories=1, recent_days=2, **FIXED_EDGES)
    assert [c for c, _ in feature_schema(cfg)["poi_stats"]][-4:] == ["n_view_recent", "n_click_recent",
                                                                      "n_order_recent", "ctr_recent"]
    _, t, _ = _build(tmp_path, _behaviors(rows), cfg)
    p1 = t["poi_stats"].query("poi_id == 'p1'").set_index("event_timestamp")
    day = lambda d: p1.loc[T(f"2026-01-0{d}")]  # noqa: E731  (the snapshot at the end of day d-1)
    assert (day(2).n_view, day(2).n_view_recent, day(2).n_click_recent) == (1, 1, 1)
    assert (day(3).n_view, day(3).n_view_recent, day(3).n_click_recent) == (3, 3, 1)  # days 1-2
    # day 5: the window (days 4-5) holds day 5 alone; day 1's click and day 2's views have left it
    assert (day(6).n_view, day(6).n_click, day(6).n_view_recent, day(6).n_click_recent,
            day(6).n_order_recent) == (4, 2, 1, 1, 1)
    assert day(6).ctr_recent == pytest.approx((1 + 20 * day(6).ctr_smoothed) / (1 + 20), rel=1e-6)
    # recent_days 0: the cumulative columns only
    assert "n_view_recent" not in dict(feature_schema(FIXED.model_copy(update={"recent_days": 0}))["poi_stats"])


def test_poi_momentum_is_recent_counts_over_those_the_running_share_expects(tmp_path):
    """features.poi_momentum: p1 is viewed on day 1 only, p2 on day 1 and three times on day 4; with a
    2-day window p2 is rising (> 0) and p1 fading (< 0) at the end of day 4, whatever the platform's
    size; the pseudo-counts (popularity_prior + 1 views) pull a PoI with few counts towards 0."""
    rows = [("2026-01-01T08:00:00Z", "u1", "p1", "view"), ("2026-01-01T08:01:00Z", "u1", "p1", "view"),
            ("2026-01-01T09:00:00Z", "u2", "p2", "view"),
            ("2026-01-04T08:00:00Z", "u2", "p2", "view"), ("2026-01-04T08:05:00Z", "u2", "p2", "view"),
            ("2026-01-04T08:06:00Z", "u2", "p2", "click"), ("2026-01-04T09:00:00Z", "u1", "p1", "click")]
    cfg = FeaturesConfig(top_categories=1, recent_days=2, poi_momentum=True, popularity_prior=0, **FIXED_EDGES)
    assert [c for c, _ in feature_schema(cfg)["poi_stats"]][-2:] == ["view_momentum", "click_momentum"]
    _, t, _ = _build(tmp_path, _behaviors(rows), cfg)
    at = t["poi_stats"].set_index(["poi_id", "event_timestamp"])
    p2 = at.loc[("p2", T("2026-01-05"))]
    # day 4's window: p2 has 2 views (platform: 2), 1 of 2 clicks; so far 3 of 5 views, 1 of 2 clicks:
    # its running share expects 3 / 5 * 2 = 1.2 of the window's views and 1 / 2 * 2 = 1 of its clicks
    assert p2.view_momentum == pytest.approx(np.log((2 + 1) / (1.2 + 1)), rel=1e-5) and p2.view_momentum > 0
    assert p2.click_momentum == pytest.approx(0.0, abs=1e-6)
    p1 = at.loc[("p1", T("2026-01-05"))]  # p1's snapshot for day 4 (its click): no view in the window
    assert p1.view_momentum == pytest.approx(np.log(1 / (0.8 + 1)), rel=1e-5) and p1.view_momentum < 0
    # day 1: every view and click is recent, for the PoI and the platform alike: 0
    assert at.loc[("p1", T("2026-01-02"))].view_momentum == pytest.approx(0.0, abs=1e-6)
    # a prior of 20 pseudo-impressions shrinks the same evidence towards 0
    (tmp_path / "k20").mkdir()
    _, shrunk, _ = _build(tmp_path / "k20", _behaviors(rows), cfg.model_copy(update={"popularity_prior": 20.0}))
    s2 = shrunk["poi_stats"].set_index(["poi_id", "event_timestamp"]).loc[("p2", T("2026-01-05"))]
    assert s2.view_momentum == pytest.approx(np.log((2 + 21) / (1.2 + 21)), rel=1e-5)
    assert 0 < s2.view_momentum < p2.view_momentum
    assert "view_momentum" not in dict(feature_schema(cfg.model_copy(update={"poi_momentum": False}))["poi_stats"])
    assert "view_momentum" not in dict(feature_schema(cfg.model_copy(update={"recent_days": 0}))["poi_stats"])


def test_user_profile_one_hot_stamped_at_registration(tmp_path):
    _, t, _ = _build(tmp_path, _behaviors(WORKED))
    prof = t["user_profile"].set_index("user_id")
    assert list(prof.index) == ["u1", "u2", "u3"]  # every user, with or without behaviour
    assert list(prof.columns) == ["event_timestamp", "age_lt18", "age_18_24", "age_25_34", "age_35_44", "age_45_54",
                                  "age_55plus", "gender_f", "gender_m", "gender_u"]
    assert prof.loc["u1", "event_timestamp"] == T("2025-06-01")
    assert (prof.loc["u1", "age_18_24"], prof.loc["u1", "gender_f"]) == (1.0, 1.0)
    assert prof.loc["u1"].iloc[1:].sum() == 2.0
    assert prof.loc["u2", "age_55plus"] == 1.0 and prof.loc["u2", [c for c in prof if c.startswith("gender")]].sum() == 0
    assert prof.loc["u3", [c for c in prof if c.startswith("age")]].sum() == 0 and prof.loc["u3", "gender_u"] == 1.0


def test_context_stats_distribution(tmp_path):
    _, t, _ = _build(tmp_path, _behaviors(WORKED), FIXED)
    cs = t["context_stats"]
    lunch = cs[cs.context_id == "office|lunch|sunny"].iloc[0]
    # 12:00 order of p2 (other, price band 2) and 13:00 click of p1 (noodles, price band 0)
    assert (lunch.n_total, lunch.n_click, lunch.n_order, lunch.n_interactions) == (2, 1, 1, 2)
    assert (lunch.cat_00, lunch.cat_other) == (0.5, 0.5)
    assert (lunch.price_band_0, lunch.price_band_2) == (0.5, 0.5)
    assert lunch.event_timestamp == T("2026-01-02")
    assert set(cs.context_id) == {"office|breakfast|sunny", "office|lunch|sunny", "office|late_night|sunny"}


def test_scene_features_derivations():
    df = pd.DataFrame({
        "ts": pd.to_datetime(["2026-01-01T02:00:00Z", "2026-01-03T05:00:00Z", "2026-01-04T12:30:00Z",
                              "2026-01-05T21:00:00Z"], utc=True),
        "location_type": ["home", "office", "school", "outdoor"],
        "weather": ["sunny", "rainy", "snowy", "foggy"],
        "temperature_c": [-5.0, 0.0, 19.9, 35.0],
        "is_holiday": [True, False, False, False],
    })
    out = scene_features(df, FeaturesConfig())
    assert list(out.hour) == [2, 5, 12, 21]
    assert list(out.day_of_week) == [3, 5, 6, 0]  # Thu, Sat, Sun, Mon
    assert list(out.is_weekend) == [0, 1, 1, 0]
    assert list(out.time_slot) == ["late_night", "breakfast", "lunch", "late_night"]  # wraps past midnight
    assert list(out.temperature_band) == [0, 1, 2, 4]  # edges 0/10/20/30
    assert list(out.context_id) == ["home|late_night|sunny", "office|breakfast|rainy",
                                    "school|lunch|snowy", "outdoor|late_night|foggy"]
    assert list(df.columns) == ["ts", "location_type", "weather", "temperature_c", "is_holiday"]  # input untouched
    shanghai = scene_features(df, FeaturesConfig(timezone="Asia/Shanghai"))
    assert list(shanghai.hour) == [10, 13, 20, 5]
    assert list(shanghai.time_slot) == ["lunch", "lunch", "dinner", "breakfast"]
    assert list(shanghai.day_of_week) == [3, 5, 6, 1]


def test_knobs_shape_the_schema_and_are_validated():
    cfg = FeaturesConfig(top_categories=3, price_band_edges=[10.0, 20.0])
    cols = [c for c, _ in feature_schema(cfg)["user_stats"]]
    assert [c for c in cols if c.startswith("cat_")] == ["cat_00", "cat_01", "cat_02", "cat_other"]
    assert [c for c in cols if c.startswith("price_band")] == ["price_band_0", "price_band_1", "price_band_2"]
    learned = [c for c, _ in feature_schema(FeaturesConfig(learned_bands=5))["user_stats"] if c.startswith("price_band")]
    assert learned == [f"price_band_{i}" for i in range(5)]
    with pytest.raises(ValueError, match="strictly increasing"):
        FeaturesConfig(price_band_edges=[50.0, 20.0])
    with pytest.raises(ValueError, match="start hours"):
        FeaturesConfig(time_slots={"a": 10, "b": 10})
    assert list(FeaturesConfig(time_slots={"b": 10, "a": 5}).time_slots) == ["a", "b"]  # sorted by hour
    with pytest.raises(ValueError, match="time zone"):
        FeaturesConfig(timezone="Mars/Olympus")


def test_deterministic_and_empty(tmp_path):
    beh = _behaviors(WORKED)
    for name in "abc":
        (tmp_path / name).mkdir()
    _, a, _ = _build(tmp_path / "a", beh)
    _, b, _ = _build(tmp_path / "b", beh.sample(frac=1, random_state=3))
    for table in TABLES:  # row order of the input does not matter
        pd.testing.assert_frame_equal(a[table], b[table])
    rows, empty, _ = _build(tmp_path / "c", beh.iloc[:0])
    assert rows == {"user_stats": 0, "user_profile": 3, "poi_profile": 3, "poi_stats": 0, "context_stats": 0}
    assert list(empty["user_stats"].columns)[:2] == ["user_id", "event_timestamp"]


def test_missing_curated_table_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="scenerec ingest"):
        build_feature_tables(tmp_path, FeaturesConfig(), tmp_path / "out")


def test_learned_band_edges_are_quantiles_of_the_training_pois_and_scale_free(tmp_path):
    rng = np.random.default_rng(3)
    n = 200
    pois = pd.DataFrame({"price": rng.lognormal(3.5, 0.5, n), "rating": rng.choice([3.0, 4.0, 4.5, 5.0], n),
                         "delivery_minutes": rng.integers(10, 70, n),
                         "opened_at": T("2025-01-01") + pd.to_timedelta(np.arange(n), unit="D")})
    cutoff = T("2025-01-01") + pd.Timedelta(days=150)
    cfg = resolve_band_edges(pois, FeaturesConfig(), fit_until=cutoff)
    early = pois[pois.opened_at < cutoff]
    np.testing.assert_allclose(cfg.price_band_edges, np.quantile(early.price, [0.25, 0.5, 0.75]), rtol=1e-3)
    assert len(cfg.rating_band_edges) == 3 and all(b > a for a, b in zip(cfg.rating_band_edges, cfg.rating_band_edges[1:]))
    # A PoI opened after the cutoff never moves the edges (they are learned on the training split).
    late = pois.assign(price=np.where(pois.opened_at >= cutoff, 1e6, pois.price))
    assert resolve_band_edges(late, FeaturesConfig(), fit_until=cutoff).price_band_edges == cfg.price_band_edges
    # Another currency (prices x 7) gets the same bands: no constant of one world in the features.
    scaled = resolve_band_edges(pois.assign(price=pois.price * 7), FeaturesConfig(), fit_until=cutoff)
    np.testing.assert_allclose(scaled.price_band_edges, np.array(cfg.price_band_edges) * 7, rtol=1e-3)
    # Fixed edges are kept as given.
    assert resolve_band_edges(pois, FeaturesConfig(price_band_edges=[1.0, 2.0])).price_band_edges == [1.0, 2.0]


def test_learned_edges_are_written_to_the_vocabulary_and_read_back(tmp_path):
    _, t, out = _build(tmp_path, _behaviors(WORKED), FeaturesConfig(top_categories=1, learned_bands=2))
    edges = saved_band_edges(out, "price_band_edges")
    assert edges == [60.0]  # the median of 20, 60, 100
    assert list(t["poi_profile"].price_band) == [0, 1, 1]  # a value equal to an edge goes to the upper band
    with pytest.raises(FileNotFoundError, match="scenerec features"):
        saved_band_edges(tmp_path / "nowhere", "price_band_edges")
