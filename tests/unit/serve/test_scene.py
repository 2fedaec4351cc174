"""The request's scene derived without a frame (components/serve/scoring.py:request_scene) is what
the offline definitions give its one row: scene_features (context, slot), scene_values (LARR's
scene values) and with_scene_numeric (the scene__* numbers), in UTC and in a local timezone."""
import numpy as np
import pandas as pd
import pytest

from components.config import FeaturesConfig
from components.ctr.data import SCENE_COLUMNS, SCENE_NUMERIC, with_scene_numeric
from components.data.contract import LOCATION_TYPES, WEATHERS
from components.features.engineering import scene_features
from components.llm.text import SCENE_FEATURES, scene_values
from components.serve.schema import parse_request
from components.serve.scoring import request_scene


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/New_York"])
def test_request_scene_matches_the_offline_scene_definitions(tz):
    cfg = FeaturesConfig(timezone=tz)
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2026-01-01T00:00:00Z").value
    for i in range(60):
        ts = pd.Timestamp(int(start + rng.integers(0, 400 * 86_400) * 1_000_000_000), tz="UTC")
        scene = {"ts": ts.isoformat(), "geohash": "wx4g0b" if i % 2 else "wx4g1",
                 "location_type": LOCATION_TYPES[i % len(LOCATION_TYPES)], "weather": WEATHERS[i % len(WEATHERS)],
                 "temperature_c": float(rng.uniform(-40, 50)) if i % 7 else 10.0, "is_holiday": bool(i % 3 == 0)}
        req = parse_request({"user_id": "u1", "candidates": ["p1"], **scene}, 10)
        got = request_scene(req, cfg)
        row = pd.DataFrame([{**scene, "ts": pd.Timestamp(scene["ts"])}])[SCENE_COLUMNS]
        sf = scene_features(row, cfg).iloc[0]
        sv = scene_values(row, cfg).iloc[0]
        num = with_scene_numeric(row, cfg).iloc[0]
        assert got["ts_ns"] == ts.value
        assert got["context_id"] == sf["context_id"] and got["time_slot"] == sf["time_slot"]
        assert got["values"] == {f: sv[f] for f in SCENE_FEATURES}
        assert got["numeric"] == {f"scene__{c}": float(num[f"scene__{c}"]) for c in SCENE_NUMERIC}
