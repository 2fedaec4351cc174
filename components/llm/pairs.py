"""Positive pairs for contrastive fine-tuning (LARR stage 2, METHODS.md §1), mined from the behaviour log.

LARR trains on three kinds of positive pairs and leaves the mining rule to us. Ours, each
point-in-time (a text only describes behaviour that happened before the evidence that makes the
pair positive) and seeded:

* ``user_user`` — **two consecutive halves of one user's history.** A cut is drawn at random
  among the user's session starts (a behaviour at least ``history_gap_minutes`` after the previous
  one, with at least ``min_history`` behaviours on each side), so no session is split in two; the
  anchor is the user text of the ``history_window`` behaviours before the cut, the positive the
  text of the ``history_window`` behaviours from the cut on, written **without the profile**
  (age / gender / home): with it, both texts opened with the same verbatim header and matching it
  solved the task without reading a single behaviour. ``anchor_id == positive_id`` (the same user).
  Held out **by user**: a ``heldout_fraction`` of the eligible users never appear in training.
* ``poi_poi`` — **PoIs engaged with by the same user in the same scene context.** A basket is the
  set of PoIs a user clicked / favourited / ordered (``poi_behaviors``) in one context (the
  ``poi_context`` scene columns, e.g. office × lunch). Two PoIs co-occur when they share a basket;
  the score ``c_ij / (n_i n_j) ** popularity_exponent`` (``n_i``: baskets holding i) corrects for
  popularity, so two hits everyone orders do not pair merely for being hits. Pairs with
  ``c_ij >= min_cooccurrence`` and j among the ``poi_topk`` best for i are kept; anchor ≠ positive.
  Held out **by time**: training pairs are counted on behaviours before the cut-off (the
  ``1 - heldout_fraction`` quantile of the log's time), held-out pairs on behaviours after it, and a
  pair already mined in training is never held out (nor its reverse).
* ``user_poi`` — **a user's history up to t and the PoI they order at t.** For a ``target_behaviors``
  event at t the anchor is the user text of the last ``history_window`` behaviours before
  ``t - history_gap_minutes`` (the gap drops the session that led to the order, so "the PoI I just
  clicked" is no shortcut), at least ``min_history`` of them; the positive is the PoI's text.
  Held out **by time**: orders before the cut-off train, orders after it are held out.

Pairs are spread over their anchors (round-robin over a seeded shuffle) before the caps
``pairs_per_strategy`` (train) and ``heldout_pairs`` apply, so heavy users and hit PoIs do not fill
the quota.
Shortcuts left in the data are measured, not hidden: :func:`identifying_spans` lists the spans of a
text that name an entity (the profile header, each ``<name>``), and ``shares_identifying_span``
marks the pairs whose two texts share one (a user who orders from the same PoI in both halves, or
whose history already names the PoI they order next). The evaluation reports recall on the pairs
without such a span beside the overall figure (contrastive.evaluate).

Every frame has ``anchor_text, positive_text, anchor_id, positive_id, anchor_ts, positive_ts``
(``anchor_ts``: the last behaviour the anchor text shows; ``positive_ts``: the first evidence of the
positive; NaT for PoI–PoI pairs, which rest on counts) and is written to
``llm_dir/pairs/{strategy}_{train,heldout}.parquet`` with a ``manifest.json`` of what produced them.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.atomic import file_digest
from components.config import ContrastiveConfig, FeaturesConfig, Params
from components.llm.text import poi_text, user_text

STRATEGIES = ("user_user", "poi_poi", "user_poi")
SPLITS = ("train", "heldout")
PAIR_COLUMNS = ["anchor_text", "positive_text", "anchor_id", "positive_id", "anchor_ts", "positive_ts"]
_BEHAVIOR_COLUMNS = ["ts", "user_id", "poi_id", "behavior", "query", "geohash", "location_type", "weather",
                     "temperature_c", "is_holiday"]
_MINING_RULES = 2  # 2: user-user positives without the profile header
_SEED_OFFSET = {"user_user": 11, "poi_poi": 23, "user_poi": 37}


@dataclass
class Logs:
    """The curated tables a miner reads, indexed once: behaviours sorted by (user, ts)."""

    behaviors: pd.DataFrame  # sorted by user_id, ts; RangeIndex
    users: pd.DataFrame  # indexed by user_id
    pois: pd.DataFrame  # indexed by poi_id
    user_start: dict[str, int]  # first row of each user in ``behaviors``
    user_end: dict[str, int]  # one past the last row
    ts_ns: np.ndarray  # int64 UTC nanoseconds of ``behaviors.ts``
    cutoff: pd.Timestamp  # behaviours at or after it are the held-out period

    @classmethod
    def build(cls, behaviors: pd.DataFrame, users: pd.DataFrame, pois: pd.DataFrame,
              heldout_fraction: float) -> "Logs":
        b = behaviors[[c for c in _BEHAVIOR_COLUMNS if c in behaviors.columns]]
        b = b[b["user_id"].isin(users["user_id"])]
        b = b.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
        if b.empty:
            raise ValueError("no behaviours of known users: the curated behaviors table is empty or its "
                             "user_ids are missing from users (run `scenerec ingest` first)")
        codes, _ = pd.factorize(b["user_id"], sort=False)
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True])
        starts, ends = bounds[:-1], bounds[1:]
        users_at = b["user_id"].to_numpy()[starts]
        # Nothing is held out by time when the fraction is 0: the cut-off lies after the last behaviour.
        cutoff = (b["ts"].quantile(1.0 - heldout_fraction) if heldout_fraction > 0
                  else b["ts"].max() + pd.Timedelta(1, "s"))
        return cls(
            behaviors=b,
            users=users.drop_duplicates("user_id").set_index("user_id"),
            pois=pois.drop_duplicates("poi_id").set_index("poi_id"),
            user_start=dict(zip(users_at, starts.tolist())),
            user_end=dict(zip(users_at, ends.tolist())),
            ts_ns=_ns(b["ts"]),
            cutoff=cutoff,
        )

    def user_text(self, user_id: str, lo: int, hi: int, window: int, features: FeaturesConfig,
                  profile: bool = True) -> str:
        """User text of behaviour rows [lo, hi) of ``behaviors`` (only the last ``window`` are written)."""
        return user_text(self.users.loc[user_id], self.behaviors.iloc[max(lo, hi - window):hi], self.pois,
                         max_events=window, cfg=features, profile=profile)

    def poi_text(self, poi_id: str) -> str:
        return poi_text(self.pois.loc[poi_id])


def _ns(ts: pd.Series) -> np.ndarray:
    """UTC nanoseconds of a timestamp column (tz-aware ``to_numpy`` would give slow Python objects)."""
    ts = pd.to_datetime(ts, utc=True)
    return ts.dt.tz_localize(None).astype("datetime64[ns]").to_numpy().view("int64")


_PROFILE = re.compile(r"<age> .*? <gender> .*? <home> \S+")
_NAME = re.compile(r"<name> (.*?) (?=<)")


def identifying_spans(text: str) -> set[str]:
    """Spans of a pair text that name an entity: the user profile header and every ``<name>`` value."""
    return {m.group(0) for m in _PROFILE.finditer(text)} | {"<name> " + m.group(1) for m in _NAME.finditer(text)}


def shares_identifying_span(anchor_text: str, positive_text: str) -> bool:
    """True when the two texts of a pair share a span that names an entity (a shortcut to the match)."""
    return bool(identifying_spans(anchor_text) & identifying_spans(positive_text))


def _utc(ns: int) -> pd.Timestamp:
    return pd.Timestamp(int(ns), unit="ns", tz="UTC")


def _spread(df: pd.DataFrame, by: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """At most ``n`` rows, round-robin over ``by`` after a seeded shuffle (each key gets its turn)."""
    if len(df) <= n:
        return df.sample(frac=1.0, random_state=rng.integers(2**31)).reset_index(drop=True)
    df = df.sample(frac=1.0, random_state=rng.integers(2**31))
    turn = df.groupby(by, sort=False).cumcount().to_numpy()
    return df.iloc[np.argsort(turn, kind="stable")[:n]].reset_index(drop=True)


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=PAIR_COLUMNS)
    for c in ("anchor_ts", "positive_ts"):
        df[c] = pd.to_datetime(df[c], utc=True)
    return df


# ------------------------------------------------------------------------------------------------
# The three miners: pure functions of the indexed logs; each returns (train, heldout).


def mine_user_user(logs: Logs, cfg: ContrastiveConfig, features: FeaturesConfig, seed: int
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two consecutive windows of one user's history (split by user; see the module docstring)."""
    rng = np.random.default_rng(seed + _SEED_OFFSET["user_user"])
    ts = logs.ts_ns
    gap = max(1, int(cfg.history_gap_minutes * 60e9))
    cuts = []
    for uid, lo in logs.user_start.items():
        hi = logs.user_end[uid]
        # Cut before index c: both sides hold >= min_history events and c starts a new session
        # (>= history_gap_minutes after the previous behaviour), so no session is split in two.
        c = np.arange(lo + cfg.min_history, hi - cfg.min_history + 1)
        c = c[ts[c] - ts[c - 1] >= gap] if len(c) else c
        if len(c):
            cuts.append((uid, lo, int(rng.choice(c)), hi))
    if not cuts:
        return _frame([]), _frame([])
    order = rng.permutation(len(cuts))
    n_held = int(round(cfg.heldout_fraction * len(cuts)))
    held = {cuts[i][0] for i in order[:n_held]}
    out = {}
    for split, keep, cap in (("train", lambda u: u not in held, cfg.pairs_per_strategy),
                             ("heldout", lambda u: u in held, cfg.heldout_pairs)):
        chosen = [cuts[i] for i in order if keep(cuts[i][0])][:cap]
        rows = []
        for uid, lo, c, hi in chosen:
            end = min(hi, c + cfg.history_window)
            rows.append({
                "anchor_text": logs.user_text(uid, lo, c, cfg.history_window, features),
                "positive_text": logs.user_text(uid, c, end, cfg.history_window, features, profile=False),
                "anchor_id": uid, "positive_id": uid,
                "anchor_ts": _utc(ts[c - 1]), "positive_ts": _utc(ts[c]),
            })
        out[split] = _frame(rows)
    return out["train"], out["heldout"]


