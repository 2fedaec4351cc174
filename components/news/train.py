"""Train and evaluate PerCoNet or NRMS on a MIND folder (``train/`` and ``dev/``), save, load and score.

- samples: every click of a training impression is one sample with ``negatives`` (K) non-clicks of
  the same impression (drawn with replacement when it has fewer, from all articles when it has
  none), scored together with a softmax over 1 + K (NRMS). Negatives and order are drawn afresh
  every epoch from ``(seed, epoch)``, so a resumed run draws what an uninterrupted one would.
- a step encodes each distinct article of its batch once (histories and candidates share them).
- the loop is components/training's ``fit()`` (GPU with bf16 when there is one, fp32 on CPU; a
  checkpoint per epoch beside ``out_dir``; a new call resumes from it).
- evaluation per dev impression: AUC, MRR, nDCG@5, nDCG@10 (MIND's definitions), averaged over the
  impressions that have both a click and a non-click; throughput in impressions per second.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components.training import Recipe, cpu_threads, fingerprint, fit, make_accelerator
from components.config import NewsConfig
from components.news.mind import MindData, generate_mind, load_mind
from components.news.model import (
    EntityVocabulary,
    NewsIndex,
    NewsRecommender,
    Vocabulary,
    build_model,
    count_parameters,
    explain,
    load_vocabularies,
    save_vocabularies,
)

log = logging.getLogger(__name__)

MODEL_FILE, CONFIG_FILE, METRICS_FILE = "model.pt", "config.json", "metrics.json"
METRICS = ("auc", "mrr", "ndcg_at_5", "ndcg_at_10")  # names MLflow accepts (no "@")


# ------------------------------------------------------------------------------------------------
# Metrics of one impression (MIND's evaluation script, written out)


def _ranked(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Labels ordered by descending score (ties keep the impression's order)."""
    return np.asarray(labels)[np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]


def auc(labels, scores) -> float:
    """Probability that a click outscores a non-click (ties count half); NaN without both classes."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()  # Mann-Whitney U from average ranks
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mrr(labels, scores) -> float:
    """Mean over the clicks of 1 / rank (MIND: sum of y_i / rank_i divided by the number of clicks)."""
    ranked = _ranked(labels, scores)
    return float((ranked / np.arange(1, len(ranked) + 1)).sum() / ranked.sum())


def dcg(labels, scores, k: int) -> float:
    """Discounted cumulative gain of the top ``k``: sum of (2^y - 1) / log2(rank + 1)."""
    ranked = _ranked(labels, scores)[:k]
    return float(((2.0 ** ranked - 1) / np.log2(np.arange(2, len(ranked) + 2))).sum())


def ndcg(labels, scores, k: int) -> float:
    """DCG@k over the DCG@k of the ideal order."""
    best = dcg(labels, labels, k)
    return dcg(labels, scores, k) / best if best > 0 else float("nan")


def impression_metrics(labels, scores) -> dict[str, float] | None:
    """AUC, MRR, nDCG@5 and nDCG@10 of one impression; None when it lacks a click or a non-click."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return None
    return {"auc": auc(labels, scores), "mrr": mrr(labels, scores), "ndcg_at_5": ndcg(labels, scores, 5),
            "ndcg_at_10": ndcg(labels, scores, 10)}


# ------------------------------------------------------------------------------------------------
# Impressions as arrays


@dataclass
class Impressions:
    """Impressions of one folder in the index's rows: histories (n, history_len), personas (n, top_k),
    candidates and labels (ragged, one array per impression)."""

    history: np.ndarray
    persona: np.ndarray
    persona_weight: np.ndarray
    candidates: list[np.ndarray]
    labels: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.candidates)


def prepare_impressions(behaviors: pd.DataFrame, index: NewsIndex) -> Impressions:
    """Rows, personas and labels of every impression (a history's persona is computed once)."""
    n, k = len(behaviors), index.cfg.persona_top_k
    history = np.zeros((n, index.cfg.history_len), dtype=np.int64)
    persona = np.zeros((n, k), dtype=np.int64)
    weight = np.zeros((n, k), dtype=np.float32)
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for i, h in enumerate(behaviors["history"]):
        history[i] = index.history(h)
        key = tuple(history[i])
        if key not in cache:
            cache[key] = index.persona(history[i])
        persona[i], weight[i] = cache[key]
    candidates = [index.rows(c) for c in behaviors["candidates"]]
    labels = [np.asarray(y, dtype=np.int64) for y in behaviors["labels"]]
    return Impressions(history, persona, weight, candidates, labels)


