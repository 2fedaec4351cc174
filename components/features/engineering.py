"""Timestamped feature tables from the curated data, computed point-in-time.

Every aggregate table is a series of *snapshots*: time is cut into periods of
``snapshot_hours`` (aligned to the Unix epoch, so 24 h periods start at UTC midnight), and an
entity gets one row per period in which it had activity, stamped at the period's **end** t and
holding the cumulative aggregates of all its behaviour with ``ts < t``. Feast's point-in-time
join picks, for a request at time T, the latest row with ``event_timestamp <= T``, so a feature
never sees behaviour at or after T; the price is a staleness of at most one period.

Tables (written as ``<out_dir>/<table>.parquet``, key + ``event_timestamp`` tz-aware UTC):

- ``user_stats`` (user_id): behaviour counts per type, the category mix and price-band mix of
  clicks + orders, the last behaviour time (Unix seconds) and the number of active days.
- ``user_profile`` (user_id): the user's stated age group and gender as one-hot columns
  (``age_18_24``, ``gender_f``, ...; all zero when unknown), stamped at ``registered_at``: the
  only personal signal there is for a user who has no behaviour yet.
- ``poi_profile`` (poi_id): static attributes stamped at ``opened_at``.
- ``poi_stats`` (poi_id): cumulative views / clicks / favourites / orders and smoothed rates; with
  ``features.recent_days`` also the views / clicks / orders of that many last days and a recent CTR
  shrunk to the PoI's long-run one (catalogues drift: a count since the first day cannot follow it);
  with ``features.poi_momentum`` also the log ratio of the PoI's share of the window's views / clicks
  to its share of all of them so far (rising > 0, fading < 0).
- ``context_stats`` (context_id = ``location_type|time_slot|weather``): behaviour and order counts
  and D(C), the category / price / rating / delivery band distributions of the PoIs clicked or
  ordered in that context (CoFARS, METHODS.md section 2).

Share columns (``cat_00`` ... ``cat_other``, ``price_band_0`` ...) are separate float32 columns
rather than one array feature: they round-trip through Parquet, Feast's file offline store and its
SQLite online store without special handling, and a model can pick any subset by name.
Category indices refer to ``vocab.json``: categories ordered by number of PoIs (desc), then
name; the first ``top_categories`` get their own share column, the rest go to ``cat_other``.
Everything is vectorised (bincounts over integer group codes), so ~10M behaviours fit in memory
and minutes.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components.atomic import crash_point, sweep_temp_files, write_parquet_atomic, write_text_atomic
from components.config import FeaturesConfig
from components.data.contract import AGE_GROUPS, BEHAVIORS, GENDERS

RECENT_BEHAVIORS = ("view", "click", "order")  # counted over the last features.recent_days in poi_stats
RECENT_COUNTS = tuple(f"n_{b}_recent" for b in RECENT_BEHAVIORS)
MOMENTUM = ("view_momentum", "click_momentum")  # poi_stats with features.poi_momentum (and recent_days)
TABLES = ("user_stats", "user_profile", "poi_profile", "poi_stats", "context_stats")
KEYS = {"user_stats": "user_id", "user_profile": "user_id", "poi_profile": "poi_id", "poi_stats": "poi_id",
        "context_stats": "context_id"}
TIMESTAMP = "event_timestamp"

_NS_PER_HOUR = 3_600_000_000_000
_NS_PER_DAY = 24 * _NS_PER_HOUR
_INTERACTIONS = ("click", "order")  # behaviours that count towards category / band mixes and D(C)


# ----------------------------------------------------------------------------------------------
# Vocabulary and column names


@dataclass(frozen=True)
class Vocabulary:
    """What the integer feature values mean: category order, band edges, slots, filled rating."""

    categories: list[str]  # all categories, most PoIs first (ties by name); index = category_idx
    top_categories: list[str]  # the first N, each with a share column; the rest are `cat_other`
    price_band_edges: list[float]
    rating_band_edges: list[float]
    delivery_band_edges: list[float]
    temperature_band_edges: list[float]
    time_slots: dict[str, int]
    rating_mean: float  # fills missing ratings (with `rating_missing` = 1)
    snapshot_hours: int
    timezone: str


BAND_ATTRIBUTES = {"price_band_edges": "price", "rating_band_edges": "rating", "delivery_band_edges": "delivery_minutes"}


def quantile_edges(values, bands: int, keep_count: bool = True) -> list[float]:
    """Inner edges of ``bands`` equal-count bands of the non-null ``values``. ``keep_count``: rounded to 4
    significant digits and ties (a rating scale with few values) nudged apart, so the band count holds
    (the Feast schema depends on it); else the distinct quantiles only (fewer bands when values tie)."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(np.float64)
    if not keep_count:
        if len(x) == 0 or bands < 2:
            return []
        return [float(e) for e in np.unique(np.quantile(x, np.linspace(0, 1, bands + 1)[1:-1]))]
    if len(x) == 0:
        raise ValueError("no values to learn band edges from")
    edges = [float(f"{v:.4g}") for v in np.quantile(x, np.arange(1, bands) / bands)]
    for i in range(1, len(edges)):
        if edges[i] <= edges[i - 1]:
            edges[i] = float(np.nextafter(edges[i - 1], np.inf))
    return edges


