"""Score one validated request with a registered CTR model and request-time data.

The model, its encoder, catalogue (plus the cold-start row) and scene table come from the
registered artefact (``ServedModel``, built once per version); the features come from Feast's
online store and the history from the behaviour store at request time (components/serve/online.py).
A request is assembled from arrays into the ``RequestData`` that ``encode_requests`` makes of its
frame (``assemble_request``; no per-request DataFrame or merge), then ``CTRScorer.score`` as in
evaluation turns it into scores; CoFARS models run the served path of components/serve/cofars.py
instead of rebuilding the graph.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache, lru_cache

import numpy as np
import pandas as pd

from components.ctr.data import History, PoiTable, RequestData, _BEHAVIOR_TYPES, time_slot_index
from components.serve.schema import ScoringRequest

_BEHAVIOR_INDEX = {k: i + 1 for i, k in enumerate(_BEHAVIOR_TYPES)}


@dataclass
class ServedModel:
    """One registered model version, ready to score: scorer, catalogue with cold row, scene table."""

    name: str
    version: str
    scorer: object  # components.ctr.serving.CTRScorer
    poi_table: PoiTable
    scene_ids: list
    scene_table: np.ndarray | None
    loaded_at: float
    items: tuple = ()  # per served CoFARS network (served_nets): every catalogue PoI's item embedding (item_table)

    @classmethod
    def load(cls, name: str, version: str, tracking_uri: str | None = None) -> "ServedModel":
        """Load ``models:/<name>/<version>`` from the registry (the pyfunc's artefact, unwrapped)."""
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        py = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
        poi_table, _, (ids, table) = py._tables_once()
        if table is not None:
            py.scorer.model.use_scene_table(table)
            py.scorer._cached_table = table
        from components.serve.cofars import item_table

        items = tuple(item_table(net, poi_table) for net in served_nets(py.scorer.model))
        return cls(name, str(version), py.scorer, poi_table, ids, table, time.time(), items)


def served_nets(model) -> list:
    """The CoFARS networks that score from a served per-user state: the model itself, or each CoFARS
    member of an ensemble or a seed bag (components/ctr/ensemble.py); empty when there is none."""
    if model.sequence == "cofars":
        return [model]
    return [m for m in getattr(model, "members", {}).values() if getattr(m, "sequence", None) == "cofars"]


def history_from_rows(rows: pd.DataFrame, user_id: str, poi_table: PoiTable, scorer) -> History:
    """A one-user History from behaviour-store rows (oldest first); unknown PoIs are left out, as
    ``History.build`` leaves them out offline."""
    rows = rows[rows["poi_id"].isin(poi_table.index)] if len(rows) else rows
    n = len(rows)
    return History(
        ts=rows["ts"].to_numpy(np.int64) if n else np.zeros(0, np.int64),
        poi_row=poi_table.rows(rows["poi_id"].tolist()) if n else np.zeros(0, np.int64),
        behavior=np.fromiter((_BEHAVIOR_INDEX[b] for b in rows["behavior"]), np.int64, count=n) if n
        else np.zeros(0, np.int64),
        context=scorer.encoder.contexts.encode(rows["context_id"].tolist()) if n else np.zeros(0, np.int64),
        user_start={str(user_id): 0}, user_end={str(user_id): n},
        slot=time_slot_index(rows["time_slot"].tolist(), scorer.features) if n else np.zeros(0, np.int64),
    )


def request_scene(req, features) -> dict:
    """The request's derived scene (what ``scene_features``, ``scene_values`` and ``with_scene_numeric``
    give its one row) from the engineering module's own helpers, without a frame:
    ``context_id``, ``time_slot``, ``values`` (LARR's scene values) and ``numeric`` (``scene__*``)."""
    from components.features.engineering import _NS_PER_DAY, _NS_PER_HOUR, _bands, _local_ns, _time_slot_idx
    from components.llm.text import temperature_words

    ts_ns = np.array([pd.Timestamp(req.ts).value], np.int64)
    local = int(_local_ns(ts_ns, features.timezone)[0])
    hour = int((local // _NS_PER_HOUR) % 24)
    dow = int((local // _NS_PER_DAY + 3) % 7)  # 1970-01-01 was a Thursday
    weekend = int(dow >= 5)
    slot = list(features.time_slots)[int(_time_slot_idx(np.array([hour]), features)[0])]
    band = int(_bands(np.array([req.temperature_c]), features.temperature_band_edges)[0])
    holiday = bool(req.is_holiday)
    values = {"location_type": str(req.location_type), "weather": str(req.weather),
              "temperature_band": temperature_words(band, features.temperature_band_edges), "time_slot": slot,
              "day_type": "holiday" if holiday else ("weekend" if weekend else "weekday"),
              "area": str(req.geohash)[:5]}
    numeric = {"scene__temperature_c": float(req.temperature_c), "scene__hour": float(hour),
               "scene__day_of_week": float(dow), "scene__is_weekend": float(weekend),
               "scene__is_holiday": float(holiday)}
    return {"ts_ns": int(ts_ns[0]), "context_id": f"{req.location_type}|{slot}|{req.weather}", "time_slot": slot,
            "values": values, "numeric": numeric}


@lru_cache(maxsize=65_536)
def _geohash_centre(code: str) -> tuple[np.ndarray, np.ndarray]:
    from components.ctr.data import geohash_decode

    return geohash_decode([code])


@dataclass
class RequestLayout:
    """Where a model's numeric inputs come from over one PoI block. The encoder's output
    (standardised values, then one missing flag per view) is column-wise and a view is keyed by one
    entity, so the PoI columns are standardised once per block (``poi_std``); a request standardises
    one row of the ``other`` columns (user, context and scene values, by name) and takes the rest
    from ``poi_std``."""

    stamp: tuple
    other: list[tuple[int, str]]  # (encoder column, name) of the columns the block does not hold
    scene_index: dict[str, int]
    views: frozenset  # the feature views the model reads (the others are not read per request)
    poi_std: np.ndarray  # (P, outputs) float32: every catalogue row with only its PoI values set
    poi_cols: np.ndarray  # (outputs,) bool: the output columns that come from poi_std


def request_layout(model: ServedModel, block) -> RequestLayout:
    """The layout of ``model``'s numeric inputs over ``block`` (cached on the model per block stamp)."""
    got = model.__dict__.get("_layout")
    if got is not None and got.stamp == (block.stamp, tuple(block.columns)):
        return got
    enc = model.scorer.encoder
    col = {c: i for i, c in enumerate(block.columns)}
    in_block = np.array([c in col for c in enc.numeric], bool)
    raw = np.full((len(block.values), len(enc.numeric)), np.nan)
    raw[:, in_block] = block.values[:, [col[c] for c in enc.numeric if c in col]]
    _, view_cols = enc._numeric_groups
    layout = RequestLayout((block.stamp, tuple(block.columns)),
                           [(j, c) for j, c in enumerate(enc.numeric) if c not in col],
                           {v: i for i, v in enumerate(model.scene_ids or [])},
                           frozenset(c.split("__")[0] for c in enc.numeric), enc.standardise(raw),
                           np.concatenate([in_block, [bool(in_block[cols].any()) for cols in view_cols]]))
    model.__dict__["_layout"] = layout
    return layout


def assemble_request(model: ServedModel, req: ScoringRequest, rows: np.ndarray, scene: dict,
                     entity_values: dict, block, history: History) -> RequestData:
    """The request as ``encode_requests`` encodes its one-row-per-candidate frame, built from arrays:
    the candidates' catalogue ``rows``, their numeric features gathered from the PoI ``block``, the
    user's, context's and scene's (``entity_values``, by column name) broadcast
    (tests/integration/test_serve.py checks equality)."""
    from components.ctr.data import haversine_km
    from components.llm.text import SCENE_FEATURES

    enc, pois = model.scorer.encoder, model.poi_table
    layout = request_layout(model, block)
    k = len(rows)
    raw = np.full((1, len(enc.numeric)), np.nan)
    for j, c in layout.other:
        v = entity_values.get(c)
        if v is not None:
            raw[0, j] = v
    numeric = np.where(layout.poi_cols, layout.poi_std[rows], enc.standardise(raw))
    lat, lon = _geohash_centre(req.geohash)
    dist = haversine_km(lat, lon, pois.lat[rows], pois.lon[rows])
    dist = np.log1p(np.nan_to_num(dist, nan=50.0)).astype(np.float32)
    sv = scene["values"]
    start, end = history.slices([req.user_id], np.array([scene["ts_ns"]], np.int64))
    return RequestData(
        request_id=np.array([req.request_id or "request"], dtype=object), user_id=np.array([req.user_id], dtype=object),
        user=enc.users.encode([req.user_id]), context=enc.contexts.encode([scene["context_id"]]),
        scene=np.array([[int(enc.scene[f].encode([sv[f]])[0]) for f in SCENE_FEATURES]], np.int64),
        scene_value=np.array([[layout.scene_index.get(f"{f}={sv[f]}", -1) for f in SCENE_FEATURES]], np.int64),
        hist_start=start, hist_end=end, poi_row=rows[None, :], position=np.arange(k, dtype=np.int64)[None, :],
        numeric=numeric[None], distance=dist[None, :], click=np.zeros((1, k), np.float32),
        order=np.zeros((1, k), np.float32), mask=np.ones((1, k), bool), cold_user=np.zeros(1, bool),
        cold_poi=np.zeros((1, k), bool), slot=time_slot_index([scene["time_slot"]], model.scorer.features),
        ts=np.array([scene["ts_ns"]], np.int64),
    )


class StateCache:
    """Served-CoFARS states per (model version, user, newest behaviour time), newest ``size`` kept:
    a state is built once per user and window, and a pushed behaviour (a newer time) rebuilds it."""

    def __init__(self, size: int = 100_000):
        import threading
        from collections import OrderedDict

        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, build):
        """The cached state of ``key``, else ``build()`` (outside the lock: two threads may both build
        a missing state; the lookup and the eviction are atomic, so none sees a half-evicted cache)."""
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = build()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


def window_arrays(model: ServedModel, history: History) -> dict:
    """One user's History as the per-behaviour arrays served CoFARS builds its state from."""
    from components.serve.cofars import HIST_KEYS

    p, rows = model.poi_table, history.poi_row
    h = {"hist_poi": p.vocab_id[rows], "hist_row": rows, "hist_category": p.category[rows],
         "hist_price": p.price_band[rows], "hist_rating": p.rating_band[rows], "hist_delivery": p.delivery_band[rows],
         "hist_behavior": history.behavior, "hist_context": history.context, "hist_slot": history.slot,
         "hist_logp": p.log_price[rows] if p.log_price is not None else None,
         "hist_text": p.text_emb[rows] if (p.text_emb is not None and model.scene_table is not None
                                           and model.scorer.model.use_text) else None}
    return {k: h[k] for k in HIST_KEYS if h[k] is not None}


_EMPTY_HISTORY = History(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                         {}, {}, np.zeros(0, np.int64))


def _served_cofars(model: ServedModel, net, data, state, items) -> dict:
    """ctr / ctcvr of the request's candidates through components/serve/cofars.py (``net``: one of
    ``served_nets`` of the model, ``items`` its item table), with the flat keys of ``train.predict``."""
    from dataclasses import replace

    from components.ctr.data import make_batch, to_tensors
    from components.serve.cofars import served_forward

    none = np.zeros(1, np.int64)  # the state stands for the history
    b = make_batch(replace(data, hist_start=none, hist_end=none), np.array([0]), _EMPTY_HISTORY, model.poi_table, 1,
                   scene_table=model.scene_table if net.use_text else None)
    out = served_forward(net, to_tensors(b), state, items)
    k = int(data.mask[0].sum())
    zeros = np.zeros(k, np.float32)
    return {"ctr": out["ctr"][0, :k].numpy(), "ctcvr": out["ctcvr"][0, :k].numpy(), "click": zeros, "order": zeros,
            "user": np.repeat(data.user_id[:1], k), "row": np.zeros(k, np.int64), "slot": np.arange(k)}


def score_request(model: ServedModel, req: ScoringRequest, online, behaviors, states: StateCache | None = None) -> dict:
    """Scores for every candidate of ``req``: ctr, ctcvr, cold flags, model version, feature age.
    CoFARS models read the user's served state (``states``) instead of the history."""
    from components.serve.cold import COLD_POI

    scorer = model.scorer
    # One pass over the candidates: an unknown PoI (or the cold row's own id) is the cold-start row.
    index, cold_row = model.poi_table.index, model.poi_table.index[COLD_POI]
    rows = np.fromiter((index.get(p, cold_row) for p in req.candidates), np.int64, count=len(req.candidates))
    cold_poi = rows == cold_row
    scene = request_scene(req, scorer.features)
    block = online.poi_block((model.name, model.version), model.poi_table.ids)
    views = request_layout(model, block).views
    user_values, user_ts = online.entity("user_id", req.user_id, views)
    context_values, context_ts = online.entity("context_id", scene["context_id"], views)
    values = {**user_values, **context_values, **scene["numeric"]}
    newest = [t for t in (user_ts, context_ts, int(block.ts_ns[rows].max())) if t is not None and t >= 0]
    ts_ns = scene["ts_ns"]
    nets = served_nets(scorer.model)
    from_state = bool(nets) and states is not None
    # The history the model reads; CoFARS networks served from their states read none (an ensemble's
    # other members still do).
    every = len(nets) == len(getattr(scorer.model, "members", None) or [scorer.model])
    recent = None if from_state and every else behaviors.recent(req.user_id, scorer.cfg.max_history, before_ns=ts_ns)
    if recent is not None and len(recent):
        newest.append(int(recent["ts"].iloc[-1]))
    history = _EMPTY_HISTORY if recent is None else history_from_rows(recent, req.user_id, model.poi_table, scorer)
    data = assemble_request(model, req, rows, scene, values, block, history)
    if not from_state:
        scores = scorer.score(data, model.poi_table, history, model.scene_table)
    else:
        last_ts = behaviors.newest_ts(req.user_id, before_ns=ts_ns)
        if last_ts is not None:
            newest.append(last_ts)

        @cache  # the user's behaviours, read once for every network whose state is missing
        def window():
            rows = recent if recent is not None else behaviors.recent(req.user_id, scorer.cfg.max_history,
                                                                      before_ns=ts_ns)
            return window_arrays(model, history_from_rows(rows, req.user_id, model.poi_table, scorer))

        def build(net):
            from components.serve.cofars import build_state

            return build_state(net, window())

        served = {id(net): _served_cofars(model, net, data, states.get((model.version, i, req.user_id, last_ts),
                                                                       lambda net=net: build(net)), items)
                  for i, (net, items) in enumerate(zip(nets, model.items))}
        scores = served[id(scorer.model)] if nets == [scorer.model] else scorer.score(  # an ensemble or a bag:
            data, model.poi_table, history, model.scene_table, served=served)          # the others from the history
    order = np.argsort(scores["slot"], kind="stable")  # one request: slot = position = input order
    ctr, ctcvr = scores["ctr"][order].astype(float), scores["ctcvr"][order].astype(float)
    freshest = max(newest) if newest else None
    return {
        "model": {"name": model.name, "version": model.version},
        "request_id": req.request_id,
        "cold_user": bool(data.user[0] == 0),
        "feature_age_seconds": None if freshest is None else round(time.time() - freshest / 1e9, 3),
        "scores": [{"poi_id": p, "ctr": a, "ctcvr": b, "cold_poi": c}
                   for p, a, b, c in zip(req.candidates, ctr.tolist(), ctcvr.tolist(), cold_poi.tolist())],
    }
