"""HomoDistil (METHODS.md §5): distil the pretrained Llama or BERT into a ~30 % student by pruning it while it learns.

The student starts as an exact copy of the teacher. Each step it is trained on the pretraining
corpus with

    loss = alpha_lm · LM + alpha_kl · τ² · KL(p_teacher^τ ‖ p_student^τ) + alpha_hid · hidden MSE

and every ``prune_every`` steps after ``warmup_steps`` its lowest-scoring FFN neurons, attention
heads and hidden channels (PLATON scores, components/llm/pruning.py) are masked, following the cubic
schedule ``r(t) = r_final·(1 − (1 − (t − t_w)/(T_end − t_w))³)`` until the target widths at
``T_end = steps − recovery_steps``; the remaining steps distil at the final widths. The masks are
then materialised into a genuinely smaller model of the teacher's class (``LlamaForCausalLM`` or
``BertForMaskedLM``, HomoBERT's case).

LM: next-token cross-entropy for a causal teacher; for an encoder, BERT's masked LM
(model.LMObjective: the same 80/10/10 masks, seeded by step, as continual pretraining), and teacher
and student read the *same* masked input. KL is taken at every position (causal: every next-token
prediction; masked: the MLM distribution of every position, masked or not: the unmasked ones carry
the teacher's view of which other tokens fit there, more signal per batch than the 15 % alone).

Hidden-state loss: the student is pruned *from* the teacher, so its hidden channel c is the
teacher's channel c. We compare the two on the kept channels only (no learned projection: it would
add parameters the student does not keep and let the student match a rotation instead of the
teacher's own features), per layer as a relative error ``Σ(h_s − h_t)² / Σh_t²`` over the kept
channels of the non-padding tokens, averaged over the embedding output and every layer.

``distill.schedule`` picks how the student gets its final widths (same losses and steps in all three):
``homotopic`` (the above), ``oneshot`` (the teacher pruned to the target at step 0 by its own PLATON
scores over the warm-up's batches, then distilled at the final widths) and ``none`` = :func:`plain_distill`
with ``init="truncate"``: a student of the final shape initialised from the teacher's *first* channels,
heads and neurons, distilled with no pruning. The hidden states of a non-homotopic student are
compared with the teacher's channels it was cut from.
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
from components.llm.model import MASKED, LMObjective, lm_objective, step_generator
from components.llm.pruning import (
    Pruner, Shape, check_supported, count_params, resized_config, shape_of, student_config, truncate,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Target widths and the pruning schedule (pure)


def target_shape(teacher_config, cfg: DistillConfig) -> Shape:
    """The student's widths: FFN and heads from their keep fractions; hidden from ``hidden_keep`` or,
    when it is None, the widest multiple of ``hidden_multiple`` whose total parameters stay within
    ``target_ratio`` of the teacher's (embeddings counted).

    A BERT's head size is hidden / heads, so its student keeps heads = hidden / head size: the hidden
    width is ``hidden_keep``'s multiple of the head size, or the widest one with at most
    ``heads_keep`` of the heads that meets ``target_ratio``."""
    full = shape_of(teacher_config)
    ffn = max(1, round(full.ffn * cfg.ffn_keep))
    heads = max(1, round(full.heads * cfg.heads_keep))
    teacher_total = count_params(teacher_config)["total"]

    def ratio(hidden: int, heads: int = heads) -> float:
        return count_params(resized_config(teacher_config, Shape(ffn, heads, hidden)))["total"] / teacher_total

    if teacher_config.model_type == "bert":
        hd = full.hidden // full.heads
        counts = ([max(1, round(full.hidden * cfg.hidden_keep / hd))] if cfg.hidden_keep is not None
                  else list(range(heads, 0, -1)))
        heads = next((k for k in counts if ratio(k * hd, k) <= cfg.target_ratio), counts[-1])
        hidden = heads * hd
    elif cfg.hidden_keep is not None:
        hidden = max(1, round(full.hidden * cfg.hidden_keep))
    else:
        widths = [h for h in range(full.hidden, 0, -1) if h % cfg.hidden_multiple == 0] or [1]
        hidden = next((h for h in widths if ratio(h) <= cfg.target_ratio), widths[-1])
    if ratio(hidden, heads) > cfg.target_ratio + 1e-9:
        raise ValueError(
            f"distill: ffn_keep={cfg.ffn_keep}, heads_keep={cfg.heads_keep}, hidden width {hidden} give a student with "
            f"{ratio(hidden, heads):.1%} of the teacher's {teacher_total:,} parameters, above target_ratio={cfg.target_ratio}. "
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
                 student_channels: torch.Tensor | None = None, teacher_channels: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None):
    """HomoDistil's loss on one batch of packed blocks; returns (loss, {lm, kl, hid} floats).

    ``*_channels`` select the hidden channels compared (None = all of that model's channels);
    ``labels`` (masked LM: -100 where no loss) replace the next-token targets of ``input_ids``.
    """
    s_logits, t_logits = student_out.logits.float(), teacher_out.logits.float()
    vocab = s_logits.shape[-1]
    if labels is None:
        lm = F.cross_entropy(s_logits[:, :-1].reshape(-1, vocab), input_ids[:, 1:].reshape(-1))
    else:
        lm = F.cross_entropy(s_logits.reshape(-1, vocab), labels.reshape(-1), ignore_index=-100)
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
def heldout_perplexity(model, blocks: torch.Tensor, batch_size: int = 8, device=None,
                       objective: LMObjective | None = None, seed: int = 0) -> float:
    """exp(mean next-token NLL) of ``model`` over ``blocks``; for a masked objective, exp(mean NLL of
    the masked tokens) under one fixed masking (seeded), so teacher and student read the same inputs."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    if objective is not None and objective.kind == MASKED:
        generator, nll, n = step_generator(seed, -1), 0.0, 0
        for i in range(0, len(blocks), batch_size):
            inputs, labels = objective.mask(blocks[i:i + batch_size], generator)
            logits = model(input_ids=inputs.to(device)).logits.float()
            nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(device).reshape(-1),
                                         ignore_index=-100, reduction="sum"))
            n += int((labels != -100).sum())
        model.train(was_training)
        return math.exp(nll / max(1, n))
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


