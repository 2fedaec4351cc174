"""CTR training data: the Feast training set (point-in-time features), the behaviour sequences
and the per-feature scene / PoI embeddings, encoded once into arrays and served in batches of
**requests** (a page view and its candidates), so history, scene and CoFARS selection are
computed once per request and shared by its candidates.

Choices of ours:
- Split by request time: the first ``1 - valid - test`` share of requests trains, the next
  ``valid_fraction`` stops early, the last ``test_fraction`` is the test set. Cold-start users /
  PoIs are those registered / opened at or after the test start.
- IDs seen in training only get their own embedding row; everything else maps to row 0 (unknown),
  which ``id_dropout`` trains by hiding known IDs at random.
- Histories are the user's behaviours (``history_behaviors``) strictly before the request, kept
  as one flat array sorted by (user, time): a request is a slice ``[start, end)`` of it, so a
  user with thousands of behaviours costs no copy until a batch gathers its last ``max_len``.
- Batches are bucketed by history length (shuffled within and across buckets) so padding stays small.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import CTRConfig, Params
from components.features.engineering import quantile_edges
from components.llm.text import SCENE_FEATURES, scene_values

LABELS = ("click", "order")
SCENE_COLUMNS = ["ts", "geohash", "location_type", "weather", "temperature_c", "is_holiday"]
_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"
_B32 = {c: i for i, c in enumerate(_BASE32)}


# ------------------------------------------------------------------------------------------------
# Small helpers


def geohash_decode(codes) -> tuple[np.ndarray, np.ndarray]:
    """Centre (lat, lon) of each geohash; unknown / empty codes give NaN."""
    uniq, inv = np.unique(pd.Series(codes, dtype=object).fillna("").astype(str).to_numpy(), return_inverse=True)
    lat = np.full(len(uniq), np.nan)
    lon = np.full(len(uniq), np.nan)
    for i, code in enumerate(uniq):
        if not code or any(c not in _B32 for c in code):
            continue
        lo_lat, hi_lat, lo_lon, hi_lon, even = -90.0, 90.0, -180.0, 180.0, True
        for c in code:
            v = _B32[c]
            for bit in (16, 8, 4, 2, 1):
                if even:
                    mid = (lo_lon + hi_lon) / 2
                    lo_lon, hi_lon = (mid, hi_lon) if v & bit else (lo_lon, mid)
                else:
                    mid = (lo_lat + hi_lat) / 2
                    lo_lat, hi_lat = (mid, hi_lat) if v & bit else (lo_lat, mid)
                even = not even
        lat[i], lon[i] = (lo_lat + hi_lat) / 2, (lo_lon + hi_lon) / 2
    return lat[inv], lon[inv]


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km (NaN where a coordinate is unknown)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(np.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def _ts_ns(s: pd.Series) -> np.ndarray:
    return pd.to_datetime(s, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


class Vocab:
    """String -> index with 0 reserved for unknown values."""

    def __init__(self, values=()):
        self.index: dict[str, int] = {}
        for v in values:
            v = str(v)
            if v not in self.index:
                self.index[v] = len(self.index) + 1

    def __len__(self) -> int:
        return len(self.index) + 1

    def encode(self, values) -> np.ndarray:
        get = self.index.get
        return np.fromiter((get(str(v), 0) for v in values), dtype=np.int64, count=len(values))

    def to_list(self) -> list[str]:
        return list(self.index)

    @classmethod
    def from_list(cls, values: list[str]) -> "Vocab":
        return cls(values)


# ------------------------------------------------------------------------------------------------
# Raw inputs


@dataclass
class CTRSources:
    """Everything the CTR stage reads, as frames (one place that knows the file layout)."""

    training_set: pd.DataFrame | None  # impressions with point-in-time Feast features (None: not read)
    behaviors: pd.DataFrame
    pois: pd.DataFrame
    users: pd.DataFrame
    scene_embeddings: pd.DataFrame | None  # scene_value_id, feature, value, embedding
    poi_embeddings: pd.DataFrame | None  # poi_id, embedding
    truth: pd.DataFrame | None  # request_id, poi_id, p_click, p_order


def load_sources(params: Params, training_set: bool = True) -> CTRSources:
    """Read the training set (with HKFR's user knowledge under ``ctr.user_knowledge``; skipped when
    ``training_set`` is False), the curated tables, embeddings and (if present) the oracle truth."""
    from components.features.store import TRAINING_SET

    ts_path = params.path("features_dir") / TRAINING_SET
    if training_set and not ts_path.exists():
        raise FileNotFoundError(f"{ts_path}: training set missing (run `scenerec features` first)")
    cur = params.path("curated_dir")
    emb = params.path("embeddings_dir")
    truth_path = cur / "truth" / "impressions.parquet"

    def opt(path: Path):
        return pd.read_parquet(path) if path.exists() else None

    frame = pd.read_parquet(ts_path) if training_set else None
    if frame is not None and params.ctr.user_knowledge:
        frame = with_user_knowledge(params, frame)
    return CTRSources(
        training_set=frame,
        behaviors=pd.read_parquet(cur / "behaviors.parquet"),
        pois=pd.read_parquet(cur / "pois.parquet"),
        users=pd.read_parquet(cur / "users.parquet"),
        scene_embeddings=opt(emb / "scene_embeddings.parquet"),
        poi_embeddings=opt(emb / "poi_embeddings.parquet"),
        truth=opt(truth_path),
    )


def with_user_knowledge(params: Params, training_set: pd.DataFrame) -> pd.DataFrame:
    """The training set with HKFR's user knowledge embedding joined point-in-time by Feast
    (``user_knowledge__k00``, ...: the snapshot of each user's knowledge before the impression)."""
    from components.features.store import service_frame

    path = params.path("hkfr_dir") / "user_knowledge.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: ctr.user_knowledge is on but there is no user knowledge table "
                                "(run `scenerec knowledge` and `scenerec instruct` first)")
    entity = training_set[["user_id", "event_timestamp"]].assign(user_id=lambda d: d["user_id"].astype(str))
    joined = service_frame(params, entity, "hkfr_user_knowledge")
    cols = [c for c in joined.columns if c.startswith("user_knowledge__")]
    out = training_set.reset_index(drop=True).copy()
    for c in cols:
        out[c] = joined[c].to_numpy()
    return out


