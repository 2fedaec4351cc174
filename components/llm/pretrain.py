"""Continual pretraining of the LM on the SceneRec corpus (LARR stage 1, METHODS.md §1).

The objective fits the model (model.LMObjective): next-token prediction for a causal LM, masked-LM
(BERT's 80/10/10, the field markers never masked) for an encoder base such as MiniLM.

The loop, nanoGPT-style, in one function:

- data: every document is ``<s> ... </s>``; the documents are concatenated and cut into blocks of
  ``seq_len`` tokens (packing: no padding, every token is trained on). Attention runs across
  document boundaries inside a block, as in GPT pretraining; ``</s><s>`` marks them.
- order: step ``s`` trains on positions ``s*B .. s*B+B-1`` of an endless stream of seeded
  per-epoch permutations of the blocks. The batch is a pure function of the step, so the data
  position needs no state of its own: resuming at step k reads exactly what an uninterrupted
  run would have read.
- DDP: ``batch_size`` is the global batch; rank r of W takes the r-th slice of B/W sequences of
  the same global batch, and DDP averages the gradients, so 1 process and W processes take the
  same steps (up to float summation order).
- AdamW (decay on matrices only) with linear warm-up then cosine decay to ``lr * min_lr_ratio``;
  the loop itself (clipping, bf16 autocast on CUDA, checkpoints every ``checkpoint_every`` steps in
  ``llm_dir/pretrain_ckpt``, resume from the newest intact one unless the configuration or the
  corpus changed) is components/training's ``fit()``.

Run it on one process as ``pretrain(params)`` (or ``python -m components.llm.pretrain --corpus``), or
on several with ``torchrun --nproc_per_node 2 -m components.llm.pretrain --params params.yaml`` (gloo on
CPU, NCCL on GPU) or, on GPUs, ``accelerate launch --multi_gpu --num_processes N -m components.llm.pretrain``.
(``accelerate launch --cpu --num_processes 2`` starts ONE process unless accelerate is configured for
MULTI_CPU with mpirun: use torchrun on CPU.) Only rank 0 logs to MLflow, shows the progress bar and
writes the final model.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from components.config import Params
from components import training
from components.llm.corpus import check_special_tokens, encode_documents, read_lines
from components.llm.model import LMObjective, build_model, count_parameters, step_generator

# Knobs that change how often we look or save, not what the model learns: a changed value of
# one of these still resumes from the existing checkpoints.
_NOT_IN_FINGERPRINT = {"checkpoint_every", "keep_checkpoints", "eval_every", "eval_blocks"}


# ----------------------------------------------------------------------------------------------
# Data


def pack(ids: np.ndarray, seq_len: int) -> torch.Tensor:
    """(n_blocks, seq_len) int64 blocks of the token stream; the ragged tail is dropped."""
    n = len(ids) // seq_len
    return torch.from_numpy(ids[: n * seq_len].astype(np.int64)).view(n, seq_len)


class BlockOrder:
    """Which blocks form the global batch of a step: an endless stream of seeded per-epoch permutations."""

    def __init__(self, n_blocks: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n_blocks, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:  # steps only move forward: old epochs are never read again
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perms[epoch]

    def batch(self, step: int) -> np.ndarray:
        """Block indices of the global batch of ``step`` (0-based)."""
        pos = step * self.batch_size + np.arange(self.batch_size)
        epoch, within = pos // self.n, pos % self.n
        return np.concatenate([self._perm(int(e))[within[epoch == e]] for e in np.unique(epoch)])


class WarmupCosine:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``steps``.

    A class, not a lambda, so ``LambdaLR.state_dict`` carries it into checkpoints.
    """

    def __init__(self, warmup: int, steps: int, min_ratio: float):
        self.warmup, self.steps, self.min_ratio = warmup, steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.steps - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class HeadWarmup:
    """The base model's learning-rate multiplier under a head warm-up: 0 (frozen) for the first
    ``hold`` steps, then ``WarmupCosine(warmup, steps - hold)`` from its start, so the base gets its own
    linear warm-up once the fresh head has learned to read it."""

    def __init__(self, hold: int, warmup: int, steps: int, min_ratio: float):
        self.hold, self.after = hold, WarmupCosine(warmup, steps - hold, min_ratio)

    def __call__(self, step: int) -> float:
        return 0.0 if step < self.hold else self.after(step - self.hold)