def load_teacher(teacher_dir: Path, body_dir: Path | None = None):
    """The teacher (frozen, eval mode) and its tokenizer; refuses what pruning.py cannot prune (a Llama
    and a BERT with its MLM head are supported) with a clear error. ``body_dir`` (``distill.teacher:
    encoder``): a transformer body of the same architecture (a contrastive encoder's ``backbone/``)
    that replaces the LM's body; the LM head stays the pretrained one."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    teacher_dir = Path(teacher_dir)
    if not (teacher_dir / "config.json").exists():
        raise FileNotFoundError(f"{teacher_dir}: no pretrained model (config.json); run the pretrain stage first")
    config = AutoConfig.from_pretrained(teacher_dir)
    if config.model_type not in ("llama", "bert"):
        raise ValueError(f"{teacher_dir}: HomoDistil prunes Llama and BERT models only, "
                         f"got model_type={config.model_type!r}")
    auto = AutoModelForMaskedLM if lm_objective(config) == MASKED else AutoModelForCausalLM
    model = auto.from_pretrained(teacher_dir, dtype=torch.float32)
    try:
        check_supported(model)
    except ValueError as e:
        raise ValueError(f"{teacher_dir}: {e}") from None
    if body_dir is not None:
        swap_body(model, Path(body_dir))
    model.eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(teacher_dir)


def swap_body(model, body_dir: Path) -> None:
    """Load the transformer body saved in ``body_dir`` (``AutoModel``: a contrastive encoder's
    backbone) into ``model.base_model``: every weight of the body must be there with the same shape;
    only a BERT pooler (which the LM has not) may be left over."""
    from transformers import AutoModel

    if not (body_dir / "config.json").exists():
        raise FileNotFoundError(f"{body_dir}: no encoder backbone (config.json); run the contrastive teacher "
                                "stage first (distill.teacher: encoder distils its body)")
    body = AutoModel.from_pretrained(body_dir, dtype=torch.float32)
    state = {k: v for k, v in body.state_dict().items() if not k.startswith("pooler.")}
    own = model.base_model.state_dict()
    wrong = sorted(k for k, v in state.items() if k not in own or own[k].shape != v.shape)
    missing = sorted(k for k in own if k not in state)
    if wrong or missing:
        raise ValueError(f"{body_dir}: this body does not fit the pretrained LM (distill.teacher: encoder needs the "
                         f"encoder fine-tuned from it); unknown or reshaped: {wrong[:5]}, missing: {missing[:5]}")
    model.base_model.load_state_dict(state, strict=True)


def make_student(teacher, init: str, shape: Shape, seed: int = 0):
    """The student before training: ``copy`` (HomoDistil: the teacher itself), ``truncate`` (first
    channels/heads/neurons) or ``scratch`` (random, same shape)."""
    if init == "copy":
        student = copy.deepcopy(teacher)
    elif init == "truncate":
        student = truncate(teacher, shape)
    elif init == "scratch":
        torch.manual_seed(seed)
        student = type(teacher)(student_config(teacher.config, shape))
    else:
        raise ValueError(f"init must be 'copy', 'truncate' or 'scratch', got {init!r}")
    return student.train().requires_grad_(True)


# distill.schedule -> how _distill starts its student
_SCHEDULE_INIT = {"homotopic": "copy", "oneshot": "oneshot", "none": "truncate"}


def body_dir_for(cfg: DistillConfig, encoder_dir: Path | None) -> Path | None:
    """The backbone that replaces the teacher's body under ``distill.teacher: encoder`` (the saved
    contrastive teacher ``encoder_dir``'s), or None for ``pretrained``."""
    if cfg.teacher == "pretrained":
        return None
    if encoder_dir is None:
        raise ValueError("distill.teacher is 'encoder' but no teacher encoder was given to distil from")
    from components.llm.encoder import BACKBONE_DIR

    return Path(encoder_dir) / BACKBONE_DIR