def with_scene_numeric(df: pd.DataFrame, cfg_features) -> pd.DataFrame:
    """``df`` with ``scene__<col>`` numeric copies of the scene columns (hour / weekday from ``ts``
    or ``event_timestamp`` when the frame lacks them)."""
    if all(f"scene__{c}" in df for c in SCENE_NUMERIC):
        return df
    from components.features.engineering import scene_features

    src = df.rename(columns={"event_timestamp": "ts"}) if "ts" not in df else df
    if not all(c in src for c in ("hour", "day_of_week", "is_weekend")):
        src = scene_features(src[SCENE_COLUMNS], cfg_features)
    out = df.copy()
    for c in SCENE_NUMERIC:
        v = src[c].astype(object).map(lambda x: float(x) if isinstance(x, (bool, np.bool_)) else x)
        out[f"scene__{c}"] = pd.to_numeric(v, errors="coerce").to_numpy(np.float64)
    return out


def time_split(request_ts: np.ndarray, cfg: CTRConfig) -> tuple[int, int]:
    """(valid_start_ns, test_start_ns): request-time quantiles of the split."""
    t = np.sort(np.asarray(request_ts))
    if len(t) < 3:
        raise ValueError(f"need at least 3 requests to split train/valid/test, got {len(t)}")
    train_end = int(len(t) * (1 - cfg.valid_fraction - cfg.test_fraction))
    valid_end = int(len(t) * (1 - cfg.test_fraction))
    return int(t[max(train_end, 1)]), int(t[min(max(valid_end, train_end + 1), len(t) - 1)])


def split_bounds(impressions: pd.DataFrame, params) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(valid_start, test_start): the CTR model's time split of the requests."""
    req = pd.to_datetime(impressions.groupby("request_id")["ts"].min(), utc=True)
    valid_ns, test_ns = time_split(req.dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64),
                                   params.ctr)
    return pd.Timestamp(valid_ns, tz="UTC"), pd.Timestamp(test_ns, tz="UTC")


# ------------------------------------------------------------------------------------------------
# Encoder: fitted on the training period, then applied to any frame (training, test, serving)

FEATURE_PREFIXES = ("user_stats__", "user_profile__", "poi_stats__", "context_stats__", "poi_profile__",
                    "user_knowledge__", "scene__")
# Scene columns the models also read as numbers (besides their IDs / LLM embeddings), so a world with
# another temperature range or a stronger temperature effect needs no band edges to be learnt.
SCENE_NUMERIC = ("temperature_c", "hour", "day_of_week", "is_weekend", "is_holiday")
# Dense descriptions of the user (their stated profile, HKFR's knowledge embedding): besides the
# numeric input, the model projects them into the user embedding, so they meet every candidate
# in the user x item interaction, which is what a cold user (no ID embedding of their own) lacks.
USER_DENSE_PREFIXES = ("user_profile__", "user_knowledge__k")
_POI_CATEGORICAL = ("poi_profile__category_idx", "poi_profile__price_band", "poi_profile__rating_band",
                    "poi_profile__delivery_band")
_SKIP_NUMERIC = set(_POI_CATEGORICAL) | {"user_stats__last_behavior_ts"}
_COUNT_LIKE = ("__n_",)
_BEHAVIOR_TYPES = ("view", "click", "favorite", "order")
# D(C) attribute groups of CoFARS: the PoI attributes whose distribution per context is compared.
DIST_ATTRIBUTES = ("category", "price_band", "rating_band", "delivery_band")


