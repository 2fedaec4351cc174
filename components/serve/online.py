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

    def append(self, rows: pd.DataFrame) -> int:
        c = self._conn()
        c.execute("BEGIN")
        c.executemany("INSERT INTO behaviors VALUES (?, ?, ?, ?, ?, ?)",
                      rows[["user_id", *BEHAVIOR_FIELDS]].itertuples(index=False, name=None))
        c.execute("COMMIT")
        return len(rows)

    def recent(self, user_id: str, n: int, before_ns: int | None = None) -> pd.DataFrame:
        """The user's newest ``n`` behaviours strictly before ``before_ns``, oldest first."""
        sql = "SELECT ts, poi_id, behavior, context_id, time_slot FROM behaviors WHERE user_id = ?"
        args: list = [str(user_id)]
        if before_ns is not None:
            sql += " AND ts < ?"
            args.append(int(before_ns))
        rows = self._conn().execute(sql + " ORDER BY ts DESC LIMIT ?", [*args, int(n)]).fetchall()
        return pd.DataFrame(rows[::-1], columns=list(BEHAVIOR_FIELDS))


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
    store.clear()
    return store.append(behavior_rows(b, params))


def push_behaviors(params: Params, behaviors: pd.DataFrame, store=None) -> int:
    """The push path: validated behaviours (curated columns) appended to the behaviour store, visible
    to the next request. Returns the number of rows pushed."""
    from components.serve.schema import validate_behaviors

    clean = validate_behaviors(behaviors)
    clean = clean[clean["behavior"].isin(params.ctr.history_behaviors)]
    return (store or behavior_store(params)).append(behavior_rows(clean, params))


# ------------------------------------------------------------------------------------------------
# Feast online features


class OnlineFeatures:
    """Latest feature values per key from Feast's online store, named ``<view>__<feature>``."""

    def __init__(self, params: Params):
        from components.features.store import get_store

        self.store = get_store(params)
        views = {fv.name: fv for fv in self.store.list_feature_views()}
        self.refs: dict[str, list[str]] = {}  # join key -> feature refs
        for view, key in {**KEYS, KNOWLEDGE_VIEW: "user_id"}.items():
            if view in views:
                self.refs.setdefault(key, []).extend(f"{view}:{f.name}" for f in views[view].features)

    def read(self, key: str, values: list[str]) -> tuple[pd.DataFrame, float | None]:
        """(frame with ``key`` and its features, newest event time among them in ns or None)."""
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
