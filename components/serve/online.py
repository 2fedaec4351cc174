"""Request-time data: Feast online features and the users' recent behaviours, and the push path.

Features come from Feast's online store (SQLite by default, Redis with ``serve.online_store:
redis``), through the same feature views the training set is joined from (feature_repo/, built
from components/features/). Behaviours live in a behaviour store on the same backend: one ordered
list per user of (ts, poi, behaviour, context, time slot), the context and slot computed by the
same ``scene_features`` the offline tables use. ``push_behaviors`` appends to it (and is what a
streaming job calls); ``load_behaviors`` fills it from the curated behaviours (materialisation).
"""
from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Params
from components.ctr.data import SCENE_COLUMNS, _ts_ns
from components.features.engineering import KEYS, scene_features

KNOWLEDGE_VIEW = "user_knowledge"
BEHAVIOR_FIELDS = ("ts", "poi_id", "behavior", "context_id", "time_slot")


def behavior_rows(behaviors: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Curated-behaviour-like rows -> the stored form (ts ns, poi, behaviour, context_id, time_slot)."""
    if behaviors.empty:
        return pd.DataFrame(columns=["user_id", *BEHAVIOR_FIELDS])
    sf = scene_features(behaviors[SCENE_COLUMNS], params.features)
    return pd.DataFrame({"user_id": behaviors["user_id"].astype(str).to_numpy(), "ts": _ts_ns(behaviors["ts"]),
                         "poi_id": behaviors["poi_id"].astype(str).to_numpy(),
                         "behavior": behaviors["behavior"].astype(str).to_numpy(),
                         "context_id": sf["context_id"].astype(str).to_numpy(),
                         "time_slot": sf["time_slot"].astype(str).to_numpy()})


class SQLiteBehaviorStore:
    """Behaviours in one SQLite table indexed by (user, ts): the newest n of a user is an index range."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS behaviors (user_id TEXT, ts INTEGER, poi_id TEXT, behavior TEXT, "
                      "context_id TEXT, time_slot TEXT)")
            c.execute("CREATE INDEX IF NOT EXISTS behaviors_user_ts ON behaviors (user_id, ts)")

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.execute("PRAGMA journal_mode=WAL")
            self._local.conn = c
        return c

    def clear(self) -> None:
        self._conn().execute("DELETE FROM behaviors")

    def _write(self, rows: pd.DataFrame, replace: bool) -> int:
        c = self._conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                c.execute("DELETE FROM behaviors")
            c.executemany("INSERT INTO behaviors VALUES (?, ?, ?, ?, ?, ?)",
                          rows[["user_id", *BEHAVIOR_FIELDS]].itertuples(index=False, name=None))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")  # never leave this thread's connection inside a failed transaction
            raise
        return len(rows)

    def append(self, rows: pd.DataFrame) -> int:
        """Add ``rows`` in one transaction (all or none)."""
        return self._write(rows, replace=False)

    def replace(self, rows: pd.DataFrame) -> int:
        """Swap the whole store for ``rows`` in one transaction: a reader sees the old or the new log."""
        return self._write(rows, replace=True)

    def recent(self, user_id: str, n: int, before_ns: int | None = None) -> pd.DataFrame:
        """The user's newest ``n`` behaviours strictly before ``before_ns``, oldest first."""
        sql = "SELECT ts, poi_id, behavior, context_id, time_slot FROM behaviors WHERE user_id = ?"
        args: list = [str(user_id)]
        if before_ns is not None:
            sql += " AND ts < ?"
            args.append(int(before_ns))
        rows = self._conn().execute(sql + " ORDER BY ts DESC LIMIT ?", [*args, int(n)]).fetchall()
        return pd.DataFrame(rows[::-1], columns=list(BEHAVIOR_FIELDS))

    def newest_ts(self, user_id: str, before_ns: int | None = None) -> int | None:
        """Time (ns) of the user's newest behaviour strictly before ``before_ns``; None if none."""
        sql, args = "SELECT MAX(ts) FROM behaviors WHERE user_id = ?", [str(user_id)]
        if before_ns is not None:
            sql += " AND ts < ?"
            args.append(int(before_ns))
        got = self._conn().execute(sql, args).fetchone()[0]
        return None if got is None else int(got)