def homodistil(params: Params, teacher_dir: Path, out_dir: Path, run_id: str | None = None,
               encoder_dir: Path | None = None) -> dict:
    """Distil ``teacher_dir`` into a pruned student saved in ``out_dir`` by ``distill.schedule``
    (homotopic by default); with ``distill.teacher: encoder`` the teacher's body is the one of the
    saved encoder ``encoder_dir`` (``load_teacher``). Returns sizes, losses and perplexity."""
    with cpu_threads(params.distill.cpu_threads):
        return _distill(params, Path(teacher_dir), Path(out_dir), _SCHEDULE_INIT[params.distill.schedule], run_id,
                        body_dir_for(params.distill, encoder_dir))


def oneshot_student(teacher, target: Shape, batches, n_batches: int, cfg: DistillConfig):
    """The one-shot baseline's student: the teacher pruned to ``target`` at once by its own PLATON
    scores over the LM-loss gradients of ``batches(0..n_batches-1)`` (each (inputs, labels|None)).
    Returns (student, the teacher's hidden channels it kept)."""
    student = copy.deepcopy(teacher).eval().requires_grad_(True)  # eval: scores without dropout noise
    pruner = Pruner(student, cfg.beta1, cfg.beta2)
    for step in range(n_batches):
        x, labels = batches(step)
        out = student(input_ids=x, labels=x if labels is None else labels)  # causal labels shift inside
        pruner.score_loss(out.loss)
    pruner.prune_to(target)
    pruner.detach()
    kept = pruner.kept_indices()["hidden"]
    return pruner.materialise().train().requires_grad_(True), kept


