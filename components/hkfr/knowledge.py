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


def fuse(user: dict, events: pd.DataFrame, pois: pd.DataFrame, rules: KnowledgeRules,
         cfg: FeaturesConfig | None = None) -> str:
    """The knowledge text of one user from their behaviours (any order; already cut at the cutoff)."""
    head = f"<user> age {user.get('age_group') or 'unknown'}, gender {user.get('gender') or 'unknown'} </user>"
    if events is None or len(events) == 0:
        return head + " <none> no behaviour yet </none>"
    ev = events.sort_values("ts", kind="stable")
    sv = scene_values(ev, cfg)
    cat = ev["poi_id"].map(pois["category"])
    parts = [head]
    for kind in KINDS:
        sel = (ev["behavior"] == kind).to_numpy()
        if not sel.any():
            continue
        cats = Counter(cat[sel].dropna().astype(str))
        if kind == "order":  # where and when orders happen says most about scene-dependent taste
            scenes = Counter((sv["time_slot"][sel] + " " + sv["location_type"][sel]).tolist())
            top_scenes = ", ".join(f"{s} x{n}" for s, n in scenes.most_common(3))
            names = Counter(ev.loc[sel, "poi_id"].map(pois["name"]).dropna().astype(str))
            body = (", ".join(f"{c} x{n}" for c, n in cats.most_common(rules.max_items))
                    + "; from " + ", ".join(n for n, _ in names.most_common(rules.max_items))
                    + "; in " + top_scenes)
        else:
            body = ", ".join(f"{c} x{n}" for c, n in cats.most_common(rules.max_items))
        parts.append(f"<{kind}s> {body} </{kind}s>")
    queries = ev.loc[ev["behavior"] == "search", "query"].dropna().astype(str)
    if len(queries):
        recent_q = list(dict.fromkeys(queries.iloc[::-1]))[: rules.max_items]
        parts.append("<searches> " + "; ".join(recent_q) + " </searches>")
    recent = render_behaviors(ev.tail(rules.recent), pois, cfg)
    parts.append("<recent> " + "; ".join(recent) + " </recent>")
    text = " ".join(parts)
    return text if len(text) <= rules.max_chars else text[: rules.max_chars - 3] + "..."


def build_knowledge(users: pd.DataFrame, behaviors: pd.DataFrame, pois: pd.DataFrame, cutoff,
                    rules: KnowledgeRules | None = None, cfg: FeaturesConfig | None = None) -> pd.DataFrame:
    """One row per user: ``user_id, knowledge, n_behaviors`` from behaviours strictly before ``cutoff``."""
    rules = rules or KnowledgeRules()
    cutoff = pd.Timestamp(cutoff)
    cutoff = cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff
    before = behaviors[pd.to_datetime(behaviors["ts"], utc=True) < cutoff]
    by_user = dict(tuple(before.groupby(before["user_id"].astype(str), sort=False)))
    pois_ix = pois.set_index(pois["poi_id"].astype(str))
    rows = []
    for user in users.to_dict("records"):
        uid = str(user["user_id"])
        ev = by_user.get(uid)
        rows.append({"user_id": uid, "knowledge": fuse(user, ev, pois_ix, rules, cfg),
                     "n_behaviors": 0 if ev is None else len(ev)})
    return pd.DataFrame(rows)