class RedisBehaviorStore:
    """Behaviours in one Redis sorted set per user (score = ts): the newest n is one ZRANGE."""

    def __init__(self, url: str, prefix: str = "scenerec:behaviors:"):
        import redis

        self.r = redis.Redis.from_url(url)
        self.prefix = prefix

    def clear(self) -> None:
        keys = list(self.r.scan_iter(f"{self.prefix}*"))
        if keys:
            self.r.delete(*keys)

    def replace(self, rows: pd.DataFrame) -> int:
        """Swap the store for ``rows`` user by user: each user's set is deleted and refilled in one
        MULTI, so a reader sees that user's old or new history, never none; users no longer in
        ``rows`` are dropped afterwards."""
        seq = self.r.incrby(f"{self.prefix}__seq__", len(rows)) - len(rows)
        keep, pipe, i, users = set(), self.r.pipeline(transaction=True), 0, 0
        frame = rows[["user_id", *BEHAVIOR_FIELDS]].reset_index(drop=True)
        for u, part in frame.groupby("user_id", sort=False):
            key = self.prefix + str(u)
            keep.add(key.encode())
            pipe.delete(key)
            pipe.zadd(key, {json.dumps([seq + i + j, int(ts), *rest]): int(ts)
                            for j, (ts, *rest) in enumerate(part[list(BEHAVIOR_FIELDS)].itertuples(index=False, name=None))})
            i, users = i + len(part), users + 1
            if users % 200 == 0:
                pipe.execute()
        pipe.execute()
        stale = [k for k in self.r.scan_iter(f"{self.prefix}*") if k not in keep and not k.endswith(b"__seq__")]
        if stale:
            self.r.delete(*stale)
        return len(rows)

    def append(self, rows: pd.DataFrame) -> int:
        pipe = self.r.pipeline(transaction=False)
        seq = self.r.incrby(f"{self.prefix}__seq__", len(rows)) - len(rows)
        for i, (u, ts, *rest) in enumerate(rows[["user_id", *BEHAVIOR_FIELDS]].itertuples(index=False, name=None)):
            # The sequence number keeps two identical behaviours apart (members of a set are unique).
            pipe.zadd(self.prefix + u, {json.dumps([seq + i, int(ts), *rest]): int(ts)})
            if i % 10000 == 9999:
                pipe.execute()
        pipe.execute()
        return len(rows)

    def recent(self, user_id: str, n: int, before_ns: int | None = None) -> pd.DataFrame:
        hi = f"({int(before_ns)}" if before_ns is not None else "+inf"
        got = self.r.zrange(self.prefix + str(user_id), hi, "-inf", desc=True, byscore=True, offset=0, num=int(n))
        rows = [json.loads(m)[1:] for m in got[::-1]]
        return pd.DataFrame(rows, columns=list(BEHAVIOR_FIELDS))

    def newest_ts(self, user_id: str, before_ns: int | None = None) -> int | None:
        """Time (ns) of the user's newest behaviour strictly before ``before_ns``; None if none."""
        hi = f"({int(before_ns)}" if before_ns is not None else "+inf"
        got = self.r.zrange(self.prefix + str(user_id), hi, "-inf", desc=True, byscore=True, offset=0, num=1)
        return int(json.loads(got[0])[1]) if got else None  # the member's exact ns (the score is a double)


def feast_redis_store(params: Params) -> dict:
    """Feast's ``online_store`` section for ``serve.redis_url`` (redis://host:port/db)."""
    from urllib.parse import urlparse

    u = urlparse(params.serve.redis_url)
    if u.scheme != "redis" or not u.hostname:
        raise ValueError(f"serve.redis_url: {params.serve.redis_url!r} is not redis://host:port/db")
    conn = f"{u.hostname}:{u.port or 6379},db={int(u.path.strip('/') or 0)}"
    if u.password:
        conn += f",password={u.password}"
    return {"type": "redis", "redis_type": "redis", "connection_string": conn}


def behavior_store(params: Params):
    """The behaviour store on the backend ``serve.online_store`` names."""
    from components.features.store import feast_dir

    if params.serve.online_store == "redis":
        return RedisBehaviorStore(params.serve.redis_url)
    return SQLiteBehaviorStore(feast_dir(params) / "behaviors.db")


