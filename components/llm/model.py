"""The causal LM that LARR continues to pretrain: a small Llama of our own, or a local base model.

Our own model is a stock ``LlamaForCausalLM`` (RMSNorm, RoPE, SwiGLU, no biases) so every
Hugging Face tool (generate, Trainer, PEFT, save_pretrained) works on it unchanged, and the
HomoDistil student can be pruned from it along plain Linear rows and columns: FFN width
(``intermediate_size``), attention heads and hidden width.

Default size (params.yaml ``llm``): hidden 192, 4 layers, 4 heads, SwiGLU 768, tied embeddings,
a ~1.7 k-token vocabulary on the default data: about 2.7 M parameters, 2.4 M of them in the
blocks, so a 30 % student (e.g. hidden 96, FFN 384, 2 heads) exists.
"""
from __future__ import annotations

from pathlib import Path

import torch

from components.config import LLMConfig


def llama_config(cfg: LLMConfig, tokenizer):
    """The ``LlamaConfig`` our fields describe, with the vocabulary and special ids of ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        max_position_embeddings=cfg.max_position,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        rms_norm_eps=cfg.rms_norm_eps,
        initializer_range=cfg.init_std,
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        use_cache=False,  # training never decodes; the cache only costs memory
    )


def build_model(cfg: LLMConfig, tokenizer, root: Path | None = None):
    """A fresh small Llama from ``cfg``, or ``cfg.base_model`` (local files only) with its embeddings
    resized to the tokenizer (which holds our added special tokens).

    ``root``: folder a relative ``base_model`` is resolved against (the project root).
    """
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if cfg.base_model is None:
        return LlamaForCausalLM(llama_config(cfg, tokenizer))
    path = Path(cfg.base_model)
    if not path.is_absolute() and root is not None:
        path = Path(root) / path
    if not path.is_dir():
        raise FileNotFoundError(f"llm.base_model: {path} is not a folder (a local Hugging Face model is expected)")
    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    if model.get_input_embeddings().num_embeddings != len(tokenizer):
        # New rows start at the mean of the old embeddings (transformers' default), not at noise,
        # so the added markers do not wreck the base model's first steps.
        model.resize_token_embeddings(len(tokenizer))
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


def load_pretrained(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) saved by pretraining (``llm_dir/pretrained``), for the later stages."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no saved model (run the pretraining step first)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    return model, tokenizer


def count_parameters(model, trainable_only: bool = False) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n