@dataclass
class FeatureEncoder:
    """Vocabularies and normalisation fitted on the training period; turns frames into arrays."""

    users: Vocab
    pois: Vocab
    contexts: Vocab
    scene: dict[str, Vocab]
    numeric: list[str]
    mean: np.ndarray
    std: np.ndarray
    n_categories: int
    n_bands: dict[str, int]
    # Quantile bin edges of the PoI attributes (price, rating, delivery), learnt on the PoIs open in
    # the training period; empty = the fixed ``features.*_band_edges`` (encoders saved before).
    bin_edges: dict[str, list[float]] = field(default_factory=dict)
    # Piecewise-linear encoding (fit_ple): per standardised numeric column, then distance, the
    # quantile boundaries of its training-split values; empty = raw values only (encoders saved before).
    ple_edges: list[list[float]] = field(default_factory=list)
    # Mean PoI text embedding over the PoIs known in training (fit_text_mean); PoiTable.build centres
    # every PoI's embedding on it; empty = used as they are (encoders saved before, or switched off).
    text_mean: list[float] = field(default_factory=list)

    # -- fitting -------------------------------------------------------------------------------
    @classmethod
    def fit(cls, train: pd.DataFrame, behaviors: pd.DataFrame, pois: pd.DataFrame, cutoff_ns: int,
            n_bins: int = 4, user_min_requests: int = 0) -> "FeatureEncoder":
        """Fit on training impressions and the behaviours logged before ``cutoff_ns``; PoI price,
        rating and delivery bins are ``n_bins`` quantiles of the PoIs open before it. A user gets an
        ID row of their own when seen in that period and, with ``user_min_requests`` > 0, when they
        made at least that many training requests: the others read the unknown-ID row, the one a
        user new at serving time reads, so that row learns from young users, not only from hidden IDs."""
        seen_b = behaviors[_ts_ns(behaviors["ts"]) < cutoff_ns]
        if user_min_requests > 0:
            n = train.groupby(train["user_id"].astype(str))["request_id"].nunique()
            known = set(n.index[n >= user_min_requests])
        else:
            known = set(train["user_id"].astype(str)) | set(seen_b["user_id"].astype(str))
        users = Vocab(sorted(known))
        poi_ids = set(train["poi_id"].astype(str)) | set(seen_b["poi_id"].dropna().astype(str))
        opened = pois[_ts_ns(pois["opened_at"]) < cutoff_ns]["poi_id"].astype(str)
        known_pois = Vocab(sorted(poi_ids & set(opened)))
        sv = scene_values(train.rename(columns={"event_timestamp": "ts"})[SCENE_COLUMNS])
        scene = {f: Vocab(sorted(sv[f].astype(str).unique())) for f in SCENE_FEATURES}
        contexts = Vocab(sorted(train["context_id"].astype(str).unique()))
        numeric = [c for c in train.columns if c.startswith(FEATURE_PREFIXES) and c not in _SKIP_NUMERIC
                   and pd.api.types.is_numeric_dtype(train[c])]
        raw = cls._numeric_raw(train, numeric)
        mean = np.nanmean(raw, axis=0)
        std = np.nanstd(raw, axis=0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-6), std, 1.0)
        n_cat = int(max(pois_category_index(pois).max() + 1, 1))
        open_pois = pois[_ts_ns(pois["opened_at"]) < cutoff_ns]
        edges = {k: quantile_edges(open_pois[col], n_bins, keep_count=False) for k, col in POI_BINNED.items()}
        bands = {k: len(e) + 2 for k, e in edges.items()}  # 0 = unknown, then len(e) + 1 bins
        return cls(users, known_pois, contexts, scene, numeric, mean.astype(np.float32), std.astype(np.float32),
                   n_cat, bands, edges)

    @staticmethod
    def _numeric_raw(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
        x = df[cols].to_numpy(dtype=np.float64, na_value=np.nan) if cols else np.zeros((len(df), 0))
        count_cols = np.array([any(t in c for t in _COUNT_LIKE) for c in cols], dtype=bool)
        if count_cols.any():
            x[:, count_cols] = np.log1p(np.clip(x[:, count_cols], 0, None))
        return x

    # -- persistence ---------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"users": self.users.to_list(), "pois": self.pois.to_list(), "contexts": self.contexts.to_list(),
                "scene": {k: v.to_list() for k, v in self.scene.items()}, "numeric": self.numeric,
                "mean": self.mean.tolist(), "std": self.std.tolist(), "n_categories": self.n_categories,
                "n_bands": self.n_bands, "bin_edges": self.bin_edges, "ple_edges": self.ple_edges,
                "text_mean": self.text_mean}

    @classmethod
    def from_json(cls, d: dict) -> "FeatureEncoder":
        return cls(Vocab.from_list(d["users"]), Vocab.from_list(d["pois"]), Vocab.from_list(d["contexts"]),
                   {k: Vocab.from_list(v) for k, v in d["scene"].items()}, list(d["numeric"]),
                   np.asarray(d["mean"], np.float32), np.asarray(d["std"], np.float32), int(d["n_categories"]),
                   {k: int(v) for k, v in d["n_bands"].items()},
                   {k: [float(x) for x in v] for k, v in d.get("bin_edges", {}).items()},
                   [[float(x) for x in e] for e in d.get("ple_edges", [])],
                   [float(x) for x in d.get("text_mean", [])])

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> "FeatureEncoder":
        return cls.from_json(json.loads(Path(path).read_text()))

    # -- sizes the model needs -----------------------------------------------------------------
    def sizes(self) -> dict:
        return {"n_users": len(self.users), "n_pois": len(self.pois), "n_contexts": len(self.contexts),
                "scene": {f: len(v) for f, v in self.scene.items()}, "n_numeric": len(self.numeric),
                "n_flags": max(4, len({c.split("__")[0] for c in self.numeric})),
                "n_categories": self.n_categories, "n_bands": dict(self.n_bands),
                "user_dense": [i for i, c in enumerate(self.numeric) if c.startswith(USER_DENSE_PREFIXES)],
                "ple_edges": [list(e) for e in self.ple_edges]}

    def fit_text_mean(self, poi_embeddings: pd.DataFrame | None) -> None:
        """The mean text embedding of the PoIs with an ID row (those known in the training period):
        sentence embeddings of one domain share a dominant direction (mean pairwise cosine 0.96-0.99
        on our worlds), so what tells PoIs apart is a small residual of each vector until it is removed."""
        self.text_mean = []
        if poi_embeddings is None or not len(poi_embeddings):
            return
        known = poi_embeddings["poi_id"].astype(str).isin(self.pois.to_list()).to_numpy()
        if known.any():
            rows = np.stack(poi_embeddings["embedding"].to_numpy()[known]).astype(np.float64)
            self.text_mean = [round(float(x), 7) for x in rows.mean(0)]

    def fit_ple(self, train: "RequestData", n_bins: int) -> None:
        """Learn the piecewise-linear encoding's boundaries on the encoded training split: for each
        standardised numeric column and for distance, the distinct quantiles (0, 1/n, ..., 1) of its
        values over the real candidates (a tree model's thresholds, learnt from the data, never given).
        A column with one distinct value gets none (it is encoded as nothing)."""
        if n_bins <= 0:
            self.ple_edges = []
            return
        n = len(self.numeric)
        cols = np.concatenate([train.numeric[train.mask][:, :n], train.distance[train.mask][:, None]], 1)
        if not len(cols):
            self.ple_edges = [[] for _ in range(n + 1)]
            return
        qs = np.quantile(cols, np.linspace(0.0, 1.0, n_bins + 1), axis=0)  # (n_bins + 1, columns)
        uniq = (np.unique(qs[:, j]) for j in range(qs.shape[1]))
        self.ple_edges = [[round(float(x), 6) for x in e] if len(e) >= 2 else [] for e in uniq]

    def numeric_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """Standardised numeric features with NaN -> 0, followed by one missing flag per feature view."""
        cols = [c for c in self.numeric if c in df]
        raw = np.full((len(df), len(self.numeric)), np.nan)
        if cols:
            idx = [self.numeric.index(c) for c in cols]
            raw[:, idx] = df[cols].to_numpy(dtype=np.float64, na_value=np.nan)
        return self.standardise(raw)

    @cached_property
    def _numeric_groups(self) -> tuple[np.ndarray, list[list[int]]]:
        """(count-like column mask, the columns of each feature view in sorted view order)."""
        count_cols = np.array([any(t in c for t in _COUNT_LIKE) for c in self.numeric], dtype=bool)
        views = sorted({c.split("__")[0] for c in self.numeric})
        return count_cols, [[i for i, c in enumerate(self.numeric) if c.startswith(v + "__")] for v in views]

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        """``numeric_matrix`` of values already laid out as (rows, ``numeric``) floats, NaN = missing
        (the online path assembles them without a frame)."""
        count_cols, view_cols = self._numeric_groups
        if count_cols.any():
            raw = raw.copy()
            raw[:, count_cols] = np.log1p(np.clip(raw[:, count_cols], 0, None))
        z = (raw - self.mean) / self.std
        flags = [np.isnan(raw[:, cols]).all(1) for cols in view_cols]
        out = np.nan_to_num(z, nan=0.0).astype(np.float32)
        return np.concatenate([out, np.stack(flags, 1).astype(np.float32)], 1) if flags else out