def load_behaviors(params: Params, store=None) -> int:
    """Materialise the curated behaviours into the behaviour store (replacing what it held)."""
    store = store or behavior_store(params)
    path = params.path("curated_dir") / "behaviors.parquet"
    b = pd.read_parquet(path, columns=["user_id", "poi_id", "behavior"] + SCENE_COLUMNS)
    b = b[b["poi_id"].notna() & b["behavior"].isin(params.ctr.history_behaviors)]
    return store.replace(behavior_rows(b, params))  # atomic: the live service never reads an empty store


def push_behaviors(params: Params, behaviors: pd.DataFrame, store=None) -> int:
    """The push path: validated behaviours (curated columns) appended to the behaviour store, visible
    to the next request. Returns the number of rows pushed."""
    from components.serve.schema import validate_behaviors

    clean = validate_behaviors(behaviors)
    clean = clean[clean["behavior"].isin(params.ctr.history_behaviors)]
    return (store or behavior_store(params)).append(behavior_rows(clean, params))


# ------------------------------------------------------------------------------------------------
# Feast online features

_NUMBER_KINDS = {"int32_val", "int64_val", "float_val", "double_val", "bool_val"}


def _number(v) -> float:
    """A Feast ValueProto as the float the encoder reads (NaN for null and non-numbers: the encoder
    reads only the views' numeric features, as pandas' ``to_numpy(float64)`` of the SDK's values)."""
    kind = v.WhichOneof("val") if v is not None else None
    return float(getattr(v, kind)) if kind in _NUMBER_KINDS else np.nan


@dataclass
class PoiBlock:
    """Every catalogue PoI's online features as one matrix: rows in the catalogue's order (a PoI the
    store lacks is a row of NaN), ``columns`` named ``<view>__<feature>``, newest event time per row."""

    columns: list[str]
    values: np.ndarray  # (P, C) float64
    ts_ns: np.ndarray  # (P,) int64, -1 where the store has no row
    stamp: tuple


