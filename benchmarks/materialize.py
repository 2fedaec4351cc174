"""Benchmark: Feast materialisation (and point-in-time retrieval) against plain pandas.

Builds a curated set (~1M behaviours by default: the project's generator when it is there and
``--synthetic`` is not given, else a vectorised synthetic one), builds the feature tables, applies
the Feast repo in a temp project and measures, in the same run:

- materialise: ``store.materialize`` into the SQLite online store vs. the same rows (latest row
  per entity in the window) written by ``pandas.DataFrame.to_sql`` into a plain sqlite3 file;
- point-in-time join: ``training_frame`` (Feast, file offline store) vs. ``pandas.merge_asof``
  on the same impressions (and a check that both give the same user click counts).

Prints a table with ratios and writes reports/benchmarks/materialize.json.

    python benchmarks/materialize.py                 # ~1M behaviours
    python benchmarks/materialize.py --behaviors 200000 --impressions 20000
"""
from __future__ import annotations

import argparse
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import load_params  # noqa: E402
from components.data.contract import LOCATION_TYPES, WEATHERS  # noqa: E402
from components.features.engineering import KEYS, TABLES, TIMESTAMP, build_feature_tables  # noqa: E402
from components.features.store import apply_definitions, entity_frame, materialize, training_frame  # noqa: E402
from report import save_report  # noqa: E402  (benchmarks/report.py)

STATIC = ("poi_profile", "user_profile")  # the feature views with ttl 0 (feature_repo/feature_views.py)

CATEGORIES = ["noodles", "coffee & tea", "pizza", "burgers", "sushi", "hotpot", "dumplings", "bbq",
              "salads", "desserts", "bubble tea", "rice bowls", "korean", "thai", "indian", "mexican",
              "bakery", "seafood", "vegetarian", "fried chicken", "porridge", "juice", "sandwiches", "ramen"]


