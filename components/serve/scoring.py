"""Score one validated request with a registered CTR model and request-time data.

The model, its encoder, catalogue (plus the cold-start row) and scene table come from the
registered artefact (``ServedModel``, built once per version); the features come from Feast's
online store and the history from the behaviour store at request time (components/serve/online.py).
The same ``encode_requests`` / ``CTRScorer.score`` as evaluation turn them into scores; CoFARS
models run the served path of components/serve/cofars.py instead of rebuilding the graph.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.ctr.data import History, PoiTable, _BEHAVIOR_TYPES, encode_requests, time_slot_index
from components.serve.online import BEHAVIOR_FIELDS
from components.serve.schema import SCENE_FIELDS, ScoringRequest

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
        return cls(name, str(version), py.scorer, poi_table, ids, table, time.time())


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


def request_frame(req: ScoringRequest, poi_ids: list[str], features) -> pd.DataFrame:
    """One row per candidate with the request's scene, its position and its context_id."""
    from components.features.engineering import scene_features

    scene = {f: getattr(req, f) for f in SCENE_FIELDS}
    head = pd.DataFrame([scene])
    head["ts"] = pd.to_datetime(head["ts"], utc=True)
    context_id = str(scene_features(head, features)["context_id"].iloc[0])
    df = pd.DataFrame({"request_id": req.request_id or "request", "user_id": req.user_id, "poi_id": poi_ids,
                       "position": np.arange(len(poi_ids)), "context_id": context_id})
    for f in SCENE_FIELDS:
        df[f] = head[f].iloc[0]
    return df


class StateCache:
    """Served-CoFARS states per (model version, user, newest behaviour time), newest ``size`` kept:
    a state is built once per user and window, and a pushed behaviour (a newer time) rebuilds it."""

    def __init__(self, size: int = 100_000):
        from collections import OrderedDict

        self.size, self.items = size, OrderedDict()

    def get(self, key, build):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = build()
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


def _served_cofars(model: ServedModel, data, history: History, state) -> dict:
    """ctr / ctcvr of the request's candidates through components/serve/cofars.py."""
    from components.ctr.data import make_batch, to_tensors
    from components.serve.cofars import served_forward

    empty = History(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                    {}, {}, np.zeros(0, np.int64))
    b = make_batch(data, np.array([0]), empty, model.poi_table, 1,
                   scene_table=model.scene_table if model.scorer.model.use_text else None)
    out = served_forward(model.scorer.model, to_tensors(b), state)
    k = int(data.mask[0].sum())
    return {"ctr": out["ctr"][0, :k].numpy(), "ctcvr": out["ctcvr"][0, :k].numpy(), "slot": np.arange(k)}


def score_request(model: ServedModel, req: ScoringRequest, online, behaviors, states: StateCache | None = None) -> dict:
    """Scores for every candidate of ``req``: ctr, ctcvr, cold flags, model version, feature age.
    CoFARS models read the user's served state (``states``) instead of the history."""
    from components.serve.cold import map_unknown

    scorer = model.scorer
    served_ids, cold_poi = map_unknown(req.candidates, model.poi_table)
    df = request_frame(req, served_ids, scorer.features)
    newest = []
    for key, values in (("user_id", [req.user_id]), ("context_id", [df["context_id"].iloc[0]]),
                        ("poi_id", sorted(set(served_ids)))):
        got, ts = online.read(key, values)
        if ts is not None:
            newest.append(ts)
        df = df.merge(got, on=key, how="left")
    ts_ns = int(pd.Timestamp(req.ts).value)
    if scorer.model.sequence == "cofars" and states is not None:
        last = behaviors.recent(req.user_id, 1, before_ns=ts_ns)
        last_ts = int(last["ts"].iloc[-1]) if len(last) else None
        if last_ts is not None:
            newest.append(last_ts)

        def build():
            from components.serve.cofars import build_state

            rows = behaviors.recent(req.user_id, scorer.cfg.max_history, before_ns=ts_ns)
            return build_state(scorer.model, window_arrays(model, history_from_rows(rows, req.user_id,
                                                                                    model.poi_table, scorer)))

        state = states.get((model.version, req.user_id, last_ts), build)
        history = history_from_rows(pd.DataFrame(columns=list(BEHAVIOR_FIELDS)), req.user_id, model.poi_table, scorer)
        data = encode_requests(df, scorer.encoder, model.poi_table, history, None, None, scorer.features, None,
                               None, model.scene_ids)
        scores = _served_cofars(model, data, history, state)
    else:
        rows = behaviors.recent(req.user_id, scorer.cfg.max_history, before_ns=ts_ns)
        if len(rows):
            newest.append(int(rows["ts"].iloc[-1]))
        history = history_from_rows(rows, req.user_id, model.poi_table, scorer)
        data = encode_requests(df, scorer.encoder, model.poi_table, history, None, None, scorer.features, None,
                               None, model.scene_ids)
        scores = scorer.score(data, model.poi_table, history, model.scene_table)
    order = np.argsort(scores["slot"], kind="stable")  # one request: slot = position = input order
    ctr, ctcvr = scores["ctr"][order].astype(float), scores["ctcvr"][order].astype(float)
    freshest = max(newest) if newest else None
    return {
        "model": {"name": model.name, "version": model.version},
        "request_id": req.request_id,
        "cold_user": bool(data.user[0] == 0),
        "feature_age_seconds": None if freshest is None else round(time.time() - freshest / 1e9, 3),
        "scores": [{"poi_id": p, "ctr": float(a), "ctcvr": float(b), "cold_poi": bool(c)}
                   for p, a, b, c in zip(req.candidates, ctr, ctcvr, cold_poi)],
    }
