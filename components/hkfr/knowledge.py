"""HKFR step 1–2 (METHODS.md §3): each user's heterogeneous behaviours rendered by templates and
fused, by rules, into one bounded "heterogeneous knowledge" text.

Templates, one per behaviour kind (search with its query, view, click, favourite, order), each with
its scene; then fusion into sections a language model can read:
  <user> who </user> <orders> the categories and PoIs ordered, most frequent first, with the
  scenes they were ordered in <favorites> … <clicks> … <views> the categories browsed <searches>
  the most recent queries <recent> the last few behaviours in full.
Choices of ours: rule-based fusion (no external LLM); counts instead of repetition, so a user with
thousands of behaviours costs a bounded text (``max_items`` per section, ``max_chars`` overall);
only behaviours strictly before ``cutoff`` are read, so an instruction built after the cutoff can
never see its own answer.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from components.config import FeaturesConfig
from components.llm.text import scene_values

KINDS = ("order", "favorite", "click", "view")
_VERBS = {"order": "ordered", "favorite": "saved", "click": "opened", "view": "looked at", "search": "searched"}


@dataclass(frozen=True)
class KnowledgeRules:
    """Bounds of the fused text."""

    max_items: int = 5  # entries per section
    recent: int = 5  # last behaviours written in full
    max_chars: int = 1200  # hard bound on the whole text


def render_behaviors(events: pd.DataFrame, pois: pd.DataFrame, cfg: FeaturesConfig | None = None) -> pd.Series:
    """One template sentence per behaviour: what was done, to which PoI (or which query), in which scene."""
    sv = scene_values(events, cfg)
    act = events["behavior"].astype(str)
    scene = " at " + sv["time_slot"] + " (" + sv["location_type"] + ", " + sv["weather"] + ")"
    name = events["poi_id"].map(pois["name"]).fillna("a shop").astype(str)
    cat = events["poi_id"].map(pois["category"]).fillna("unknown").astype(str)
    poi_part = " " + name + " (" + cat + ")"
    query_part = " '" + events["query"].fillna("").astype(str) + "'"
    what = poi_part.where(act != "search", query_part)
    return act.map(_VERBS).fillna(act) + what + scene


def prepare_events(behaviors: pd.DataFrame, pois: pd.DataFrame, cfg: FeaturesConfig | None = None) -> pd.DataFrame:
    """Every behaviour with what fusion reads, computed once for all users (vectorised):
    ``user_id, ts_ns, behavior, cat, name, scene, query, text``, sorted by user then time."""
    pois_ix = pois.set_index(pois["poi_id"].astype(str)) if "poi_id" in pois else pois
    ev = behaviors.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)
    sv = scene_values(ev, cfg)
    return pd.DataFrame({
        "user_id": ev["user_id"].astype(str).to_numpy(),
        "ts_ns": pd.to_datetime(ev["ts"], utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[ns]").astype(np.int64),
        "behavior": ev["behavior"].astype(str).to_numpy(),
        "cat": ev["poi_id"].map(pois_ix["category"]).to_numpy(),
        "name": ev["poi_id"].map(pois_ix["name"]).to_numpy(),
        "scene": (sv["time_slot"] + " " + sv["location_type"]).to_numpy(),
        "query": ev["query"].to_numpy(),
        "text": render_behaviors(ev, pois_ix, cfg).to_numpy(),
    })


def _counts(values, n: int) -> list[tuple[str, int]]:
    return Counter(str(v) for v in values if isinstance(v, str)).most_common(n)


def fuse(user: dict, events: pd.DataFrame | None, rules: KnowledgeRules) -> str:
    """The knowledge text of one user from their prepared behaviours (``prepare_events`` rows,
    time-sorted, already cut at the cutoff)."""
    head = f"<user> age {user.get('age_group') or 'unknown'}, gender {user.get('gender') or 'unknown'} </user>"
    if events is None or len(events) == 0:
        return head + " <none> no behaviour yet </none>"
    act = events["behavior"].to_numpy()
    cat, name, scene = events["cat"].to_numpy(), events["name"].to_numpy(), events["scene"].to_numpy()
    parts = [head]
    for kind in KINDS:
        sel = act == kind
        if not sel.any():
            continue
        body = ", ".join(f"{c} x{n}" for c, n in _counts(cat[sel], rules.max_items))
        if kind == "order":  # where and when orders happen says most about scene-dependent taste
            body += ("; from " + ", ".join(n for n, _ in _counts(name[sel], rules.max_items))
                     + "; in " + ", ".join(f"{s} x{n}" for s, n in _counts(scene[sel], 3)))
        parts.append(f"<{kind}s> {body} </{kind}s>")
    queries = events["query"].to_numpy()[act == "search"]
    queries = [q for q in queries[::-1] if isinstance(q, str) and q]
    if queries:
        parts.append("<searches> " + "; ".join(list(dict.fromkeys(queries))[: rules.max_items]) + " </searches>")
    if rules.recent:
        parts.append("<recent> " + "; ".join(events["text"].to_numpy()[-rules.recent:]) + " </recent>")
    text = " ".join(parts)
    return text if len(text) <= rules.max_chars else text[: rules.max_chars - 3] + "..."


def _utc(t) -> pd.Timestamp:
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def knowledge_snapshots(users: pd.DataFrame, behaviors: pd.DataFrame, pois: pd.DataFrame, cutoffs,
                        rules: KnowledgeRules | None = None, cfg: FeaturesConfig | None = None,
                        keep_unchanged: bool = False) -> pd.DataFrame:
    """Knowledge of every user at each cutoff: ``user_id, event_timestamp, knowledge, n_behaviors``,
    each from the behaviours strictly before its cutoff. A user whose behaviours did not change since
    their previous snapshot gets no new row (a point-in-time join keeps reading the older one),
    unless ``keep_unchanged``."""
    rules = rules or KnowledgeRules()
    ev = prepare_events(behaviors, pois, cfg)
    users = users.assign(user_id=users["user_id"].astype(str))
    bounds = {}
    if len(ev):
        u = ev["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
        ends = np.r_[starts[1:], len(u)]
        bounds = {u[a]: (a, b) for a, b in zip(starts, ends)}
    ts = ev["ts_ns"].to_numpy()
    rows = []
    for user in users.to_dict("records"):
        uid = user["user_id"]
        a, b = bounds.get(uid, (0, 0))
        last_n = None
        for cut in sorted(_utc(c) for c in cutoffs):
            n = int(np.searchsorted(ts[a:b], cut.value, side="left"))
            if n == last_n and not keep_unchanged:
                continue
            last_n = n
            text = fuse(user, ev.iloc[a:a + n] if n else None, rules)
            rows.append({"user_id": uid, "event_timestamp": cut, "knowledge": text, "n_behaviors": n})
    out = pd.DataFrame(rows, columns=["user_id", "event_timestamp", "knowledge", "n_behaviors"])
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    return out


def build_knowledge(users: pd.DataFrame, behaviors: pd.DataFrame, pois: pd.DataFrame, cutoff,
                    rules: KnowledgeRules | None = None, cfg: FeaturesConfig | None = None) -> pd.DataFrame:
    """One row per user: ``user_id, knowledge, n_behaviors`` from behaviours strictly before ``cutoff``."""
    out = knowledge_snapshots(users, behaviors, pois, [cutoff], rules, cfg, keep_unchanged=True)
    return out[["user_id", "knowledge", "n_behaviors"]].reset_index(drop=True)
