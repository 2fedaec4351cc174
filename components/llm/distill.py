"""HomoDistil (METHODS.md §5): distil the pretrained Llama into a ~30 % student by pruning it while it learns.

The student starts as an exact copy of the teacher. Each step it is trained on the pretraining
corpus with

    loss = alpha_lm · LM + alpha_kl · τ² · KL(p_teacher^τ ‖ p_student^τ) + alpha_hid · hidden MSE

and every ``prune_every`` steps after ``warmup_steps`` its lowest-scoring FFN neurons, attention
heads and hidden channels (PLATON scores, components/llm/pruning.py) are masked, following the cubic
schedule ``r(t) = r_final·(1 − (1 − (t − t_w)/(T_end − t_w))³)`` until the target widths at
``T_end = steps − recovery_steps``; the remaining steps distil at the final widths. The masks are
then materialised into a genuinely smaller ``LlamaForCausalLM``.

Hidden-state loss: the student is pruned *from* the teacher, so its hidden channel c is the
teacher's channel c. We compare the two on the kept channels only (no learned projection: it would
add parameters the student does not keep and let the student match a rotation instead of the
teacher's own features), per layer as a relative error ``Σ(h_s − h_t)² / Σh_t²`` over the kept
channels of the non-padding tokens, averaged over the embedding output and every layer.

:func:`plain_distill` is the baseline: a student of the same final shape, initialised by truncating
the teacher to its first channels/heads/neurons (or at random), trained with the same losses and
steps but no homotopic pruning; its hidden states are compared with the teacher's first channels.
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from components.config import DistillConfig, Params
from components.training import MlflowLog, Recipe, cpu_threads, fingerprint, fit, make_accelerator
from components.llm.pruning import (
    LlamaPruner, Shape, count_params, resized_config, shape_of, truncate,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Target widths and the pruning schedule (pure)


def target_shape(teacher_config, cfg: DistillConfig) -> Shape:
    """The student's widths: FFN and heads from their keep fractions; hidden from ``hidden_keep`` or,
    when it is None, the widest multiple of ``hidden_multiple`` whose total parameters stay within
    ``target_ratio`` of the teacher's (embeddings counted)."""
    full = shape_of(teacher_config)
    ffn = max(1, round(full.ffn * cfg.ffn_keep))
    heads = max(1, round(full.heads * cfg.heads_keep))
    teacher_total = count_params(teacher_config)["total"]

    def ratio(hidden: int) -> float:
        return count_params(resized_config(teacher_config, Shape(ffn, heads, hidden)))["total"] / teacher_total

    if cfg.hidden_keep is not None:
        hidden = max(1, round(full.hidden * cfg.hidden_keep))
    else:
        widths = [h for h in range(full.hidden, 0, -1) if h % cfg.hidden_multiple == 0] or [1]
        hidden = next((h for h in widths if ratio(h) <= cfg.target_ratio), widths[-1])
    if ratio(hidden) > cfg.target_ratio + 1e-9:
        raise ValueError(
            f"distill: ffn_keep={cfg.ffn_keep}, heads_keep={cfg.heads_keep}, hidden width {hidden} give a student with "
            f"{ratio(hidden):.1%} of the teacher's {teacher_total:,} parameters, above target_ratio={cfg.target_ratio}. "
            "Lower ffn_keep / heads_keep / hidden_keep in params.yaml (or set hidden_keep: null to solve it)."
        )
    return Shape(ffn, heads, hidden)


def cubic_schedule(step: int, warmup: int, end: int, final: float) -> float:
    """Pruned fraction at ``step``: 0 until ``warmup``, ``final`` from ``end`` on, cubic in between
    (PLATON / HomoDistil): ``final · (1 − (1 − (step − warmup)/(end − warmup))³)``."""
    if step <= warmup:
        return 0.0
    if step >= end:
        return float(final)
    return float(final) * (1.0 - (1.0 - (step - warmup) / (end - warmup)) ** 3)


def prune_end(cfg: DistillConfig) -> int:
    """T_end: the step at which the target widths are reached."""
    return cfg.steps - cfg.recovery_steps


def is_prune_step(step: int, cfg: DistillConfig) -> bool:
    """Prune after ``step`` completed steps? Every ΔT after warm-up, and at T_end."""
    end = prune_end(cfg)
    return cfg.warmup_steps < step <= end and ((step - cfg.warmup_steps) % cfg.prune_every == 0 or step == end)


