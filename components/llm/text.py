"""How SceneRec writes its entities as text for the LLM (LARR, METHODS.md §1).

Every field is introduced by its own special token, so the model learns where a PoI's name
ends and its category starts without relying on punctuation:

    <poi> <name> Fiery Dragon Noodles <cate> noodles <price> 32 <rating> 4.5 ... </poi>
    <user> <age> 25-34 <gender> f <scene> <loctype> office <slot> lunch ... <act> order <poi_ref> ... </user>
    <scene> <weather> rainy </scene>          (one scene feature value, embedded on its own)

The corpus, the contrastive pairs and the scene embeddings all render text through this module,
so pretraining and serving see the same format.
"""
from __future__ import annotations

import pandas as pd

from components.config import FeaturesConfig
from components.features.engineering import scene_features

POI_FIELDS = ("name", "cate", "price", "rating", "delivery", "loc", "desc")
USER_FIELDS = ("age", "gender", "home")
SCENE_FIELDS = ("loctype", "weather", "temp", "slot", "daytype", "geo")
BEHAVIOR_FIELDS = ("act", "query")
SPECIAL_TOKENS = (
    ["<poi>", "</poi>", "<user>", "</user>", "<scene>", "</scene>", "<agg>"]
    + [f"<{f}>" for f in POI_FIELDS + USER_FIELDS + SCENE_FIELDS + BEHAVIOR_FIELDS]
)

# The scene features LARR encodes one by one: (text field, how to read it off a scene row).
SCENE_FEATURES = ("location_type", "weather", "temperature_band", "time_slot", "day_type", "area")


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)) or v is pd.NA:
        return "unknown"
    if isinstance(v, float):
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return str(v)


def poi_text(row) -> str:
    """One PoI as a document (row: a curated pois row or mapping)."""
    desc = row.get("description") or ""
    return (
        f"<poi> <name> {_fmt(row['name'])} <cate> {_fmt(row['category'])} <price> {_fmt(float(row['price']))}"
        f" <rating> {_fmt(row.get('rating'))} <delivery> {_fmt(row.get('delivery_minutes'))} min"
        f" <loc> {str(row['geohash'])[:5]} <desc> {desc} </poi>"
    )


def temperature_words(band: int, edges: list[float]) -> str:
    """A temperature band as words ("below 0C", "10-20C", "30C and above")."""
    if band < 0:
        return "unknown"
    if band == 0:
        return f"below {edges[0]:g}C"
    if band >= len(edges):
        return f"{edges[-1]:g}C and above"
    return f"{edges[band - 1]:g}-{edges[band]:g}C"


def scene_values(scenes: pd.DataFrame, cfg: FeaturesConfig | None = None) -> pd.DataFrame:
    """The LARR scene features of each row (ts + contract scene columns) as text values."""
    cfg = cfg or FeaturesConfig()
    s = scene_features(scenes, cfg)
    return pd.DataFrame(
        {
            "location_type": s["location_type"].astype(str).values,
            "weather": s["weather"].astype(str).values,
            "temperature_band": [temperature_words(int(b), cfg.temperature_band_edges) for b in s["temperature_band"]],
            "time_slot": s["time_slot"].astype(str).values,
            "day_type": [
                "holiday" if h else ("weekend" if w else "weekday")
                for h, w in zip(s["is_holiday"].astype(bool), s["is_weekend"].astype(bool))
            ],
            "area": s["geohash"].astype(str).str[:5].values,
        },
        index=scenes.index,
    )


_SCENE_TOKEN = {"location_type": "loctype", "weather": "weather", "temperature_band": "temp",
                "time_slot": "slot", "day_type": "daytype", "area": "geo"}


def scene_feature_text(feature: str, value: str) -> str:
    """One scene feature value, on its own (LARR embeds each once and caches it)."""
    return f"<scene> <{_SCENE_TOKEN[feature]}> {value} </scene>"


def scene_text(values) -> str:
    """A whole scene as one text (the slow path LARR avoids at serving time)."""
    body = " ".join(f"<{_SCENE_TOKEN[f]}> {values[f]}" for f in SCENE_FEATURES)
    return f"<scene> {body} </scene>"


def user_head(user) -> str:
    """The opening of a user document: who they are, before any behaviour."""
    return (f"<user> <age> {_fmt(user.get('age_group'))} <gender> {_fmt(user.get('gender'))}"
            f" <home> {str(user.get('home_geohash') or 'unknown')[:5]}")


def behavior_texts(events: pd.DataFrame, pois: pd.DataFrame | None = None,
                   cfg: FeaturesConfig | None = None) -> pd.Series:
    """Each behaviour row (ts, behavior, poi_id, query + scene columns) as its text fragment.

    Vectorised, because the corpus renders every behaviour of every user at once; ``user_text``
    joins the same fragments, so both produce the same text. ``pois``: indexed by poi_id.
    """
    sv = scene_values(events, cfg)
    act = events["behavior"].astype(str)
    what = pd.Series("", index=events.index, dtype=object)
    search = (act == "search").to_numpy()
    if search.any():
        what[search] = " <query> " + events.loc[search, "query"].map(_fmt)
    if pois is not None:
        known = ~search & events["poi_id"].isin(pois.index).to_numpy()
        if known.any():
            ids = events.loc[known, "poi_id"]
            what[known] = (" <cate> " + ids.map(pois["category"]).astype(str)
                           + " <name> " + ids.map(pois["name"]).astype(str))
    return ("<scene> <loctype> " + sv["location_type"] + " <slot> " + sv["time_slot"]
            + " <weather> " + sv["weather"] + " <act> " + act + what)


def user_text(user, events: pd.DataFrame, pois: pd.DataFrame | None = None, max_events: int = 32,
              cfg: FeaturesConfig | None = None, profile: bool = True) -> str:
    """A user and their most recent behaviours in their scenes.

    ``events``: that user's behaviour rows (ts, behavior, poi_id, query + scene columns), any order;
    ``pois``: curated pois indexed by poi_id, to name the PoIs. Only the last ``max_events`` are
    written, so users with thousands of behaviours stay bounded. ``profile=False`` leaves out the
    age / gender / home fields (the behaviours alone must then say who the user is).
    """
    head = user_head(user) if profile else "<user>"
    if events is None or len(events) == 0:
        return head + " </user>"
    # Stable sort: behaviours in the same second keep their logged order (click before order).
    ev = events.sort_values("ts", kind="stable").tail(max_events)
    return " ".join([head, *behavior_texts(ev, pois, cfg)]) + " </user>"