def synthetic_curated(out: Path, n_behaviors: int, n_impressions: int, seed: int = 0, days: int = 60) -> dict:
    """Contract-shaped curated tables with skewed users / PoIs and a diurnal rhythm (vectorised)."""
    rng = np.random.default_rng(seed)
    n_users = max(100, n_behaviors // 50)
    n_pois = max(50, n_behaviors // 2500)
    start = pd.Timestamp("2026-01-01", tz="UTC").value
    cat_w = 1 / np.arange(1, len(CATEGORIES) + 1)
    pois = pd.DataFrame({
        "poi_id": [f"p{i:06d}" for i in range(n_pois)],
        "name": [f"shop {i}" for i in range(n_pois)],
        "category": rng.choice(CATEGORIES, n_pois, p=cat_w / cat_w.sum()),
        "price": np.round(rng.lognormal(3.7, 0.5, n_pois), 2),
        "rating": np.where(rng.random(n_pois) < 0.1, np.nan, np.round(rng.uniform(2.5, 5.0, n_pois), 1)),
        "delivery_minutes": rng.integers(10, 90, n_pois).astype("int64"),
        "geohash": "wx4g0",
        "description": "",
        "opened_at": pd.to_datetime(start - rng.integers(0, 400, n_pois) * 86_400 * 10**9, utc=True),
    })
    users = pd.DataFrame({
        "user_id": [f"u{i:07d}" for i in range(n_users)],
        "age_group": "25-34", "gender": "u", "home_geohash": "wx4g0",
        "registered_at": pd.Timestamp("2025-01-01", tz="UTC"),
    })

    def scene(n):
        return {
            "geohash": "wx4g0",
            "location_type": rng.choice(LOCATION_TYPES, n),
            "weather": rng.choice(WEATHERS, n),
            "temperature_c": np.round(rng.normal(12, 8, n), 1),
            "is_holiday": rng.random(n) < 0.05,
        }

    def times(n):
        day = rng.integers(0, days, n) * 86_400 * 10**9
        hour = rng.choice(24, n, p=_diurnal())
        return pd.to_datetime(start + day + hour * 3_600 * 10**9 + rng.integers(0, 3_600, n) * 10**9, utc=True)

    user_w = rng.lognormal(0, 1.0, n_users)
    poi_w = rng.lognormal(0, 1.2, n_pois)
    beh = rng.choice(["view", "click", "favorite", "order", "search"], n_behaviors, p=[.5, .25, .05, .1, .1])
    poi = np.asarray(pois["poi_id"])[rng.choice(n_pois, n_behaviors, p=poi_w / poi_w.sum())].astype(object)
    poi[beh == "search"] = None
    behaviors = pd.DataFrame({
        "ts": times(n_behaviors),
        "user_id": np.asarray(users["user_id"])[rng.choice(n_users, n_behaviors, p=user_w / user_w.sum())],
        "poi_id": poi, "behavior": beh,
        "query": np.where(beh == "search", "spicy noodles", None),
        **scene(n_behaviors),
    }).sort_values("ts", kind="stable", ignore_index=True)
    n_req = max(1, n_impressions // 10)
    req_user = rng.choice(n_users, n_req)
    impressions = pd.DataFrame({
        "request_id": np.repeat([f"r{i:07d}" for i in range(n_req)], 10),
        "ts": times(n_req).repeat(10),
        "user_id": np.repeat(np.asarray(users["user_id"])[req_user], 10),
        "poi_id": np.asarray(pois["poi_id"])[rng.choice(n_pois, n_req * 10)],
        "position": np.tile(np.arange(10, dtype="int64"), n_req),
        **{k: np.repeat(v, 10) if isinstance(v, np.ndarray) else v for k, v in scene(n_req).items()},
    })
    impressions["click"] = (rng.random(len(impressions)) < 0.1).astype("int64")
    impressions["order"] = (impressions["click"].to_numpy() * (rng.random(len(impressions)) < 0.3)).astype("int64")
    out.mkdir(parents=True, exist_ok=True)
    tables = {"pois": pois, "users": users, "behaviors": behaviors, "impressions": impressions}
    for name, df in tables.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    return {name: len(df) for name, df in tables.items()}


def _diurnal() -> np.ndarray:
    w = np.array([1, .5, .3, .3, .3, .5, 2, 4, 5, 3, 3, 6, 9, 6, 3, 3, 3, 5, 9, 7, 4, 3, 2, 1.5])
    return w / w.sum()


def generated_curated(out: Path, n_behaviors: int, seed: int) -> dict | None:
    """The project's generator, sized to about ``n_behaviors``; None if it is not available."""
    try:
        from components.config import GenerateConfig
        from components.data.generate import generate_tables
    except ImportError:
        return None
    n_users = max(100, n_behaviors // 150)
    cfg = GenerateConfig(n_users=n_users, n_pois=max(50, n_users // 5), mean_behaviors_per_user=150,
                         n_requests=max(100, n_users * 2))
    tables = generate_tables(cfg, seed)
    tables = tables[0] if isinstance(tables, tuple) else tables
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pois", "users", "behaviors", "impressions"):
        tables[name].to_parquet(out / f"{name}.parquet", index=False)
    return {name: len(tables[name]) for name in ("pois", "users", "behaviors", "impressions")}


def pandas_sqlite_write(params, start_end: dict, db: Path) -> tuple[int, float]:
    """The alternative: the rows Feast writes (latest row per entity in each view's window)
    written with pandas ``to_sql`` into a plain sqlite3 table keyed by entity."""
    db.unlink(missing_ok=True)
    t0 = time.perf_counter()
    rows = 0
    with sqlite3.connect(db) as con:
        for table in TABLES:
            start, end = start_end[table]
            df = pd.read_parquet(params.path("features_dir") / f"{table}.parquet")
            df = df[(df[TIMESTAMP] >= start) & (df[TIMESTAMP] <= end)]
            latest = df.sort_values(TIMESTAMP, kind="stable").drop_duplicates(KEYS[table], keep="last")
            latest = latest.assign(**{TIMESTAMP: latest[TIMESTAMP].astype("int64")})
            latest.to_sql(table, con, if_exists="replace", index=False, chunksize=10_000)
            con.execute(f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_key ON {table}({KEYS[table]})")
            rows += len(latest)
    return rows, time.perf_counter() - t0


def pandas_point_in_time(params, impressions: pd.DataFrame) -> tuple[pd.DataFrame, float]:
    """The alternative for retrieval: ``merge_asof`` per table (backward, allow_exact_matches)."""
    t0 = time.perf_counter()
    ent = entity_frame(params, impressions)
    ent[TIMESTAMP] = ent[TIMESTAMP].dt.as_unit("ns")
    ent = ent.reset_index(drop=True).assign(_row=lambda d: np.arange(len(d)))
    out = ent.sort_values(TIMESTAMP, kind="stable")
    ttl = pd.Timedelta(days=params.features.ttl_days)
    for table in TABLES:
        feats = pd.read_parquet(params.path("features_dir") / f"{table}.parquet")
        feats[TIMESTAMP] = feats[TIMESTAMP].dt.as_unit("ns")
        key = KEYS[table]
        feats = feats.rename(columns={c: f"{table}__{c}" for c in feats.columns if c not in (key, TIMESTAMP)})
        feats = feats.rename(columns={TIMESTAMP: "_fts"}).sort_values("_fts", kind="stable")
        out = pd.merge_asof(out, feats, left_on=TIMESTAMP, right_on="_fts", by=key, direction="backward",
                            tolerance=None if table in STATIC else ttl)
        out = out.drop(columns="_fts")
    out = out.sort_values("_row").drop(columns="_row").reset_index(drop=True)
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--behaviors", type=int, default=1_000_000)
    ap.add_argument("--impressions", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true", help="use the synthetic set even if the generator exists")
    ap.add_argument("--out", default=str(ROOT / "reports" / "benchmarks" / "materialize.json"))
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="scenerec-bench-") as tmp:
        proj = Path(tmp)
        shutil.copytree(ROOT / "feature_repo", proj / "feature_repo",
                        ignore=shutil.ignore_patterns("__pycache__", "data"))
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        (proj / "params.yaml").write_text(yaml.safe_dump(raw))
        params = load_params(proj / "params.yaml")
        curated = params.path("curated_dir")

        t0 = time.perf_counter()
        counts = None if args.synthetic else generated_curated(curated, args.behaviors, args.seed)
        source = "components.data.generate" if counts else "synthetic"
        counts = counts or synthetic_curated(curated, args.behaviors, args.impressions, args.seed)
        t_data = time.perf_counter() - t0

        t0 = time.perf_counter()
        rows = build_feature_tables(curated, params.features, params.path("features_dir"))
        t_build = time.perf_counter() - t0

        t0 = time.perf_counter()
        apply_definitions(params)
        t_apply = time.perf_counter() - t0

        mat = materialize(params)
        end = pd.Timestamp(mat["end"])
        windows = {}
        for table in TABLES:  # the windows materialize() used on this first run
            ttl = pd.Timedelta(0) if table in STATIC else pd.Timedelta(days=params.features.ttl_days)
            windows[table] = (end - ttl if ttl > pd.Timedelta(0) else pd.Timestamp(0, tz="UTC"), end)
        alt_rows, alt_s = pandas_sqlite_write(params, windows, proj / "pandas_online.db")
        feast_s = sum(mat["seconds"].values())

        imp = pd.read_parquet(curated / "impressions.parquet")
        t0 = time.perf_counter()
        feast_tf = training_frame(params, imp)
        t_feast_pit = time.perf_counter() - t0
        pandas_tf, t_pandas_pit = pandas_point_in_time(params, imp)
        col = "user_stats__n_click"
        same = bool(np.allclose(feast_tf[col].fillna(-1).to_numpy(float), pandas_tf[col].fillna(-1).to_numpy(float)))

    feast_rate = mat["rows_total"] / feast_s
    alt_rate = alt_rows / alt_s
    report = {
        "data": {"source": source, **{f"rows_{k}": v for k, v in counts.items()}, "seconds": round(t_data, 2)},
        "build_feature_tables": {"rows": rows, "seconds": round(t_build, 2),
                                 "behaviors_per_s": round(counts["behaviors"] / t_build, 1)},
        "apply_seconds": round(t_apply, 2),
        "materialize": {
            "feast": {"rows": mat["rows_total"], "seconds": round(feast_s, 3), "rows_per_s": round(feast_rate, 1),
                      "per_view": mat["rows"], "rows_read": mat["rows_read"]},
            "pandas_to_sql": {"rows": alt_rows, "seconds": round(alt_s, 3), "rows_per_s": round(alt_rate, 1)},
            "ratio_feast_over_pandas": round(feast_rate / alt_rate, 3),
        },
        "point_in_time": {
            "impressions": len(imp),
            "feast_seconds": round(t_feast_pit, 2), "feast_rows_per_s": round(len(imp) / t_feast_pit, 1),
            "pandas_merge_asof_seconds": round(t_pandas_pit, 2),
            "pandas_rows_per_s": round(len(imp) / t_pandas_pit, 1),
            "ratio_feast_over_pandas": round(t_pandas_pit / t_feast_pit, 3),
            "same_user_click_counts": same,
        },
        "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
    }
    print(f"\ndata: {source}, {counts['behaviors']:,} behaviours, {counts['impressions']:,} impressions")
    print(f"build_feature_tables: {t_build:.1f} s ({counts['behaviors'] / t_build:,.0f} behaviours/s), rows {rows}")
    print(f"feast apply: {t_apply:.1f} s\n")
    print(f"{'step':<34}{'rows':>10}{'seconds':>10}{'rows/s':>12}{'ratio':>8}")
    print(f"{'materialize: Feast -> SQLite':<34}{mat['rows_total']:>10,}{feast_s:>10.2f}{feast_rate:>12,.0f}"
          f"{feast_rate / alt_rate:>8.2f}")
    print(f"{'materialize: pandas to_sql':<34}{alt_rows:>10,}{alt_s:>10.2f}{alt_rate:>12,.0f}{1:>8.2f}")
    print(f"{'point-in-time: Feast (file store)':<34}{len(imp):>10,}{t_feast_pit:>10.2f}"
          f"{len(imp) / t_feast_pit:>12,.0f}{t_pandas_pit / t_feast_pit:>8.2f}")
    print(f"{'point-in-time: pandas merge_asof':<34}{len(imp):>10,}{t_pandas_pit:>10.2f}"
          f"{len(imp) / t_pandas_pit:>12,.0f}{1:>8.2f}")
    print(f"(ratio = throughput relative to the pandas alternative; same user click counts: {same})")
    out = Path(args.out)
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