POI_BINNED = {"price_band": "price", "rating_band": "rating", "delivery_band": "delivery_minutes"}


def time_slot_index(slots, cfg_features) -> np.ndarray:
    """Time-slot names -> 1.. in the order of ``features.time_slots`` (0 = unknown)."""
    index = {name: i + 1 for i, name in enumerate(cfg_features.time_slots)}
    return np.fromiter((index.get(str(v), 0) for v in slots), dtype=np.int64, count=len(slots))


def pois_category_index(pois: pd.DataFrame) -> np.ndarray:
    """Category of each PoI as an index into the sorted category vocabulary (same order as Feast's)."""
    cats = sorted(pois["category"].astype(str).unique())
    return pd.Categorical(pois["category"].astype(str), categories=cats).codes.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Encoded dataset


@dataclass
class PoiTable:
    """Per-PoI attributes indexed by the encoder's PoI vocabulary order plus unknown-PoI rows."""

    ids: list[str]
    index: dict[str, int]  # poi_id -> row (every PoI in the catalogue, known or not)
    vocab_id: np.ndarray  # (P,) embedding row (0 = unknown)
    category: np.ndarray
    price_band: np.ndarray
    rating_band: np.ndarray
    delivery_band: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    text_emb: np.ndarray | None  # (P, D) LLM embedding of the PoI text
    log_price: np.ndarray | None = None  # (P,) log average order value (history price profile)

    @classmethod
    def build(cls, pois: pd.DataFrame, enc: FeatureEncoder, cfg_features, poi_embeddings: pd.DataFrame | None):
        from components.features.engineering import _bands

        ids = pois["poi_id"].astype(str).tolist()
        lat, lon = geohash_decode(pois["geohash"])
        emb = None
        if poi_embeddings is not None and len(poi_embeddings):
            m = dict(zip(poi_embeddings["poi_id"].astype(str), poi_embeddings["embedding"]))
            dim = len(next(iter(m.values())))
            has = np.array([i in m for i in ids])
            emb = np.stack([np.asarray(m[i], np.float32) if h else np.zeros(dim, np.float32) for i, h in zip(ids, has)])
            if len(enc.text_mean) == dim:  # centred on the training PoIs' mean, renormalised; none stays zeros
                c = emb - np.asarray(enc.text_mean, np.float32)
                c /= np.clip(np.linalg.norm(c, axis=1, keepdims=True), 1e-6, None)
                emb = np.where(has[:, None], c, 0.0).astype(np.float32)
        rating = pd.to_numeric(pois["rating"], errors="coerce").to_numpy()
        edges = {k: enc.bin_edges.get(k, getattr(cfg_features, f"{k}_edges")) for k in POI_BINNED}
        price_raw = pd.to_numeric(pois["price"], errors="coerce")
        return cls(
            ids, {p: i for i, p in enumerate(ids)}, enc.pois.encode(ids), pois_category_index(pois),
            _bands(pd.to_numeric(pois["price"]).to_numpy(), edges["price_band"]) + 1,
            np.where(np.isnan(rating), 0, _bands(np.nan_to_num(rating), edges["rating_band"]) + 1),
            _bands(pd.to_numeric(pois["delivery_minutes"]).to_numpy(), edges["delivery_band"]) + 1,
            lat, lon, emb, np.log(np.clip(price_raw.fillna(price_raw.median()).to_numpy(), 1e-3, None))
            .astype(np.float32),
        )

    def rows(self, poi_ids) -> np.ndarray:
        get = self.index.get
        out = np.fromiter((get(str(p), -1) for p in poi_ids), dtype=np.int64, count=len(poi_ids))
        if (out < 0).any():
            bad = [p for p, o in zip(poi_ids, out) if o < 0][:5]
            raise KeyError(f"poi_id not in the PoI catalogue: {bad}")
        return out