def cooccurrence_pairs(events: pd.DataFrame, cfg: ContrastiveConfig) -> pd.DataFrame:
    """Scored PoI pairs (anchor_id, positive_id, cooccurrence, score) of one period's engagements.

    ``events``: rows with user_id, poi_id and the ``poi_context`` columns. Keeps, for each anchor,
    its ``poi_topk`` best partners with at least ``min_cooccurrence`` shared baskets.
    """
    from scipy import sparse

    cols = ["anchor_id", "positive_id", "cooccurrence", "score"]
    if events.empty:
        return pd.DataFrame(columns=cols)
    basket = pd.factorize(pd.MultiIndex.from_frame(events[["user_id", *cfg.poi_context]].astype(str)))[0]
    poi_codes, poi_ids = pd.factorize(events["poi_id"])
    x = sparse.csr_matrix((np.ones(len(basket), dtype=np.float32), (basket, poi_codes)),
                          shape=(basket.max() + 1, len(poi_ids)))
    x.data[:] = 1.0  # a basket holds a PoI once, however many times it was clicked (duplicates were summed)
    c = (x.T @ x).tocoo()
    n = np.asarray(x.sum(axis=0)).ravel()
    keep = (c.row != c.col) & (c.data >= cfg.min_cooccurrence)
    i, j, cij = c.row[keep], c.col[keep], c.data[keep]
    score = cij / (n[i] * n[j]) ** cfg.popularity_exponent
    df = pd.DataFrame({"anchor_id": poi_ids[i], "positive_id": poi_ids[j], "cooccurrence": cij.astype(int),
                       "score": score})
    df = df.sort_values(["anchor_id", "score", "positive_id"], ascending=[True, False, True], kind="stable")
    return df.groupby("anchor_id", sort=False).head(cfg.poi_topk).reset_index(drop=True)[cols]