def plain_distill(params: Params, teacher_dir: Path, out_dir: Path, init: str = "truncate",
                  run_id: str | None = None, encoder_dir: Path | None = None) -> dict:
    """The baseline: a student of HomoDistil's final shape, same losses and steps, no homotopic pruning."""
    if init not in ("truncate", "scratch"):
        raise ValueError(f"init must be 'truncate' or 'scratch', got {init!r}")
    with cpu_threads(params.distill.cpu_threads):
        return _distill(params, Path(teacher_dir), Path(out_dir), init, run_id, body_dir_for(params.distill, encoder_dir))


# Knobs that change how often we look or save, not what the student learns: changing one still resumes.
# (``schedule`` only picks ``init``, which is fingerprinted itself.)
_NOT_IN_FINGERPRINT = {"checkpoint_every", "keep_checkpoints", "log_every", "eval_blocks", "cpu_threads", "schedule"}


def _fingerprint(teacher_dir: Path, cfg: DistillConfig, init: str, seed: int, body_dir: Path | None = None) -> str:
    """What decides the trajectory: the teacher's weights (and its swapped-in body's), the distill knobs
    that matter, init and seed."""
    knobs = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT}
    files = sorted(teacher_dir.glob("*.safetensors")) + sorted(teacher_dir.glob("config.json"))
    if body_dir is not None:
        files += sorted(Path(body_dir).glob("*.safetensors"))
    return fingerprint({"cfg": knobs, "init": init, "seed": seed}, *files)


