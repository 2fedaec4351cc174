"""HKFR knowledge texts: every behaviour kind rendered, bounded length for heavy users, and no
behaviour at or after the cutoff (an instruction's answer never leaks into its own knowledge)."""
import numpy as np
import pandas as pd

from components.hkfr.knowledge import KnowledgeRules, build_knowledge, render_behaviors

POIS = pd.DataFrame({"poi_id": ["p1", "p2"], "name": ["Red Lantern Hot Pot", "Iced Tea Bar"],
                     "category": ["hot pot", "coffee & tea"]})
USERS = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "age_group": ["25-34", None, "18-24"], "gender": ["f", "m", None]})


def _events(user, n, start="2026-01-01", kinds=("view", "click", "order", "favorite", "search")):
    ts = pd.date_range(start, periods=n, freq="37min", tz="UTC")
    kind = [kinds[i % len(kinds)] for i in range(n)]
    return pd.DataFrame({
        "ts": ts, "user_id": user, "behavior": kind,
        "poi_id": [None if k == "search" else ("p1" if i % 3 else "p2") for i, k in enumerate(kind)],
        "query": ["spicy soup" if k == "search" else None for k in kind],
        "geohash": "wx4g0bm", "location_type": "office", "weather": "rainy", "temperature_c": 4.0,
        "is_holiday": False,
    })


def test_every_kind_has_a_template_with_its_scene():
    ev = _events("u1", 5)
    text = render_behaviors(ev, POIS.set_index("poi_id")).tolist()
    assert text[0].startswith("looked at ") and "(office, rainy)" in text[0]
    assert text[2].startswith("ordered Red Lantern Hot Pot (hot pot)")
    assert text[4] == "searched 'spicy soup' at late_night (office, rainy)"  # 02:28 UTC is late night


def test_fused_text_is_bounded_and_cut_at_the_cutoff():
    heavy = _events("u1", 5000)
    light = _events("u2", 6, start="2026-02-01")
    cutoff = pd.Timestamp("2026-01-20", tz="UTC")
    out = build_knowledge(USERS, pd.concat([heavy, light]), POIS, cutoff, KnowledgeRules(max_chars=900))
    rows = out.set_index("user_id")
    assert rows.loc["u1", "n_behaviors"] == int((heavy["ts"] < cutoff).sum()) < 5000
    assert len(rows.loc["u1", "knowledge"]) <= 900
    for section in ("<orders>", "<favorites>", "<clicks>", "<views>", "<searches>", "<recent>"):
        assert section in rows.loc["u1", "knowledge"]
    assert "x" in rows.loc["u1", "knowledge"].split("<orders>")[1], "counts, not repetition"
    # u2 acts only after the cutoff, u3 never: both get the empty knowledge, not a leak
    assert rows.loc["u2", "n_behaviors"] == 0 and "no behaviour yet" in rows.loc["u2", "knowledge"]
    assert "no behaviour yet" in rows.loc["u3", "knowledge"]
    assert np.all(out["knowledge"].str.len() > 0)