def training_samples(imps: Impressions, negatives: int, rng: np.random.Generator,
                     n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(impression of each sample (S,), candidate rows (S, 1 + K) with the click first)."""
    which, cands = [], []
    for i, (c, y) in enumerate(zip(imps.candidates, imps.labels)):
        pos, neg = c[y == 1], c[y == 0]
        for p in pos:
            if len(neg) >= negatives:
                drawn = rng.choice(neg, size=negatives, replace=False)
            elif len(neg):
                drawn = rng.choice(neg, size=negatives, replace=True)
            else:  # an all-click impression: random articles stand in
                drawn = rng.integers(1, n_rows, size=negatives)
            which.append(i)
            cands.append(np.concatenate([[p], drawn]))
    if not which:
        raise ValueError("no clicks in the training impressions: nothing to train on")
    return np.asarray(which, dtype=np.int64), np.stack(cands).astype(np.int64)


def _batch(index: NewsIndex, imps: Impressions, which: np.ndarray, cands: np.ndarray, device) -> dict:
    """Model inputs for samples of impressions ``which`` with candidate rows ``cands``: the distinct
    articles once (row 0, the padding article, first), histories and candidates pointing into them."""
    hist = imps.history[which]
    rows, inv = np.unique(np.concatenate([[0], hist.ravel(), cands.ravel()]), return_inverse=True)
    b, h = hist.shape
    t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    return {"news": index.features(t(rows)), "history": t(inv[1:1 + b * h].reshape(b, h)),
            "candidates": t(inv[1 + b * h:].reshape(cands.shape)), "persona": t(imps.persona[which]),
            "persona_weight": t(imps.persona_weight[which])}


# ------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def score_impressions(model: NewsRecommender, index: NewsIndex, imps: Impressions, batch_size: int = 256,
                      news_batch: int = 1024) -> list[np.ndarray]:
    """Click scores of every impression's candidates: all articles encoded once, users in batches."""
    was_training = model.training
    model.eval()
    try:
        device = index.title.device
        vecs = torch.cat([model.encode_news(index.features(torch.arange(s, min(s + news_batch, len(index.ids)),
                                                                        device=device)))[0]
                          for s in range(0, len(index.ids), news_batch)])
        cand_vecs = vecs.float().cpu()
        out = []
        for s in range(0, len(imps), batch_size):
            sl = slice(s, s + batch_size)
            hist = torch.as_tensor(imps.history[sl], device=device)
            user, _, _ = model.encode_user(vecs[hist], hist != 0, torch.as_tensor(imps.persona[sl], device=device),
                                           torch.as_tensor(imps.persona_weight[sl], device=device))
            user = user.float().cpu()
            out += [(cand_vecs[torch.as_tensor(c)] @ u).numpy() for c, u in zip(imps.candidates[sl], user)]
        return out
    finally:
        model.train(was_training)


def evaluate(model: NewsRecommender, index: NewsIndex, imps: Impressions, batch_size: int = 256) -> dict:
    """Mean AUC, MRR, nDCG@5, nDCG@10 over the impressions with both classes, and impressions/s."""
    t0 = time.perf_counter()
    scores = score_impressions(model, index, imps, batch_size)
    seconds = time.perf_counter() - t0
    per = [m for y, s in zip(imps.labels, scores) if (m := impression_metrics(y, s)) is not None]
    out = {k: float(np.mean([m[k] for m in per])) if per else float("nan") for k in METRICS}
    out.update(impressions=len(per), skipped=len(imps) - len(per), seconds=round(seconds, 3),
               impressions_per_s=len(imps) / max(seconds, 1e-9))
    return out


# ------------------------------------------------------------------------------------------------
# Training


def checkpoint_dir(out_dir: Path) -> Path:
    """Per-epoch checkpoints of a model saved to ``out_dir`` (a sibling, outside a DVC output)."""
    return out_dir.parent / f"{out_dir.name}_ckpt"


# Knobs that change neither the samples nor the updates: a checkpoint stays valid across them.
_NOT_TRAINING = {"cpu_threads", "checkpoint", "eval_batch_size", "max_eval_impressions", "explain_top",
                 "registered_name", "mind_dir", "mixed_precision", "promotion_margin",
                 "promotion_floor_margin"}


def _fingerprint(cfg: NewsConfig, kind: str, seed: int, train: MindData) -> str:
    return fingerprint({"news": cfg.model_dump(mode="json", exclude=_NOT_TRAINING), "model": kind, "seed": seed},
                       train.news[["news_id", "title"]], train.behaviors[["impression_id", "user_id"]])


def load_splits(cfg: NewsConfig, mind_dir: str | Path | None, out_dir: Path, seed: int,
                quarantine_dir: str | Path | None) -> tuple[MindData, MindData, Path]:
    """Validated train and dev folders of ``mind_dir`` (default ``cfg.mind_dir``); with neither,
    a synthetic world generated beside ``out_dir`` from ``seed``."""
    mind_dir = mind_dir or cfg.mind_dir
    if mind_dir is None:
        mind_dir = out_dir.parent / f"{out_dir.name}_synthetic_mind"
        generate_mind(mind_dir, cfg, seed)
    mind_dir = Path(mind_dir)
    quarantine_dir = Path(quarantine_dir) if quarantine_dir is not None else out_dir.parent / "quarantine"
    # Both folders are validated before anything is trained or written.
    return load_mind(mind_dir / "train", quarantine_dir), load_mind(mind_dir / "dev", quarantine_dir), mind_dir


def train_news(cfg: NewsConfig, mind_dir: str | Path | None, out_dir: str | Path, model: str = "perconet",
               seed: int | None = None, quarantine_dir: str | Path | None = None) -> dict:
    """Train ``model`` ("perconet" or "nrms") on ``mind_dir/train``, evaluate on ``mind_dir/dev``, save
    to ``out_dir`` (model.pt, vocab.json, entities.json, config.json, metrics.json); return the metrics.

    ``mind_dir`` None: ``cfg.mind_dir``, else a synthetic world. ``seed`` None: ``cfg.seed``, else 0. A bad
    folder is quarantined to ``quarantine_dir`` (default ``out_dir/../quarantine``) and raises MindRejected.
    """
    seed = seed if seed is not None else (cfg.seed if cfg.seed is not None else 0)
    with cpu_threads(cfg.cpu_threads):
        return _train(cfg, mind_dir, Path(out_dir), model, seed, quarantine_dir)


def _train(cfg: NewsConfig, mind_dir, out_dir: Path, kind: str, seed: int, quarantine_dir) -> dict:
    t_start = time.perf_counter()
    train, dev, mind_dir = load_splits(cfg, mind_dir, out_dir, seed, quarantine_dir)
    acc = make_accelerator(cfg.mixed_precision, seed=seed)
    vocab = Vocabulary.build(pd.concat([train.news["title"], train.news["abstract"]]), cfg.min_word_count,
                             cfg.max_vocab)
    entity_vocab = EntityVocabulary.build(train.news)
    train_index = NewsIndex(train.news, vocab, entity_vocab, cfg).to(acc.device)
    dev_index = NewsIndex(dev.news, vocab, entity_vocab, cfg).to(acc.device)
    train_imps = prepare_impressions(train.behaviors, train_index)
    dev_beh = dev.behaviors if cfg.max_eval_impressions is None else dev.behaviors.iloc[:cfg.max_eval_impressions]
    dev_imps = prepare_impressions(dev_beh, dev_index)
    t_data = time.perf_counter() - t_start
    n_rows = len(train_index.ids)

    def batches(epoch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng([seed, epoch])
        which, cands = training_samples(train_imps, cfg.negatives, rng, n_rows)
        order = rng.permutation(len(which))
        # Every process takes its own share of the same epoch's batches (the same count each, for DDP).
        n_batches = len(order) // cfg.batch_size + bool(len(order) % cfg.batch_size)
        n_batches -= n_batches % acc.num_processes
        idx = [order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
               for b in range(acc.process_index, n_batches, acc.num_processes)]
        return [(which[i], cands[i]) for i in idx]

    def loss(net, batch):
        scores, aux = net(**_batch(train_index, train_imps, *batch, acc.device))
        target = torch.zeros(len(scores), dtype=torch.long, device=acc.device)
        return F.cross_entropy(scores.float(), target) + aux

    recipe = Recipe(model=build_model(kind, cfg, len(vocab), len(entity_vocab)), batches=batches, loss=loss,
                    optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
    out = fit(acc, recipe, epochs=cfg.epochs, ckpt_dir=checkpoint_dir(out_dir) if cfg.checkpoint else None,
              fingerprint=_fingerprint(cfg, kind, seed, train), grad_clip=cfg.grad_clip or 0.0,
              log=lambda row, epoch: log.info("%s epoch %d/%d: loss %.4f", kind, epoch, cfg.epochs, row["train_loss"]),
              desc=kind)
    model, start = out.model, out.start_epoch
    train_seconds = out.train_seconds
    epochs_run = out.epoch - start
    per_epoch = len(out.step_rows) // max(epochs_run, 1)
    first_loss = float(np.mean([r["loss"] for r in out.step_rows[:max(1, per_epoch // 10)]])) if out.step_rows else None

    acc.wait_for_everyone()
    metrics: dict = {"model": kind, "seed": seed, "mind_dir": str(mind_dir), "device": str(acc.device),
                     "parameters": count_parameters(model), "train.impressions": len(train_imps),
                     "train.samples": int(sum(int(y.sum()) for y in train_imps.labels)), "train.news": len(train.news),
                     "vocab.words": len(vocab), "vocab.entities": len(entity_vocab), "epochs": cfg.epochs,
                     "resumed_from_epoch": start, "data_seconds": round(t_data, 2),
                     "train_seconds": round(train_seconds, 2)}
    if epochs_run:
        metrics["train.impressions_per_s"] = len(train_imps) * epochs_run / max(train_seconds, 1e-9)
        metrics["train.loss_first"] = first_loss
        metrics["train.loss"] = out.history[-1]["train_loss"]
    if acc.is_main_process:
        ev = evaluate(model, dev_index, dev_imps, cfg.eval_batch_size)
        metrics.update({f"dev.{k}": v for k, v in ev.items()})
        metrics["seconds"] = round(time.perf_counter() - t_start, 2)
        save_news_model(model, vocab, entity_vocab, cfg, out_dir, metrics)
    acc.wait_for_everyone()
    return metrics


# ------------------------------------------------------------------------------------------------
# Saving, loading, scoring


def save_news_model(model: NewsRecommender, vocab: Vocabulary, entity_vocab: EntityVocabulary, cfg: NewsConfig,
                    out_dir: str | Path, metrics: dict | None = None) -> Path:
    """Write model.pt (state_dict), vocab.json, entities.json, config.json and metrics.json to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, out_dir / MODEL_FILE)
    save_vocabularies(out_dir, vocab, entity_vocab)
    (out_dir / CONFIG_FILE).write_text(json.dumps({"model": model.kind, "config": cfg.model_dump(mode="json")},
                                                  indent=2) + "\n")
    if metrics is not None:
        (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return out_dir


@dataclass
class TrainedNewsModel:
    """A saved model with its vocabularies and config, ready to score articles of any MIND news table."""

    model: NewsRecommender
    vocab: Vocabulary
    entity_vocab: EntityVocabulary
    cfg: NewsConfig

    def index(self, news: pd.DataFrame) -> NewsIndex:
        """Featurise a ``news.tsv`` table with this model's vocabularies."""
        return NewsIndex(news, self.vocab, self.entity_vocab, self.cfg).to(next(self.model.parameters()).device)

    def explain(self, news: pd.DataFrame | NewsIndex, history: list[str], candidates: list[str],
                top: int | None = None) -> list[dict]:
        """Candidates best first, each with its score and the persona entities behind it (model.explain)."""
        index = news if isinstance(news, NewsIndex) else self.index(news)
        return explain(self.model, index, history, candidates, top)


def load_news_model(model_dir: str | Path, device: str | torch.device = "cpu") -> TrainedNewsModel:
    """Load what :func:`train_news` saved in ``model_dir`` (in eval mode)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / CONFIG_FILE).read_text())
    cfg = NewsConfig(**meta["config"])
    vocab, entity_vocab = load_vocabularies(model_dir)
    model = build_model(meta["model"], cfg, len(vocab), len(entity_vocab))
    model.load_state_dict(torch.load(model_dir / MODEL_FILE, map_location="cpu", weights_only=True))
    return TrainedNewsModel(model.to(device).eval(), vocab, entity_vocab, cfg)


def score(trained: TrainedNewsModel, news: pd.DataFrame | NewsIndex, histories: list[list[str]],
          candidates: list[list[str]]) -> list[np.ndarray]:
    """Click scores of each user's candidates (news ids of ``news``), given their click histories."""
    index = news if isinstance(news, NewsIndex) else trained.index(news)
    beh = pd.DataFrame({"history": histories, "candidates": candidates,
                        "labels": [[0] * len(c) for c in candidates]})
    return score_impressions(trained.model, index, prepare_impressions(beh, index), trained.cfg.eval_batch_size)