def mine_poi_poi(logs: Logs, cfg: ContrastiveConfig, features: FeaturesConfig, seed: int
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """PoIs co-engaged by the same user in the same context, popularity-corrected (split by time)."""
    from components.features.engineering import scene_features

    rng = np.random.default_rng(seed + _SEED_OFFSET["poi_poi"])
    b = logs.behaviors
    b = b[b["behavior"].isin(cfg.poi_behaviors) & b["poi_id"].isin(logs.pois.index)]
    ctx = scene_features(b, features)[["ts", "user_id", "poi_id", *cfg.poi_context]]
    train = cooccurrence_pairs(ctx[ctx["ts"] < logs.cutoff], cfg)
    held = cooccurrence_pairs(ctx[ctx["ts"] >= logs.cutoff], cfg)
    seen = set(zip(train["anchor_id"], train["positive_id"]))
    held = held[[(a, p) not in seen and (p, a) not in seen for a, p in zip(held["anchor_id"], held["positive_id"])]]
    out = []
    for pairs, cap in ((train, cfg.pairs_per_strategy), (held, cfg.heldout_pairs)):
        pairs = _spread(pairs, "anchor_id", cap, rng)
        rows = [{"anchor_text": logs.poi_text(a), "positive_text": logs.poi_text(p), "anchor_id": a,
                 "positive_id": p, "anchor_ts": pd.NaT, "positive_ts": pd.NaT}
                for a, p in zip(pairs["anchor_id"], pairs["positive_id"])]
        out.append(_frame(rows).assign(cooccurrence=pairs["cooccurrence"].to_numpy(dtype=int)))
    return out[0], out[1]


def mine_user_poi(logs: Logs, cfg: ContrastiveConfig, features: FeaturesConfig, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A user's history before t and the PoI they order at t (split by time)."""
    rng = np.random.default_rng(seed + _SEED_OFFSET["user_poi"])
    b = logs.behaviors
    tgt = b[b["behavior"].isin(cfg.target_behaviors) & b["poi_id"].isin(logs.pois.index)]
    tgt = tgt.drop_duplicates(["user_id", "poi_id", "ts"])
    if tgt.empty:
        return _frame([]), _frame([])
    ts = logs.ts_ns
    lo = tgt["user_id"].map(logs.user_start).to_numpy()
    hi = tgt["user_id"].map(logs.user_end).to_numpy()
    horizon = _ns(tgt["ts"]) - int(cfg.history_gap_minutes * 60e9)
    # End of each target's history: the first row of the user at or after t - gap (rows are sorted by user, ts).
    end = np.array([lo_ + np.searchsorted(ts[lo_:hi_], h, side="left") for lo_, hi_, h in zip(lo, hi, horizon)],
                   dtype=int)
    tgt = tgt.assign(hist_lo=lo, hist_end=end)
    tgt = tgt[tgt["hist_end"] - tgt["hist_lo"] >= cfg.min_history]
    out = []
    for part, cap in ((tgt[tgt["ts"] < logs.cutoff], cfg.pairs_per_strategy),
                      (tgt[tgt["ts"] >= logs.cutoff], cfg.heldout_pairs)):
        part = _spread(part, "user_id", cap, rng)
        rows = [{"anchor_text": logs.user_text(r.user_id, r.hist_lo, r.hist_end, cfg.history_window, features),
                 "positive_text": logs.poi_text(r.poi_id), "anchor_id": r.user_id, "positive_id": r.poi_id,
                 "anchor_ts": _utc(ts[r.hist_end - 1]), "positive_ts": r.ts}
                for r in part.itertuples(index=False)]
        out.append(_frame(rows))
    return out[0], out[1]


MINERS = {"user_user": mine_user_user, "poi_poi": mine_poi_poi, "user_poi": mine_user_poi}


# ------------------------------------------------------------------------------------------------
# Side effects: read the curated tables, write and reload the pair files.


def active_strategies(cfg: ContrastiveConfig) -> list[str]:
    """Strategies with a positive loss weight (the others are neither mined nor trained)."""
    return [s for s in STRATEGIES if cfg.weights.get(s, 0.0) > 0]


def pairs_dir(params: Params) -> Path:
    return params.path("llm_dir") / "pairs"




def _fingerprint(params: Params) -> dict:
    """What the pairs depend on: the mining knobs, the seed, the scene config and the curated files."""
    cfg = params.contrastive
    knobs = cfg.model_dump(include={
        "pairs_per_strategy", "heldout_pairs", "heldout_fraction", "history_window", "min_history",
        "history_gap_minutes", "target_behaviors", "poi_behaviors", "poi_context", "min_cooccurrence",
        "popularity_exponent", "poi_topk"})
    files = {}
    for name in ("pois", "users", "behaviors"):
        # Content, not mtime: a `dvc checkout` rewrites the files without changing them.
        p = params.path("curated_dir") / f"{name}.parquet"
        files[name] = file_digest(p) if p.exists() else None
    # _MINING_RULES: a change to the rules themselves (not a knob) must also re-mine stale pairs.
    blob = json.dumps([_MINING_RULES, knobs, params.seed, params.features.model_dump(mode="json"), files,
                       active_strategies(cfg)], sort_keys=True, default=str)
    return {"knobs": knobs, "seed": params.seed, "strategies": active_strategies(cfg),
            "hash": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def read_curated(params: Params) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(behaviors, users, pois) from ``paths.curated_dir``, with a clear error when absent."""
    cur = params.path("curated_dir")
    missing = [n for n in ("behaviors", "users", "pois") if not (cur / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{cur}: missing curated tables {missing} (run `scenerec ingest` first)")
    b = pd.read_parquet(cur / "behaviors.parquet", columns=_BEHAVIOR_COLUMNS)
    return b, pd.read_parquet(cur / "users.parquet"), pd.read_parquet(cur / "pois.parquet")


def mine_pairs(params: Params, write: bool = True) -> dict[str, pd.DataFrame]:
    """Mine every active strategy from the curated data; keys ``{strategy}_{train|heldout}``.

    Written to ``llm_dir/pairs/{key}.parquet`` (plus ``manifest.json``) unless ``write`` is False.
    """
    cfg = params.contrastive
    behaviors, users, pois = read_curated(params)
    logs = Logs.build(behaviors, users, pois, cfg.heldout_fraction)
    out = {}
    for strategy in active_strategies(cfg):
        train, held = MINERS[strategy](logs, cfg, params.features, params.seed)
        out[f"{strategy}_train"], out[f"{strategy}_heldout"] = train, held
    if write:
        d = pairs_dir(params)
        d.mkdir(parents=True, exist_ok=True)
        for key, df in out.items():
            df.to_parquet(d / f"{key}.parquet", index=False)
        manifest = {**_fingerprint(params), "cutoff": str(logs.cutoff), "rows": {k: len(v) for k, v in out.items()}}
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return out


def load_pairs(params: Params, remine: bool = False) -> dict[str, pd.DataFrame]:
    """The pairs on disk when they match the current data and knobs, else freshly mined ones."""
    d = pairs_dir(params)
    manifest = d / "manifest.json"
    if not remine and manifest.exists():
        saved = json.loads(manifest.read_text())
        keys = [f"{s}_{sp}" for s in active_strategies(params.contrastive) for sp in SPLITS]
        if saved.get("hash") == _fingerprint(params)["hash"] and all((d / f"{k}.parquet").exists() for k in keys):
            return {k: pd.read_parquet(d / f"{k}.parquet") for k in keys}
    return mine_pairs(params)


def by_strategy(pairs: dict[str, pd.DataFrame], split: str) -> dict[str, pd.DataFrame]:
    """``{strategy: frame}`` of one split from a ``mine_pairs`` result (empty frames dropped)."""
    out = {}
    for s in STRATEGIES:
        df = pairs.get(f"{s}_{split}")
        if df is not None and len(df):
            out[s] = df
    return out
