"""The behaviour store and the push path (SQLite backend, pure): pushed behaviours are validated,
stored with the same context / time-slot definitions as the offline tables, and read back newest
last, strictly before the request time."""
import pandas as pd
import pytest

from components.config import Params
from components.features.engineering import scene_features
from components.serve.online import SQLiteBehaviorStore, push_behaviors
from components.serve.schema import InvalidRequest


def behaviours(n, user="u1"):
    return pd.DataFrame({"user_id": user, "poi_id": [f"p{i}" for i in range(n)], "behavior": "order",
                         "ts": pd.date_range("2024-05-01 08:00", periods=n, freq="h", tz="UTC"),
                         "geohash": "wx4g0b", "location_type": "office", "weather": "sunny",
                         "temperature_c": 20.0, "is_holiday": False})


def test_pushed_behaviours_are_read_back_newest_last_before_the_request(tmp_path):
    params = Params(root=tmp_path)
    store = SQLiteBehaviorStore(tmp_path / "b.db")
    df = behaviours(6)
    assert push_behaviors(params, df, store) == 6
    got = store.recent("u1", 3)
    assert got["poi_id"].tolist() == ["p3", "p4", "p5"]
    cut = int(df["ts"].iloc[4].value)
    assert store.recent("u1", 10, before_ns=cut)["poi_id"].tolist() == ["p0", "p1", "p2", "p3"]
    want = scene_features(df[["ts", "geohash", "location_type", "weather", "temperature_c", "is_holiday"]],
                          params.features)
    assert got["context_id"].tolist() == want["context_id"].astype(str).tolist()[3:]
    assert store.recent("nobody", 5).empty


def test_a_bad_push_names_column_row_and_rule_and_stores_nothing(tmp_path):
    params = Params(root=tmp_path)
    store = SQLiteBehaviorStore(tmp_path / "b.db")
    bad = behaviours(3)
    bad.loc[1, "behavior"] = "teleport"
    with pytest.raises(InvalidRequest, match="column 'behavior', row 1"):
        push_behaviors(params, bad, store)
    assert store.recent("u1", 10).empty


def test_newest_ts_is_the_newest_behaviour_before_the_request(tmp_path):
    params = Params(root=tmp_path)
    store = SQLiteBehaviorStore(tmp_path / "b.db")
    df = behaviours(4)
    push_behaviors(params, df, store)
    assert store.newest_ts("u1") == int(df["ts"].iloc[3].value)
    assert store.newest_ts("u1", before_ns=int(df["ts"].iloc[2].value)) == int(df["ts"].iloc[1].value)
    assert store.newest_ts("u1", before_ns=int(df["ts"].iloc[0].value)) is None
    assert store.newest_ts("nobody") is None