def resolve_band_edges(pois: pd.DataFrame, cfg: FeaturesConfig, fit_until: pd.Timestamp | None = None) -> FeaturesConfig:
    """``cfg`` with every null PoI band edge list learned: quantiles over the PoIs opened before
    ``fit_until`` (the training split; all PoIs when fewer than ``2 * learned_bands`` opened before)."""
    learned = {}
    for field, column in BAND_ATTRIBUTES.items():
        if getattr(cfg, field) is not None:
            continue
        rows = pois
        if fit_until is not None and "opened_at" in pois:
            early = pois[pd.to_datetime(pois["opened_at"], utc=True) < fit_until]
            rows = early if len(early) >= 2 * cfg.learned_bands else pois
        learned[field] = quantile_edges(pd.to_numeric(rows[column], errors="coerce"), cfg.learned_bands)
    return cfg.model_copy(update=learned)


def band_count(cfg: FeaturesConfig, field: str) -> int:
    """Bands of ``field`` (e.g. ``price_band_edges``): its edges plus one, or ``learned_bands`` when learned."""
    edges = getattr(cfg, field)
    return cfg.learned_bands if edges is None else len(edges) + 1


def saved_band_edges(features_dir: Path, field: str) -> list[float]:
    """The band edges the features step used (``vocab.json``): learned ones included."""
    path = Path(features_dir) / "vocab.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no feature vocabulary (run `scenerec features` first)")
    return list(json.loads(path.read_text())[field])


def build_vocabulary(pois: pd.DataFrame, cfg: FeaturesConfig) -> Vocabulary:
    """Category order (by PoI count) and band edges (``cfg``'s, resolved), from the PoI catalogue."""
    counts = pois["category"].astype(str).value_counts()
    order = sorted(counts.index, key=lambda c: (-counts[c], c))
    rating = pd.to_numeric(pois["rating"], errors="coerce")
    mean = float(rating.mean()) if rating.notna().any() else 0.0
    return Vocabulary(
        categories=list(order),
        top_categories=list(order[: cfg.top_categories]),
        price_band_edges=list(cfg.price_band_edges),
        rating_band_edges=list(cfg.rating_band_edges),
        delivery_band_edges=list(cfg.delivery_band_edges),
        temperature_band_edges=list(cfg.temperature_band_edges),
        time_slots=dict(cfg.time_slots),
        rating_mean=round(mean, 6),
        snapshot_hours=cfg.snapshot_hours,
        timezone=cfg.timezone,
    )


def category_columns(cfg: FeaturesConfig) -> list[str]:
    """Share columns of the category mix: one per top category, then ``cat_other``."""
    return [f"cat_{i:02d}" for i in range(cfg.top_categories)] + ["cat_other"]


def _slug(value: str) -> str:
    return value.replace("<", "lt").replace("+", "plus").replace("-", "_")


def profile_columns() -> dict[str, dict[str, str]]:
    """One-hot columns of ``user_profile``: ``{contract column: {contract value: column name}}``."""
    return {"age_group": {v: f"age_{_slug(v)}" for v in AGE_GROUPS},
            "gender": {v: f"gender_{_slug(v)}" for v in GENDERS}}


def band_columns(prefix: str, n: int) -> list[str]:
    """Share columns of a band mix of ``n`` bands."""
    return [f"{prefix}_{i}" for i in range(n)]


