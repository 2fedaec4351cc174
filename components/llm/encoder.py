"""The text embedding model of LARR stage 2: a transformer backbone, pooling, an MLP head, L2 norm.

LARR takes the **last token's** hidden state (the only position of a causal LM that has read the
whole text) through an MLP; cosine similarity is then a dot product of the normalised outputs.
An encoder backbone (BERT family) sees the whole text at every position and is pooled by the masked
mean, as Sentence-BERT does. ``pooling="auto"`` picks by architecture (model.default_pooling);
``last`` / ``mean`` force one.

On disk (``TextEncoder.save``)::

    encoder.json          pooling, max_length, truncation side, head sizes
    backbone/             the transformer, save_pretrained (safetensors) + its tokenizer
    head.safetensors      the MLP head (absent for head-less encoders)

``EncoderModel`` wraps a saved encoder as an MLflow pyfunc (DataFrame with a ``text`` column in,
embeddings out) and ``encoder_candidate`` hands it to ``registry.register_candidate``.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from components.layers import MLP

CONFIG_FILE = "encoder.json"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": CUDA when present, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextmanager
def _quiet_transformers():
    """Loading a causal LM checkpoint into the bare model reports its unused ``lm_head`` (expected
    here), and saving draws progress bars: keep both out of the step's output."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_backbone(model_dir: str | Path):
    """(transformer without its LM head, tokenizer) from a local HF directory, in fp32, right-padded."""
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{model_dir}: no HF model here (config.json missing); run `scenerec pretrain` first or pass the "
            "directory of a causal LM saved with save_pretrained")
    with _quiet_transformers():
        # fp32 master weights whatever the checkpoint's dtype; Accelerate autocasts to bf16 on a GPU.
        backbone = AutoModel.from_pretrained(model_dir, dtype=torch.float32, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    if tokenizer.pad_token is None:
        # Any id will do: padded positions are masked out of attention and pooling.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token or tokenizer.convert_ids_to_tokens(0)
    tokenizer.padding_side = "right"
    return backbone, tokenizer


class TextEncoder(nn.Module):
    """Backbone + pooling + MLP head -> L2-normalised embedding of a text."""

    def __init__(self, backbone: nn.Module, tokenizer, pooling: str = "auto", head_hidden: int | None = 256,
                 embed_dim: int | None = 128, max_length: int = 256, truncation_side: str = "left"):
        super().__init__()
        if pooling == "auto":
            from components.llm.model import default_pooling

            pooling = default_pooling(backbone.config)
        if pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'auto', 'last' or 'mean', got {pooling!r}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.truncation_side = truncation_side
        hidden = backbone.config.hidden_size
        self.head_hidden, self.embed_dim = head_hidden, embed_dim
        if head_hidden:
            self.head = MLP(hidden, (head_hidden,), embed_dim, activation="gelu")
        else:  # head-less: the raw pooled hidden state (the "untuned" baseline)
            self.head = nn.Identity()
            self.embed_dim = hidden

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, model_dir: str | Path, cfg=None, head: bool = True, seed: int | None = None,
                      device: str | torch.device | None = None) -> "TextEncoder":
        """A fresh encoder (new head, seeded) on a pretrained LM; ``cfg``: a ``ContrastiveConfig``."""
        from components.config import ContrastiveConfig

        cfg = cfg or ContrastiveConfig()
        backbone, tokenizer = load_backbone(model_dir)
        if seed is not None:
            torch.manual_seed(seed)
        enc = cls(backbone, tokenizer, pooling=cfg.pooling, head_hidden=cfg.head_hidden if head else None,
                  embed_dim=cfg.embed_dim if head else None, max_length=cfg.max_length,
                  truncation_side=cfg.truncation_side)
        return enc.to(resolve_device(device))

    def save(self, out_dir: str | Path) -> Path:
        """Write backbone (safetensors) + tokenizer, head weights and ``encoder.json`` to ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with _quiet_transformers():
            self.backbone.save_pretrained(out / BACKBONE_DIR)
            self.tokenizer.save_pretrained(out / BACKBONE_DIR)
        head_file = out / HEAD_FILE
        if self.head_hidden:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(head_file))
        elif head_file.exists():
            head_file.unlink()
        config = {"pooling": self.pooling, "head_hidden": self.head_hidden, "embed_dim": self.embed_dim,
                  "max_length": self.max_length, "truncation_side": self.truncation_side,
                  "hidden_size": self.backbone.config.hidden_size}
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, enc_dir: str | Path, device: str | torch.device | None = None) -> "TextEncoder":
        """An encoder written by ``save`` (on CUDA when present unless ``device`` says otherwise)."""
        from safetensors.torch import load_file

        enc_dir = Path(enc_dir)
        if not (enc_dir / CONFIG_FILE).exists():
            raise FileNotFoundError(f"{enc_dir}: not a saved TextEncoder ({CONFIG_FILE} missing)")
        config = json.loads((enc_dir / CONFIG_FILE).read_text())
        backbone, tokenizer = load_backbone(enc_dir / BACKBONE_DIR)
        enc = cls(backbone, tokenizer, pooling=config["pooling"], head_hidden=config["head_hidden"],
                  embed_dim=config["embed_dim"], max_length=config["max_length"],
                  truncation_side=config.get("truncation_side", "left"))
        if config["head_hidden"]:
            enc.head.load_state_dict(load_file(str(enc_dir / HEAD_FILE)))
        return enc.to(resolve_device(device)).eval()

    # -- computation -------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token ids and attention mask, on the encoder's device."""
        self.tokenizer.truncation_side = self.truncation_side
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {"input_ids": batch["input_ids"].to(self.device),
                "attention_mask": batch["attention_mask"].to(self.device)}

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, hidden) from (batch, seq, hidden): the masked mean, or the last non-pad position."""
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
        # Last non-pad position; works for left or right padding alike.
        pos = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * pos).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        z = self.head(self.pool(hidden, attention_mask).float())
        return F.normalize(z.float(), dim=-1)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Embeddings of ``texts`` with gradients (training)."""
        return self(**self.tokenize(texts))

    @torch.inference_mode()
    def encode(self, texts, batch_size: int = 64) -> np.ndarray:
        """(len(texts), embed_dim) float32 unit vectors; texts are batched by length to save padding."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.embed_dim), dtype=np.float32)
        if not texts:
            return out
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            out[idx] = self.embed([texts[j] for j in idx]).float().cpu().numpy()
        self.train(was_training)
        return out


# ----------------------------------------------------------------------------------------------
# MLflow: pyfunc wrapper and registration


class EncoderModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: a DataFrame with a ``text`` column -> (n, embed_dim) float32 embeddings."""

    def load_context(self, context):
        self.encoder = TextEncoder.load(context.artifacts["encoder"])
        self.batch_size = int((context.model_config or {}).get("batch_size", 64))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if hasattr(model_input, "columns"):
            if "text" not in model_input.columns:
                raise ValueError(f"expected a 'text' column, got columns {list(model_input.columns)}")
            texts = model_input["text"].tolist()
        else:
            texts = list(model_input)
        batch_size = int((params or {}).get("batch_size", self.batch_size))
        return self.encoder.encode(texts, batch_size=batch_size)