def param_groups(model, weight_decay: float, fresh: set[str] | frozenset = frozenset(),
                 fresh_lr: float | None = None) -> list[dict]:
    """Weight decay on matrices (linear layers, embeddings), none on norms and biases (nanoGPT).
    With ``fresh`` (parameter names), those form two groups of their own after the others, marked
    ``"fresh": True`` (the head warm-up schedules them apart), at ``fresh_lr`` when given; empty
    groups are left out."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = []
    for part in ([p for n, p in named if n not in fresh], [p for n, p in named if n in fresh]):
        groups += [{"params": [p for p in part if p.dim() >= 2], "weight_decay": weight_decay},
                   {"params": [p for p in part if p.dim() < 2], "weight_decay": 0.0}]
    if not fresh:
        return groups[:2]
    for g in groups[2:]:
        g["fresh"] = True
        if fresh_lr is not None:
            g["lr"] = fresh_lr
    return [g for g in groups if g["params"]]


def lr_lambdas(cfg, groups: list[dict]) -> list:
    """One schedule per parameter group (``param_groups``'): the fresh groups and, without fresh
    groups, every group on ``WarmupCosine``; with them, the base's groups on ``HeadWarmup``."""
    cosine = WarmupCosine(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    if not any(g.get("fresh") for g in groups):
        return [cosine] * len(groups)
    base = HeadWarmup(cfg.head_warmup_steps, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    return [cosine if g.get("fresh") else base for g in groups]


@torch.no_grad()
def heldout_perplexity(model, blocks: torch.Tensor, batch_size: int, accelerator,
                       objective: LMObjective | None = None, seed: int = 0) -> float:
    """exp(mean LM loss) over ``blocks``: next-token perplexity, or for a masked LM the perplexity of
    the masked tokens under one fixed masking (the same at every evaluation, so the figures compare).
    Runs on the unwrapped model (no collectives)."""
    objective = objective or LMObjective()
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    generator = step_generator(seed, -1)
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size].to(accelerator.device)
        with accelerator.autocast():
            loss = objective.loss(model, x, generator)
        total += float(loss) * len(x)
        count += len(x)
    model.train(was_training)
    return math.exp(total / max(count, 1))


def _fingerprint(params: Params, train_path: Path, vocab: int) -> str:
    """What decides the training trajectory: the llm knobs that matter, the seed and the corpus."""
    knobs = {k: v for k, v in params.llm.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    return training.fingerprint({"llm": knobs, "seed": params.seed, "vocab": vocab}, train_path)


# ----------------------------------------------------------------------------------------------
# The step


def pretrain(params: Params, run_id: str | None = None, max_steps_this_run: int | None = None,
             fresh: bool = False) -> dict:
    """Pretrain (or continue pretraining) on llm_dir/corpus; save llm_dir/pretrained; return metrics.

    ``max_steps_this_run``: stop (with a checkpoint) after this many steps of this call, e.g. to
    spread training over several jobs; the next call resumes there. ``fresh``: ignore and delete
    existing checkpoints. Metrics are logged to MLflow ``run_id`` (rank 0 only) when given.
    """
    with training.cpu_threads(params.llm.cpu_threads):
        return _pretrain(params, run_id, max_steps_this_run, fresh)


def _pretrain(params: Params, run_id: str | None, max_steps_this_run: int | None, fresh: bool) -> dict:
    from transformers import AutoTokenizer

    cfg = params.llm
    llm_dir = params.path("llm_dir")
    corpus_dir, ckpt_dir, out_dir = llm_dir / "corpus", llm_dir / "pretrain_ckpt", llm_dir / "pretrained"
    if not (corpus_dir / "train.txt").exists() or not (llm_dir / "tokenizer").is_dir():
        raise FileNotFoundError(f"{llm_dir}: no corpus/tokenizer yet; run build_corpus first")

    acc = training.make_accelerator(cfg.mixed_precision, seed=params.seed)
    main = acc.is_main_process
    world = acc.num_processes
    if cfg.batch_size % world:
        raise ValueError(f"llm.batch_size ({cfg.batch_size}) must be divisible by the number of processes ({world})")
    per_rank = cfg.batch_size // world

    tokenizer = AutoTokenizer.from_pretrained(str(llm_dir / "tokenizer"), local_files_only=True)
    check_special_tokens(tokenizer)
    train_blocks = pack(encode_documents(tokenizer, read_lines(corpus_dir / "train.txt")), cfg.seq_len)
    eval_blocks = pack(encode_documents(tokenizer, read_lines(corpus_dir / "heldout.txt")), cfg.seq_len)
    if len(train_blocks) < cfg.batch_size:
        raise ValueError(f"the corpus holds {len(train_blocks)} blocks of {cfg.seq_len} tokens, fewer than "
                         f"llm.batch_size ({cfg.batch_size}); lower batch_size or seq_len, or add data")
    # Evenly spaced held-out blocks: a stable sample across evaluations and runs.
    pick = np.linspace(0, len(eval_blocks) - 1, min(cfg.eval_blocks, len(eval_blocks))).round().astype(int)
    eval_blocks = eval_blocks[np.unique(pick)] if len(eval_blocks) else eval_blocks

    model = build_model(cfg, tokenizer, root=params.root)
    objective = LMObjective.for_model(model, tokenizer, cfg.objective, cfg.mask_probability)
    # A head warm-up needs weights the base checkpoint lacked (e.g. a sentence-transformers BERT's MLM head).
    fresh = set(getattr(model, "fresh_parameters", ())) if cfg.head_warmup_steps else set()
    n_params = count_parameters(model)
    order = BlockOrder(len(train_blocks), cfg.batch_size, params.seed)
    rank = acc.process_index

    def batch(step: int) -> tuple[torch.Tensor, torch.Generator]:
        # The generator draws a masked LM's masks: a pure function of the step, like the blocks.
        return (train_blocks[order.batch(step)[rank * per_rank:(rank + 1) * per_rank]].to(acc.device),
                step_generator(params.seed, step, rank))

    recipe = training.Recipe(
        model=model,
        # fused: one kernel for all parameters instead of a Python loop over them (CPU and CUDA alike)
        optimizer=lambda m: torch.optim.AdamW(param_groups(m, cfg.weight_decay, fresh, cfg.head_lr), lr=cfg.lr,
                                              betas=cfg.adam_betas, fused=True),
        scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lr_lambdas(cfg, o.param_groups)),
        batches=batch,
        loss=lambda m, b: objective.loss(m, *b),  # next-token (labels shifted inside the model) or masked LM
        evaluate=lambda m: {"heldout_ppl": heldout_perplexity(m, eval_blocks, per_rank, acc, objective, params.seed)},
    )
    logger = training.MlflowLog(params, run_id, prefix="pretrain.")
    fit = training.fit(acc, recipe, steps=cfg.steps, ckpt_dir=ckpt_dir,
                       fingerprint=_fingerprint(params, corpus_dir / "train.txt", len(tokenizer)),
                       keep=cfg.keep_checkpoints, checkpoint_every=cfg.checkpoint_every, grad_clip=cfg.grad_clip,
                       eval_every=cfg.eval_every, eval_at_start=True, log=logger, log_every=1,
                       max_steps=max_steps_this_run, fresh=fresh, desc="pretrain")
    raw_model = fit.model
    ppl = [h["heldout_ppl"] for h in fit.history]
    losses = [r["loss"] for r in fit.step_rows]
    steps_run = fit.step - fit.start_step
    tokens_per_step = cfg.batch_size * cfg.seq_len
    tokens_per_s = steps_run * tokens_per_step / fit.train_seconds if steps_run and fit.train_seconds > 0 else 0.0
    metrics = {
        "steps": fit.step,
        "steps_this_run": steps_run,
        "resumed_from": fit.start_step,
        "loss": losses[-1] if losses else float("nan"),
        "loss_first": losses[0] if losses else float("nan"),
        "loss_last10": float(np.mean(losses[-10:])) if losses else float("nan"),
        "loss_mean": float(np.mean(losses)) if losses else float("nan"),  # over this call's steps
        "heldout_ppl_before": ppl[0] if ppl else float("nan"),
        "heldout_ppl_after": ppl[-1] if len(ppl) > 1 else float("nan"),
        "tokens_per_s": round(tokens_per_s, 1),
        "tokens_trained": steps_run * tokens_per_step,
        "train_seconds": round(fit.train_seconds, 2),
        "params": n_params,
        "processes": world,
        "train_blocks": len(train_blocks),
    }
    if not fit.finished:  # interrupted on purpose: the checkpoint is the output
        return metrics

    acc.wait_for_everyone()
    if main:
        if out_dir.exists():
            shutil.rmtree(out_dir)
        raw_model.save_pretrained(str(out_dir), safe_serialization=True)
        tokenizer.save_pretrained(str(out_dir))
        (out_dir / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if run_id:
            logger({"tokens_per_s": tokens_per_s, "params": n_params}, fit.step)
            logger.flush()
            from components import tracking

            for f in sorted(out_dir.iterdir()):  # MLflow's log_artifact takes files, not folders
                tracking.log_artifact(params, run_id, f, "pretrained")
    acc.wait_for_everyone()
    return metrics


# ----------------------------------------------------------------------------------------------
# Entry point for launchers (torchrun / accelerate launch start one of these per process)


def main(argv: list[str] | None = None) -> int:
    import os

    from components.config import load_params
    from components.llm.corpus import build_corpus

    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(k, v)
    ap = argparse.ArgumentParser(prog="python -m components.llm.pretrain", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=None, help="parameters file (default: ./params.yaml or $SCENEREC_PARAMS)")
    ap.add_argument("--corpus", action="store_true", help="build the corpus and tokenizer first (rank 0)")
    ap.add_argument("--run-id", default=None, help="MLflow run to log to")
    ap.add_argument("--max-steps-this-run", type=int, default=None)
    ap.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    ap.add_argument("--metrics-out", default=None, help="write the returned metrics here as JSON (rank 0)")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    rank = int(os.environ.get("RANK", "0"))
    if args.corpus:
        if training.world_size() > 1:
            raise SystemExit("--corpus: build the corpus on one process first, then launch the processes")
        print(json.dumps(build_corpus(params), indent=2))
    metrics = pretrain(params, run_id=args.run_id, max_steps_this_run=args.max_steps_this_run, fresh=args.fresh)
    if rank == 0:
        print(json.dumps(metrics, indent=2))
        if args.metrics_out:
            Path(args.metrics_out).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
