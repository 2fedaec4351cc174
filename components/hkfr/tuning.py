"""HKFR step 4 (METHODS.md §3): instruction tuning of our LLM, and what the tuned model serves.

* ``instruct``: LoRA adapters (``peft``) on every linear layer of the continually pretrained
  Llama (or, ``hkfr.method: full``, every weight), trained on ``knowledge + prompt → answer`` with
  the loss on the answer tokens only. The loop is components/training's ``fit()`` (the LoRA wrap is
  its ``wrap`` hook): device, precision, DDP, a checkpoint every ``checkpoint_every`` steps that a
  rerun resumes from. The adapters are merged on save, so the tuned model is a plain HF folder.
* ``score_yes``: P("yes") of the yes/no task, as the two answers' likelihoods renormalised. The knowledge + scene prefix of a request is run once and its KV cache is shared
  by all of the request's candidates.
* ``choice_accuracy``: the category / price-band tasks, answered by the most likely option.
* ``knowledge_embeddings``: the mean of the tuned model's last hidden states over a knowledge text:
  the semantic user feature HKFR gives the CTR model.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components.config import Params
from components.hkfr.instructions import NO, YES

_NOT_TRAINING = {"cpu_threads", "log_every", "checkpoint_every", "keep_checkpoints", "eval_requests",
                 "eval_option_examples", "eval_batch_size", "embedding_dim", "registered_name", "promotion_margin",
                 "promotion_floor_margin"}


def base_dir(params: Params) -> Path:
    return params.path("llm_dir") / params.hkfr.base


def model_dir(params: Params) -> Path:
    return params.path("hkfr_dir") / "model"


def checkpoint_dir(params: Params) -> Path:
    return params.path("hkfr_dir") / "checkpoints"


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def prompt_ids(tok, knowledge: str, prompt: str, max_knowledge_tokens: int) -> list[int]:
    """``<bos> knowledge (first max_knowledge_tokens tokens) prompt Answer:``."""
    head = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return head + _ids(tok, knowledge)[:max_knowledge_tokens] + _ids(tok, " " + prompt + " Answer:")


def answer_ids(tok, answer: str) -> list[int]:
    return _ids(tok, " " + answer) + [tok.eos_token_id]


def encode(tok, rows: pd.DataFrame, max_knowledge_tokens: int, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example; labels are -100 except on the answer and its end token."""
    out = []
    for k, p, a in zip(rows["knowledge"], rows["prompt"], rows["answer"]):
        x, y = prompt_ids(tok, k, p, max_knowledge_tokens), answer_ids(tok, a)
        ids = (x + y)[-max_length:]
        labels = ([-100] * len(x) + y)[-max_length:]
        out.append((ids, labels))
    return out


