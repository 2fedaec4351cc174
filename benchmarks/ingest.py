"""How fast is contract validation? Great Expectations against the same rules in plain pandas.

    python benchmarks/ingest.py [--impressions 1000000] [--repeat 1]

Builds a large valid batch (numpy, independent of the generator), then times on it:
  gx validate          validate_batch: read + types + the GX suites generated from contract.py
  gx validate+curate   ingest_batch: the above + curated Parquet written (the production path)
  pandas rules         read + types + every contract rule as a vectorised pandas expression
  pandas rules+curate  the above + the same curated Parquet written
Prints rows/s and the GX / pandas time ratio; writes the figures to reports/benchmarks/ingest.json.
"""
from __future__ import annotations

import argparse
import platform
import re
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import IngestConfig, Params  # noqa: E402
from components.data.contract import (  # noqa: E402
    AGE_GROUPS, BEHAVIORS, CONTRACT, LOCATION_TYPES, TABLES, WEATHERS,
)
from components.data.ingest import ingest_batch, write_curated  # noqa: E402
from components.data.validate import read_table, validate_batch  # noqa: E402
from report import save_report  # noqa: E402  (benchmarks/report.py)

GEOHASH_CHARS = np.array(list("0123456789bcdefghjkmnpqrstuvwxyz"))


def _geohashes(rng: np.random.Generator, n: int, precision: int = 6) -> np.ndarray:
    chars = GEOHASH_CHARS[rng.integers(0, 32, size=(n, precision))]
    return np.array(["wx4" + "".join(r[3:]) for r in chars])  # one city: shared 3-char prefix