def feature_schema(cfg: FeaturesConfig) -> dict[str, list[tuple[str, str]]]:
    """Feature columns of every table with a logical type (int64 | float32 | float64).

    The Feast definitions build their schemas from this, so the tables and the registry agree
    for any ``top_categories`` or band edges.
    """
    cats = [(c, "float32") for c in category_columns(cfg)]
    price = [(c, "float32") for c in band_columns("price_band", band_count(cfg, "price_band_edges"))]
    rating = [(c, "float32") for c in band_columns("rating_band", band_count(cfg, "rating_band_edges"))]
    delivery = [(c, "float32") for c in band_columns("delivery_band", band_count(cfg, "delivery_band_edges"))]
    counts = [(f"n_{b}", "int64") for b in BEHAVIORS] + [("n_total", "int64")]
    return {
        "user_stats": counts + [("n_interactions", "int64")] + cats + price
        + [("last_behavior_ts", "float64"), ("n_active_days", "int64")],
        "user_profile": [(c, "float32") for cols in profile_columns().values() for c in cols.values()],
        "poi_profile": [
            ("category_idx", "int64"), ("price", "float32"), ("price_band", "int64"),
            ("rating", "float32"), ("rating_missing", "int64"), ("rating_band", "int64"),
            ("delivery_minutes", "int64"), ("delivery_band", "int64"),
        ],
        "poi_stats": [("n_view", "int64"), ("n_click", "int64"), ("n_favorite", "int64"), ("n_order", "int64"),
                      ("ctr_smoothed", "float32"), ("cvr_smoothed", "float32")]
                     + ([(c, "int64") for c in RECENT_COUNTS] + [("ctr_recent", "float32")] if cfg.recent_days else [])
                     + ([(c, "float32") for c in MOMENTUM] if cfg.recent_days and cfg.poi_momentum else []),
        "context_stats": [("n_total", "int64"), ("n_click", "int64"), ("n_order", "int64"),
                          ("n_interactions", "int64")] + cats + price + rating + delivery,
    }


# ----------------------------------------------------------------------------------------------
# Scene features (request time)


def _ts_ns(ts: pd.Series) -> np.ndarray:
    """UTC nanoseconds since the epoch of a tz-aware (or naive UTC) timestamp column."""
    return pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8.copy()


def _local_ns(ts_ns: np.ndarray, tz: str) -> np.ndarray:
    """Local wall-clock nanoseconds (for hour, weekday, day); identity for UTC."""
    if tz == "UTC":
        return ts_ns
    local = pd.DatetimeIndex(ts_ns.view("datetime64[ns]"), tz="UTC").tz_convert(tz).tz_localize(None)
    return local.to_numpy().view("int64")


def _time_slot_idx(hour: np.ndarray, cfg: FeaturesConfig) -> np.ndarray:
    starts = np.asarray(list(cfg.time_slots.values()))
    idx = np.searchsorted(starts, hour, side="right") - 1
    return np.where(idx < 0, len(starts) - 1, idx)  # before the first start: the wrapping last slot


def _bands(x: np.ndarray, edges: list[float]) -> np.ndarray:
    """Band index 0..len(edges) (a value equal to an edge goes to the upper band); NaN -> -1."""
    x = np.asarray(x, dtype="float64")
    out = np.searchsorted(np.asarray(edges, dtype="float64"), x, side="right")
    return np.where(np.isnan(x), -1, out).astype("int64")


def _categorical(values) -> pd.Categorical:
    """Strings as a categorical with sorted categories (nulls -> "unknown"); cheap when the
    input is categorical already, as the behaviour log is when read."""
    cat = values.astype("category") if isinstance(values, pd.Series) else pd.Series(values, dtype="category")
    if cat.isna().any():
        cat = cat.cat.add_categories(["unknown"]).fillna("unknown") if "unknown" not in cat.cat.categories \
            else cat.fillna("unknown")
    cat = cat.cat.rename_categories([str(c) for c in cat.cat.categories])
    # Sorted categories make integer codes follow string order: groups come out sorted by id.
    return pd.Categorical(cat).reorder_categories(sorted(cat.cat.categories))


