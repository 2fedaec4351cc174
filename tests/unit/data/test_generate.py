"""The synthetic generator: determinism, the raw contract, and the world's signals being real."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from components.config import GenerateConfig
from components.data.contract import (
    AGE_GROUPS,
    BEHAVIORS,
    CONTRACT,
    GENDERS,
    GEOHASH_REGEX,
    LOCATION_TYPES,
    SCENE_COLUMN_NAMES,
    TABLES,
    TRUTH_COLUMNS,
    WEATHERS,
)
from components.data.generate import WORDS, generate_batch, generate_tables, geohash_encode, hidden_variables

SMALL = GenerateConfig(n_users=150, n_pois=60, n_requests=400, mean_behaviors_per_user=40, days=20)
# Big enough that category mixes per scene are measured well (~100k behaviour rows, about a second).
MEDIUM = GenerateConfig(n_users=800, n_pois=150, n_requests=4000, mean_behaviors_per_user=120)


@pytest.fixture(scope="module")
def world() -> dict[str, pd.DataFrame]:
    return generate_tables(MEDIUM, seed=3)


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tv(a: pd.Series, b: pd.Series) -> float:
    """Total-variation distance between the value distributions of two series."""
    pa, pb = a.value_counts(normalize=True), b.value_counts(normalize=True)
    return 0.5 * pa.sub(pb, fill_value=0).abs().sum()


# ---------------------------------------------------------------------------------------------
# Determinism and files
# ---------------------------------------------------------------------------------------------
def test_same_seed_same_files_other_seed_other_data(tmp_path):
    counts = generate_batch(SMALL, 11, tmp_path / "a")
    generate_batch(SMALL, 11, tmp_path / "b")
    generate_batch(SMALL, 12, tmp_path / "c")
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert set(a) == {f"{t}.parquet" for t in TABLES} | {"truth/impressions.parquet"}
    assert a == b
    assert all(a[k] != c[k] for k in a)
    for t in TABLES:
        assert len(pd.read_parquet(tmp_path / "a" / f"{t}.parquet")) == counts[t] > 0
    assert counts["truth"] == counts["impressions"] == SMALL.n_requests * SMALL.impressions_per_request


def test_csv_writes_and_reads_back(tmp_path):
    cfg = SMALL.model_copy(update={"format": "csv"})
    generate_batch(cfg, 5, tmp_path)
    mem = generate_tables(cfg, 5)
    assert not list(tmp_path.glob("*.parquet"))
    for t in TABLES:
        back = pd.read_csv(tmp_path / f"{t}.csv")
        assert list(back.columns) == CONTRACT[t].column_names
        for c in CONTRACT[t].columns:
            if c.dtype == "timestamp":
                raw = back[c.name].astype(str)
                assert raw.str.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|\+00:00)$").all(), (t, c.name)
                back[c.name] = pd.to_datetime(back[c.name], utc=True)
        expected = mem[t].astype(object).where(mem[t].notna(), None)
        got = back.astype(object).where(back.notna(), None)
        for col in expected.columns:
            exp_col = expected[col]
            if mem[t][col].dtype.kind == "M":
                exp_col = exp_col.map(lambda v: v.floor("s"))
            assert (exp_col == got[col]).sum() + (exp_col.isna() & got[col].isna()).sum() == len(exp_col), (t, col)
    # A rerun in the other format replaces the tables instead of leaving both behind.
    generate_batch(SMALL, 5, tmp_path)
    assert not list(tmp_path.glob("*.csv")) and len(list(tmp_path.glob("*.parquet"))) == 4


def test_future_range_is_refused():
    soon = datetime.now(timezone.utc).replace(microsecond=0)
    with pytest.raises(ValueError, match="future"):
        generate_tables(SMALL.model_copy(update={"start": soon}), 0)


def test_geohash_matches_reference_values():
    got = geohash_encode(np.array([57.64911, 39.91]), np.array([10.40744, 116.40]), 11)
    assert list(got) == ["u4pruydqqvj", "wx4g09ruse4"]


# ---------------------------------------------------------------------------------------------
# The contract, checked with plain pandas
# ---------------------------------------------------------------------------------------------
def test_contract_rules_hold(world):
    now = pd.Timestamp.now(tz="UTC")
    for name in TABLES:
        df = world[name]
        assert list(df.columns) == CONTRACT[name].column_names, name
        for c in CONTRACT[name].columns:
            s = df[c.name]
            where = f"{name}.{c.name}"
            if not c.nullable:
                assert s.notna().all(), where
            v = s.dropna()
            if c.dtype == "string":
                assert s.dtype == object and v.map(type).eq(str).all(), where
            elif c.dtype == "timestamp":
                assert str(s.dtype) == "datetime64[ns, UTC]", where
            elif c.dtype == "float":
                assert s.dtype == np.float64, where
            elif c.dtype == "int":
                assert s.dtype == np.int64, where
            elif c.dtype == "bool":
                assert s.dtype == bool, where
            if c.unique:
                assert s.is_unique, where
            if c.min_value is not None:
                assert (v > c.min_value).all() if c.strict_min else (v >= c.min_value).all(), where
            if c.max_value is not None:
                assert (v <= c.max_value).all(), where
            if c.value_set is not None:
                assert v.isin(c.value_set).all(), where
            if c.regex is not None:
                assert v.str.fullmatch(GEOHASH_REGEX).all(), where
            if c.not_future:
                assert (v <= now).all(), where
            if c.references is not None:
                table, col = c.references.split(".")
                assert v.isin(world[table][col]).all(), where

    beh, imp = world["behaviors"], world["impressions"]
    search = beh["behavior"] == "search"
    assert beh.loc[~search, "poi_id"].notna().all() and beh.loc[~search, "query"].isna().all()
    assert beh.loc[search, "query"].notna().all() and beh.loc[search, "poi_id"].isna().all()
    assert set(beh["behavior"]) == set(BEHAVIORS)
    assert not imp.duplicated(["request_id", "poi_id"]).any()
    assert (imp["order"] <= imp["click"]).all()
    per_request = imp.groupby("request_id")["position"].agg(["min", "max", "size"])
    assert (per_request["min"] == 0).all() and (per_request["max"] == per_request["size"] - 1).all()
    truth = world["truth"]
    assert list(truth.columns) == list(TRUTH_COLUMNS) and len(truth) == len(imp)
    assert (truth[["request_id", "poi_id"]].to_numpy() == imp[["request_id", "poi_id"]].to_numpy()).all()
    assert truth["p_click"].between(0, 1).all() and (truth["p_order"] <= truth["p_click"]).all()


def test_values_look_real(world):
    pois, users, beh, imp = (world[t] for t in ("pois", "users", "behaviors", "impressions"))
    # Some nulls where the contract allows them, but not many.
    for df, col in ((pois, "rating"), (pois, "description"), (users, "age_group"), (users, "gender"),
                    (users, "home_geohash")):
        assert 0.005 < df[col].isna().mean() < 0.15, col
    assert set(users["age_group"].dropna()) == set(AGE_GROUPS) and set(users["gender"].dropna()) == set(GENDERS)
    assert set(beh["location_type"]) == set(LOCATION_TYPES)
    assert set(beh["weather"]) >= set(WEATHERS) - {"snowy"}
    assert pois["category"].nunique() >= 20
    assert beh["temperature_c"].std() > 4
    # A holiday on a weekend is a weekend (checked on impressions: a log row keeps its session's scene,
    # so an order minutes after a Friday-holiday midnight still says holiday).
    assert imp["is_holiday"].any() and not imp.loc[imp["ts"].dt.weekday >= 5, "is_holiday"].any()
    # Heavy-tailed log lengths: mean near the knob, a long tail of very active users.
    per_user = beh.groupby("user_id").size()
    assert 0.8 < len(beh) / len(users) / MEDIUM.mean_behaviors_per_user < 1.2
    assert per_user.max() > 8 * per_user.median()
    assert 0.05 <= imp["click"].mean() <= 0.15
    assert 0.2 <= imp["order"].sum() / imp["click"].sum() <= 0.4
    # Pricier categories are pricier.
    med = pois.groupby("category")["price"].median()
    assert med.get("hot pot", 100) > med.get("bubble tea", 20) and med.get("steak & western", 100) > med.get("congee", 20)


def test_text_says_the_attributes():
    pois = generate_tables(GenerateConfig(n_users=10, n_pois=1500, n_requests=10, mean_behaviors_per_user=1), 1)["pois"]
    text = (pois["name"] + " " + pois["description"].fillna("")).str.lower()
    spicy_words = r"\b(?:" + "|".join(WORDS["spicy"][1]) + r")\b"
    cold_words = r"\b(?:" + "|".join(WORDS["warm"][0]) + r")\b"
    spicy_cat = pois["category"].isin(["sichuan", "hot pot", "malatang", "crayfish"])
    cold_cat = pois["category"].isin(["ice cream & desserts", "fruit & juice", "salad"])
    assert text[spicy_cat].str.contains(spicy_words).mean() > 0.6 > 3 * text[cold_cat].str.contains(spicy_words).mean()
    assert text[cold_cat].str.contains(cold_words).mean() > 0.5 > 3 * text[spicy_cat].str.contains(cold_words).mean()


# ---------------------------------------------------------------------------------------------
# The world: scene signals, cold start, one consistent timeline, an oracle below 1
# ---------------------------------------------------------------------------------------------
def _orders(world) -> pd.DataFrame:
    beh = world["behaviors"]
    o = beh[beh["behavior"] == "order"].merge(world["pois"][["poi_id", "category", "price"]], on="poi_id")
    o["hour"] = o["ts"].dt.hour
    return o


def _placebo_tv(s: pd.Series, n_a: int, n_b: int) -> float:
    """TV distance between two random samples of the given sizes from one distribution (noise floor)."""
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(s))
    return _tv(s.iloc[idx[:n_a]], s.iloc[idx[n_a:n_a + n_b]])


def test_scene_changes_what_is_ordered(world):
    o = _orders(world)
    office_lunch = o[(o["location_type"] == "office") & o["hour"].between(10, 13)]
    home_late = o[(o["location_type"] == "home") & ((o["hour"] >= 21) | (o["hour"] < 5))]
    cold_wet = o[(o["temperature_c"] < 5) & o["weather"].isin(["rainy", "snowy"])]
    hot = o[o["temperature_c"] > 22]
    for a, b in ((office_lunch, home_late), (cold_wet, hot)):
        assert min(len(a), len(b)) > 200
        signal = _tv(a["category"], b["category"])
        assert signal > 0.3 and signal > 2.5 * _placebo_tv(o["category"], len(a), len(b))
    # Office lunch is cheaper than dinner at home; cold/wet wants warm food, heat wants cold food.
    home_dinner = o[(o["location_type"] == "home") & o["hour"].between(17, 20)]
    assert office_lunch["price"].mean() < 0.9 * home_dinner["price"].mean()
    cold_food = ["ice cream & desserts", "fruit & juice", "salad", "bubble tea", "cold noodles", "sushi", "poke bowls"]
    assert hot["category"].isin(cold_food).mean() > 2 * cold_wet["category"].isin(cold_food).mean()


def test_cold_start_users_and_pois_appear_only_after_they_exist(world):
    users, pois, beh, imp = (world[t] for t in ("users", "pois", "behaviors", "impressions"))
    start = pd.Timestamp(MEDIUM.start)
    cutoff = start + pd.Timedelta(days=MEDIUM.days * MEDIUM.cold_start_after)
    cold_users = users.loc[users["registered_at"] >= cutoff, "user_id"]
    cold_pois = pois.loc[pois["opened_at"] >= cutoff, "poi_id"]
    assert abs(len(cold_users) - MEDIUM.cold_user_fraction * MEDIUM.n_users) <= 1
    assert abs(len(cold_pois) - MEDIUM.cold_poi_fraction * MEDIUM.n_pois) <= 1
    assert (users.loc[~users["user_id"].isin(cold_users), "registered_at"] < start).all()
    for events in (beh, imp):
        e = events.merge(users[["user_id", "registered_at"]], on="user_id")
        assert (e["ts"] >= e["registered_at"]).all()
        e = events.dropna(subset=["poi_id"]).merge(pois[["poi_id", "opened_at"]], on="poi_id")
        assert (e["ts"] >= e["opened_at"]).all()
        assert events["user_id"].isin(cold_users).any() and events["poi_id"].isin(cold_pois).any()
        assert (events.loc[events["user_id"].isin(cold_users), "ts"] >= cutoff).all()
    assert beh["ts"].min() >= start and beh["ts"].max() <= start + pd.Timedelta(days=MEDIUM.days)


def test_impression_clicks_and_orders_are_in_the_log_right_after(world):
    beh, imp = world["behaviors"], world["impressions"]
    keys = ["user_id", "poi_id", *SCENE_COLUMN_NAMES]
    for label, within in (("click", pd.Timedelta(minutes=1)), ("order", pd.Timedelta(minutes=20))):
        shown = imp[imp[label] == 1]
        logged = beh[beh["behavior"] == label]
        m = shown.merge(logged, on=keys, suffixes=("", "_log"))
        m = m[(m["ts_log"] > m["ts"]) & (m["ts_log"] <= m["ts"] + within)]
        assert m["request_id"].nunique() == shown["request_id"].nunique(), label
        assert len(m.drop_duplicates(["request_id", "poi_id"])) == len(shown), label


def test_oracle_auc_is_a_ceiling_below_one(world):
    imp, truth = world["impressions"], world["truth"]
    auc = roc_auc_score(imp["click"], truth["p_click"])
    assert 0.72 < auc < 0.9
    assert 0.5 < roc_auc_score(imp["order"], truth["p_order"]) < 0.95
    # Position matters (a bias), but far less than the oracle knows.
    assert 0.5 < roc_auc_score(imp["click"], -imp["position"]) < auc - 0.05


def test_hidden_variables_are_the_worlds_latents():
    """Keyed like the tables; with no hidden noise the truth is exactly σ(click_logit + one bias), and with
    the default noise the residual has its standard deviation."""
    for std in (0.0, 0.6):
        cfg = SMALL.model_copy(update={"hidden_noise_std": std})
        tables, hidden = generate_tables(cfg, seed=5), hidden_variables(cfg, seed=5)
        assert hidden["users"]["user_id"].tolist() == tables["users"]["user_id"].tolist()
        assert hidden["pois"]["poi_id"].tolist() == tables["pois"]["poi_id"].tolist()
        assert set(tables["impressions"]["request_id"]) <= set(hidden["requests"]["request_id"])
        imp = hidden["impressions"]
        assert imp[["request_id", "poi_id"]].equals(tables["truth"][["request_id", "poi_id"]])
        p = tables["truth"]["p_click"].to_numpy()
        residual = np.log(p / (1 - p)) - imp["click_logit"].to_numpy()
        assert residual.std() == pytest.approx(std, abs=0.05 + 0.1 * std)
        want = hidden["requests"][[c for c in hidden["requests"] if c.startswith("want_")]]
        assert want.notna().all().all() and want.shape[1] == 7


# ---------------------------------------------------------------------------------------------
# World-family knobs (benchmarks/worlds.py): what real logs change between companies
# ---------------------------------------------------------------------------------------------
def test_price_scale_changes_only_the_written_prices():
    base = generate_tables(SMALL, seed=5)
    scaled = generate_tables(SMALL.model_copy(update={"price_scale": 7.0}), seed=5)
    np.testing.assert_allclose(scaled["pois"]["price"], np.round(base["pois"]["price"] * 7.0, 2))
    # Same world behind the currency: the same clicks and orders.
    pd.testing.assert_frame_equal(base["impressions"], scaled["impressions"])


def test_rating_scale_and_temperature_knobs_move_what_is_written():
    base = generate_tables(SMALL, seed=5)
    inflated = generate_tables(SMALL.model_copy(update={"rating_mean": 4.7, "rating_spread": 0.1}), seed=5)
    assert inflated["pois"]["rating"].std() < base["pois"]["rating"].std()
    assert inflated["pois"]["rating"].mean() > base["pois"]["rating"].mean() + 0.2
    warm = generate_tables(SMALL.model_copy(update={"temperature_offset": 10.0}), seed=5)
    diff = warm["impressions"]["temperature_c"].mean() - base["impressions"]["temperature_c"].mean()
    assert 9.0 < diff < 11.0
    strong = generate_tables(SMALL.model_copy(update={"temperature_effect": 3.0}), seed=5)
    assert not strong["impressions"]["click"].equals(base["impressions"]["click"])


def test_popularity_drift_moves_shops_over_the_log_and_nothing_else(world):
    """Shops rise and fade: with drift the PoI table is the same (drawn last, from the PoIs' own stream),
    a PoI's true P(click) climbs over the log in proportion to its hidden drift, and without it
    nothing in a PoI's standing moves with time."""
    cfg = MEDIUM.model_copy(update={"popularity_drift": 2.0})
    base, drifting = world, generate_tables(cfg, seed=3)  # world: MEDIUM at seed 3, without drift
    pd.testing.assert_frame_equal(base["pois"], drifting["pois"])
    assert not drifting["truth"]["p_click"].equals(base["truth"]["p_click"])

    def late_minus_early(tables):  # per PoI: mean true click logit in the last third minus the first
        t = tables["truth"].merge(tables["impressions"][["request_id", "poi_id", "ts"]], on=["request_id", "poi_id"])
        logit = np.log(t["p_click"] / (1 - t["p_click"]))
        third = pd.qcut(t["ts"].rank(method="first"), 3, labels=False)
        by = pd.DataFrame({"poi_id": t["poi_id"], "third": third, "logit": logit}).groupby(["poi_id", "third"])["logit"].mean()
        return (by.xs(2, level="third") - by.xs(0, level="third")).dropna()

    drift = hidden_variables(cfg, seed=3)["pois"].set_index("poi_id")["drift_per_day"]
    moved = late_minus_early(drifting)
    assert np.corrcoef(moved, drift.reindex(moved.index))[0, 1] > 0.5
    assert (hidden_variables(MEDIUM, seed=3)["pois"]["drift_per_day"] == 0).all()
    still = late_minus_early(base)  # the same world without drift: its moves are noise, not the drift
    assert abs(np.corrcoef(still, drift.reindex(still.index))[0, 1]) < 0.3


def test_effect_knobs_move_what_decides_a_click():
    def corr(tables, column):  # correlation over impressions of the true P(click) with a PoI column
        truth = tables["truth"].merge(tables["pois"][["poi_id", column]], on="poi_id")
        return truth["p_click"].corr(truth[column])

    base = generate_tables(SMALL, seed=5)
    slow = generate_tables(SMALL.model_copy(update={"delivery_effect": 5.0}), seed=5)
    assert corr(slow, "delivery_minutes") < corr(base, "delivery_minutes") - 0.1
    standing = generate_tables(SMALL.model_copy(update={"quality_effect": 3.0}), seed=5)
    assert corr(standing, "rating") > corr(base, "rating") + 0.1
    def poi_share(tables):  # share of P(click)'s variance that the PoI alone explains
        t = tables["truth"]
        return t.groupby("poi_id")["p_click"].transform("mean").var() / t["p_click"].var()
    far = generate_tables(SMALL.model_copy(update={"distance_effect": 4.0}), seed=5)
    assert poi_share(far) < poi_share(base) - 0.05  # where the request is from matters more
    # Taste and habit switched off: the shop's standing explains more of what is left.
    plain = generate_tables(SMALL.model_copy(update={"taste_effect": 0.0, "collab_effect": 0.0}), seed=5)
    assert corr(plain, "rating") > corr(base, "rating") + 0.05
