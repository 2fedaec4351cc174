"""The pretraining corpus and its tokenizer (LARR stage 1, METHODS.md §1).

Three kinds of documents, all rendered by components/llm/text.py so that pretraining, the
contrastive stage and serving read the same format:

- every PoI (``poi_text``);
- every user's behaviour in their scenes: their history cut into windows of
  ``max_events_per_user_doc`` behaviours, newest first, at most ``max_docs_per_user`` windows
  (users with thousands of behaviours stay bounded, and each window is a full ``user_text``);
- every distinct value of each LARR scene feature (``scene_feature_text``), because stage 3
  embeds exactly these strings one by one.

Choices of ours (METHODS.md leaves them open):
- The held-out split is by *entity*, not by document: a seeded hash of "poi:<id>" / "user:<id>"
  sends all documents of a PoI or user to the same side, so held-out perplexity measures
  unseen entities instead of overlapping windows. Scene-value documents are a closed vocabulary
  the later stages must know, so they all stay in training.
- Special tokens absorb the space before them (``lstrip``): "noodles <price> 32" is
  ["Ġnoodles", "<price>", "Ġ32"], not [..., "Ġ", "<price>", ...], which makes the documents a
  quarter shorter; the word after a marker keeps its leading space, its most frequent form.

Outputs, under ``llm_dir``: ``corpus/train.txt``, ``corpus/heldout.txt`` (one document per line,
documents shuffled with the seed) and ``tokenizer/`` (a ``PreTrainedTokenizerFast``).
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import LLMConfig, Params
from components.llm.text import (
    SCENE_FEATURES,
    SPECIAL_TOKENS,
    behavior_texts,
    poi_text,
    scene_feature_text,
    scene_values,
    user_head,
)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
_SCENE_COLUMNS = ["ts", "geohash", "location_type", "weather", "temperature_c", "is_holiday"]


# ----------------------------------------------------------------------------------------------
# Documents


def heldout_mask(keys: list[str], fraction: float, seed: int) -> np.ndarray:
    """True for the keys that fall in the held-out split (a seeded hash: stable across runs and processes)."""
    def unit(key: str) -> float:
        h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64

    return np.array([unit(k) < fraction for k in keys], dtype=bool)


def user_windows(n_events: int, window: int, max_windows: int) -> list[tuple[int, int]]:
    """(start, stop) of a history's windows of ``window`` events, newest last, at most ``max_windows``.

    Windows are cut from the newest event backwards, so the recent ones are full and only the
    oldest kept window may be short.
    """
    stops = range(n_events, 0, -window)
    out = [(max(0, stop - window), stop) for stop in list(stops)[:max_windows]]
    return out[::-1]


def corpus_documents(curated_dir: Path, cfg: LLMConfig, features_cfg=None) -> list[tuple[str, str]]:
    """All documents as (entity key, text); the key decides the held-out split ("" = always train)."""
    curated_dir = Path(curated_dir)
    missing = [n for n in ("pois", "users", "behaviors", "impressions") if not (curated_dir / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"{curated_dir}: no curated {', '.join(missing)} table(s); run `scenerec ingest` first")
    pois = pd.read_parquet(curated_dir / "pois.parquet")
    users = pd.read_parquet(curated_dir / "users.parquet")
    beh = pd.read_parquet(curated_dir / "behaviors.parquet")
    docs: list[tuple[str, str]] = [(f"poi:{r['poi_id']}", poi_text(r)) for r in pois.to_dict("records")]

    # Users: render every behaviour once (vectorised), then join each window's fragments.
    # A stable sort keeps behaviours of the same second in their logged order (click before order).
    beh = beh.sort_values(["user_id", "ts"], kind="stable", ignore_index=True)
    fragments = behavior_texts(beh, pois.set_index("poi_id"), features_cfg).to_numpy() if len(beh) else []
    bounds = np.flatnonzero(np.r_[True, beh["user_id"].to_numpy()[1:] != beh["user_id"].to_numpy()[:-1], True])
    spans = {beh["user_id"].iat[a]: (a, b) for a, b in zip(bounds[:-1], bounds[1:])} if len(beh) else {}
    for user in users.to_dict("records"):
        head = user_head(user)
        a, b = spans.get(user["user_id"], (0, 0))
        if a == b:  # no behaviour yet (a cold user): who they are is still worth a document
            docs.append((f"user:{user['user_id']}", head + " </user>"))
            continue
        for lo, hi in user_windows(b - a, cfg.max_events_per_user_doc, cfg.max_docs_per_user):
            docs.append((f"user:{user['user_id']}", " ".join([head, *fragments[a + lo:a + hi]]) + " </user>"))

    # Scene feature values seen anywhere (behaviours and impressions), each once.
    imp = pd.read_parquet(curated_dir / "impressions.parquet", columns=_SCENE_COLUMNS)
    frames = [scene_values(df, features_cfg) for df in (beh[_SCENE_COLUMNS], imp) if len(df)]
    values = pd.concat(frames) if frames else pd.DataFrame(columns=list(SCENE_FEATURES))
    for feature in SCENE_FEATURES:
        for v in sorted(values[feature].unique()):
            docs.append(("", scene_feature_text(feature, v)))
    return docs


# ----------------------------------------------------------------------------------------------
# Tokenizer


def _special_tokens():
    from tokenizers import AddedToken

    # Field markers swallow the space before them, not after: the next word keeps its "Ġ" form, which
    # is what BPE learns (the trainer does not strip around special tokens, encoding does).
    return [AddedToken(t, special=True, lstrip=True, rstrip=False, normalized=False) for t in SPECIAL_TOKENS]


def train_tokenizer(lines: list[str], vocab_size: int, model_max_length: int):
    """A byte-level BPE trained on ``lines`` with our special tokens, as a ``PreTrainedTokenizerFast``.

    Byte-level: every string is encodable, no unknown token. Ids 0-2 are <pad>, <s>, </s>; the
    field markers follow, so every one of them is a single id that BPE never splits.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=[PAD, BOS, EOS] + _special_tokens(),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(lines, trainer=trainer, length=len(lines))
    # Like Llama: <s> opens every encoded text; training adds </s> between packed documents itself.
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        extra_special_tokens=list(SPECIAL_TOKENS), model_max_length=model_max_length,
    )