def build_batch(n_impressions: int, n_behaviors: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    """A valid batch of the given size; users and PoIs scale with it (1 per 50 / 500 impressions)."""
    rng = np.random.default_rng(seed)
    n_users, n_pois = max(10, n_impressions // 50), max(10, n_impressions // 500)
    start = pd.Timestamp("2026-01-01", tz="UTC")
    user_ids = np.array([f"u{i:07d}" for i in range(n_users)], dtype=object)
    poi_ids = np.array([f"p{i:06d}" for i in range(n_pois)], dtype=object)
    cells = _geohashes(rng, 512)

    def times(n):
        return start + pd.to_timedelta(rng.integers(0, 60 * 86400, n), unit="s")

    def scene(n):
        return {
            "geohash": cells[rng.integers(0, len(cells), n)],
            "location_type": np.array(LOCATION_TYPES, dtype=object)[rng.integers(0, len(LOCATION_TYPES), n)],
            "weather": np.array(WEATHERS, dtype=object)[rng.integers(0, len(WEATHERS), n)],
            "temperature_c": rng.uniform(-10, 35, n).round(1),
            "is_holiday": rng.random(n) < 0.1,
        }

    pois = pd.DataFrame({
        "poi_id": poi_ids,
        "name": [f"shop {i}" for i in range(n_pois)],
        "category": np.array(["noodles", "coffee & tea", "pizza", "sushi"], dtype=object)[rng.integers(0, 4, n_pois)],
        "price": rng.uniform(10, 150, n_pois).round(2),
        "rating": np.where(rng.random(n_pois) < 0.1, np.nan, rng.uniform(2.5, 5, n_pois).round(1)),
        "delivery_minutes": rng.integers(10, 90, n_pois),
        "geohash": cells[rng.integers(0, len(cells), n_pois)],
        "description": ["dishes and style"] * n_pois,
        "opened_at": start - pd.to_timedelta(rng.integers(1, 1000, n_pois), unit="D"),
    })
    users = pd.DataFrame({
        "user_id": user_ids,
        "age_group": np.array(AGE_GROUPS, dtype=object)[rng.integers(0, len(AGE_GROUPS), n_users)],
        "gender": np.array(["f", "m", "u"], dtype=object)[rng.integers(0, 3, n_users)],
        "home_geohash": cells[rng.integers(0, len(cells), n_users)],
        "registered_at": start - pd.to_timedelta(rng.integers(1, 1000, n_users), unit="D"),
    })
    behavior = np.array(BEHAVIORS, dtype=object)[rng.integers(0, len(BEHAVIORS), n_behaviors)]
    is_search = behavior == "search"
    behaviors = pd.DataFrame({
        "ts": times(n_behaviors),
        "user_id": user_ids[rng.integers(0, n_users, n_behaviors)],
        "poi_id": np.where(is_search, None, poi_ids[rng.integers(0, n_pois, n_behaviors)]),
        "behavior": behavior,
        "query": np.where(is_search, "spicy noodles", None),
        **scene(n_behaviors),
    })
    per_page = 10
    n_req = -(-n_impressions // per_page)
    # Distinct PoIs within a page: a random offset plus a stride, mod n_pois.
    first = rng.integers(0, n_pois, n_req)
    poi_idx = ((first[:, None] + np.arange(per_page)[None, :]) % n_pois).ravel()[:n_impressions]
    click = (rng.random(n_impressions) < 0.08).astype("int64")
    impressions = pd.DataFrame({
        "request_id": np.repeat(np.array([f"r{i:08d}" for i in range(n_req)], dtype=object), per_page)[:n_impressions],
        "ts": np.repeat(times(n_req), per_page)[:n_impressions],
        "user_id": np.repeat(user_ids[rng.integers(0, n_users, n_req)], per_page)[:n_impressions],
        "poi_id": poi_ids[poi_idx],
        "position": np.tile(np.arange(per_page), n_req)[:n_impressions].astype("int64"),
        **scene(n_impressions),
        "click": click,
        "order": click * (rng.random(n_impressions) < 0.3),
    })
    tables = {"pois": pois, "users": users, "behaviors": behaviors, "impressions": impressions}
    return {name: df[CONTRACT[name].column_names] for name, df in tables.items()}


# ---------------------------------------------------------------------------------------------
# The baseline: every contract rule as one vectorised pandas expression (no GX)
# ---------------------------------------------------------------------------------------------


def pandas_rule_failures(tables: dict[str, pd.DataFrame], now: pd.Timestamp) -> dict[str, int]:
    """{"table.column: rule": unexpected rows} for every rule of contract.py that fails."""
    out: dict[str, int] = {}

    def record(table, column, rule, bad):
        n = int(bad.sum())
        if n:
            out[f"{table}.{column}: {rule}"] = n

    for name, table in CONTRACT.items():
        df = tables[name]
        for c in table.columns:
            s = df[c.name]
            present = s.notna()
            if not c.nullable:
                record(name, c.name, "not_null", ~present)
            if c.unique:
                record(name, c.name, "unique", s.duplicated(keep=False) & present)
            if c.value_set is not None:
                record(name, c.name, "value_set", present & ~s.isin(c.value_set))
            if c.min_value is not None:
                record(name, c.name, "range", present & ((s <= c.min_value) if c.strict_min else (s < c.min_value)))
            if c.max_value is not None:
                record(name, c.name, "range", present & (s > c.max_value))
            if c.regex:
                record(name, c.name, "regex", present & ~s.astype(str).str.match(re.compile(c.regex)))
            if c.not_future:
                record(name, c.name, "not_future", present & (s > now))
            if c.references:
                ref_table, ref_col = c.references.split(".")
                record(name, c.name, "references", present & ~s.isin(tables[ref_table][ref_col]))
        if len(table.key) > 1:
            record(name, "+".join(table.key), "compound_unique", df.duplicated(list(table.key), keep=False))
        for check in table.checks:
            if check == "poi_null_only_for_search":
                record(name, "poi_id", check, df["poi_id"].isna() & (df["behavior"] != "search"))
            elif check == "query_only_for_search":
                record(name, "query", check, df["query"].notna() & (df["behavior"] != "search"))
            elif check == "order_le_click":
                record(name, "order", check, df["order"] > df["click"])
            else:
                raise NotImplementedError(check)
    return out


def pandas_validate(batch_dir: Path, now: pd.Timestamp) -> tuple[dict, dict]:
    tables = {}
    for name in TABLES:
        df, fails, _ = read_table(batch_dir / f"{name}.parquet", CONTRACT[name], max_examples=5)
        assert not fails, fails
        tables[name] = df
    return tables, pandas_rule_failures(tables, now)


def check_agreement(folder: Path) -> int:
    """Both checkers must flag the same rules on a small corrupted batch; returns how many."""
    tables = build_batch(1000, 500, seed=1)
    imp, beh = tables["impressions"], tables["behaviors"]
    imp.loc[0, "click"] = 2
    imp.loc[imp.index[imp["click"] == 0][0], "order"] = 1
    imp.loc[1, "weather"] = "hail"
    imp.loc[2, "position"] = -1
    tables["pois"].loc[0, "price"] = 0.0
    tables["pois"].loc[1, "geohash"] = "AAAAA"
    tables["users"].loc[1, "user_id"] = tables["users"].loc[0, "user_id"]
    beh.loc[beh.index[beh["behavior"] != "search"][0], "query"] = "stray query"
    beh.loc[3, "ts"] = pd.Timestamp("2100-01-01", tz="UTC")
    folder.mkdir()
    for name, df in tables.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    cfg = IngestConfig()
    gx_rules = {f"{f.table}.{f.column}: {f.rule}" for f in validate_batch(folder, cfg).failures}
    typed = {n: read_table(folder / f"{n}.parquet", CONTRACT[n], 5)[0] for n in TABLES}
    pandas_rules = set(pandas_rule_failures(typed, pd.Timestamp(datetime.now(timezone.utc))))
    assert gx_rules == pandas_rules, f"checkers disagree: GX only {gx_rules - pandas_rules}, pandas only {pandas_rules - gx_rules}"
    return len(gx_rules)


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--impressions", type=int, default=1_000_000)
    ap.add_argument("--behaviors", type=int, default=None, help="default: half the impressions")
    ap.add_argument("--repeat", type=int, default=1, help="best of N runs per path")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "ingest.json")
    args = ap.parse_args(argv)
    n_beh = args.behaviors if args.behaviors is not None else args.impressions // 2

    with tempfile.TemporaryDirectory(prefix="scenerec-bench-") as tmp:
        tmp = Path(tmp)
        # Warm-up outside the timings: GX's import and first run cost seconds whatever the size.
        warm = tmp / "warm"
        warm.mkdir()
        for name, df in build_batch(1000, 500).items():
            df.to_parquet(warm / f"{name}.parquet", index=False)
        validate_batch(warm, IngestConfig())
        agreed = check_agreement(tmp / "corrupted")
        t = time.perf_counter()
        tables = build_batch(args.impressions, n_beh)
        batch = tmp / "batch"
        batch.mkdir()
        for name, df in tables.items():
            df.to_parquet(batch / f"{name}.parquet", index=False)
        build_s = time.perf_counter() - t
        rows = {name: len(df) for name, df in tables.items()}
        total = sum(rows.values())
        del tables
        now = pd.Timestamp(datetime.now(timezone.utc))
        params = Params(root=tmp, paths={"curated_dir": str(tmp / "curated"), "reports_dir": str(tmp / "reports"),
                                         "quarantine_dir": str(tmp / "quarantine")})
        cfg = IngestConfig()

        gx_val_s, res = timed(lambda: validate_batch(batch, cfg), args.repeat)
        assert res.success, [str(f) for f in res.failures]
        evaluated = sum(s.expectations_evaluated for s in res.stats.values())
        del res
        gx_ing_s, _ = timed(lambda: ingest_batch(batch, params), args.repeat)
        pd_val_s, (pd_tables, fails) = timed(lambda: pandas_validate(batch, now), args.repeat)
        assert not fails, fails
        read_s, _ = timed(lambda: [read_table(batch / f"{n}.parquet", CONTRACT[n], 5) for n in TABLES], args.repeat)
        pd_ing_s, _ = timed(lambda: write_curated(pandas_validate(batch, now)[0], tmp / "curated_pd", "replace"),
                            args.repeat)
        del pd_tables

    figures = {
        "gx validate": gx_val_s,
        "gx validate+curate": gx_ing_s,
        "pandas rules": pd_val_s,
        "pandas rules+curate": pd_ing_s,
    }
    baseline = {"gx validate": pd_val_s, "gx validate+curate": pd_ing_s,
                "pandas rules": pd_val_s, "pandas rules+curate": pd_ing_s}
    report = {
        "rows": rows,
        "total_rows": total,
        "gx_expectations": evaluated,
        "build_batch_s": round(build_s, 2),
        "repeat": args.repeat,
        "rules_flagged_identically_on_corrupted_batch": agreed,
        "read_and_types_s": round(read_s, 3),  # shared by both paths: Parquet read + contract dtypes
        "machine": f"{platform.machine()} {platform.python_version()}",
        "results": {
            name: {"seconds": round(s, 3), "rows_per_s": round(total / s), "ratio_vs_pandas": round(s / baseline[name], 2)}
            for name, s in figures.items()
        },
    }
    print(f"batch: {', '.join(f'{k} {v:,}' for k, v in rows.items())} = {total:,} rows; "
          f"{evaluated} GX expectations (built in {build_s:.1f} s)")
    print(f"{'path':<22}{'seconds':>10}{'rows/s':>14}{'x pandas':>10}")
    for name, r in report["results"].items():
        print(f"{name:<22}{r['seconds']:>10.2f}{r['rows_per_s']:>14,}{r['ratio_vs_pandas']:>10.2f}")
    print("x pandas: time of the path / time of the same work checked in plain pandas (1.00 = as fast)")
    print(f"both paths include reading the Parquet files and applying contract types: {read_s:.2f} s")
    print(f"same rules: on a corrupted batch both checkers flag the same {agreed} table.column: rule pairs")
    save_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
