"""News recommendation (PerCoNet, NRMS): the MIND reader and its rejections, the ranking metrics,
the persona rule, model shapes and masking, and a tiny training run on a synthetic world."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from components.config import NewsConfig
from components.news.mind import MindRejected, generate_mind, load_mind, parse_entities, validate_mind
from components.news.model import (
    PAD,
    EntityVocabulary,
    NewsIndex,
    Vocabulary,
    build_model,
    explain,
    select_persona,
)
from components.news.train import (
    auc,
    dcg,
    impression_metrics,
    mrr,
    ndcg,
    prepare_impressions,
)
from tests.factories import TINY_NEWS as TINY


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ents(*items: tuple[str, str, float]) -> str:
    return json.dumps([{"Label": label, "Type": "P", "WikidataId": wid, "Confidence": conf,
                        "OccurrenceOffsets": [0], "SurfaceForms": [label]} for label, wid, conf in items])


# Real MIND quirks: quotes inside titles, an empty abstract, "" and "[]" for no entities, an empty
# history, unpadded month/day/hour in times.
NEWS = [
    ["N1", "sports", "football_nfl", 'Brady\'s "last dance" in Foxborough', "The quarterback speaks.",
     "https://assets.msn.com/labs/mind/AAA1.html", _ents(("Tom Brady", "Q313381", 1.0)),
     _ents(("Tom Brady", "Q313381", 0.9), ("Foxborough", "Q49173", 0.6))],
    ["N2", "sports", "football_nfl", "Patriots beat Jets", "", "https://assets.msn.com/labs/mind/AAA2.html",
     _ents(("New England Patriots", "Q193390", 0.99)), ""],
    ["N3", "finance", "markets", "Stocks rally on rate hopes", "Markets rose again.",
     "https://assets.msn.com/labs/mind/AAA3.html", "[]", "[]"],
    ["N4", "sports", "football_nfl", "Brady and the Patriots, again", "Old friends meet.",
     "https://assets.msn.com/labs/mind/AAA4.html",
     _ents(("Tom Brady", "Q313381", 1.0), ("New England Patriots", "Q193390", 0.8)), "[]"],
    ["N5", "finance", "markets", "Fed holds rates", "The Federal Reserve waits.",
     "https://assets.msn.com/labs/mind/AAA5.html", _ents(("Federal Reserve", "Q53536", 0.95)), ""],
    ["N6", "weather", "weathertopstories", "Snow ahead", "", "https://assets.msn.com/labs/mind/AAA6.html", "", ""],
]
BEHAVIORS = [
    ["1", "U1", "11/9/2019 8:05:45 AM", "N1 N2", "N4-1 N3-0 N5-0"],
    ["2", "U2", "11/10/2019 11:59:59 PM", "", "N3-0 N5-1"],
    ["3", "U1", "11/11/2019 12:00:01 PM", "N1 N2 N4", "N5-0 N3-0 N4-1"],
]


def _write(folder: Path, news=NEWS, behaviors=BEHAVIORS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "news.tsv").write_text("".join("\t".join(r) + "\n" for r in news), encoding="utf-8")
    (folder / "behaviors.tsv").write_text("".join("\t".join(r) + "\n" for r in behaviors), encoding="utf-8")
    return folder


# ------------------------------------------------------------------------------------------------
# Reader


def test_reader_loads_a_mind_folder_with_empty_fields(tmp_path):
    data = load_mind(_write(tmp_path / "train"))
    assert list(data.news["news_id"]) == ["N1", "N2", "N3", "N4", "N5", "N6"]
    assert data.news.loc[1, "abstract"] == "" and data.news.loc[0, "title"] == 'Brady\'s "last dance" in Foxborough'
    assert parse_entities(data.news.loc[1, "abstract_entities"]) == [] == parse_entities("[]")
    b = data.behaviors
    assert b.loc[0, "history"] == ["N1", "N2"] and b.loc[1, "history"] == []
    assert b.loc[0, "candidates"] == ["N4", "N3", "N5"] and b.loc[0, "labels"] == [1, 0, 0]
    assert b.loc[1, "time"] == pd.Timestamp("2019-11-10 23:59:59")
    assert b.loc[2, "time"] == pd.Timestamp("2019-11-11 12:00:01")


def test_extra_files_and_crlf_are_accepted(tmp_path):
    folder = _write(tmp_path / "train")
    (folder / "entity_embedding.vec").write_text("Q313381\t0.1\t0.2\n")
    text = (folder / "behaviors.tsv").read_text()
    (folder / "behaviors.tsv").write_text(text.replace("\n", "\r\n"))
    assert len(load_mind(folder).behaviors) == 3


def test_rejected_mind_folders_keep_only_the_newest_copies(tmp_path):
    behaviors = [list(r) for r in BEHAVIORS]
    behaviors[1][4] = "N3-0 N5-2"  # a bad label
    folder = _write(tmp_path / "train", [list(r) for r in NEWS], behaviors)
    kept = []
    for _ in range(3):
        with pytest.raises(MindRejected) as err:
            load_mind(folder, tmp_path / "quarantine", quarantine_keep=2)
        kept.append(err.value.quarantine_path)
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == sorted(p.name for p in kept[1:])


@pytest.mark.parametrize("file,row,col,value,column,rule,rows", [
    ("behaviors", 1, 4, "N3-0 N5-2", "impressions", "regex", 1),
    ("behaviors", 0, 3, "N1 N99", "history", "references", 1),
    ("behaviors", 2, 2, "2019-11-11 12:00:01", "time", "time_format", 1),
    ("behaviors", 2, 0, "1", "impression_id", "unique", 2),
    ("news", 2, 6, '[{"Label": "X"}]', "title_entities", "entity_json", 1),
    ("news", 4, 7, "not json", "abstract_entities", "entity_json", 1),
    ("news", 5, 0, "N1", "news_id", "unique", 2),
    ("news", 1, 1, "", "category", "not_null", 1),
])
def test_bad_line_is_rejected_and_quarantined(tmp_path, file, row, col, value, column, rule, rows):
    news, behaviors = [list(r) for r in NEWS], [list(r) for r in BEHAVIORS]
    (news if file == "news" else behaviors)[row][col] = value
    folder = _write(tmp_path / "train", news, behaviors)
    with pytest.raises(MindRejected) as err:
        load_mind(folder, tmp_path / "quarantine")
    msg = str(err.value)
    assert f"{file}.tsv.{column}: {rule} — {rows} rows" in msg, msg
    assert f"line {row + 1}" in msg
    if rule == "references":
        assert "N99" in msg
    (q,) = (tmp_path / "quarantine").iterdir()
    assert err.value.quarantine_path == q
    assert sorted(p.name for p in q.iterdir()) == ["behaviors.tsv", "news.tsv", "report.json"]
    assert (q / f"{file}.tsv").read_bytes() == (folder / f"{file}.tsv").read_bytes()
    report = json.loads((q / "report.json").read_text())
    assert report["success"] is False
    assert [(f["table"], f["column"], f["rule"], f["count"]) for f in report["failures"]] == \
        [(f"{file}.tsv", column, rule, rows)]


def test_wrong_field_count_is_rejected(tmp_path):
    behaviors = [list(r) for r in BEHAVIORS]
    behaviors[1] = behaviors[1][:4]  # impressions column missing
    folder = _write(tmp_path / "dev", NEWS, behaviors)
    with pytest.raises(MindRejected, match=r"behaviors.tsv\.\*: field_count — 1 rows, e.g. \['line 2: 4 fields'\]"):
        load_mind(folder, tmp_path / "q")
    result = validate_mind(folder)
    assert not result.success and result.rows == {"news.tsv": 6, "behaviors.tsv": 2}


def test_missing_file_is_rejected(tmp_path):
    folder = _write(tmp_path / "train")
    (folder / "news.tsv").unlink()
    with pytest.raises(MindRejected, match=r"news.tsv\.\*: missing_file"):
        load_mind(folder)


# ------------------------------------------------------------------------------------------------
# Metrics, by hand: labels [1, 0, 0, 1, 0], scores [.9, .8, .1, .3, .5]
# ranked labels: 1 (.9), 0 (.8), 0 (.5), 1 (.3), 0 (.1)

Y, S = [1, 0, 0, 1, 0], [0.9, 0.8, 0.1, 0.3, 0.5]


def test_metrics_match_hand_worked_values():
    assert auc(Y, S) == pytest.approx(4 / 6)  # .9 beats 3 non-clicks, .3 beats 1
    assert mrr(Y, S) == pytest.approx((1 / 1 + 1 / 4) / 2)
    assert dcg(Y, S, 5) == pytest.approx(1 + 1 / math.log2(5))
    assert ndcg(Y, S, 5) == pytest.approx((1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert ndcg(Y, S, 10) == ndcg(Y, S, 5)
    assert ndcg(Y, S, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert auc([1, 0], [0.5, 0.5]) == 0.5 and math.isnan(auc([1, 1], [0.2, 0.3]))
    perfect = impression_metrics([0, 1, 0], [0.1, 0.9, 0.2])
    assert perfect == {"auc": 1.0, "mrr": 1.0, "ndcg_at_5": 1.0, "ndcg_at_10": 1.0}
    assert impression_metrics([0, 0], [0.1, 0.2]) is None


def test_auc_agrees_with_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 30)
        s = rng.integers(0, 6, 30).astype(float)  # many ties
        assert auc(y, s) == pytest.approx(roc_auc_score(y, s))


# ------------------------------------------------------------------------------------------------
# Persona rule


def test_persona_is_confidence_weighted_recent_frequency():
    # oldest first: ages 2, 1, 0 -> decay .25, .5, 1 with half-life 1
    history = [[(5, 1.0), (6, 0.5)], [(6, 1.0), (1, 1.0)], [(7, 0.9)]]
    ids, w = select_persona(history, np.ones(10), top_k=2, half_life=1.0, confidence_power=1.0)
    assert ids.tolist() == [7, 6] and w == pytest.approx([0.9, 0.25 * 0.5 + 0.5])
    ids, w = select_persona(history, np.ones(10), top_k=4, half_life=1.0, confidence_power=2.0)
    assert ids.tolist() == [7, 6, 5, 0]  # the unknown entity (1) never enters; padding after
    assert w == pytest.approx([0.81, 0.25 * 0.25 + 0.5, 0.25, 0.0])
    idf = np.ones(10)
    idf[7] = 0.1  # an entity every article mentions
    ids, _ = select_persona(history, idf, top_k=1, half_life=1.0, confidence_power=1.0)
    assert ids.tolist() == [6]
    ids, w = select_persona([], np.ones(10), top_k=3, half_life=1.0, confidence_power=1.0)
    assert ids.tolist() == [0, 0, 0] and w.tolist() == [0, 0, 0]


def _index(tmp_path, **cfg) -> tuple[NewsIndex, NewsConfig, pd.DataFrame]:
    cfg = NewsConfig(embed_dim=16, num_heads=2, attention_hidden=8, history_len=4, persona_top_k=3,
                     max_title_len=8, max_abstract_len=8, persona_idf=False, **cfg)
    data = load_mind(_write(tmp_path / "train"))
    vocab = Vocabulary.build(pd.concat([data.news["title"], data.news["abstract"]]))
    index = NewsIndex(data.news, vocab, EntityVocabulary.build(data.news), cfg)
    return index, cfg, data.behaviors


def test_index_features_and_persona(tmp_path):
    index, cfg, behaviors = _index(tmp_path)
    assert index.title.shape == (7, 8) and index.abstract.shape == (7, 8) and index.entities.shape == (7, 6)
    assert index.abstract[2].eq(PAD).all() and index.entities[3].eq(PAD).all()  # N2: no abstract; N3: no entities
    labels = index.entity_vocab.labels
    assert [labels[i] for i in index.entities[1][:2].tolist()] == ["Tom Brady", "Foxborough"]
    imps = prepare_impressions(behaviors, index)
    assert imps.history[0].tolist() == [1, 2, 0, 0] and imps.history[1].tolist() == [0, 0, 0, 0]
    # U1 after N1 N2 N4: Brady (N1, N4) and the Patriots (N2, N4); Brady's newest click is as recent
    assert [labels[i] for i in imps.persona[2] if i] == ["Tom Brady", "New England Patriots", "Foxborough"]
    assert imps.persona[1].tolist() == [0, 0, 0]


# ------------------------------------------------------------------------------------------------
# Models


@pytest.mark.parametrize("kind", ["nrms", "perconet"])
def test_model_shapes_and_masking(tmp_path, kind):
    index, cfg, behaviors = _index(tmp_path)
    torch.manual_seed(0)
    model = build_model(kind, cfg, len(index.vocab), len(index.entity_vocab)).eval()
    news = index.features(torch.arange(len(index.ids)))
    vecs, aux = model.encode_news(news)
    assert vecs.shape == (7, 16) and torch.isfinite(vecs).all() and float(aux) == 0.0  # no contrast in eval
    # Padding more tokens onto the texts changes nothing.
    wider = {**news, "title": torch.nn.functional.pad(news["title"], (0, 5)),
             "abstract": torch.nn.functional.pad(news["abstract"], (0, 3))}
    torch.testing.assert_close(model.encode_news(wider)[0], vecs)

    imps = prepare_impressions(behaviors, index)
    hist = torch.as_tensor(imps.history)
    cands = torch.tensor([[4, 3, 5], [3, 5, 0], [5, 3, 4]])
    persona, pw = torch.as_tensor(imps.persona), torch.as_tensor(imps.persona_weight)
    scores, _ = model(news, hist, cands, persona, pw)
    assert scores.shape == (3, 3) and torch.isfinite(scores).all()
    # A longer padded history gives the same scores.
    scores2, _ = model(news, torch.nn.functional.pad(hist, (0, 3)), cands, persona, pw)
    torch.testing.assert_close(scores2, scores)
    # A cold user (no history, no persona) is scored with the learnt cold-user vector.
    user, _, _ = model.encode_user(vecs[hist[1:2]], hist[1:2] != 0, persona[1:2], pw[1:2])
    torch.testing.assert_close(user[0], model.no_history)

    model.train()
    _, aux = model(news, hist, cands, persona, pw)
    assert (float(aux.detach()) > 0) == (kind == "perconet")  # the cross-view InfoNCE, only PerCoNet's


def test_explain_names_persona_entities(tmp_path):
    index, cfg, _ = _index(tmp_path)
    torch.manual_seed(0)
    model = build_model("perconet", cfg, len(index.vocab), len(index.entity_vocab))
    out = explain(model, index, ["N1", "N2", "N4"], ["N5", "N3", "N4"], top=2)
    assert [o["news_id"] for o in out] == sorted(["N5", "N3", "N4"], key=lambda n: -next(
        o["score"] for o in out if o["news_id"] == n))
    for o in out:
        assert len(o["persona"]) == 2
        assert {"label", "wikidata_id", "persona_weight", "contribution"} <= set(o["persona"][0])
        shares = [p["contribution"] for p in o["persona"]]
        assert shares == sorted(shares, reverse=True)
    labels = {p["label"] for o in out for p in o["persona"]}
    assert labels <= {"Tom Brady", "New England Patriots", "Foxborough"}
    assert explain(build_model("nrms", cfg, len(index.vocab), len(index.entity_vocab)), index, ["N1"], ["N3"])[0][
        "persona"] == []


def test_config_is_validated():
    with pytest.raises(ValidationError, match="divisible"):
        NewsConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValidationError, match="Extra inputs"):
        NewsConfig(negative=4)
    with pytest.raises(ValidationError, match="MIND time"):
        NewsConfig(start="2019-11-09")


# ------------------------------------------------------------------------------------------------
# Synthetic world (the tiny training run: tests/integration/news/test_train.py)



def test_generated_world_is_mind_format(tmp_path):
    cfg = NewsConfig(**TINY)
    figures = generate_mind(tmp_path, cfg, seed=1)
    train, dev = load_mind(tmp_path / "train"), load_mind(tmp_path / "dev")
    assert len(train.behaviors) == 900 and len(dev.behaviors) == 200
    assert train.behaviors["time"].max() < dev.behaviors["time"].min()  # dev is later
    assert (train.news["abstract"] == "").any() and (train.news["title_entities"] == "[]").any()
    assert (train.news["abstract_entities"] == "").any()
    assert figures["train.empty_histories"] > 0
    assert all(sum(y) >= 1 for y in train.behaviors["labels"])
    line = (tmp_path / "train" / "behaviors.tsv").read_text().split("\n")[0].split("\t")
    assert len(line) == 5 and line[2].endswith(("AM", "PM"))
    assert generate_mind(tmp_path / "again", cfg, seed=1) == figures  # seeded
    assert (tmp_path / "again" / "dev" / "news.tsv").read_bytes() == (tmp_path / "dev" / "news.tsv").read_bytes()
