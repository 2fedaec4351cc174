"""Pair miners (components/llm/pairs.py) on a tiny generated world: valid, point-in-time, no leakage."""
from __future__ import annotations

import pandas as pd
import pytest

from components.config import ContrastiveConfig
from components.llm.pairs import (
    PAIR_COLUMNS, Logs, by_strategy, cooccurrence_pairs, identifying_spans, load_pairs, mine_pairs, pairs_dir,
    read_curated, shares_identifying_span,
)
from tests.factories import make_tiny_params, tiny_root



@pytest.fixture(scope="module")
def mined(tmp_path_factory):
    params = make_tiny_params(tiny_root(tmp_path_factory))
    pairs = load_pairs(params)
    behaviors, users, pois = read_curated(params)
    return params, pairs, behaviors, users, pois


def test_every_strategy_has_both_splits_with_valid_ids(mined):
    _, pairs, _, users, pois = mined
    ids = {"user": set(users["user_id"]), "poi": set(pois["poi_id"])}
    kinds = {"user_user": ("user", "user"), "poi_poi": ("poi", "poi"), "user_poi": ("user", "poi")}
    for strategy, (a_kind, p_kind) in kinds.items():
        for split in ("train", "heldout"):
            df = pairs[f"{strategy}_{split}"]
            assert len(df) > 0, f"{strategy}_{split} is empty"
            assert list(df.columns[:len(PAIR_COLUMNS)]) == PAIR_COLUMNS
            assert set(df["anchor_id"]) <= ids[a_kind] and set(df["positive_id"]) <= ids[p_kind]
            assert (df["anchor_text"] != df["positive_text"]).all()
            assert df["anchor_text"].str.startswith(f"<{a_kind}>").all()
            assert df["positive_text"].str.startswith(f"<{p_kind}>").all()


def test_user_user_is_two_consecutive_halves_held_out_by_user(mined):
    _, pairs, _, _, _ = mined
    train, held = pairs["user_user_train"], pairs["user_user_heldout"]
    for df in (train, held):
        assert (df["anchor_id"] == df["positive_id"]).all()
        assert (df["anchor_ts"] < df["positive_ts"]).all()
    assert not set(train["anchor_id"]) & set(held["anchor_id"])


def test_poi_poi_pairs_differ_and_heldout_never_repeats_a_training_pair(mined):
    params, pairs, _, _, _ = mined
    train, held = pairs["poi_poi_train"], pairs["poi_poi_heldout"]
    for df in (train, held):
        assert (df["anchor_id"] != df["positive_id"]).all()
        assert (df["cooccurrence"] >= params.contrastive.min_cooccurrence).all()
    seen = set(zip(train["anchor_id"], train["positive_id"]))
    assert not {(a, p) for a, p in zip(held["anchor_id"], held["positive_id"])} & (seen | {(p, a) for a, p in seen})


def test_user_poi_positive_happens_after_the_anchor_history(mined):
    params, pairs, behaviors, _, _ = mined
    cfg = params.contrastive
    gap = pd.Timedelta(minutes=cfg.history_gap_minutes)
    orders = behaviors[behaviors["behavior"].isin(cfg.target_behaviors)]
    orders = set(zip(orders["user_id"], orders["poi_id"], orders["ts"]))
    train, held = pairs["user_poi_train"], pairs["user_poi_heldout"]
    for df in (train, held):
        assert (df["anchor_ts"] <= df["positive_ts"] - gap).all()
        # the positive is a real order of that user, at that time
        assert all(k in orders for k in zip(df["anchor_id"], df["positive_id"], df["positive_ts"]))
        # the anchor text ends with the user's last behaviour before t - gap (nothing later leaks in)
        for r in df.head(10).itertuples():
            ev = behaviors[(behaviors["user_id"] == r.anchor_id) & (behaviors["ts"] < r.positive_ts - gap)]
            assert ev["ts"].max() == r.anchor_ts
    # split by time: every training order precedes every held-out one
    assert train["positive_ts"].max() < held["positive_ts"].min()