def collate(batch, pad_id: int) -> dict[str, torch.Tensor]:
    n = max(len(i) for i, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for r, (i, y) in enumerate(batch):
        ids[r, :len(i)] = torch.tensor(i)
        labels[r, :len(y)] = torch.tensor(y)
        mask[r, :len(i)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _fingerprint(params: Params, train: pd.DataFrame) -> str:
    from components.training import fingerprint

    knobs = params.hkfr.model_dump(mode="json", exclude=_NOT_TRAINING)
    base = base_dir(params)  # the backbone's weights themselves, not its path
    weights = sorted(base.glob("*.safetensors")) + sorted(base.glob("config.json"))
    return fingerprint({"hkfr": knobs, "seed": params.seed}, *weights, train[["knowledge", "prompt", "answer"]])


def _lr(warmup: int, steps: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.1, 1.0 - (step - warmup) / max(1, steps - warmup))
    return f


def instruct(params: Params, train: pd.DataFrame, run_id: str | None = None) -> dict:
    """Tune ``llm_dir/<hkfr.base>`` on the instruction examples; save the tuned model to ``hkfr_dir/model``."""
    from components.training import cpu_threads

    with cpu_threads(params.hkfr.cpu_threads):
        return _instruct(params, train, run_id)


def _instruct(params: Params, train: pd.DataFrame, run_id: str | None) -> dict:
    from torch.optim import AdamW
    from torch.optim.lr_scheduler import LambdaLR

    from components.llm.contrastive import batch_indices
    from components.llm.model import count_parameters, load_pretrained, require_causal
    from components.training import MlflowLog, Recipe, fit, make_accelerator

    cfg = params.hkfr
    t0 = time.perf_counter()
    acc = make_accelerator(cfg.mixed_precision, seed=params.seed)
    model, tok = load_pretrained(base_dir(params))
    require_causal(model, "HKFR instruction tuning")
    examples = encode(tok, train, cfg.max_knowledge_tokens, cfg.max_length)
    per_process = max(1, cfg.batch_size // acc.num_processes)

    def lora(m):
        from peft import LoraConfig, get_peft_model

        return get_peft_model(m, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                            target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM"))

    def batch(step: int) -> dict:
        idx = batch_indices(len(examples), per_process, params.seed, step, 0, acc.process_index)
        return {k: v.to(acc.device) for k, v in collate([examples[i] for i in idx], tok.pad_token_id).items()}

    recipe = Recipe(model=model, wrap=lora if cfg.method == "lora" else None, batches=batch,
                    loss=lambda m, b: m(**b).loss,
                    optimizer=lambda m: AdamW([p for p in m.parameters() if p.requires_grad], lr=cfg.lr,
                                              weight_decay=cfg.weight_decay),
                    scheduler=lambda o: LambdaLR(o, _lr(cfg.warmup_steps, cfg.steps)))
    out = fit(acc, recipe, steps=cfg.steps, ckpt_dir=checkpoint_dir(params), fingerprint=_fingerprint(params, train),
              keep=cfg.keep_checkpoints, checkpoint_every=cfg.checkpoint_every, grad_clip=cfg.grad_clip,
              log=MlflowLog(params, run_id, prefix="hkfr."), log_every=cfg.log_every, desc="instruct")
    tuned = out.model
    n_trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    n_all = count_parameters(tuned)
    if acc.is_main_process:
        if cfg.method == "lora":
            tuned = tuned.merge_and_unload()
        target = model_dir(params)
        target.mkdir(parents=True, exist_ok=True)
        tuned.save_pretrained(str(target))
        tok.save_pretrained(str(target))
    acc.wait_for_everyone()
    history = [r["loss"] for r in out.step_rows]
    w = max(1, min(cfg.log_every, len(history) // 2))
    return {"steps": cfg.steps, "resumed_from": out.start_step, "examples": len(examples), "params.trainable": n_trainable,
            "params.total": n_all, "loss_first": float(np.mean(history[:w])) if history else float("nan"),
            "loss": float(np.mean(history[-w:])) if history else float("nan"),
            "seconds": round(time.perf_counter() - t0, 2)}


# ------------------------------------------------------------------------------------------------
# What the tuned model serves


def load_tuned(folder: str | Path):
    from components.llm.model import load_pretrained

    model, tok = load_pretrained(folder)
    model.eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tok


def _continue(model, prefix: list[int], tails: list[list[int]]) -> torch.Tensor:
    """Logits (len(tails), longest tail, vocab) of ``prefix + tail`` for every tail, with the prefix
    run once and its KV cache shared by the tails (batched, right-padded)."""
    dev = next(model.parameters()).device
    cache = None
    if prefix:
        cache = model(input_ids=torch.tensor([prefix], device=dev), use_cache=True).past_key_values
        cache.batch_repeat_interleave(len(tails))
    n = max(len(t) for t in tails)
    ids = torch.zeros((len(tails), n), dtype=torch.long, device=dev)
    mask = torch.zeros((len(tails), len(prefix) + n), dtype=torch.long, device=dev)
    mask[:, :len(prefix)] = 1
    for r, t in enumerate(tails):
        ids[r, :len(t)] = torch.tensor(t, device=dev)
        mask[r, len(prefix):len(prefix) + len(t)] = 1
    return model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=cache is not None).logits


def _answer_logliks(model, prefix: list[int], tails: list[list[int]], answers: list[list[int]]) -> np.ndarray:
    """(len(tails), len(answers)) log-likelihood of each answer's tokens after ``prefix + tail``."""
    seqs = [t + a for t in tails for a in answers]
    logp = torch.log_softmax(_continue(model, prefix, seqs).float(), -1)
    out = np.zeros((len(tails), len(answers)))
    for i, t in enumerate(tails):
        for j, a in enumerate(answers):
            row = logp[i * len(answers) + j]
            pos = torch.arange(len(t) - 1, len(t) - 1 + len(a), device=row.device)
            out[i, j] = row[pos, torch.tensor(a, device=row.device)].sum().item()
    return out


def _split_common(seqs: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """(longest common prefix leaving every sequence at least one token, the rest of each)."""
    common = 0
    while all(len(s) > common + 1 for s in seqs) and len({s[common] for s in seqs}) == 1:
        common += 1
    return seqs[0][:common], [s[common:] for s in seqs]


@torch.inference_mode()
def score_yes(model, tok, rows: pd.DataFrame, max_knowledge_tokens: int) -> np.ndarray:
    """P("yes") per row (``knowledge, prompt``): the likelihoods of the answers "yes" and "no"
    (all their tokens) renormalised over the two.

    Rows are grouped by ``request_id`` (or scored one by one without it): the prefix common to the
    group's prompts (knowledge and scene) runs once, and the candidates continue from its KV cache
    in one batch."""
    answers = [answer_ids(tok, YES)[:-1], answer_ids(tok, NO)[:-1]]
    out = np.zeros(len(rows))
    keys = rows["request_id"].astype(str).to_numpy() if "request_id" in rows else np.arange(len(rows)).astype(str)
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:]):
        idx = order[a:b]
        seqs = [prompt_ids(tok, rows["knowledge"].iat[i], rows["prompt"].iat[i], max_knowledge_tokens) for i in idx]
        prefix, tails = _split_common(seqs)
        ll = _answer_logliks(model, prefix, tails, answers)
        out[idx] = 1.0 / (1.0 + np.exp(ll[:, 1] - ll[:, 0]))
    return out


@torch.inference_mode()
def option_logprobs(model, tok, rows: pd.DataFrame, options: list[str], max_knowledge_tokens: int) -> np.ndarray:
    """(n rows, n options) log-likelihood of each option as the answer (all its tokens); the prompt
    runs once per row and the options continue from its KV cache."""
    opt_ids = [answer_ids(tok, o)[:-1] for o in options]
    out = np.zeros((len(rows), len(options)))
    for r in range(len(rows)):
        x = prompt_ids(tok, rows["knowledge"].iat[r], rows["prompt"].iat[r], max_knowledge_tokens)
        # The last prompt token goes with the tails: its logits predict each option's first token.
        out[r] = _answer_logliks(model, x[:-1], [[x[-1]]], opt_ids)[0]
    return out


@torch.inference_mode()
def knowledge_embeddings(model, tok, texts: list[str], max_tokens: int, batch_size: int = 32) -> np.ndarray:
    """(n, hidden) mean of the last hidden states over each text's tokens; identical texts run once."""
    dev = next(model.parameters()).device
    uniq, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    enc = [prompt_ids(tok, t, "", max_tokens)[: max_tokens + 1] for t in uniq]
    order = np.argsort([len(e) for e in enc])
    out = np.zeros((len(uniq), model.config.hidden_size), np.float32)
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    for a in range(0, len(order), batch_size):
        idx = order[a:a + batch_size]
        n = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), n), tok.pad_token_id, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(idx):
            ids[r, :len(enc[i])] = torch.tensor(enc[i], device=dev)
            mask[r, :len(enc[i])] = 1
        h = base(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        out[idx] = ((h * m).sum(1) / m.sum(1)).cpu().numpy()
    return out[inverse]


def fit_projection(x: np.ndarray, dim: int) -> dict:
    """PCA (centred SVD) fitted on ``x``: ``{"mean", "components"}`` to project to ``dim`` values."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return {"mean": mean.astype(np.float32), "components": vt[:dim].astype(np.float32)}


def project(x: np.ndarray, proj: dict) -> np.ndarray:
    return ((x - proj["mean"]) @ proj["components"].T).astype(np.float32)