class OnlineFeatures:
    """Latest feature values per key from Feast's online store, named ``<view>__<feature>``.

    Read through the online store's own ``online_read`` (one call per feature view, what Feast's
    ``get_online_features`` calls underneath, without its per-call request/response building). PoI
    features change only when Feast materialises (the push path carries behaviours, not PoI
    features), so they are kept as one in-process ``PoiBlock`` per catalogue and rebuilt when the
    registry records a newer materialisation of a PoI view (``refresh``, polled by the service every
    ``serve.feature_poll_seconds``); user and context features are read per request.
    """

    def __init__(self, params: Params):
        from components.features.store import get_store

        self.store = get_store(params)
        self._local = threading.local()  # an online-store client per thread (SQLite connections)
        self._lock = threading.Lock()
        self._blocks: dict = {}  # catalogue key -> (PoI ids, PoiBlock)
        self._load_views()
        self.stamp = self._stamp()

    def _load_views(self) -> None:
        views = {fv.name: fv for fv in self.store.list_feature_views()}
        by_key: dict[str, list] = {}  # join key -> feature views
        for view, key in {**KEYS, KNOWLEDGE_VIEW: "user_id"}.items():
            if view in views:
                by_key.setdefault(key, []).append(views[view])
        self.refs = {key: [f"{fv.name}:{f.name}" for fv in fvs for f in fv.features] for key, fvs in by_key.items()}
        self.views, self.by_key = views, by_key  # replaced whole: a request holds a consistent set

    def _stamp(self) -> tuple:
        """The PoI views' materialisations as the registry records them (a run, or an apply, changes
        the view's interval list and its last-updated time)."""
        return tuple((fv.name, len(fv.materialization_intervals),
                      str(fv.materialization_intervals[-1][1]) if fv.materialization_intervals else "",
                      str(fv.last_updated_timestamp))
                     for fv in self.by_key.get("poi_id", []))

    def _online_store(self):
        s = getattr(self._local, "store", None)
        if s is None:
            from feast.infra.online_stores.helpers import get_online_store_from_config

            s = self._local.store = get_online_store_from_config(self.store.config.online_store)
        return s

    def read_view(self, fv, values: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """((len(values), features) float64 of one view, (len(values),) newest event time ns or -1)."""
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        key = fv.entity_columns[0].name
        keys = [EntityKey(join_keys=[key], entity_values=[Value(string_val=str(v))]) for v in values]
        names = [f.name for f in fv.features]
        out = np.full((len(values), len(names)), np.nan)
        ts = np.full(len(values), -1, np.int64)
        rows = []
        for a in range(0, len(keys), 10_000):  # SQLite's bound-variable limit
            rows += self._online_store().online_read(self.store.config, fv, keys[a:a + 10_000], list(names))  # Redis appends to it
        for i, (t, feats) in enumerate(rows):
            if feats:
                out[i] = [_number(feats.get(n)) for n in names]
                ts[i] = _as_ns(t)
        return out, ts

    def entity(self, key: str, value: str, views=None) -> tuple[dict[str, float], int | None]:
        """({``<view>__<feature>``: value} of one entity over the views keyed by ``key`` (those named
        in ``views``, default all), newest event time among them in ns or None)."""
        out, newest = {}, None
        for fv in self.by_key.get(key, []):
            if views is not None and fv.name not in views:
                continue
            vals, ts = self.read_view(fv, [value])
            out.update(zip((f"{fv.name}__{f.name}" for f in fv.features), vals[0].tolist()))
            if ts[0] >= 0:
                newest = int(ts[0]) if newest is None else max(newest, int(ts[0]))
        return out, newest

    def _build_block(self, ids: list[str], stamp: tuple) -> PoiBlock:
        cols, parts, ts = [], [], np.full(len(ids), -1, np.int64)
        for fv in self.by_key.get("poi_id", []):
            vals, t = self.read_view(fv, ids)
            cols += [f"{fv.name}__{f.name}" for f in fv.features]
            parts.append(vals)
            ts = np.maximum(ts, t)
        values = np.concatenate(parts, 1) if parts else np.zeros((len(ids), 0))
        return PoiBlock(cols, values, ts, stamp)

    def poi_block(self, key, ids: list[str]) -> PoiBlock:
        """The PoI block of the catalogue ``ids`` (``key`` names it: the model version); built on
        first use, rebuilt by ``refresh`` after a materialisation. The newest two keys are kept (the
        model being served and, during a hot swap, the one before it)."""
        got = self._blocks.get(key)
        if got is None or got[1].stamp != self.stamp:
            with self._lock:
                got = self._blocks.get(key)
                if got is None or got[1].stamp != self.stamp:
                    got = (ids, self._build_block(ids, self.stamp))
                    self._blocks = {**dict(list(self._blocks.items())[-1:]), key: got}
        return got[1]

    def refresh(self) -> bool:
        """Re-read the registry; when a PoI view was materialised since, rebuild the blocks in use and
        swap them in (requests keep the block they hold). True when the blocks changed."""
        self.store.refresh_registry()
        with self._lock:
            self._load_views()
            stamp = self._stamp()
            if stamp == self.stamp:
                return False
            self._blocks = {k: (ids, self._build_block(ids, stamp)) for k, (ids, _) in self._blocks.items()}
            self.stamp = stamp
        return True

    def read(self, key: str, values: list[str]) -> tuple[pd.DataFrame, float | None]:
        """Feast's SDK read (``get_online_features``): (frame with ``key`` and its features, newest
        event time among them in ns or None). The reference the served reads are checked against."""
        refs = self.refs.get(key, [])
        if not refs:
            return pd.DataFrame({key: values}), None
        resp = self.store.get_online_features(features=refs, entity_rows=[{key: str(v)} for v in values],
                                              full_feature_names=True)
        d = resp.to_dict(include_event_timestamps=True)
        cols = {r.replace(":", "__"): d[r.replace(":", "__")] for r in refs}
        newest = None
        for k, v in d.items():
            if k.endswith("__ts"):
                ts = [x for x in v if x is not None]
                if ts:
                    t = max(_as_ns(x) for x in ts)
                    newest = t if newest is None else max(newest, t)
        return pd.DataFrame({key: [str(v) for v in values], **cols}), newest


def _as_ns(x) -> int:
    if isinstance(x, (int, np.integer)):
        return int(x) * 1_000_000_000  # Feast reports epoch seconds
    if isinstance(x, datetime):
        x = x if x.tzinfo else x.replace(tzinfo=timezone.utc)
        return int(x.timestamp() * 1e9)
    return int(pd.Timestamp(x).value)
