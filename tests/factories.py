"""Hand-built tiny batches that satisfy the raw data contract (shared/DATA_CONTRACT.md).

``tiny_batch()`` is the smallest batch that still exercises every rule: nullable columns hold
nulls, searches have no PoI, orders follow clicks. Tests break one thing in a copy of it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from components.data.contract import CONTRACT, TRUTH_COLUMNS


def _ts(values: list[str]) -> pd.Series:
    return pd.Series(pd.to_datetime(values, utc=True))


def tiny_batch() -> dict[str, pd.DataFrame]:
    """A valid batch: 6 PoIs, 5 users, 12 behaviours, 12 impressions, in contract dtypes."""
    pois = pd.DataFrame(
        {
            "poi_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "name": ["Lan Zhou Noodles", "Bean There", "Pho Real", "Crust", "Sushi Go", "Taco Loco"],
            "category": ["noodles", "coffee & tea", "noodles", "pizza", "japanese", "mexican"],
            "price": [32.0, 18.5, 41.0, 88.0, 120.0, 25.0],
            "rating": [4.6, 4.1, None, 3.9, 4.8, 0.0],
            "delivery_minutes": pd.Series([25, 15, 35, 45, 60, 5], dtype="int64"),
            "geohash": ["wx4g0", "wx4g0b", "wx4g0bm", "wx4g0bmq", "wx4g1", "wx4g2"],
            "description": ["hand-pulled beef noodles", "", "pho, bun cha", None, "omakase sets", "tacos"],
            "opened_at": _ts(["2024-03-01T00:00:00Z", "2024-06-15T08:00:00Z", "2025-01-10T00:00:00Z",
                              "2025-05-20T12:00:00Z", "2025-09-01T00:00:00Z", "2026-01-02T00:00:00Z"]),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4", "u5"],
            "age_group": ["18-24", "25-34", None, "55+", "<18"],
            "gender": ["f", "m", "u", None, "f"],
            "home_geohash": ["wx4g0", None, "wx4g1b", "wx4g2c", "wx4g0bmq"],
            "registered_at": _ts(["2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z",
                                  "2025-12-24T10:00:00Z", "2026-01-01T00:00:00Z"]),
        }
    )
    scene = {
        "geohash": ["wx4g0", "wx4g0b", "wx4g1", "wx4g2", "wx4g0bm", "wx4g0", "wx4g1", "wx4g2",
                    "wx4g0", "wx4g0b", "wx4g1", "wx4g2"],
        "location_type": ["home", "office", "school", "outdoor", "other", "home",
                          "office", "home", "home", "office", "school", "outdoor"],
        "weather": ["sunny", "cloudy", "rainy", "snowy", "windy", "foggy",
                    "sunny", "sunny", "rainy", "cloudy", "sunny", "foggy"],
        "temperature_c": [21.5, 18.0, 9.5, -40.0, 50.0, 12.0, 25.0, 30.5, 8.0, 15.0, 22.0, 3.0],
        "is_holiday": [False, False, True, False, True, False, False, False, True, False, False, True],
    }
    behaviors = pd.DataFrame(
        {
            "ts": _ts([f"2026-01-{d:02d}T{h:02d}:15:00Z" for d, h in
                       [(3, 8), (3, 9), (4, 12), (4, 12), (5, 19), (6, 7), (6, 8), (7, 20),
                        (8, 11), (8, 11), (9, 13), (10, 18)]]),
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u4", "u4", "u5", "u1", "u3", "u5", "u2"],
            "poi_id": ["p1", "p1", None, "p3", "p2", "p4", "p4", None, "p5", "p6", "p2", "p1"],
            "behavior": ["view", "click", "search", "view", "favorite", "click", "order", "search",
                         "view", "click", "view", "order"],
            "query": [None, None, "spicy noodles", None, None, None, None, "coffee", None, None, None, None],
            **scene,
        }
    )
    impressions = pd.DataFrame(
        {
            "request_id": ["r1"] * 4 + ["r2"] * 4 + ["r3"] * 4,
            "ts": _ts(["2026-01-11T12:00:00Z"] * 4 + ["2026-01-11T19:30:00Z"] * 4 + ["2026-01-12T08:00:00Z"] * 4),
            "user_id": ["u1"] * 4 + ["u2"] * 4 + ["u5"] * 4,
            "poi_id": ["p1", "p2", "p3", "p4", "p2", "p5", "p6", "p1", "p3", "p4", "p5", "p6"],
            "position": pd.Series([0, 1, 2, 3] * 3, dtype="int64"),
            **scene,
            "click": pd.Series([1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0], dtype="int64"),
            "order": pd.Series([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype="int64"),
        }
    )
    tables = {"pois": pois, "users": users, "behaviors": behaviors, "impressions": impressions}
    # Column order as in the contract, so a typed round trip compares equal.
    return {name: df[CONTRACT[name].column_names] for name, df in tables.items()}


def tiny_truth(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The oracle file of a synthetic batch: true P(click), P(click and order) per impression."""
    imp = tables["impressions"]
    p_click = 0.05 + 0.1 * imp["click"].to_numpy() + 0.01 * imp["position"].to_numpy()
    return pd.DataFrame(
        {"request_id": imp["request_id"], "poi_id": imp["poi_id"], "p_click": p_click, "p_order": p_click / 3}
    )[list(TRUTH_COLUMNS)]


def write_batch(tables: dict[str, pd.DataFrame], dir: Path, fmt: str = "parquet") -> Path:
    """Write ``tables`` as a batch folder (NAME.parquet or NAME.csv); a "truth" key goes to truth/."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if name == "truth":
            (dir / "truth").mkdir(exist_ok=True)
            df.to_parquet(dir / "truth" / "impressions.parquet", index=False)
        elif fmt == "parquet":
            df.to_parquet(dir / f"{name}.parquet", index=False)
        elif fmt == "csv":
            out = df.copy()
            for col in out.columns:
                if isinstance(out[col].dtype, pd.DatetimeTZDtype):
                    # ISO-8601 with an explicit UTC designator, as the contract asks of CSV batches.
                    out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.to_csv(dir / f"{name}.csv", index=False, encoding="utf-8")
        else:
            raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    return dir