def scheduled_shape(step: int, full: Shape, target: Shape, cfg: DistillConfig) -> Shape:
    """Widths the schedule asks for after ``step`` steps (never below the target)."""
    out = {}
    for kind, n_full in full.as_dict().items():
        n_target = target.as_dict()[kind]
        r = cubic_schedule(step, cfg.warmup_steps, prune_end(cfg), 1.0 - n_target / n_full)
        out[kind] = n_target if step >= prune_end(cfg) else max(n_target, math.ceil(n_full * (1.0 - r) - 1e-9))
    return Shape(**out)


# --------------------------------------------------------------------------------------------------
# Losses (pure)


def distill_loss(student_out, teacher_out, input_ids: torch.Tensor, cfg: DistillConfig,
                 student_channels: torch.Tensor | None = None, teacher_channels: torch.Tensor | None = None):
    """HomoDistil's loss on one batch of packed blocks; returns (loss, {lm, kl, hid} floats).

    ``*_channels`` select the hidden channels compared (None = all of that model's channels).
    """
    s_logits, t_logits = student_out.logits.float(), teacher_out.logits.float()
    vocab = s_logits.shape[-1]
    lm = F.cross_entropy(s_logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    tau = cfg.temperature
    kl = F.kl_div(
        F.log_softmax(s_logits.view(-1, vocab) / tau, -1), F.log_softmax(t_logits.view(-1, vocab) / tau, -1),
        log_target=True, reduction="batchmean",
    ) * tau**2  # Hinton et al.: τ² keeps the gradient scale independent of τ
    hid = s_logits.new_zeros(())
    pairs = list(zip(student_out.hidden_states, teacher_out.hidden_states))
    for hs, ht in pairs:
        hs = hs.float() if student_channels is None else hs.float().index_select(-1, student_channels)
        ht = ht.float() if teacher_channels is None else ht.float().index_select(-1, teacher_channels)
        hid = hid + (hs - ht).pow(2).sum() / ht.pow(2).sum().clamp_min(1e-12)
    hid = hid / max(1, len(pairs))
    loss = cfg.alpha_lm * lm + cfg.alpha_kl * kl + cfg.alpha_hid * hid
    return loss, {"lm": float(lm.detach()), "kl": float(kl.detach()), "hid": float(hid.detach())}


# --------------------------------------------------------------------------------------------------
# Data: the pretraining corpus as packed blocks


def load_blocks(tokenizer, path: Path, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """Documents of ``path`` packed as in pretraining (``<s> doc </s> ...``, components/llm/corpus.py)
    and cut into (N, seq_len) blocks; with ``limit``, that many evenly spaced blocks (pretraining's
    held-out sample, so the teacher's perplexity here is the one pretraining reported)."""
    import numpy as np

    from components.llm.corpus import encode_documents, read_lines

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: corpus not found; run the corpus stage (`scenerec pipeline`) first")
    ids = encode_documents(tokenizer, read_lines(path))
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{path}: {len(ids)} tokens, fewer than one block of seq_len={seq_len}")
    blocks = torch.from_numpy(ids[: n * seq_len].astype(np.int64)).view(n, seq_len)
    if limit is not None and limit < n:
        blocks = blocks[np.unique(np.linspace(0, n - 1, limit).round().astype(int))]
    return blocks


def batch_indices(step: int, n_blocks: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """The block indices this rank trains on at ``step``: a seeded permutation per epoch, so a
    resumed run sees exactly the batches an uninterrupted one would."""
    per_rank = batch_size // world
    first = step * batch_size + rank * per_rank
    return torch.tensor([int(_epoch_order(n_blocks, seed, pos // n_blocks)[pos % n_blocks])
                         for pos in range(first, first + per_rank)], dtype=torch.long)


@functools.lru_cache(maxsize=2)
def _epoch_order(n_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n_blocks, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


@torch.no_grad()
def heldout_perplexity(model, blocks: torch.Tensor, batch_size: int = 8, device=None) -> float:
    """exp(mean next-token NLL) of ``model`` over ``blocks``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, n = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=x).logits.float()
        nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                     reduction="sum"))
        n += x[:, 1:].numel()
    model.train(was_training)
    return math.exp(nll / max(1, n))


# --------------------------------------------------------------------------------------------------
# Runners


def load_teacher(teacher_dir: Path):
    """The teacher (frozen, eval mode) and its tokenizer; refuses non-Llama models with a clear error."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    teacher_dir = Path(teacher_dir)
    if not (teacher_dir / "config.json").exists():
        raise FileNotFoundError(f"{teacher_dir}: no pretrained model (config.json); run the pretrain stage first")
    model = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32)
    if model.config.model_type != "llama":
        raise ValueError(
            f"{teacher_dir}: HomoDistil prunes Llama models only, got model_type={model.config.model_type!r}"
        )
    model.eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(teacher_dir)


def make_student(teacher, init: str, shape: Shape, seed: int = 0):
    """The student before training: ``copy`` (HomoDistil: the teacher itself), ``truncate`` (first
    channels/heads/neurons) or ``scratch`` (random, same shape)."""
    from transformers import LlamaForCausalLM

    if init == "copy":
        student = copy.deepcopy(teacher)
    elif init == "truncate":
        student = truncate(teacher, shape)
    elif init == "scratch":
        torch.manual_seed(seed)
        student = LlamaForCausalLM(resized_config(teacher.config, shape))
    else:
        raise ValueError(f"init must be 'copy', 'truncate' or 'scratch', got {init!r}")
    return student.train().requires_grad_(True)


def homodistil(params: Params, teacher_dir: Path, out_dir: Path, run_id: str | None = None) -> dict:
    """Distil ``teacher_dir`` into a pruned student saved in ``out_dir``; returns sizes, losses and perplexity."""
    with cpu_threads(params.distill.cpu_threads):
        return _distill(params, Path(teacher_dir), Path(out_dir), "copy", run_id)


def plain_distill(params: Params, teacher_dir: Path, out_dir: Path, init: str = "truncate",
                  run_id: str | None = None) -> dict:
    """The baseline: a student of HomoDistil's final shape, same losses and steps, no homotopic pruning."""
    if init not in ("truncate", "scratch"):
        raise ValueError(f"init must be 'truncate' or 'scratch', got {init!r}")
    with cpu_threads(params.distill.cpu_threads):
        return _distill(params, Path(teacher_dir), Path(out_dir), init, run_id)


# Knobs that change how often we look or save, not what the student learns: changing one still resumes.
_NOT_IN_FINGERPRINT = {"checkpoint_every", "keep_checkpoints", "log_every", "eval_blocks", "cpu_threads"}


def _fingerprint(teacher_dir: Path, cfg: DistillConfig, init: str, seed: int) -> str:
    """What decides the trajectory: the teacher's weights, the distill knobs that matter, init and seed."""
    knobs = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    files = sorted(teacher_dir.glob("*.safetensors")) + sorted(teacher_dir.glob("config.json"))
    return fingerprint({"cfg": knobs, "init": init, "seed": seed}, *files)


def _lr_factor(step: int, cfg: DistillConfig) -> float:
    """LR of step ``step`` as a fraction of ``cfg.lr``: linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < cfg.lr_warmup_steps:
        return (step + 1) / cfg.lr_warmup_steps
    progress = (step - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _distill(params: Params, teacher_dir: Path, out_dir: Path, init: str, run_id: str | None) -> dict:
    from components import tracking

    cfg = params.distill
    method = "homodistil" if init == "copy" else f"plain_{init}"
    t0 = time.perf_counter()
    acc = make_accelerator(cfg.mixed_precision, seed=params.seed)
    if cfg.batch_size % acc.num_processes:
        raise ValueError(
            f"distill.batch_size ({cfg.batch_size}) must be a multiple of the {acc.num_processes} processes")

    teacher, tokenizer = load_teacher(teacher_dir)
    full, target = shape_of(teacher.config), target_shape(teacher.config, cfg)
    teacher_params = count_params(teacher.config)
    corpus = params.path("llm_dir") / "corpus"
    train_blocks = load_blocks(tokenizer, corpus / "train.txt", cfg.seq_len)
    heldout_blocks = load_blocks(tokenizer, corpus / "heldout.txt", cfg.seq_len, limit=cfg.eval_blocks)
    if len(train_blocks) < cfg.batch_size:
        raise ValueError(f"the corpus holds {len(train_blocks)} blocks of {cfg.seq_len} tokens, fewer than "
                         f"distill.batch_size ({cfg.batch_size}); lower batch_size or seq_len, or add data")

    student = make_student(teacher, init, target, params.seed).to(acc.device)
    teacher.to(acc.device)
    # HomoDistil's own part of the loop, as fit() hooks: PLATON scores after each backward, the cubic
    # pruning schedule after each step, and the masks checkpointed with the weights.
    pruner = LlamaPruner(student, cfg.beta1, cfg.beta2) if init == "copy" else None
    end = prune_end(cfg)
    fixed_channels = None if pruner is not None else torch.arange(target.hidden, device=acc.device)

    def loss(model, x):
        with torch.no_grad():
            t_out = teacher(input_ids=x, output_hidden_states=True)
        s_out = model(input_ids=x, output_hidden_states=True)
        channels = pruner.masks["hidden"].nonzero().flatten() if pruner is not None else None
        return distill_loss(s_out, t_out, x, cfg, channels, channels if pruner is not None else fixed_channels)

    def after_backward(step: int) -> None:
        if pruner is not None and step < end:
            pruner.update_importance()  # before clipping: PLATON scores the raw gradient

    def after_step(done: int) -> dict:
        if pruner is not None and is_prune_step(done, cfg):
            pruner.prune_to(scheduled_shape(done, full, target, cfg))
        shape_now = pruner.shape() if pruner is not None else target
        now = count_params(resized_config(teacher.config, shape_now))["total"]
        return {"params": now, "sparsity": 1 - now / teacher_params["total"], **shape_now.as_dict()}

    def batch(step: int) -> torch.Tensor:
        idx = batch_indices(step, len(train_blocks), cfg.batch_size, params.seed, acc.process_index, acc.num_processes)
        return train_blocks[idx].to(acc.device)

    recipe = Recipe(
        model=student,
        optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, functools.partial(_lr_factor, cfg=cfg)),
        batches=batch, loss=loss, after_backward=after_backward, after_step=after_step,
        state={"pruner": pruner} if pruner is not None else {})

    if run_id and acc.is_main_process:
        tracking.log_params(params, run_id, {
            "method": method, "teacher_dir": str(teacher_dir),
            **{f"distill.{k}": v for k, v in cfg.model_dump().items()},
            "teacher_params": teacher_params["total"], "target_shape": json.dumps(target.as_dict()),
        })
    # Checkpoints live beside out_dir (which holds only the model that encoders load); a checkpoint of
    # another teacher or config is never resumed.
    fit_out = fit(acc, recipe, steps=cfg.steps, ckpt_dir=out_dir.with_name(out_dir.name + "_ckpt"),
                  fingerprint=_fingerprint(teacher_dir, cfg, init, params.seed), keep=cfg.keep_checkpoints,
                  checkpoint_every=cfg.checkpoint_every, grad_clip=cfg.grad_clip, log=MlflowLog(params, run_id),
                  log_every=cfg.log_every, desc=method)
    inner, start, history = fit_out.model, fit_out.start_step, fit_out.logged

    # Materialise: the masked model and the sliced one must compute the same logits.
    inner.eval()
    probe = heldout_blocks[:2].to(acc.device)
    with torch.no_grad():
        masked_logits = inner(input_ids=probe).logits.float()
        if pruner is not None:
            pruner.detach()
            small = pruner.materialise()
        else:
            small = inner
        small.eval()
        diff = float((small(input_ids=probe).logits.float() - masked_logits).abs().max())
    small_params = count_params(small.config)
    result = {
        "method": method,
        "teacher_params": teacher_params,
        "student_params": small_params,
        "param_ratio": small_params["total"] / teacher_params["total"],
        "non_embedding_ratio": small_params["non_embedding"] / teacher_params["non_embedding"],
        "teacher_shape": full.as_dict(),
        "shape": shape_of(small.config).as_dict(),
        "steps": cfg.steps,
        "resumed_from": start,
        "final_loss": fit_out.step_rows[-1]["loss"] if fit_out.step_rows else None,
        "heldout_ppl": heldout_perplexity(small, heldout_blocks),
        "teacher_heldout_ppl": heldout_perplexity(teacher, heldout_blocks),
        "materialise_max_abs_diff": diff,
        "seconds": round(time.perf_counter() - t0, 2),
        "out_dir": str(out_dir),
        "history": history,
    }
    if acc.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        small.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / "distill.json").write_text(json.dumps(result, indent=2))
        if run_id:
            tracking.log_metrics(params, run_id, {
                "final.params": small_params["total"], "final.param_ratio": result["param_ratio"],
                "final.non_embedding_ratio": result["non_embedding_ratio"], "final.heldout_ppl": result["heldout_ppl"],
                "final.teacher_heldout_ppl": result["teacher_heldout_ppl"], "final.materialise_max_abs_diff": diff,
            }, step=cfg.steps)
    acc.wait_for_everyone()
    return result
