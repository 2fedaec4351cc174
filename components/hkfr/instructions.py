"""HKFR step 3 (METHODS.md §3): the instruction dataset.

Every example is ``knowledge`` (the user's fused knowledge text, as of the latest snapshot before the
example's time) + ``prompt`` (the target scene and a recommendation task) → ``answer`` (what the user
really did). Three tasks:

* ``order``: "will the user order from this PoI in this scene?" → ``yes`` / ``no``, from impressions
  (``hkfr.answer``: ``yes`` = ordered, or clicked). This is the task scored as P("yes").
* ``category``: "which category will the user order next in this scene?" → the category of the order.
* ``price_band``: "which price band will the next order be in?" → its band in words.

Split by time with the CTR model's split (``ctr.valid_fraction`` / ``test_fraction`` of the requests):
training examples come from before the validation start, test examples from the test period. A
snapshot at cutoff ``c`` reads only behaviours before ``c`` and an example at time ``t`` reads the
latest snapshot with ``c <= t``, so no answer is ever inside its own knowledge text.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from components.config import FeaturesConfig, Params
from components.ctr.data import split_bounds
from components.llm.text import scene_values

TASKS = ("order", "category", "price_band")
YES, NO = "yes", "no"


def price_edges(params: Params) -> list[float]:
    """The price band edges of the feature tables: ``features.price_band_edges``, or the ones the
    features step learned from the training split (``vocab.json``)."""
    from components.features.engineering import saved_band_edges

    edges = params.features.price_band_edges
    return list(edges) if edges is not None else saved_band_edges(params.path("features_dir"), "price_band_edges")


def price_band_words(price, edges) -> np.ndarray:
    """A price as its band in words ("under 25", "25-50", "90 and above")."""
    return np.array(price_band_names(edges), dtype=object)[np.searchsorted(np.asarray(edges, float), np.asarray(price, float), side="right")]


def price_band_names(edges) -> list[str]:
    """The price bands of ``features.price_band_edges`` in words, cheapest first."""
    return [f"under {edges[0]:g}"] + [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:])] + [f"{edges[-1]:g} and above"]


def scene_phrases(frame: pd.DataFrame, cfg: FeaturesConfig | None = None) -> pd.Series:
    """The target scene of each row (ts + contract scene columns) in words."""
    sv = scene_values(frame, cfg)
    return ("at " + sv["time_slot"] + " on a " + sv["day_type"] + ", " + sv["location_type"] + ", "
            + sv["weather"] + ", " + sv["temperature_band"])


def poi_phrases(poi_ids: pd.Series, pois: pd.DataFrame, edges) -> pd.Series:
    """A candidate PoI in words: name, category and price band."""
    p = pois.set_index(pois["poi_id"].astype(str))
    ids = poi_ids.astype(str)
    band = pd.Series(price_band_words(ids.map(p["price"]).fillna(0.0).to_numpy(), edges), index=poi_ids.index)
    return (ids.map(p["name"]).fillna("an unknown shop").astype(str) + " (" + ids.map(p["category"]).fillna("unknown")
            .astype(str) + ", price " + band + ")")


def question(task: str, scene: pd.Series, poi: pd.Series | None = None) -> pd.Series:
    if task == "order":
        return "<task> " + scene + ": will the user order from " + poi + "?"
    if task == "category":
        return "<task> " + scene + ": which category will the user order next?"
    return "<task> " + scene + ": which price band will the user's next order be in?"


def attach_knowledge(rows: pd.DataFrame, snapshots: pd.DataFrame) -> pd.DataFrame:
    """Each row (``user_id``, ``ts``) with the knowledge of the latest snapshot at or before ``ts``."""
    left = rows.assign(_t=pd.to_datetime(rows["ts"], utc=True).astype("datetime64[ns, UTC]"),
                       user_id=rows["user_id"].astype(str), _i=np.arange(len(rows)))
    right = snapshots.assign(_t=pd.to_datetime(snapshots["event_timestamp"], utc=True).astype("datetime64[ns, UTC]"))
    right = right[["user_id", "_t", "knowledge", "n_behaviors"]].sort_values("_t", kind="stable")
    out = pd.merge_asof(left.sort_values("_t", kind="stable"), right, on="_t", by="user_id", direction="backward")
    out["knowledge"] = out["knowledge"].fillna("<user> unknown </user> <none> no behaviour yet </none>")
    out["n_behaviors"] = out["n_behaviors"].fillna(0).astype(int)
    return out.sort_values("_i").drop(columns=["_t", "_i"]).reset_index(drop=True)


def order_examples(impressions: pd.DataFrame, pois: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Yes/no examples, one per impression: ``request_id, user_id, poi_id, ts, prompt, answer, label``."""
    cfg = params.hkfr
    label = impressions[cfg.answer].astype(bool).to_numpy()
    prompt = question("order", scene_phrases(impressions, params.features),
                      poi_phrases(impressions["poi_id"], pois, price_edges(params)))
    return pd.DataFrame({
        "task": "order", "request_id": impressions["request_id"].astype(str).to_numpy(),
        "user_id": impressions["user_id"].astype(str).to_numpy(), "poi_id": impressions["poi_id"].astype(str).to_numpy(),
        "ts": pd.to_datetime(impressions["ts"], utc=True).to_numpy(), "prompt": prompt.to_numpy(),
        "answer": np.where(label, YES, NO), "label": label.astype(int),
        "click": impressions["click"].astype(int).to_numpy(), "order": impressions["order"].astype(int).to_numpy(),
    })