@dataclass
class History:
    """All users' behaviours as flat arrays sorted by (user, time); ``user_start[u]:user_end[u]``."""

    ts: np.ndarray
    poi_row: np.ndarray  # row in PoiTable
    behavior: np.ndarray  # 1.. index into _BEHAVIOR_TYPES (+1)
    context: np.ndarray  # encoder context id (0 = unknown)
    user_start: dict[str, int]
    user_end: dict[str, int]
    slot: np.ndarray | None = None  # time slot of each behaviour, 1.. (0 = unknown)

    @classmethod
    def build(cls, behaviors: pd.DataFrame, poi_table: PoiTable, enc: FeatureEncoder, cfg: CTRConfig, cfg_features):
        from components.features.engineering import scene_features

        b = behaviors[behaviors["behavior"].isin(cfg.history_behaviors) & behaviors["poi_id"].notna()]
        b = b[b["poi_id"].astype(str).isin(poi_table.index)]
        b = b.assign(_ts=_ts_ns(b["ts"]), user_id=b["user_id"].astype(str)).sort_values(["user_id", "_ts"], kind="stable")
        sf = scene_features(b[SCENE_COLUMNS], cfg_features) if len(b) else None
        ctx = sf["context_id"].astype(str).to_numpy() if len(b) else []
        slot = time_slot_index(sf["time_slot"], cfg_features) if len(b) else np.zeros(0, np.int64)
        users = b["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(b) else np.array([], np.int64)
        ends = np.r_[starts[1:], len(b)] if len(b) else starts
        beh = {k: i + 1 for i, k in enumerate(_BEHAVIOR_TYPES)}
        return cls(b["_ts"].to_numpy(), poi_table.rows(b["poi_id"].astype(str).tolist()),
                   np.array([beh[x] for x in b["behavior"]], dtype=np.int64), enc.contexts.encode(ctx),
                   {users[s]: int(s) for s in starts}, {users[s]: int(e) for s, e in zip(starts, ends)}, slot)

    def slices(self, user_ids, ts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[start, end) of each (user, time): the user's behaviours strictly before ``ts``."""
        start = np.array([self.user_start.get(str(u), 0) for u in user_ids], dtype=np.int64)
        uend = np.array([self.user_end.get(str(u), 0) for u in user_ids], dtype=np.int64)
        end = start.copy()
        for i in range(len(start)):
            if uend[i] > start[i]:
                end[i] = start[i] + np.searchsorted(self.ts[start[i]:uend[i]], ts_ns[i], side="left")
        return start, end

    def without(self, drop: np.ndarray) -> "History":
        """The same log without the entries ``drop`` marks (a bool mask over them); users keep their order."""
        keep = ~drop
        kept = np.r_[0, np.cumsum(keep)]  # entry index -> its index among the kept entries
        arrays = {k: v[keep] for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        return replace(self, **arrays, user_start={u: int(kept[s]) for u, s in self.user_start.items()},
                       user_end={u: int(kept[e]) for u, e in self.user_end.items()})


@dataclass
class RequestData:
    """One split, encoded: per-request arrays (R, …) and per-candidate arrays (R, K) with a mask."""

    request_id: np.ndarray
    user_id: np.ndarray  # raw ids, for GAUC
    user: np.ndarray  # (R,) vocab index
    context: np.ndarray  # (R,)
    scene: np.ndarray  # (R, F) scene-feature vocab indices
    scene_value: np.ndarray  # (R, F) rows of the scene-embedding table (-1 = none)
    hist_start: np.ndarray
    hist_end: np.ndarray
    poi_row: np.ndarray  # (R, K)
    position: np.ndarray  # (R, K)
    numeric: np.ndarray  # (R, K, N)
    distance: np.ndarray  # (R, K) km, log1p-scaled
    click: np.ndarray  # (R, K)
    order: np.ndarray
    mask: np.ndarray  # (R, K) bool
    cold_user: np.ndarray  # (R,) bool
    cold_poi: np.ndarray  # (R, K) bool
    slot: np.ndarray | None = None  # (R,) time slot of the request, 1.. (0 = unknown)
    p_click: np.ndarray | None = None  # oracle, when known
    p_order: np.ndarray | None = None
    scene_full: np.ndarray | None = None  # (R, D) LLM embedding of the whole scene text (benchmark only)
    ts: np.ndarray | None = None  # (R,) request time, UTC ns

    def __len__(self) -> int:
        return len(self.user)

    def take(self, idx: np.ndarray) -> "RequestData":
        kw = {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}
        return RequestData(**kw)

    def history_lengths(self) -> np.ndarray:
        return self.hist_end - self.hist_start


def encode_requests(frame: pd.DataFrame, enc: FeatureEncoder, pois: PoiTable, history: History,
                    cold_after_ns: int | None, users: pd.DataFrame | None, cfg_features,
                    truth: pd.DataFrame | None = None, max_candidates: int | None = None,
                    scene_value_ids: list[str] | None = None) -> RequestData:
    """Group a training-set-like frame (one row per candidate; ``event_timestamp`` or ``ts``) by request.
    ``scene_value_ids`` are the rows of the scene-embedding table the batches will read."""
    df = with_scene_numeric(frame.rename(columns={"event_timestamp": "ts"}), cfg_features)
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    if truth is not None and len(truth):
        df = df.merge(truth[["request_id", "poi_id", "p_click", "p_order"]], on=["request_id", "poi_id"], how="left")
    if "position" not in df:
        df["position"] = 0
    for lab in LABELS:
        if lab not in df:
            df[lab] = 0
    df = df.sort_values(["ts", "request_id", "position"], kind="stable").reset_index(drop=True)
    req_codes, req_ids = pd.factorize(df["request_id"].astype(str), sort=False)
    R = len(req_ids)
    slot = df.groupby(req_codes).cumcount().to_numpy()
    K = int(slot.max()) + 1 if len(df) else 1
    if max_candidates:
        K = max(K, max_candidates)
    first = np.flatnonzero(np.r_[True, req_codes[1:] != req_codes[:-1]])
    head = df.iloc[first]

    def grid(values, dtype, fill=0):
        out = np.full((R, K) + np.shape(values)[1:], fill, dtype=dtype)
        out[req_codes, slot] = values
        return out

    ts_ns = _ts_ns(head["ts"])
    sv = scene_values(head[SCENE_COLUMNS], cfg_features)
    scene = np.stack([enc.scene[f].encode(sv[f].astype(str).tolist()) for f in SCENE_FEATURES], 1)
    sv_index = {v: i for i, v in enumerate(scene_value_ids or [])}
    scene_value = np.stack([np.array([sv_index.get(f"{f}={v}", -1) for v in sv[f].astype(str)], np.int64)
                            for f in SCENE_FEATURES], 1)
    if "context_id" not in head:
        from components.features.engineering import scene_features

        head = head.assign(context_id=scene_features(head[SCENE_COLUMNS], cfg_features)["context_id"].values)
    start, end = history.slices(head["user_id"].astype(str).tolist(), ts_ns)
    poi_rows = pois.rows(df["poi_id"].astype(str).tolist())
    lat, lon = geohash_decode(df["geohash"])
    dist = haversine_km(lat, lon, pois.lat[poi_rows], pois.lon[poi_rows])
    dist = np.log1p(np.nan_to_num(dist, nan=50.0)).astype(np.float32)
    cold_user = np.zeros(R, bool)
    cold_poi = np.zeros((R, K), bool)
    if cold_after_ns is not None:
        if users is not None:
            reg = dict(zip(users["user_id"].astype(str), _ts_ns(users["registered_at"])))
            cold_user = np.array([reg.get(str(u), 0) >= cold_after_ns for u in head["user_id"]], bool)
        if "opened_at" in df:
            cold_poi = grid(_ts_ns(df["opened_at"]) >= cold_after_ns, bool, False)
    out = RequestData(
        request_id=np.asarray(req_ids, dtype=object), user_id=head["user_id"].astype(str).to_numpy(),
        user=enc.users.encode(head["user_id"].astype(str).tolist()),
        context=enc.contexts.encode(head["context_id"].astype(str).tolist()),
        scene=scene, scene_value=scene_value, hist_start=start, hist_end=end,
        poi_row=grid(poi_rows, np.int64), position=grid(df["position"].to_numpy(np.int64), np.int64),
        numeric=grid(enc.numeric_matrix(df), np.float32), distance=grid(dist, np.float32),
        click=grid(df["click"].to_numpy(np.float32), np.float32), order=grid(df["order"].to_numpy(np.float32), np.float32),
        mask=grid(np.ones(len(df), bool), bool, False), cold_user=cold_user, cold_poi=cold_poi,
        slot=time_slot_index(sv["time_slot"], cfg_features), ts=ts_ns,
    )
    if "p_click" in df and df["p_click"].notna().all():
        out.p_click = grid(df["p_click"].to_numpy(np.float64), np.float64)
        out.p_order = grid(df["p_order"].to_numpy(np.float64), np.float64)
    return out


# ------------------------------------------------------------------------------------------------
# Batches


def batch_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                bucket_batches: int = 20) -> list[np.ndarray]:
    """Request indices in batches of similar history length. With ``rng``: shuffled, then sorted by
    length within chunks of ``bucket_batches`` batches, and the batches shuffled; without: in order."""
    n = len(lengths)
    if rng is None:
        idx = np.arange(n)
        return [idx[i:i + batch_size] for i in range(0, n, batch_size)]
    idx = rng.permutation(n)
    chunk = batch_size * bucket_batches
    out = []
    for a in range(0, n, chunk):
        part = idx[a:a + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(out)
    return out


def gather_history(history: History, pois: PoiTable, start: np.ndarray, end: np.ndarray, max_len: int) -> dict:
    """The last ``max_len`` behaviours of each slice as padded (R, L) arrays, L = longest in the batch.
    Positions are left-aligned, oldest first; ``hist_mask`` marks real behaviours."""
    length = np.minimum(end - start, max_len)
    L = max(int(length.max()) if len(length) else 0, 1)
    pos = np.arange(L)[None, :]
    valid = pos < length[:, None]
    idx = np.where(valid, (end - length)[:, None] + pos, 0)
    if len(history.ts) == 0:
        idx = np.zeros_like(idx)
        valid = np.zeros_like(valid)
        rows = np.zeros_like(idx)
        beh = ctx = slot = np.zeros_like(idx)
    else:
        rows = np.where(valid, history.poi_row[idx], 0)
        beh = np.where(valid, history.behavior[idx], 0)
        ctx = np.where(valid, history.context[idx], 0)
        slot = np.where(valid, history.slot[idx], 0) if history.slot is not None else np.zeros_like(idx)
    return {"hist_poi": rows, "hist_behavior": beh, "hist_context": ctx, "hist_slot": slot, "hist_mask": valid}


def make_batch(data: RequestData, idx: np.ndarray, history: History, pois: PoiTable, max_history: int,
               id_dropout: float = 0.0, rng: np.random.Generator | None = None,
               scene_table: np.ndarray | None = None,
               constants: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Numpy arrays of one batch of requests (history gathered, PoI attributes looked up). With a
    ``scene_table`` (and PoI text embeddings) the batch also carries the LLM embeddings LARR reads:
    per-feature scene vectors and the text vectors of candidates and history. ``constants``: arrays
    with one row per request of ``data`` (the model's ``request_constants``), taken for the batch."""
    d = data.take(idx)
    h = gather_history(history, pois, d.hist_start, d.hist_end, max_history)
    user = d.user.copy()
    cand_vocab = pois.vocab_id[d.poi_row]
    hist_vocab = pois.vocab_id[h["hist_poi"]]
    if id_dropout > 0 and rng is not None:
        user = np.where(rng.random(user.shape) < id_dropout, 0, user)
        cand_vocab = np.where(rng.random(cand_vocab.shape) < id_dropout, 0, cand_vocab)
    out = {
        "user": user, "context": d.context, "scene": d.scene, "scene_value": d.scene_value,
        "cand_poi": cand_vocab, "cand_row": d.poi_row, "cand_category": pois.category[d.poi_row],
        "cand_price": pois.price_band[d.poi_row], "cand_rating": pois.rating_band[d.poi_row],
        "cand_delivery": pois.delivery_band[d.poi_row],
        "position": d.position, "numeric": d.numeric, "distance": d.distance,
        "click": d.click, "order": d.order, "mask": d.mask,
        "hist_poi": hist_vocab, "hist_row": h["hist_poi"], "hist_category": pois.category[h["hist_poi"]],
        "hist_price": pois.price_band[h["hist_poi"]], "hist_rating": pois.rating_band[h["hist_poi"]],
        "hist_delivery": pois.delivery_band[h["hist_poi"]], "hist_behavior": h["hist_behavior"],
        "hist_context": h["hist_context"], "hist_mask": h["hist_mask"], "hist_slot": h["hist_slot"],
        "slot": d.slot if d.slot is not None else np.zeros(len(idx), np.int64),
    }
    # The batch's distinct history PoIs: the model embeds each once (CTRModel.history).
    item_row, hist_item = np.unique(h["hist_poi"], return_inverse=True)
    out.update(hist_item=hist_item.reshape(h["hist_poi"].shape), item_poi=pois.vocab_id[item_row],
               item_category=pois.category[item_row], item_price=pois.price_band[item_row],
               item_rating=pois.rating_band[item_row], item_delivery=pois.delivery_band[item_row])
    if pois.log_price is not None:
        out["cand_logp"] = pois.log_price[d.poi_row]
        out["hist_logp"] = pois.log_price[h["hist_poi"]]
    if scene_table is not None and pois.text_emb is not None:
        sv = d.scene_value
        out["scene_feats"] = scene_table[np.clip(sv, 0, None)] * (sv >= 0)[..., None]
        out["scene_mask"] = sv >= 0
        out["cand_text"] = pois.text_emb[d.poi_row]
        out["hist_text"] = pois.text_emb[h["hist_poi"]]
        out["item_text"] = pois.text_emb[item_row]
    if d.scene_full is not None:
        out["scene_full"] = d.scene_full
    for k, v in (constants or {}).items():
        out[k] = v[idx]
    return out


def to_tensors(batch: dict[str, np.ndarray], device=None) -> dict:
    """Numpy batch -> torch tensors (bool stays bool, ints int64, floats float32)."""
    import torch

    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype == torch.float64:
            t = t.float()
        out[k] = t.to(device) if device is not None else t
    return out


# ------------------------------------------------------------------------------------------------
# The whole stage's data


def scene_embedding_table(scene_embeddings: pd.DataFrame | None) -> tuple[list[str], np.ndarray | None]:
    """(scene_value_id of each row, (S, D) matrix) of the cached per-feature scene embeddings."""
    if scene_embeddings is None or not len(scene_embeddings):
        return [], None
    ids = scene_embeddings["scene_value_id"].astype(str).tolist()
    return ids, np.stack([np.asarray(e, np.float32) for e in scene_embeddings["embedding"]])


@dataclass
class CTRDataset:
    encoder: FeatureEncoder
    pois: PoiTable
    history: History
    train: RequestData
    valid: RequestData
    test: RequestData
    scene_table: np.ndarray | None  # (S, D) per-feature scene embeddings (RequestData.scene_value indexes rows)
    test_start_ns: int
    valid_start_ns: int


def build_dataset(params: Params, sources: CTRSources | None = None) -> CTRDataset:
    """Split, fit the encoder on the training period and encode the three splits."""
    cfg = params.ctr
    src = sources or load_sources(params)
    df = with_scene_numeric(src.training_set, params.features)
    req_ts = df.groupby("request_id")["event_timestamp"].min()
    valid_start, test_start = time_split(_ts_ns(req_ts), cfg)
    rts = _ts_ns(df["request_id"].map(req_ts))
    parts = {"train": df[rts < valid_start], "valid": df[(rts >= valid_start) & (rts < test_start)],
             "test": df[rts >= test_start]}
    for name, part in parts.items():
        if part.empty:
            raise ValueError(f"the {name} split is empty: too few requests ({len(req_ts)}) for the ctr split fractions")
    enc = FeatureEncoder.fit(parts["train"], src.behaviors, src.pois, valid_start, cfg.numeric_bins,
                            cfg.user_min_requests)
    if cfg.center_poi_text:
        enc.fit_text_mean(src.poi_embeddings)
    poi_table = PoiTable.build(src.pois, enc, params.features, src.poi_embeddings)
    opened = dict(zip(src.pois["poi_id"].astype(str), src.pois["opened_at"]))
    hist = History.build(src.behaviors, poi_table, enc, cfg, params.features)
    k = int(df.groupby("request_id").size().max())
    scene_ids, scene_table = scene_embedding_table(src.scene_embeddings)

    def encode(part):
        part = part.assign(opened_at=part["poi_id"].astype(str).map(opened))
        return encode_requests(part, enc, poi_table, hist, test_start, src.users, params.features, src.truth, k,
                               scene_ids)

    train = encode(parts["train"])
    enc.fit_ple(train, cfg.numeric_ple_bins)
    return CTRDataset(enc, poi_table, hist, train, encode(parts["valid"]), encode(parts["test"]),
                      scene_table, test_start, valid_start)


_PER_CANDIDATE = ("poi_row", "position", "numeric", "distance", "click", "order", "mask", "cold_poi", "p_click",
                  "p_order")


def concat_requests(a: RequestData, b: RequestData) -> RequestData:
    """Two encoded splits as one (train + valid for ``ctr.refit``); per-candidate arrays padded to
    the wider split's candidate slots (padding is masked out)."""
    k = max(a.poi_row.shape[1], b.poi_row.shape[1])

    def pad(name: str, x: np.ndarray) -> np.ndarray:
        if name not in _PER_CANDIDATE or x.shape[1] == k:
            return x
        width = [(0, 0), (0, k - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
        return np.pad(x, width)

    kw = {}
    for name, x in a.__dict__.items():
        y = getattr(b, name)
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            kw[name] = np.concatenate([pad(name, x), pad(name, y)])
        else:  # an optional array only one split has is dropped
            kw[name] = None if isinstance(x, np.ndarray) or isinstance(y, np.ndarray) else x
    return RequestData(**kw)


def with_valid_in_train(ds: "CTRDataset") -> "CTRDataset":
    """``ds`` whose training split also holds the validation requests (``ctr.refit``); the encoder,
    PoI table and history stay those fitted on the training period."""
    return replace(ds, train=concat_requests(ds.train, ds.valid))