ENCODER_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "mlflow")


def encoder_candidate(params, encoder_dir: str | Path, name: str, score_texts, baseline: dict | None = None,
                      chance: float = 0.0, metric: str = "heldout.mrr", input_texts: list[str] | None = None,
                      flow_run_id: str | None = None):
    """The encoder in ``encoder_dir`` as a ``registry.Candidate`` named ``name``: ``score_texts(encoder)``
    gives its ``metric`` (e.g. held-out retrieval MRR); the same function scores the champion, so both
    are measured on the same pairs. ``baseline``/``chance``: the floor's metrics (untuned backbone, random)."""
    from components import registry

    cfg = params.contrastive
    example = pd.DataFrame({"text": input_texts or ["<scene> <weather> rainy </scene>",
                                                    "<poi> <name> Noodle Bar <cate> noodles </poi>"]})

    def prepare(tmp: Path):
        return {"encoder": str(encoder_dir)}, example

    def score(models: dict) -> dict:
        return {role: {metric: float(score_texts(m.encoder))} for role, m in models.items()}

    return registry.Candidate(
        name=name, artifact_name="encoder", python_model=EncoderModel, prepare=prepare, score=score,
        metric=metric, margin=cfg.promotion_margin, floor_margin=cfg.promotion_floor_margin,
        baseline=(lambda: dict(baseline)) if baseline else None, baseline_name="untuned backbone", chance=chance,
        tags=registry.lineage_tags(params, "encoder", f"{params.llm.base_model or 'llama'}+contrastive", flow_run_id),
        pip_requirements=registry.requirements(ENCODER_REQUIREMENTS))


def load_registered(name: str, version: str | int | None = None, alias: str | None = None):
    """The pyfunc of a registered encoder (``models:/name@alias`` or ``models:/name/version``)."""
    import mlflow

    uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version if version is not None else 'latest'}"
    return mlflow.pyfunc.load_model(uri)