def choice_examples(task: str, orders: pd.DataFrame, pois: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Category / price-band examples, one per order behaviour of a known PoI."""
    p = pois.set_index(pois["poi_id"].astype(str))
    orders = orders[orders["poi_id"].astype(str).isin(p.index)]
    ids = orders["poi_id"].astype(str)
    if task == "category":
        answer = ids.map(p["category"]).astype(str)
    else:
        answer = pd.Series(price_band_words(ids.map(p["price"]).to_numpy(), price_edges(params)),
                           index=orders.index)
    prompt = question(task, scene_phrases(orders, params.features))
    return pd.DataFrame({"task": task, "request_id": "", "user_id": orders["user_id"].astype(str).to_numpy(),
                         "poi_id": ids.to_numpy(), "ts": pd.to_datetime(orders["ts"], utc=True).to_numpy(),
                         "prompt": prompt.to_numpy(), "answer": answer.to_numpy(), "label": -1, "click": -1, "order": -1})


def _sample_orders(ex: pd.DataFrame, n: int, positive_share: float, rng) -> pd.DataFrame:
    pos, neg = np.flatnonzero(ex["label"].to_numpy() == 1), np.flatnonzero(ex["label"].to_numpy() == 0)
    n_pos = min(len(pos), int(round(n * positive_share)))
    n_neg = min(len(neg), n - n_pos)
    pick = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
    return ex.iloc[np.sort(pick)]


def build_instructions(impressions: pd.DataFrame, behaviors: pd.DataFrame, pois: pd.DataFrame,
                       snapshots: pd.DataFrame, params: Params) -> dict[str, pd.DataFrame]:
    """``{"train": ..., "test_order": ..., "test_choice": ...}`` with the knowledge attached.

    train: ``hkfr.train_examples`` drawn by ``hkfr.tasks`` shares from before the validation start
    (the yes/no task with ``positive_share`` yes); test_order: every candidate of
    ``eval_requests`` sampled test requests (all of them when null); test_choice: up to
    ``eval_option_examples`` test orders per choice task.
    """
    cfg = params.hkfr
    rng = np.random.default_rng(params.seed)
    valid_start, test_start = split_bounds(impressions, params)
    ts = pd.to_datetime(impressions["ts"], utc=True)
    orders = behaviors[behaviors["behavior"] == "order"]
    ots = pd.to_datetime(orders["ts"], utc=True)
    weights = {t: w for t, w in cfg.tasks.items() if w > 0}
    total = sum(weights.values())
    parts = []
    for task, w in weights.items():
        n = int(round(cfg.train_examples * w / total))
        if task == "order":
            ex = order_examples(impressions[ts < valid_start], pois, params)
            if ex["label"].nunique() < 2:
                raise ValueError(f"hkfr: the training period has no '{YES}' and '{NO}' answers both "
                                 f"(hkfr.answer={cfg.answer}); more data or answer: click")
            parts.append(_sample_orders(ex, n, cfg.positive_share, rng))
        else:
            ex = choice_examples(task, orders[ots < valid_start], pois, params)
            if len(ex):
                parts.append(ex.iloc[np.sort(rng.choice(len(ex), min(n, len(ex)), replace=False))])
    train = pd.concat(parts, ignore_index=True)
    train = train.iloc[rng.permutation(len(train))].reset_index(drop=True)

    test_imp = impressions[ts >= test_start]
    reqs = test_imp["request_id"].astype(str).unique()
    if cfg.eval_requests is not None and len(reqs) > cfg.eval_requests:
        reqs = np.sort(rng.choice(reqs, cfg.eval_requests, replace=False))
    test_order = order_examples(test_imp[test_imp["request_id"].astype(str).isin(set(reqs))], pois, params)
    choice = []
    for task in ("category", "price_band"):
        ex = choice_examples(task, orders[ots >= test_start], pois, params)
        if len(ex):
            choice.append(ex.iloc[np.sort(rng.choice(len(ex), min(cfg.eval_option_examples, len(ex)), replace=False))])
    test_choice = pd.concat(choice, ignore_index=True) if choice else order_examples(test_imp.iloc[:0], pois, params)
    return {name: attach_knowledge(df, snapshots) for name, df in
            (("train", train), ("test_order", test_order), ("test_choice", test_choice))}
