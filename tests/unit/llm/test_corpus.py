"""The LLM corpus and tokenizer (components/llm/corpus.py) on a tiny generated batch."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import load_params
from components.llm.corpus import build_corpus, heldout_mask, user_windows
from components.llm.text import SCENE_FEATURES, SPECIAL_TOKENS, scene_feature_text, user_text
from tests.factories import TINY, make_llm_project

@pytest.fixture(scope="module")
def corpus_project(tmp_path_factory):
    root = make_llm_project(tmp_path_factory.mktemp("corpus") / "project")
    params = load_params(root / "params.yaml")
    return params, build_corpus(params)


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().split("\n") if x]


def test_counts_and_files(corpus_project):
    params, counts = corpus_project
    corpus = params.path("llm_dir") / "corpus"
    train, held = _lines(corpus / "train.txt"), _lines(corpus / "heldout.txt")
    assert counts["documents"] == len(train) + len(held) and 100 <= counts["documents"] < 1000
    assert counts["documents.poi"] == TINY["generate"]["n_pois"]
    assert counts["tokens.train"] > counts["tokens.heldout"] > 0
    assert 0 < counts["vocab"] <= params.llm.vocab_size
    assert all(d.startswith(("<poi>", "<user>", "<scene>")) for d in train + held)


def test_heldout_split_is_by_entity_and_seeded(corpus_project):
    params, _ = corpus_project
    corpus = params.path("llm_dir") / "corpus"
    held = _lines(corpus / "heldout.txt")
    assert not any(d.startswith("<scene>") for d in held)  # scene values always train
    # The same key always lands on the same side; the fraction is roughly the one asked for.
    keys = [f"user:u{i:06d}" for i in range(4000)]
    mask = heldout_mask(keys, 0.1, seed=7)
    assert np.array_equal(mask, heldout_mask(keys, 0.1, seed=7))
    assert not np.array_equal(mask, heldout_mask(keys, 0.1, seed=8))
    assert 0.08 < mask.mean() < 0.12


def test_special_tokens_are_single_ids(corpus_project):
    from transformers import AutoTokenizer

    params, _ = corpus_project
    tok = AutoTokenizer.from_pretrained(str(params.path("llm_dir") / "tokenizer"))
    ids = [tok.encode(t, add_special_tokens=False) for t in SPECIAL_TOKENS]
    assert all(len(i) == 1 for i in ids), dict(zip(SPECIAL_TOKENS, ids))
    assert len({i[0] for i in ids}) == len(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    # Inside a document too: a marker is never merged with its neighbours.
    doc = "<poi> <name> Lan Zhou Noodles <cate> noodles <price> 32 </poi>"
    pieces = tok.convert_ids_to_tokens(tok.encode(doc, add_special_tokens=False))
    assert [p for p in pieces if p in SPECIAL_TOKENS] == ["<poi>", "<name>", "<cate>", "<price>", "</poi>"]
    assert tok.decode(tok.encode("<scene> <weather> rainy </scene>"), skip_special_tokens=True).strip() == "rainy"


def test_user_documents_are_bounded_windows_of_user_text(corpus_project):
    params, _ = corpus_project
    cfg = params.llm
    corpus = params.path("llm_dir") / "corpus"
    docs = [d for d in _lines(corpus / "train.txt") + _lines(corpus / "heldout.txt") if d.startswith("<user>")]
    assert max(d.count("<act>") for d in docs) == cfg.max_events_per_user_doc

    curated = params.path("curated_dir")
    users = pd.read_parquet(curated / "users.parquet")
    beh = pd.read_parquet(curated / "behaviors.parquet")
    pois = pd.read_parquet(curated / "pois.parquet").set_index("poi_id")
    # The heaviest user: their newest window is exactly user_text over their last events.
    uid = beh["user_id"].value_counts().index[0]
    ev = beh[beh["user_id"] == uid].sort_values("ts", kind="stable")
    user = users.set_index("user_id").loc[uid].to_dict()
    newest = user_text(user, ev, pois, max_events=cfg.max_events_per_user_doc, cfg=params.features)
    assert newest in docs
    head = newest.split(" <scene>")[0]
    mine = [d for d in docs if d.startswith(head + " <scene>")]
    assert len(mine) == min(cfg.max_docs_per_user, -(-len(ev) // cfg.max_events_per_user_doc))


def test_every_scene_value_is_a_document(corpus_project):
    params, counts = corpus_project
    train = set(_lines(params.path("llm_dir") / "corpus" / "train.txt"))
    assert scene_feature_text("weather", "sunny") in train
    scene_docs = [d for d in train if d.startswith("<scene>")]
    assert counts["documents.scene"] == len(scene_docs)
    per_feature = collections.Counter(d.split()[1] for d in scene_docs)
    assert set(per_feature) == {"<loctype>", "<weather>", "<temp>", "<slot>", "<daytype>", "<geo>"}
    assert len(SCENE_FEATURES) == len(per_feature)


def test_user_windows():
    assert user_windows(10, 4, 5) == [(0, 2), (2, 6), (6, 10)]
    assert user_windows(10, 4, 2) == [(2, 6), (6, 10)]  # the newest are kept
    assert user_windows(3, 4, 2) == [(0, 3)]
    assert user_windows(0, 4, 2) == []


def test_user_text_matches_per_row_rendering():
    """The vectorised renderer writes what a plain loop over the rows would."""
    from tests.factories import tiny_batch

    from components.llm.text import scene_values, user_head

    t = tiny_batch()
    pois = t["pois"].set_index("poi_id")
    for uid, ev in t["behaviors"].groupby("user_id"):
        user = t["users"].set_index("user_id").loc[uid].to_dict()
        ev = ev.sort_values("ts", kind="stable")
        sv = scene_values(ev)
        parts = [user_head(user)]
        for e, s in zip(ev.to_dict("records"), sv.to_dict("records")):
            what = ""
            if e["behavior"] == "search":
                what = f" <query> {e['query']}"
            elif e["poi_id"] in pois.index:
                what = f" <cate> {pois.loc[e['poi_id'], 'category']} <name> {pois.loc[e['poi_id'], 'name']}"
            parts.append(f"<scene> <loctype> {s['location_type']} <slot> {s['time_slot']}"
                         f" <weather> {s['weather']} <act> {e['behavior']}{what}")
        assert user_text(user, ev, pois) == " ".join(parts) + " </user>"
