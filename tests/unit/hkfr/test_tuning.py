"""HKFR scoring on a tiny Llama: the KV-cache paths (a request's prefix run once, candidates or
options continued from its cache) give the same numbers as one plain forward pass per sequence;
the knowledge embedding ignores padding; the PCA projection keeps the largest variance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from components.hkfr import tuning
from components.hkfr.instructions import attach_knowledge, price_band_words
from components.llm.model import load_pretrained
from tests.factories import build_tiny_lm

KNOWLEDGE = ["<user> age 25-34, gender f </user> <orders> noodles x3, pizza x1 </orders>",
             "<user> age 18-24, gender m </user> <none> no behaviour yet </none>"]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hkfr_lm")
    build_tiny_lm(KNOWLEDGE * 20 + ["will the user order from Tiger Pizzeria (pizza, price 25-50)? Answer: yes no"] * 20,
                  folder)
    model, tok = load_pretrained(folder)
    return model.eval(), tok


def test_cached_yes_score_equals_a_plain_forward(lm):
    model, tok = lm
    rows = pd.DataFrame({
        "request_id": ["r1", "r1", "r1", "r2"],
        "knowledge": [KNOWLEDGE[0]] * 3 + [KNOWLEDGE[1]],
        "prompt": ["<task> at lunch: will the user order from Tiger Pizzeria (pizza, price 25-50)?",
                   "<task> at lunch: will the user order from Red Lantern (hot pot, price under 25)?",
                   "<task> at lunch: will the user order from A (noodles, price 90 and above)?",
                   "<task> at dinner: will the user order from Tiger Pizzeria (pizza, price 25-50)?"]})
    got = tuning.score_yes(model, tok, rows, max_knowledge_tokens=40)

    def loglik(x, y):
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([x + y])).logits[0], -1)
        return sum(logp[len(x) - 1 + k, t].item() for k, t in enumerate(y))

    yes, no = tuning.answer_ids(tok, "yes")[:-1], tuning.answer_ids(tok, "no")[:-1]
    for i in range(len(rows)):
        x = tuning.prompt_ids(tok, rows["knowledge"][i], rows["prompt"][i], 40)
        want = 1 / (1 + np.exp(loglik(x, no) - loglik(x, yes)))
        assert got[i] == pytest.approx(want, abs=1e-5)
    assert len(set(np.round(got, 6))) > 1, "different candidates must get different scores"


def test_cached_option_likelihood_equals_a_plain_forward(lm):
    model, tok = lm
    rows = pd.DataFrame({"knowledge": [KNOWLEDGE[0]], "prompt": ["<task> at lunch: which category next?"]})
    options = ["noodles", "pizza", "hot pot"]
    got = tuning.option_logprobs(model, tok, rows, options, max_knowledge_tokens=40)
    x = tuning.prompt_ids(tok, KNOWLEDGE[0], rows["prompt"][0], 40)
    for j, o in enumerate(options):
        y = tuning.answer_ids(tok, o)[:-1]
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([x + y])).logits[0], -1)
        want = sum(logp[len(x) - 1 + k, t].item() for k, t in enumerate(y))
        assert got[0, j] == pytest.approx(want, abs=1e-4)


def test_embedding_ignores_padding_and_dedupes(lm):
    model, tok = lm
    alone = tuning.knowledge_embeddings(model, tok, [KNOWLEDGE[1]], max_tokens=40)
    mixed = tuning.knowledge_embeddings(model, tok, [KNOWLEDGE[0], KNOWLEDGE[1], KNOWLEDGE[1]], max_tokens=40)
    assert np.allclose(alone[0], mixed[1], atol=1e-5) and np.array_equal(mixed[1], mixed[2])
    assert not np.allclose(mixed[0], mixed[1])


def test_projection_keeps_the_main_direction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([10, 1, 1, 1, 1, 1])
    proj = tuning.fit_projection(x, 2)
    z = tuning.project(x, proj)
    assert z.shape == (500, 2) and abs(proj["components"][0, 0]) > 0.99
    assert z[:, 0].var() > 20 * z[:, 1].var()


def test_knowledge_is_the_latest_snapshot_strictly_usable_at_the_row_time():
    snaps = pd.DataFrame({"user_id": ["u1", "u1", "u2"],
                          "event_timestamp": pd.to_datetime(["2026-01-01", "2026-01-15", "2026-01-10"], utc=True),
                          "knowledge": ["old", "new", "u2 text"], "n_behaviors": [0, 5, 3]})
    rows = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u2", "u3"],
                         "ts": pd.to_datetime(["2026-01-14 23:59", "2026-01-15 00:00", "2026-02-01 00:00", "2026-01-09 00:00",
                                               "2026-02-01 00:00"], utc=True)})
    got = attach_knowledge(rows, snaps)
    assert got["knowledge"].tolist()[:3] == ["old", "new", "new"]
    assert "no behaviour yet" in got["knowledge"][3] and "no behaviour yet" in got["knowledge"][4]


def test_price_bands_in_words():
    assert price_band_words([10, 25, 60, 95], [25.0, 50.0, 90.0]).tolist() == ["under 25", "25-50", "50-90", "90 and above"]
