"""A tiny PerCoNet training run (components/news/train.py) on a synthetic MIND world: better than
random, a usable saved model, resume at the last epoch."""
from __future__ import annotations

import numpy as np
import pytest

from components.config import NewsConfig
from components.news.mind import generate_mind, load_mind
from components.news.train import load_news_model, score, train_news
from tests.factories import TINY_NEWS as TINY

pytestmark = pytest.mark.slow


def test_tiny_training_beats_random_and_saves_a_usable_model(tmp_path):
    cfg = NewsConfig(**TINY)
    generate_mind(tmp_path / "mind", cfg, seed=0)
    out = tmp_path / "model"
    m = train_news(cfg, tmp_path / "mind", out, model="perconet", seed=0)
    assert m["dev.auc"] > 0.58 and m["train.loss"] < m["train.loss_first"]
    assert m["dev.impressions"] + m["dev.skipped"] == 200 and m["train.impressions_per_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "entities.json", "metrics.json", "model.pt",
                                                     "vocab.json"]

    trained = load_news_model(out)
    dev = load_mind(tmp_path / "mind" / "dev")
    b = dev.behaviors.iloc[:3]
    scores = score(trained, dev.news, b["history"].tolist(), b["candidates"].tolist())
    assert [len(s) for s in scores] == [len(c) for c in b["candidates"]]
    ex = trained.explain(dev.news, b["history"].iloc[0], b["candidates"].iloc[0])
    assert ex[0]["score"] == pytest.approx(float(np.max(scores[0])), rel=1e-4, abs=1e-5)

    again = train_news(cfg, tmp_path / "mind", out, model="perconet", seed=0)  # resumes at the last epoch
    assert again["resumed_from_epoch"] == cfg.epochs and again["dev.auc"] == pytest.approx(m["dev.auc"])