def _context_codes(ts_ns: np.ndarray, location_type: pd.Series, weather: pd.Series,
                   cfg: FeaturesConfig) -> pd.Categorical:
    """``location_type|time_slot|weather`` per row, as a categorical (cheap for 10M rows)."""
    hour = (_local_ns(ts_ns, cfg.timezone) // _NS_PER_HOUR) % 24
    slot = _time_slot_idx(hour, cfg)
    loc, wea = _categorical(location_type), _categorical(weather)
    n_slot, n_wea = len(cfg.time_slots), len(wea.categories)
    code = (loc.codes.astype("int64") * n_slot + slot) * n_wea + wea.codes
    inv, uniq = _sorted_codes(code, len(loc.categories) * n_slot * n_wea)
    slots = list(cfg.time_slots)
    labels = [
        f"{loc.categories[c // (n_slot * n_wea)]}|{slots[(c // n_wea) % n_slot]}|{wea.categories[c % n_wea]}"
        for c in uniq
    ]
    return pd.Categorical.from_codes(inv, categories=labels).reorder_categories(sorted(labels))


def scene_features(df: pd.DataFrame, cfg: FeaturesConfig | None = None) -> pd.DataFrame:
    """Request-time scene columns from ``ts`` and the contract's scene columns.

    Adds ``hour``, ``day_of_week`` (Monday = 0), ``is_weekend``, ``time_slot``,
    ``temperature_band`` (-1 if unknown) and ``context_id``; returns a new frame.
    """
    cfg = cfg or FeaturesConfig()
    out = df.copy()
    ts_ns = _ts_ns(df["ts"])
    local = _local_ns(ts_ns, cfg.timezone)
    hour = (local // _NS_PER_HOUR) % 24
    dow = (local // _NS_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday
    out["hour"] = hour.astype("int64")
    out["day_of_week"] = dow.astype("int64")
    out["is_weekend"] = (dow >= 5).astype("int64")
    out["time_slot"] = np.asarray(list(cfg.time_slots), dtype=object)[_time_slot_idx(hour, cfg)]
    out["temperature_band"] = _bands(pd.to_numeric(df["temperature_c"], errors="coerce"), cfg.temperature_band_edges)
    out["context_id"] = np.asarray(_context_codes(ts_ns, df["location_type"], df["weather"], cfg), dtype=object)
    return out


# ----------------------------------------------------------------------------------------------
# Snapshot machinery


@dataclass
class _Groups:
    """(entity, period) groups of a behaviour frame, sorted by entity then period."""

    row_group: np.ndarray  # group index of every row (-1: row not in any group)
    entity: np.ndarray  # entity code of every group
    period: np.ndarray  # period index of every group
    n: int

    def bincount(self, values: np.ndarray, width: int, mask: np.ndarray | None = None) -> np.ndarray:
        """(n_groups, width) counts of ``values`` (0..width-1) per group; rows with -1 skipped."""
        ok = (self.row_group >= 0) & (values >= 0)
        if mask is not None:
            ok &= mask
        flat = self.row_group[ok].astype("int64") * width + values[ok]
        # int32 halves the memory traffic of the (groups x width) matrices; counts stay < 2**31.
        return np.bincount(flat, minlength=self.n * width).astype("int32").reshape(self.n, width)

    def lagged(self, running: np.ndarray, lag: int) -> np.ndarray:
        """``running`` (a ``cumulative`` matrix) as it stood at each entity's latest group at least
        ``lag`` periods before the group's own (zeros where the entity has none that old)."""
        out = np.zeros_like(running)
        if self.n == 0:
            return out
        span = int(self.period.max()) + lag + 1
        key = self.entity.astype("int64") * span + self.period  # ascending: sorted by entity, then period
        j = np.searchsorted(key, key - lag, side="right") - 1
        ok = (j >= 0) & (self.entity[np.maximum(j, 0)] == self.entity)
        out[ok] = running[j[ok]]
        return out

    def cumulative(self, mat: np.ndarray) -> np.ndarray:
        """Running sum over each entity's periods (groups are sorted by entity, then period)."""
        cs = np.cumsum(mat, axis=0, dtype=mat.dtype)
        if self.n == 0:
            return cs
        starts = np.flatnonzero(np.r_[True, self.entity[1:] != self.entity[:-1]])
        base = np.zeros((len(starts),) + cs.shape[1:], dtype=cs.dtype)
        base[1:] = cs[starts[1:] - 1]
        lengths = np.diff(np.r_[starts, self.n])
        return cs - np.repeat(base, lengths, axis=0)


def _sorted_codes(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(inverse, sorted unique keys) of non-negative integer keys below ``size``.

    Like ``np.unique(return_inverse=True)`` but, when the key space is small enough, by marking
    occupied slots and ranking them: O(n + size) instead of a sort of all n keys, which
    dominates the cost at 10M behaviours.
    """
    if size <= max(4 * len(key), 1 << 24):
        occupied = np.zeros(size, dtype=bool)
        occupied[key] = True
        rank = np.cumsum(occupied, dtype="int64") - 1
        return rank[key], np.flatnonzero(occupied)
    inv, uniq = pd.factorize(key, sort=True)
    return inv.astype("int64"), np.asarray(uniq, dtype="int64")


def _group(entity_codes: np.ndarray, period: np.ndarray) -> _Groups:
    valid = entity_codes >= 0
    p0 = int(period.min()) if len(period) else 0
    span = int(period.max()) - p0 + 1 if len(period) else 1
    n_entities = int(entity_codes.max()) + 1 if valid.any() else 0
    key = entity_codes[valid].astype("int64") * span + (period[valid] - p0)
    inv, uniq = _sorted_codes(key, n_entities * span)
    row_group = np.full(len(entity_codes), -1, dtype="int64")
    row_group[valid] = inv
    return _Groups(row_group, uniq // span, uniq % span + p0, len(uniq))


def _shares(counts: np.ndarray) -> np.ndarray:
    """Row-normalised shares (float32); all-zero rows stay zero."""
    tot = counts.sum(axis=1, keepdims=True, dtype="int64").astype("float32")
    return np.divide(counts, tot, out=np.zeros(counts.shape, dtype="float32"), where=tot > 0, dtype="float32")


def _stamp(period: np.ndarray, cfg: FeaturesConfig) -> pd.DatetimeIndex:
    """Snapshot time of a period: its end (all behaviour in the period is strictly before it)."""
    ns = (period.astype("int64") + 1) * (cfg.snapshot_hours * _NS_PER_HOUR)
    return pd.DatetimeIndex(ns.view("datetime64[ns]")).tz_localize("UTC")


def _frame(key: str, ids: np.ndarray, stamps: pd.DatetimeIndex, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    # Entity codes follow string order and groups are sorted by (code, period): already sorted.
    return pd.DataFrame({key: np.asarray(ids, dtype=object), TIMESTAMP: stamps, **cols})


# ----------------------------------------------------------------------------------------------
# Tables


@dataclass
class _Behaviors:
    """The behaviour log as integer arrays (one pass of parsing, shared by all tables)."""

    ts_ns: np.ndarray
    period: np.ndarray
    behavior: np.ndarray  # index into contract BEHAVIORS
    user: pd.Categorical
    poi_row: np.ndarray  # row in the PoI attribute table, -1 for none / unknown
    context: pd.Categorical

    @property
    def interaction(self) -> np.ndarray:
        return np.isin(self.behavior, [BEHAVIORS.index(b) for b in _INTERACTIONS])


@dataclass
class _PoiAttributes:
    poi_id: np.ndarray
    category_idx: np.ndarray
    top_cat: np.ndarray  # 0..N-1 top category, N = other
    price: np.ndarray
    price_band: np.ndarray
    rating: np.ndarray  # filled
    rating_missing: np.ndarray
    rating_band: np.ndarray
    delivery_minutes: np.ndarray
    delivery_band: np.ndarray
    opened_at: pd.Series


def _poi_attributes(pois: pd.DataFrame, vocab: Vocabulary, cfg: FeaturesConfig) -> _PoiAttributes:
    pois = pois.assign(poi_id=pois["poi_id"].astype(str)).sort_values("poi_id", kind="stable")
    cat_index = {c: i for i, c in enumerate(vocab.categories)}
    cidx = pois["category"].astype(str).map(cat_index).to_numpy(dtype="int64")
    rating_raw = pd.to_numeric(pois["rating"], errors="coerce").to_numpy(dtype="float64")
    missing = np.isnan(rating_raw)
    rating = np.where(missing, vocab.rating_mean, rating_raw)
    price = pd.to_numeric(pois["price"], errors="coerce").to_numpy(dtype="float64")
    delivery = pd.to_numeric(pois["delivery_minutes"], errors="coerce").to_numpy(dtype="float64")
    return _PoiAttributes(
        poi_id=pois["poi_id"].astype(str).to_numpy(dtype=object),
        category_idx=cidx,
        top_cat=np.minimum(cidx, cfg.top_categories),
        price=price,
        price_band=_bands(price, cfg.price_band_edges),
        rating=rating,
        rating_missing=missing.astype("int64"),
        rating_band=_bands(rating, cfg.rating_band_edges),
        delivery_minutes=delivery,
        delivery_band=_bands(delivery, cfg.delivery_band_edges),
        opened_at=pd.to_datetime(pois["opened_at"], utc=True).reset_index(drop=True),
    )


def _read_behaviors(path: Path, pois: _PoiAttributes, cfg: FeaturesConfig) -> _Behaviors:
    cols = ["ts", "user_id", "poi_id", "behavior", "location_type", "weather"]
    # Strings as categoricals: 10M user ids as Python objects would cost gigabytes.
    df = pq.read_table(path, columns=cols).to_pandas(strings_to_categorical=True)
    ts_ns = _ts_ns(df["ts"])
    beh = _categorical(df["behavior"])
    lookup_b = np.array([BEHAVIORS.index(c) if c in BEHAVIORS else -1 for c in beh.categories] or [-1])
    behavior = lookup_b[np.maximum(beh.codes, 0)].astype("int64")
    poi = df["poi_id"].astype("category")
    lookup = pd.Index(pois.poi_id).get_indexer(poi.cat.categories.astype(str))
    codes = poi.cat.codes.to_numpy()
    poi_row = np.where(codes >= 0, lookup[np.maximum(codes, 0)] if len(lookup) else -1, -1).astype("int64")
    return _Behaviors(
        ts_ns=ts_ns,
        period=ts_ns // (cfg.snapshot_hours * _NS_PER_HOUR),
        behavior=behavior,
        user=_categorical(df["user_id"]),
        poi_row=poi_row,
        context=_context_codes(ts_ns, df["location_type"], df["weather"], cfg),
    )


def _attr(b: _Behaviors, values: np.ndarray) -> np.ndarray:
    """A PoI attribute for every behaviour row (-1 where the row has no known PoI)."""
    if len(values) == 0:
        return np.full(len(b.poi_row), -1, dtype="int64")
    return np.where(b.poi_row >= 0, values[np.maximum(b.poi_row, 0)], -1)


def user_stats(b: _Behaviors, poi: _PoiAttributes, cfg: FeaturesConfig) -> pd.DataFrame:
    """Cumulative per-user behaviour aggregates, snapshotted at the end of each active period."""
    g = _group(b.user.codes.astype("int64"), b.period)
    nb = len(BEHAVIORS)
    counts = g.cumulative(g.bincount(b.behavior, nb))
    inter = b.interaction
    cat = g.cumulative(g.bincount(_attr(b, poi.top_cat), cfg.top_categories + 1, mask=inter))
    n_price = band_count(cfg, "price_band_edges")
    price = g.cumulative(g.bincount(_attr(b, poi.price_band), n_price, mask=inter))
    # Last behaviour before the snapshot: the max ts of the latest active period (periods grow).
    ok = g.row_group >= 0
    last = np.full(g.n, np.iinfo("int64").min, dtype="int64")
    np.maximum.at(last, g.row_group[ok], b.ts_ns[ok])
    # Active days: a (user, local day) pair counts from the period of its first behaviour.
    day = _local_ns(b.ts_ns, cfg.timezone) // _NS_PER_DAY
    # Groups are sorted by (user, period), so the smallest group index of a pair is its first period.
    d0, span = (int(day.min()), int(day.max()) - int(day.min()) + 1) if len(day) else (0, 1)
    pair = b.user.codes.astype("int64") * span + (day - d0)
    pair_code, pairs = _sorted_codes(pair, int(b.user.codes.max(initial=-1) + 1) * span)
    first = np.full(len(pairs), g.n, dtype="int64")
    np.minimum.at(first, pair_code, g.row_group)
    days = g.cumulative(np.bincount(first, minlength=g.n).astype("int32")[:, None])[:, 0]
    cols = {f"n_{name}": counts[:, i].astype("int64") for i, name in enumerate(BEHAVIORS)}
    cols["n_total"] = counts.sum(axis=1).astype("int64")
    cols["n_interactions"] = cat.sum(axis=1).astype("int64")
    cols.update(dict(zip(category_columns(cfg), _shares(cat).T)))
    cols.update(dict(zip(band_columns("price_band", n_price), _shares(price).T)))
    cols["last_behavior_ts"] = last.astype("float64") / 1e9
    cols["n_active_days"] = days.astype("int64")
    ids = np.asarray(b.user.categories, dtype=object)[g.entity]
    return _frame("user_id", ids, _stamp(g.period, cfg), cols)


def user_profile(users: pd.DataFrame) -> pd.DataFrame:
    """Age group and gender one-hot per user (all zero when unknown), stamped at ``registered_at``."""
    df = pd.DataFrame({"user_id": users["user_id"].astype(str).to_numpy(dtype=object),
                       TIMESTAMP: pd.to_datetime(users["registered_at"], utc=True).array})
    for col, names in profile_columns().items():
        values = users[col].astype(object).to_numpy()
        for value, name in names.items():
            df[name] = (values == value).astype("float32")
    df = df[df[TIMESTAMP].notna()]  # the contract requires registered_at; a point-in-time join needs it
    return df.sort_values("user_id", kind="stable").reset_index(drop=True)


def poi_profile(poi: _PoiAttributes) -> pd.DataFrame:
    """Static PoI attributes, stamped at ``opened_at``."""
    df = pd.DataFrame({
        "poi_id": pd.Series(poi.poi_id, dtype=object),
        TIMESTAMP: poi.opened_at,
        "category_idx": poi.category_idx,
        "price": poi.price.astype("float32"),
        "price_band": poi.price_band,
        "rating": poi.rating.astype("float32"),
        "rating_missing": poi.rating_missing,
        "rating_band": poi.rating_band,
        "delivery_minutes": np.nan_to_num(poi.delivery_minutes, nan=-1).astype("int64"),
        "delivery_band": poi.delivery_band,
    })
    return df.sort_values("poi_id", kind="stable").reset_index(drop=True)


def poi_stats(b: _Behaviors, poi: _PoiAttributes, cfg: FeaturesConfig) -> pd.DataFrame:
    """Cumulative per-PoI counts and smoothed rates, snapshotted at the end of each active period.

    ``ctr_smoothed = (clicks + k*ctr0) / (views + k)`` and ``cvr_smoothed = (orders + k*cvr0) /
    (clicks + k)`` with ``k = popularity_prior``; the prior means ctr0, cvr0 are the global rates
    over all behaviour before the same snapshot, so the prior leaks nothing either.
    """
    g = _group(b.poi_row, b.period)
    idx = {name: BEHAVIORS.index(name) for name in ("view", "click", "favorite", "order")}
    per = g.bincount(b.behavior, len(BEHAVIORS))
    cum = g.cumulative(per)
    # Global running totals through each period (over every PoI), for the prior means.
    periods = np.unique(g.period)
    pos = np.searchsorted(periods, g.period)
    running = np.cumsum(np.stack([np.bincount(pos, weights=per[:, idx[n]], minlength=len(periods))
                                  for n in ("view", "click", "order")], axis=1), axis=0)
    glob = running[pos]
    ctr0 = np.divide(glob[:, 1], glob[:, 0], out=np.zeros(g.n), where=glob[:, 0] > 0)
    cvr0 = np.divide(glob[:, 2], glob[:, 1], out=np.zeros(g.n), where=glob[:, 1] > 0)
    k = cfg.popularity_prior
    views, clicks, orders = (cum[:, idx[n]].astype("float64") for n in ("view", "click", "order"))
    with np.errstate(invalid="ignore", divide="ignore"):
        ctr = np.where(views + k > 0, (clicks + k * ctr0) / (views + k), 0.0)
        cvr = np.where(clicks + k > 0, (orders + k * cvr0) / (clicks + k), 0.0)
    cols = {f"n_{n}": cum[:, i].astype("int64") for n, i in idx.items()}
    cols["ctr_smoothed"] = ctr.astype("float32")
    cols["cvr_smoothed"] = cvr.astype("float32")
    if cfg.recent_days:
        # The window's counts are the running ones minus those of the snapshot ``lag`` periods back.
        # A snapshot is written after each active period only, so a PoI that goes idle keeps its last
        # window until its next behaviour or the view's ttl (Feast joins the latest snapshot).
        lag = max(1, round(cfg.recent_days * 24 / cfg.snapshot_hours))
        recent = cum - g.lagged(cum, lag)
        for b, name in zip(RECENT_BEHAVIORS, RECENT_COUNTS):
            cols[name] = recent[:, idx[b]].astype("int64")
        rv, rc = (recent[:, idx[n]].astype("float64") for n in ("view", "click"))
        with np.errstate(invalid="ignore", divide="ignore"):  # shrunk to the PoI's own long-run rate
            cols["ctr_recent"] = np.where(rv + k > 0, (rc + k * ctr) / (rv + k), ctr).astype("float32")
        if cfg.poi_momentum:
            # log((window's views + k + 1) / (expected + k + 1)), expected = the PoI's share of all views
            # so far times the platform's views in the window (clicks alike, with k * ctr0 + 1
            # pseudo-clicks; k = popularity_prior, as for ctr_smoothed): > 0 for a shop on the rise, < 0
            # for one that fades, shrunk to 0 where the counts are few. Shares of the platform's totals
            # over the same periods, so that a growing (or seasonal) platform moves no shop's figure.
            back = np.searchsorted(periods, g.period - lag, side="right") - 1
            then = np.where((back >= 0)[:, None], running[np.maximum(back, 0)], 0.0)
            pairs = (("view", views, rv, k + 1), ("click", clicks, rc, k * ctr0 + 1))  # with pseudo-counts
            for j, (n, mine, mine_recent, prior) in enumerate(pairs):
                now_all, now_recent = glob[:, j], glob[:, j] - then[:, j]  # running's columns: view, click, order
                expected = np.divide(mine * now_recent, now_all, out=np.zeros(g.n), where=now_all > 0)
                cols[f"{n}_momentum"] = np.log((mine_recent + prior) / (expected + prior)).astype("float32")
    return _frame("poi_id", poi.poi_id[g.entity], _stamp(g.period, cfg), cols)


def context_stats(b: _Behaviors, poi: _PoiAttributes, cfg: FeaturesConfig) -> pd.DataFrame:
    """Cumulative per-context counts and D(C), snapshotted at the end of each active period."""
    g = _group(b.context.codes.astype("int64"), b.period)
    inter = b.interaction
    counts = g.cumulative(g.bincount(b.behavior, len(BEHAVIORS)))
    mixes = {}
    for prefix, values, edges in (
        ("price_band", poi.price_band, cfg.price_band_edges),
        ("rating_band", poi.rating_band, cfg.rating_band_edges),
        ("delivery_band", poi.delivery_band, cfg.delivery_band_edges),
    ):
        mixes[prefix] = (g.cumulative(g.bincount(_attr(b, values), len(edges) + 1, mask=inter)), len(edges) + 1)
    cat = g.cumulative(g.bincount(_attr(b, poi.top_cat), cfg.top_categories + 1, mask=inter))
    cols = {
        "n_total": counts.sum(axis=1).astype("int64"),
        "n_click": counts[:, BEHAVIORS.index("click")].astype("int64"),
        "n_order": counts[:, BEHAVIORS.index("order")].astype("int64"),
        "n_interactions": cat.sum(axis=1).astype("int64"),
    }
    cols.update(dict(zip(category_columns(cfg), _shares(cat).T)))
    for prefix, (mat, n) in mixes.items():
        cols.update(dict(zip(band_columns(prefix, n), _shares(mat).T)))
    ids = np.asarray(b.context.categories, dtype=object)[g.entity]
    return _frame("context_id", ids, _stamp(g.period, cfg), cols)


# ----------------------------------------------------------------------------------------------
# Entry point


def build_feature_tables(curated_dir: Path, cfg: FeaturesConfig, out_dir: Path,
                         fit_until: pd.Timestamp | None = None) -> dict[str, int]:
    """Write the five feature tables, ``vocab.json`` and ``stats.json`` to ``out_dir``.

    Null band edges are learned from the PoIs opened before ``fit_until`` (the training split).
    Returns the number of rows per table. Deterministic: the same inputs give the same tables.
    """
    t0 = time.perf_counter()
    curated_dir, out_dir = Path(curated_dir), Path(out_dir)
    for name in ("pois", "behaviors", "users"):
        if not (curated_dir / f"{name}.parquet").exists():
            raise FileNotFoundError(
                f"{curated_dir / (name + '.parquet')}: curated table missing (run `scenerec ingest` first)"
            )
    pois = pd.read_parquet(curated_dir / "pois.parquet")
    cfg = resolve_band_edges(pois, cfg, fit_until)
    vocab = build_vocabulary(pois, cfg)
    attrs = _poi_attributes(pois, vocab, cfg)
    b = _read_behaviors(curated_dir / "behaviors.parquet", attrs, cfg)
    tables = {
        "user_stats": user_stats(b, attrs, cfg),
        "user_profile": user_profile(pd.read_parquet(curated_dir / "users.parquet",
                                                     columns=["user_id", "registered_at", "age_group", "gender"])),
        "poi_profile": poi_profile(attrs),
        "poi_stats": poi_stats(b, attrs, cfg),
        "context_stats": context_stats(b, attrs, cfg),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_temp_files(out_dir)  # left by a killed run; the caller holds the features lock
    schema = feature_schema(cfg)
    for name, df in tables.items():
        expected = [KEYS[name], TIMESTAMP] + [c for c, _ in schema[name]]
        assert list(df.columns) == expected, f"{name}: columns {list(df.columns)} != schema {expected}"
        write_parquet_atomic(df, out_dir / f"{name}.parquet")
        crash_point("features.tables")
    write_text_atomic(out_dir / "vocab.json", json.dumps(asdict(vocab), indent=2) + "\n")
    rows = {name: int(len(df)) for name, df in tables.items()}
    stats = {
        "rows": rows,
        "entities": {name: int(df[KEYS[name]].nunique()) for name, df in tables.items()},
        "behaviors": int(len(b.ts_ns)),
        "first_snapshot": str(tables["user_stats"][TIMESTAMP].min()) if rows["user_stats"] else None,
        "last_snapshot": str(tables["user_stats"][TIMESTAMP].max()) if rows["user_stats"] else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_text_atomic(out_dir / "stats.json", json.dumps(stats, indent=2) + "\n")
    return rows