def base_tokenizer(base_model: str | Path, root: Path | None = None):
    """The base model's own tokenizer (local files only) with our field markers added as special tokens.

    ``base_model``: a folder or an installed model package (model.resolve_base_model). The model's
    embeddings must then grow to ``len(tokenizer)``: model.build_model does it.
    """
    from transformers import AutoTokenizer

    from components.llm.model import resolve_base_model

    tok = AutoTokenizer.from_pretrained(str(resolve_base_model(base_model, root)), local_files_only=True)
    extra = {"extra_special_tokens": _special_tokens()}
    # An encoder's documents are [CLS] doc [SEP]: its own markers serve as bos/eos, no new tokens.
    if tok.bos_token is None and tok.cls_token is not None and tok.sep_token is not None:
        extra["bos_token"], extra["eos_token"] = tok.cls_token, tok.sep_token
    # Causal-LM tokenizers often lack a pad (and some a bos/eos); packing needs all three.
    elif tok.eos_token is None:
        extra["eos_token"] = EOS
    if tok.bos_token is None and "bos_token" not in extra:
        extra["bos_token"] = tok.eos_token or EOS
    if tok.pad_token is None:
        extra["pad_token"] = PAD
    tok.add_special_tokens(extra, replace_extra_special_tokens=False)
    return tok


def check_special_tokens(tokenizer) -> None:
    """Every field marker must encode to exactly one id (else the model never sees the marker as a unit)."""
    bad = {t: ids for t in SPECIAL_TOKENS if len(ids := tokenizer.encode(t, add_special_tokens=False)) != 1}
    if bad:
        raise ValueError(f"special tokens that do not encode to one id: {bad}")


def encode_documents(tokenizer, lines: list[str], batch: int = 4096) -> np.ndarray:
    """Token ids of documents packed end to end: ``<s> doc </s> <s> doc </s> ...`` (int32).

    Goes through the Rust tokenizer directly: documents are longer than any model input, which is
    fine here (they are packed and cut) but makes the Python wrapper warn about every call.
    """
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = []
    for i in range(0, len(lines), batch):
        chunk = lines[i:i + batch]
        if backend is not None:
            ids = [enc.ids for enc in backend.encode_batch(chunk, add_special_tokens=False)]
        else:  # a slow (pure Python) tokenizer
            ids = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        parts += [np.asarray([bos, *x, eos], dtype=np.int32) for x in ids]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def read_lines(path: Path) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


# ----------------------------------------------------------------------------------------------
# The step


def build_corpus(params: Params) -> dict:
    """Write llm_dir/corpus/{train,heldout}.txt and llm_dir/tokenizer; return counts.

    With ``llm.base_model`` unset a byte-level BPE is trained on the training split; with it set,
    the base model's tokenizer is extended with the special tokens.
    """
    cfg = params.llm
    llm_dir = params.path("llm_dir")
    t0 = time.perf_counter()
    docs = corpus_documents(params.path("curated_dir"), cfg, params.features)
    # One document per line: a newline inside a description would split it in two.
    texts = [" ".join(t.splitlines()) for _, t in docs]
    keys = [k for k, _ in docs]
    held = heldout_mask(keys, cfg.heldout_fraction, params.seed) & np.array([k != "" for k in keys])
    order = np.random.default_rng(params.seed).permutation(len(texts))  # mix kinds within packed blocks
    train = [texts[i] for i in order if not held[i]]
    heldout = [texts[i] for i in order if held[i]]
    if not heldout:
        raise ValueError(
            f"llm.heldout_fraction={cfg.heldout_fraction} held out no PoI or user out of {len(texts)} documents; "
            "raise it or provide more data"
        )

    corpus_dir = llm_dir / "corpus"
    corpus_dir.mkdir(parents=True, exist_ok=True)
    (corpus_dir / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
    (corpus_dir / "heldout.txt").write_text("\n".join(heldout) + "\n", encoding="utf-8")

    if cfg.base_model:
        tokenizer = base_tokenizer(cfg.base_model, params.root)
    else:
        tokenizer = train_tokenizer(train, cfg.vocab_size, cfg.max_position)
    check_special_tokens(tokenizer)
    tokenizer.save_pretrained(str(llm_dir / "tokenizer"))

    train_tokens = int(encode_documents(tokenizer, train).size)
    heldout_tokens = int(encode_documents(tokenizer, heldout).size)
    kinds = pd.Series([k.split(":")[0] or "scene" for k in keys]).value_counts().to_dict()
    counts = {
        "documents": len(texts),
        "documents.train": len(train),
        "documents.heldout": len(heldout),
        **{f"documents.{k}": int(v) for k, v in kinds.items()},
        "tokens.train": train_tokens,
        "tokens.heldout": heldout_tokens,
        "vocab": len(tokenizer),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    (corpus_dir / "stats.json").write_text(json.dumps(counts, indent=2) + "\n")
    return counts