def _lr_factor(step: int, cfg: DistillConfig) -> float:
    """LR of step ``step`` as a fraction of ``cfg.lr``: linear warm-up, then cosine to ``min_lr_ratio``."""
    if step < cfg.lr_warmup_steps:
        return (step + 1) / cfg.lr_warmup_steps
    progress = (step - cfg.lr_warmup_steps) / max(1, cfg.steps - cfg.lr_warmup_steps)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _distill(params: Params, teacher_dir: Path, out_dir: Path, init: str, run_id: str | None,
             body_dir: Path | None = None) -> dict:
    from components import tracking

    cfg = params.distill
    method = {"copy": "homodistil", "oneshot": "oneshot"}.get(init, f"plain_{init}")
    t0 = time.perf_counter()
    acc = make_accelerator(cfg.mixed_precision, seed=params.seed)
    if cfg.batch_size % acc.num_processes:
        raise ValueError(
            f"distill.batch_size ({cfg.batch_size}) must be a multiple of the {acc.num_processes} processes")

    teacher, tokenizer = load_teacher(teacher_dir, body_dir)
    full, target = shape_of(teacher.config), target_shape(teacher.config, cfg)
    teacher_params = count_params(teacher.config)
    corpus = params.path("llm_dir") / "corpus"
    train_blocks = load_blocks(tokenizer, corpus / "train.txt", cfg.seq_len)
    heldout_blocks = load_blocks(tokenizer, corpus / "heldout.txt", cfg.seq_len, limit=cfg.eval_blocks)
    if len(train_blocks) < cfg.batch_size:
        raise ValueError(f"the corpus holds {len(train_blocks)} blocks of {cfg.seq_len} tokens, fewer than "
                         f"distill.batch_size ({cfg.batch_size}); lower batch_size or seq_len, or add data")

    objective = LMObjective.for_model(teacher, tokenizer, "auto", params.llm.mask_probability)

    def batch(step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        # (inputs, labels): causal LM trains on the block itself (labels None); a masked LM on the
        # step's seeded masking, which teacher and student both read.
        idx = batch_indices(step, len(train_blocks), cfg.batch_size, params.seed, acc.process_index, acc.num_processes)
        x = train_blocks[idx]
        if objective.kind != MASKED:
            return x.to(acc.device), None
        inputs, labels = objective.mask(x, step_generator(params.seed, step, acc.process_index))
        return inputs.to(acc.device), labels.to(acc.device)

    teacher.to(acc.device)
    if init == "oneshot":
        student, teacher_channels = oneshot_student(teacher, target, batch, max(1, cfg.warmup_steps), cfg)
        teacher_channels = teacher_channels.to(acc.device)
    else:
        student = make_student(teacher, init, target, params.seed)
        teacher_channels = torch.arange(target.hidden, device=acc.device)  # truncate: the first channels
    student.to(acc.device)
    # HomoDistil's own part of the loop, as fit() hooks: PLATON scores after each backward, the cubic
    # pruning schedule after each step, and the masks checkpointed with the weights.
    pruner = Pruner(student, cfg.beta1, cfg.beta2) if init == "copy" else None
    end = prune_end(cfg)

    def loss(model, b):
        x, labels = b
        with torch.no_grad():
            t_out = teacher(input_ids=x, output_hidden_states=True)
        s_out = model(input_ids=x, output_hidden_states=True)
        if pruner is not None:  # student channel c is the teacher's channel c
            channels = pruner.masks["hidden"].nonzero().flatten()
            return distill_loss(s_out, t_out, x, cfg, channels, channels, labels=labels)
        return distill_loss(s_out, t_out, x, cfg, None, teacher_channels, labels=labels)

    def after_backward(step: int) -> None:
        if pruner is not None and step < end:
            pruner.update_importance()  # before clipping: PLATON scores the raw gradient

    def after_step(done: int) -> dict:
        if pruner is not None and is_prune_step(done, cfg):
            pruner.prune_to(scheduled_shape(done, full, target, cfg))
        shape_now = pruner.shape() if pruner is not None else target
        now = count_params(resized_config(teacher.config, shape_now))["total"]
        return {"params": now, "sparsity": 1 - now / teacher_params["total"], **shape_now.as_dict()}

    recipe = Recipe(
        model=student,
        optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay),
        scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, functools.partial(_lr_factor, cfg=cfg)),
        batches=batch, loss=loss, after_backward=after_backward, after_step=after_step,
        state={"pruner": pruner} if pruner is not None else {})

    if run_id and acc.is_main_process:
        tracking.log_params(params, run_id, {
            "method": method, "teacher_dir": str(teacher_dir), "teacher_body_dir": str(body_dir or teacher_dir),
            **{f"distill.{k}": v for k, v in cfg.model_dump().items()},
            "teacher_params": teacher_params["total"], "target_shape": json.dumps(target.as_dict()),
        })
    # Checkpoints live beside out_dir (which holds only the model that encoders load); a checkpoint of
    # another teacher or config is never resumed.
    fit_out = fit(acc, recipe, steps=cfg.steps, ckpt_dir=out_dir.with_name(out_dir.name + "_ckpt"),
                  fingerprint=_fingerprint(teacher_dir, cfg, init, params.seed, body_dir), keep=cfg.keep_checkpoints,
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
        "teacher": "encoder" if body_dir is not None else "pretrained",
        "teacher_params": teacher_params,
        "student_params": small_params,
        "param_ratio": small_params["total"] / teacher_params["total"],
        "non_embedding_ratio": small_params["non_embedding"] / teacher_params["non_embedding"],
        "teacher_shape": full.as_dict(),
        "shape": shape_of(small.config).as_dict(),
        "steps": cfg.steps,
        "resumed_from": start,
        "final_loss": fit_out.step_rows[-1]["loss"] if fit_out.step_rows else None,
        "heldout_ppl": heldout_perplexity(small, heldout_blocks, objective=objective, seed=params.seed),
        "teacher_heldout_ppl": heldout_perplexity(teacher, heldout_blocks, objective=objective, seed=params.seed),
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
