"""LARR stage 2 (METHODS.md §1): contrastive fine-tuning of the pretrained LM into a text encoder.

Each step draws ``batch_size`` pairs from every strategy (user–user, PoI–PoI, user–PoI; mined in
``pairs.py``), embeds both sides with the one shared ``TextEncoder`` (last token -> MLP -> unit
vector) and takes InfoNCE over cosine similarities with the other pairs of the batch as negatives;
the strategies' losses are summed with ``contrastive.weights``. With ``contrastive.negatives: batch``
one InfoNCE runs over every strategy's pairs of the step instead (more, and harder to tell apart,
negatives per pair: the recipe of sentence-transformers' MultipleNegativesRankingLoss).

Choices of ours (LARR gives none): the loss is symmetric by default (anchor->positive and back); two
pairs of a batch that share an entity (a popular PoI twice, one user twice, PoI pairs i->j and j->i)
are masked out of each other's negatives instead of being pushed apart; the fresh head
learns at ``head_lr``, the backbone at ``lr``. Batches are a pure function of (seed, step, rank),
so a resumed run draws exactly the batches it would have drawn. Under DDP each process draws its
own batches and the negatives stay within a process.
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from components.config import Params
from components.layers import info_nce
from components.llm.encoder import TextEncoder, encoder_candidate
from components.llm.pairs import STRATEGIES, by_strategy, load_pairs, shares_identifying_span
from components.training import MlflowLog, Recipe, cpu_threads, fingerprint, fit, make_accelerator


def default_model_dir(params: Params) -> Path:
    """Where pretraining saves the causal LM (``llm_dir/pretrained``)."""
    return params.path("llm_dir") / "pretrained"


def default_out_dir(params: Params) -> Path:
    return params.path("llm_dir") / "encoder"


def for_student(params: Params) -> Params:
    """``params`` for fine-tuning a distilled student: ``contrastive.lr`` replaced by ``student_lr`` and
    ``steps`` by ``student_steps`` when set (the warm-up keeps its share of the steps). A pruned copy has
    lost the balance its pretraining found (on MiniLM's 25 % HomoDistil student, 20 steps at the
    teacher's 2e-5 left held-out recall@10 at 0.20, 5e-4 gave 0.26; benchmarks/embedders.py), and a
    step of it costs a fraction of the teacher's, so it can take more of them for the same CPU time."""
    cfg = params.contrastive
    update = {}
    if cfg.student_lr is not None:
        update["lr"] = cfg.student_lr
    if cfg.student_steps is not None:
        update["steps"] = cfg.student_steps
        update["warmup_steps"] = min(round(cfg.warmup_steps * cfg.student_steps / cfg.steps), cfg.student_steps - 1)
    if not update:
        return params
    return params.model_copy(update={"contrastive": cfg.model_copy(update=update)})


def checkpoint_dir(out_dir: Path) -> Path:
    """Training checkpoints of the encoder saved to ``out_dir`` (a sibling, so DVC does not cache them)."""
    return out_dir.parent / f"{out_dir.name}_ckpt"


# ------------------------------------------------------------------------------------------------
# Loss and batches (pure)


def false_negatives(anchor_ids, positive_ids) -> np.ndarray:
    """(n, n) mask of pairs that are no negatives of each other: pairs i and j share an entity
    (the same user, the same PoI, or PoI pairs i->j and j->i). The diagonal is never masked."""
    a = np.asarray(anchor_ids, dtype=object)
    p = np.asarray(positive_ids, dtype=object)
    mask = ((a[:, None] == a[None, :]) | (p[:, None] == p[None, :])
            | (a[:, None] == p[None, :]) | (p[:, None] == a[None, :]))
    np.fill_diagonal(mask, False)
    return mask


def batch_indices(n: int, batch_size: int, seed: int, step: int, strategy: int, rank: int = 0) -> np.ndarray:
    """Pairs of one strategy at one step: a seeded draw without replacement (reproducible on resume)."""
    rng = np.random.default_rng([seed, step, strategy, rank])
    return rng.choice(n, size=min(batch_size, n), replace=False)


def relation_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) between in-batch similarity distributions: for each of the n texts, the
    softmax at ``temperature`` over its similarity to the n − 1 others, the teacher's as the target,
    averaged over texts. Both inputs (n, d) unit vectors; the widths may differ (a 128-wide student
    learns a 384-wide teacher's geometry, not its coordinates)."""
    n = len(student)
    off = ~torch.eye(n, dtype=torch.bool, device=student.device)
    teacher = teacher.to(student.dtype)
    s = (student @ student.T / temperature)[off].view(n, n - 1)
    t = (teacher @ teacher.T / temperature)[off].view(n, n - 1)
    return F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")


class TeacherTerm:
    """``contrastive.teacher_weight``: a distilled student also matches the fine-tuned teacher
    encoder's view of each step's texts (``relation_kl`` over all anchors and positives of the step).
    The contrastive loss alone gives the student one positive per text; the teacher's similarities
    to every other text of the step are a denser target (measured: benchmarks/embedders.py, README).
    ``last`` holds the latest value for the log. The teacher is frozen and in eval mode, so each text's
    embedding is computed once and kept (``cache``): the training pairs recur every epoch, and the
    teacher's forward would otherwise cost more than the student's step."""

    def __init__(self, encoder: TextEncoder, weight: float, temperature: float):
        self.encoder = encoder.eval().requires_grad_(False)
        self.weight, self.temperature, self.last = weight, temperature, float("nan")
        self.cache: dict[str, torch.Tensor] = {}

    def embed(self, texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            with torch.no_grad():
                z = self.encoder(**self.encoder.tokenize(new)).float()  # kept on the teacher's device
            self.cache.update(zip(new, z))
        return torch.stack([self.cache[t] for t in texts])

    def __call__(self, texts: list[str], z: torch.Tensor) -> torch.Tensor:
        t = self.embed(texts).to(z.device)
        term = relation_kl(z, t, self.temperature)
        self.last = float(term.detach())
        return self.weight * term


def strategy_loss(model, encoder: TextEncoder, pairs: pd.DataFrame, idx: np.ndarray, temperature: float,
                  symmetric: bool = True, teacher: TeacherTerm | None = None) -> torch.Tensor:
    """InfoNCE of the pairs ``idx`` of one strategy. Anchors and positives go through one forward
    (``model``: the encoder, or its DDP wrapper; ``encoder``: the unwrapped one, for tokenising);
    plus the ``teacher`` term on the same texts when given."""
    rows = pairs.iloc[idx]
    texts = rows["anchor_text"].tolist() + rows["positive_text"].tolist()
    z = model(**encoder.tokenize(texts))
    a, p = z[:len(idx)], z[len(idx):]
    shared = torch.as_tensor(false_negatives(rows["anchor_id"].to_numpy(), rows["positive_id"].to_numpy()),
                             device=a.device)
    loss = info_nce(a, p, temperature, symmetric=symmetric, exclude=shared)
    return loss if teacher is None else loss + teacher(texts, z)


def mixed_loss(model, encoder: TextEncoder, train: dict[str, pd.DataFrame], idx: dict[str, np.ndarray],
               temperature: float, symmetric: bool, weights: dict[str, float],
               teacher: TeacherTerm | None = None) -> tuple[torch.Tensor, dict]:
    """InfoNCE over the pairs of every strategy drawn this step at once (``contrastive.negatives:
    batch``): each pair's negatives are all other pairs of the step, whatever their strategy (as
    sentence-transformers' MultipleNegativesRankingLoss on a mixed dataset). A pair's loss counts with
    its strategy's weight; the ``teacher`` term on the step's texts is added when given. Returns
    (loss, {strategy: mean InfoNCE of its pairs} for logging)."""
    rows = pd.concat([train[s].iloc[i][["anchor_id", "positive_id", "anchor_text", "positive_text"]]
                      for s, i in idx.items()], ignore_index=True)
    names = np.concatenate([[s] * len(i) for s, i in idx.items()])
    texts = rows["anchor_text"].tolist() + rows["positive_text"].tolist()
    z = model(**encoder.tokenize(texts))
    a, p = z[:len(rows)], z[len(rows):]
    shared = torch.as_tensor(false_negatives(rows["anchor_id"].to_numpy(), rows["positive_id"].to_numpy()),
                             device=a.device)
    w = torch.as_tensor([float(weights[s]) for s in names], device=a.device)
    total = info_nce(a, p, temperature, symmetric=symmetric, exclude=shared, weights=w)
    with torch.no_grad():  # per-strategy figures for the log
        logits = (a @ p.T / temperature).masked_fill(shared, float("-inf"))
        per_row = F.cross_entropy(logits, torch.arange(len(rows), device=a.device), reduction="none")
    parts = {s: float(per_row[torch.as_tensor(names == s)].mean()) for s in idx}
    return (total if teacher is None else total + teacher(texts, z)), parts


def _lr_lambda(warmup: int, steps: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.1, 1.0 - (step - warmup) / max(1, steps - warmup))  # linear decay to 10 %
    return f


# ------------------------------------------------------------------------------------------------
# Training


def finetune(params: Params, model_dir: str | Path | None = None, out_dir: str | Path | None = None,
             run_id: str | None = None, pairs: dict[str, pd.DataFrame] | None = None,
             teacher_dir: str | Path | None = None) -> dict:
    """Fine-tune the LM in ``model_dir`` on the training pairs; save the encoder to ``out_dir``.

    ``pairs``: ``{strategy: frame}`` (default: the mined training split). ``teacher_dir``: a saved
    encoder whose in-batch similarities the model also learns (``TeacherTerm``) when
    ``contrastive.teacher_weight`` > 0 (a distilled student and its teacher). Checkpoints go beside
    ``out_dir`` (``<out_dir>_ckpt``, outside the DVC output) and a rerun resumes from the newest.
    Returns loss figures and timings.
    """
    with cpu_threads(params.contrastive.cpu_threads):
        return _finetune(params, model_dir, out_dir, run_id, pairs, teacher_dir)


def _finetune(params, model_dir, out_dir, run_id, pairs, teacher_dir=None) -> dict:
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import LambdaLR

    cfg = params.contrastive
    model_dir = Path(model_dir or default_model_dir(params))
    out_dir = Path(out_dir or default_out_dir(params))
    train = pairs if pairs is not None else by_strategy(load_pairs(params), "train")
    train = {s: df.reset_index(drop=True) for s, df in train.items() if cfg.weights.get(s, 0) > 0 and len(df) >= 2}
    if not train:
        raise ValueError("no strategy has 2 or more training pairs (see llm_dir/pairs/manifest.json); lower "
                         "contrastive.min_history / min_cooccurrence or give a strategy a weight > 0")

    t0 = time.perf_counter()
    acc = make_accelerator(cfg.mixed_precision, seed=params.seed)
    encoder = TextEncoder.from_backbone(model_dir, cfg, seed=params.seed, device=acc.device)
    strategies = [s for s in STRATEGIES if s in train]
    teacher_dir = Path(teacher_dir) if teacher_dir is not None and cfg.teacher_weight > 0 else None
    teacher = (TeacherTerm(TextEncoder.load(teacher_dir, device=acc.device), cfg.teacher_weight, cfg.temperature)
               if teacher_dir is not None else None)

    def optimizer(model):
        head = list(model.head.parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        groups = [{"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.head_lr}]
        return AdamW([g for g in groups if g["params"]],  # head_hidden 0: no head group
                     weight_decay=cfg.weight_decay)

    def draw(step: int) -> dict[str, np.ndarray]:
        return {s: batch_indices(len(train[s]), cfg.batch_size, params.seed, step, STRATEGIES.index(s),
                                 acc.process_index) for s in strategies}

    def loss(model, step: int):
        # One backward per step; under DDP negatives stay within a process.
        if cfg.negatives == "batch":
            total, parts = mixed_loss(model, encoder, train, draw(step), cfg.temperature, cfg.symmetric, cfg.weights,
                                      teacher=teacher)
            logged = {"loss.batch": float(total.detach()), **{f"loss.{s}": v for s, v in parts.items()}}
        else:
            parts = {s: strategy_loss(model, encoder, train[s], idx, cfg.temperature, cfg.symmetric, teacher=teacher)
                     for s, idx in draw(step).items()}
            total = sum(cfg.weights[s] * v for s, v in parts.items())
            logged = {f"loss.{s}": float(v.detach()) for s, v in parts.items()}
        if teacher is not None:  # (per strategy above: InfoNCE + its weighted teacher term)
            logged["loss.teacher"] = teacher.last
        return total, logged

    recipe = Recipe(model=encoder, optimizer=optimizer, batches=lambda step: step, loss=loss,
                    scheduler=lambda o: LambdaLR(o, _lr_lambda(cfg.warmup_steps, cfg.steps)))
    fit_out = fit(acc, recipe, steps=cfg.steps, ckpt_dir=checkpoint_dir(out_dir),
                  fingerprint=_run_fingerprint(params, model_dir, train, teacher_dir), checkpoint_every=cfg.checkpoint_every,
                  grad_clip=cfg.grad_clip, log=MlflowLog(params, run_id, prefix="contrastive."),
                  log_every=cfg.log_every, desc="contrastive")
    if acc.is_main_process:
        fit_out.model.save(out_dir)
    acc.wait_for_everyone()
    history = fit_out.step_rows
    out = {"steps": cfg.steps, "resumed_from": fit_out.start_step, "seconds": round(time.perf_counter() - t0, 2),
           **{f"pairs.{s}": len(df) for s, df in train.items()}}
    if history:
        w = max(1, min(cfg.log_every, len(history) // 2))
        for k in history[0]:
            if k == "lr":
                continue
            out[f"{k}_first"] = float(np.mean([h[k] for h in history[:w]]))
            out[k] = float(np.mean([h[k] for h in history[-w:]]))
    return out


# Knobs that change neither the batches nor the updates: a checkpoint stays valid across them.
_NOT_TRAINING = {"cpu_threads", "log_every", "checkpoint_every", "eval_k", "eval_batch_size", "registered_name"}


def _run_fingerprint(params: Params, model_dir: Path, train: dict[str, pd.DataFrame],
                     teacher_dir: Path | None = None) -> str:
    """What a checkpoint is only valid for: the training knobs, the seed, the backbone, the teacher
    (when one is used) and the pairs."""
    knobs = params.contrastive.model_dump(mode="json", exclude=_NOT_TRAINING)
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("config.json"))
    if teacher_dir is not None:
        weights += sorted(teacher_dir.rglob("*.safetensors"))
    return fingerprint({"knobs": knobs, "seed": params.seed}, *weights,
                       *[x for s in sorted(train) for x in (s, train[s][["anchor_id", "positive_id", "anchor_text"]])])


# ------------------------------------------------------------------------------------------------
# Evaluation


def retrieval_metrics(queries: np.ndarray, candidates: np.ndarray, target: np.ndarray, exclude: np.ndarray,
                      k: int = 10) -> tuple[float, float]:
    """(recall@k, MRR) of finding candidate ``target[i]`` for query i by dot product; ``exclude``:
    (n_queries, n_candidates) cells left out of the ranking (other known positives, the query itself).
    Ties count half, so a constant embedding scores like chance rather than perfectly."""
    rank = retrieval_ranks(queries, candidates, target, exclude)
    return float(np.mean(rank < k)), float(np.mean(1.0 / (rank + 1)))


def retrieval_ranks(queries: np.ndarray, candidates: np.ndarray, target: np.ndarray, exclude: np.ndarray
                    ) -> np.ndarray:
    """0-based rank of each query's target among the candidates it is ranked against (ties count half)."""
    s = queries @ candidates.T
    s = np.where(exclude, -np.inf, s)
    hit = s[np.arange(len(s)), target][:, None]
    return (s > hit).sum(1) + 0.5 * ((s == hit).sum(1) - 1)


def retrieval_task(pairs: pd.DataFrame) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(query texts, candidate texts, target index, exclusion mask) of one strategy's held-out pairs:
    every distinct held-out positive is a candidate; the other positives of the same anchor and the
    anchor itself are excluded from its ranking."""
    cands = pairs.drop_duplicates("positive_id")
    cand_ids = cands["positive_id"].to_numpy(dtype=object)
    where = {c: i for i, c in enumerate(cand_ids)}
    target = pairs["positive_id"].map(where).to_numpy()
    known = pairs.groupby("anchor_id")["positive_id"].agg(set).to_dict()
    a_ids = pairs["anchor_id"].to_numpy(dtype=object)
    exclude = np.array([[c in known[a] or c == a for c in cand_ids] for a in a_ids], dtype=bool).reshape(
        len(a_ids), len(cand_ids))
    exclude[np.arange(len(target)), target] = False
    return pairs["anchor_text"].tolist(), cands["positive_text"].tolist(), target, exclude


def _score(out: dict, prefix: str, q, c, target, exclude, k: int) -> None:
    out[f"{prefix}.recall_at_{k}"], out[f"{prefix}.mrr"] = retrieval_metrics(q, c, target, exclude, k)


def evaluate(encoder: TextEncoder, heldout_pairs: dict[str, pd.DataFrame], untuned: TextEncoder | None = None,
             k: int = 10, batch_size: int = 64, seed: int = 0) -> dict:
    """Per strategy, recall@k and MRR of retrieving each held-out positive among all held-out positives,
    for the fine-tuned encoder, the ``untuned`` one (when given: e.g. the pretrained LM's raw pooled
    state) and random unit vectors. Keys ``{strategy}.{model}.recall_at_{k}`` / ``.mrr``, plus means;
    ``{strategy}.clean.{model}.*``: the same over the queries whose pair shares no identifying span."""
    models = {"finetuned": encoder}
    if untuned is not None:
        models["untuned"] = untuned
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for strategy, pairs in heldout_pairs.items():
        if len(pairs) == 0:
            continue
        pairs = pairs.reset_index(drop=True)
        queries, cands, target, exclude = retrieval_task(pairs)
        clean = ~np.array([shares_identifying_span(a, p) for a, p in
                           zip(pairs["anchor_text"], pairs["positive_text"])], dtype=bool)
        out[f"{strategy}.queries"] = len(queries)
        out[f"{strategy}.clean_queries"] = int(clean.sum())
        out[f"{strategy}.candidates"] = len(cands)
        for name, model in models.items():
            texts = list(dict.fromkeys(queries + cands))  # PoI texts can be both query and candidate
            emb = model.encode(texts, batch_size=batch_size)
            pos = {t: i for i, t in enumerate(texts)}
            q = emb[[pos[t] for t in queries]]
            c = emb[[pos[t] for t in cands]]
            _score(out, f"{strategy}.{name}", q, c, target, exclude, k)
            if clean.any():
                _score(out, f"{strategy}.clean.{name}", q[clean], c, target[clean], exclude[clean], k)
        q = rng.standard_normal((len(queries), 64))
        c = rng.standard_normal((len(cands), 64))
        _score(out, f"{strategy}.random", q, c, target, exclude, k)
        if clean.any():
            _score(out, f"{strategy}.clean.random", q[clean], c, target[clean], exclude[clean], k)
    strategies = [s for s in heldout_pairs if f"{s}.queries" in out]
    for name in [*models, "random"]:
        for m in (f"recall_at_{k}", "mrr"):
            vals = [out[f"{s}.{name}.{m}"] for s in strategies]
            if vals:
                out[f"mean.{name}.{m}"] = float(np.mean(vals))
            vals = [out[f"{s}.clean.{name}.{m}"] for s in strategies if f"{s}.clean.{name}.{m}" in out]
            if vals:
                out[f"mean.clean.{name}.{m}"] = float(np.mean(vals))
    return out


# ------------------------------------------------------------------------------------------------
# The pipeline step


def contrastive_step(params: Params, model_dir: str | Path | None = None, out_dir: str | Path | None = None,
                     run_id: str | None = None, register_as: str | None = None,
                     teacher_dir: str | Path | None = None) -> dict:
    """Mine (or reuse) pairs, fine-tune (with ``teacher_dir``'s encoder as the teacher term when
    ``contrastive.teacher_weight`` > 0), evaluate on the held-out pairs, save the encoder to
    ``out_dir`` (default ``llm_dir/encoder``) and, with ``register_as``, register it in the MLflow
    Model Registry. Writes ``out_dir/metrics.json``; returns the flat metrics."""
    from accelerate import PartialState

    from components import registry, tracking

    cfg = params.contrastive
    model_dir = Path(model_dir or default_model_dir(params))
    out_dir = Path(out_dir or default_out_dir(params))
    t0 = time.perf_counter()
    pairs = load_pairs(params)
    fit = finetune(params, model_dir, out_dir, run_id, pairs=by_strategy(pairs, "train"), teacher_dir=teacher_dir)
    if not PartialState().is_main_process:
        return fit

    t1 = time.perf_counter()
    with cpu_threads(cfg.cpu_threads):
        encoder = TextEncoder.load(out_dir)
        untuned = TextEncoder.from_backbone(model_dir, cfg, head=False)
        scores = evaluate(encoder, by_strategy(pairs, "heldout"), untuned=untuned, k=cfg.eval_k,
                          batch_size=cfg.eval_batch_size, seed=params.seed)
    metrics = {**{f"pairs.{k}": len(v) for k, v in pairs.items()},
               **{f"train.{k}": v for k, v in fit.items()},
               **{f"eval.{k}": v for k, v in scores.items()},
               "eval.seconds": round(time.perf_counter() - t1, 2),
               "seconds": round(time.perf_counter() - t0, 2)}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if run_id:
        tracking.log_params(params, run_id, {"contrastive": cfg.model_dump(mode="json")})
        tracking.log_metrics(params, run_id, metrics)
    if register_as:
        heldout = by_strategy(pairs, "heldout")
        example = [df["anchor_text"].iloc[0] for df in heldout.values()][:2]

        def heldout_mrr(enc: TextEncoder) -> float:  # the challenger and the champion, on the same pairs
            with cpu_threads(cfg.cpu_threads):
                return evaluate(enc, heldout, k=cfg.eval_k, batch_size=cfg.eval_batch_size,
                                seed=params.seed)["mean.finetuned.mrr"]

        candidate = encoder_candidate(
            params, out_dir, register_as, heldout_mrr, chance=scores["mean.random.mrr"], input_texts=example or None,
            baseline={"heldout.mrr": scores["mean.untuned.mrr"]} if "mean.untuned.mrr" in scores else None)
        with tracking.tracked_run(params, "contrastive") if not run_id else nullcontext(run_id) as rid:
            if not run_id:
                tracking.log_metrics(params, rid, metrics)
            result = registry.register_candidate(params, rid, candidate)
        metrics["registered_version"] = int(result["version"])
        metrics["promoted"] = int(bool(result["promoted"]))
        print(f"{result['name']} v{result['version']} -> {result['alias']}: {result['reason']}")
    return metrics