def test_mining_is_seeded_and_reloads_from_disk(mined, monkeypatch):
    params, pairs, *_ = mined
    again = mine_pairs(params, write=False)
    for key, df in pairs.items():
        pd.testing.assert_frame_equal(df, again[key])
    assert (pairs_dir(params) / "manifest.json").exists()

    def boom(*a, **k):
        raise AssertionError("pairs on disk match the config: must not re-mine")

    monkeypatch.setattr("components.llm.pairs.mine_pairs", boom)
    loaded = load_pairs(params)
    assert set(loaded) == set(pairs)
    assert set(by_strategy(loaded, "heldout")) == {"user_user", "poi_poi", "user_poi"}


def test_popularity_correction_prefers_a_specific_partner_over_a_hit():
    # H is in every basket; A shares 3 baskets with B and (so) 3 with H. Raw counts tie,
    # the corrected score c_ij / sqrt(n_i n_j) ranks B first for A.
    rows = []
    for b in range(10):
        rows.append((f"u{b}", "H"))
        if b < 3:
            rows += [(f"u{b}", "A"), (f"u{b}", "B")]
    events = pd.DataFrame(rows, columns=["user_id", "poi_id"]).assign(location_type="home", time_slot="lunch")
    cfg = ContrastiveConfig(min_cooccurrence=2, poi_topk=1)
    top = cooccurrence_pairs(events, cfg).set_index("anchor_id")["positive_id"]
    assert top["A"] == "B"
    flat = cooccurrence_pairs(events, cfg.model_copy(update={"popularity_exponent": 0.0}))
    assert set(flat.loc[flat["anchor_id"] == "A", "positive_id"]) <= {"B", "H"}


def test_logs_split_cutoff_follows_heldout_fraction(mined):
    params, _, behaviors, users, pois = mined
    logs = Logs.build(behaviors, users, pois, heldout_fraction=0.25)
    share = (logs.behaviors["ts"] >= logs.cutoff).mean()
    assert 0.2 < share < 0.3


def test_user_user_texts_share_no_profile_header(mined):
    _, pairs, _, users, _ = mined
    from components.llm.text import user_head

    heads = {u["user_id"]: user_head(u) for u in users.to_dict("records")}
    for split in ("train", "heldout"):
        df = pairs[f"user_user_{split}"]
        assert df["anchor_text"].str.contains("<age>").all()  # the anchor is a full user text
        for a_id, a, p in zip(df["anchor_id"], df["anchor_text"], df["positive_text"]):
            assert a.startswith(heads[a_id])
            assert "<age>" not in p and "<home>" not in p and not p.startswith(heads[a_id])


def test_identifying_spans_find_profiles_and_names_only():
    a = ("<user> <age> 25-34 <gender> f <home> wx4g0 <scene> <loctype> office <slot> lunch <weather> rainy"
         " <act> order <cate> noodles <name> Fiery Dragon Noodles </user>")
    p_same_name = "<poi> <name> Fiery Dragon Noodles <cate> noodles <price> 32 </poi>"
    p_other = "<poi> <name> Blue Lotus <cate> noodles <price> 32 </poi>"
    assert identifying_spans(a) == {"<age> 25-34 <gender> f <home> wx4g0", "<name> Fiery Dragon Noodles"}
    assert shares_identifying_span(a, p_same_name)
    assert not shares_identifying_span(a, p_other)  # a shared category is meaning, not identity
    assert shares_identifying_span(a, a.replace("Fiery Dragon Noodles", "Blue Lotus"))  # same profile


def test_some_heldout_pairs_are_free_of_shortcuts(mined):
    _, pairs, *_ = mined
    for s in ("user_user", "poi_poi", "user_poi"):
        df = pairs[f"{s}_heldout"]
        clean = [not shares_identifying_span(a, p) for a, p in zip(df["anchor_text"], df["positive_text"])]
        assert any(clean), s
