"""Shared test builders; test modules import from here (or take conftest's fixtures), never from
each other.

``tiny_batch()`` is the smallest hand-built batch that still exercises every rule of the raw data
contract (shared/DATA_CONTRACT.md): nullable columns hold nulls, searches have no PoI, orders follow
clicks. Tests break one thing in a copy of it. ``make_project`` writes a throw-away SceneRec project
with a tiny params.yaml; ``make_llm_project`` / ``make_tiny_params`` add a generated world's curated
tables; ``build_tiny_lm`` writes a 2-layer Llama and its tokenizer.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.config import ContrastiveConfig, CTRConfig, GenerateConfig, Params, load_params
from components.ctr.model import ModelShapes
from components.data.contract import CONTRACT, TRUTH_COLUMNS


def _ts(values: list[str]) -> pd.Series:
    return pd.Series(pd.to_datetime(values, utc=True))


def tiny_batch() -> dict[str, pd.DataFrame]:
    """A valid batch: 6 PoIs, 5 users, 12 behaviours, 12 impressions, in contract dtypes."""
    pois = pd.DataFrame(
        {
            "poi_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "name": ["Lan Zhou Noodles", "Bean There", "Pho Real", "Crust", "Sushi Go", "Taco Loco"],
            "category": ["noodles", "coffee & tea", "noodles", "pizza", "japanese", "mexican"],
            "price": [32.0, 18.5, 41.0, 88.0, 120.0, 25.0],
            "rating": [4.6, 4.1, None, 3.9, 4.8, 0.0],
            "delivery_minutes": pd.Series([25, 15, 35, 45, 60, 5], dtype="int64"),
            "geohash": ["wx4g0", "wx4g0b", "wx4g0bm", "wx4g0bmq", "wx4g1", "wx4g2"],
            "description": ["hand-pulled beef noodles", "", "pho, bun cha", None, "omakase sets", "tacos"],
            "opened_at": _ts(["2024-03-01T00:00:00Z", "2024-06-15T08:00:00Z", "2025-01-10T00:00:00Z",
                              "2025-05-20T12:00:00Z", "2025-09-01T00:00:00Z", "2026-01-02T00:00:00Z"]),
        }
    )
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3", "u4", "u5"],
            "age_group": ["18-24", "25-34", None, "55+", "<18"],
            "gender": ["f", "m", "u", None, "f"],
            "home_geohash": ["wx4g0", None, "wx4g1b", "wx4g2c", "wx4g0bmq"],
            "registered_at": _ts(["2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z",
                                  "2025-12-24T10:00:00Z", "2026-01-01T00:00:00Z"]),
        }
    )
    scene = {
        "geohash": ["wx4g0", "wx4g0b", "wx4g1", "wx4g2", "wx4g0bm", "wx4g0", "wx4g1", "wx4g2",
                    "wx4g0", "wx4g0b", "wx4g1", "wx4g2"],
        "location_type": ["home", "office", "school", "outdoor", "other", "home",
                          "office", "home", "home", "office", "school", "outdoor"],
        "weather": ["sunny", "cloudy", "rainy", "snowy", "windy", "foggy",
                    "sunny", "sunny", "rainy", "cloudy", "sunny", "foggy"],
        "temperature_c": [21.5, 18.0, 9.5, -40.0, 50.0, 12.0, 25.0, 30.5, 8.0, 15.0, 22.0, 3.0],
        "is_holiday": [False, False, True, False, True, False, False, False, True, False, False, True],
    }
    behaviors = pd.DataFrame(
        {
            "ts": _ts([f"2026-01-{d:02d}T{h:02d}:15:00Z" for d, h in
                       [(3, 8), (3, 9), (4, 12), (4, 12), (5, 19), (6, 7), (6, 8), (7, 20),
                        (8, 11), (8, 11), (9, 13), (10, 18)]]),
            "user_id": ["u1", "u1", "u2", "u2", "u3", "u4", "u4", "u5", "u1", "u3", "u5", "u2"],
            "poi_id": ["p1", "p1", None, "p3", "p2", "p4", "p4", None, "p5", "p6", "p2", "p1"],
            "behavior": ["view", "click", "search", "view", "favorite", "click", "order", "search",
                         "view", "click", "view", "order"],
            "query": [None, None, "spicy noodles", None, None, None, None, "coffee", None, None, None, None],
            **scene,
        }
    )
    impressions = pd.DataFrame(
        {
            "request_id": ["r1"] * 4 + ["r2"] * 4 + ["r3"] * 4,
            "ts": _ts(["2026-01-11T12:00:00Z"] * 4 + ["2026-01-11T19:30:00Z"] * 4 + ["2026-01-12T08:00:00Z"] * 4),
            "user_id": ["u1"] * 4 + ["u2"] * 4 + ["u5"] * 4,
            "poi_id": ["p1", "p2", "p3", "p4", "p2", "p5", "p6", "p1", "p3", "p4", "p5", "p6"],
            "position": pd.Series([0, 1, 2, 3] * 3, dtype="int64"),
            **scene,
            "click": pd.Series([1, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0], dtype="int64"),
            "order": pd.Series([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype="int64"),
        }
    )
    tables = {"pois": pois, "users": users, "behaviors": behaviors, "impressions": impressions}
    # Column order as in the contract, so a typed round trip compares equal.
    return {name: df[CONTRACT[name].column_names] for name, df in tables.items()}


def tiny_truth(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The oracle file of a synthetic batch: true P(click), P(click and order) per impression."""
    imp = tables["impressions"]
    p_click = 0.05 + 0.1 * imp["click"].to_numpy() + 0.01 * imp["position"].to_numpy()
    return pd.DataFrame(
        {"request_id": imp["request_id"], "poi_id": imp["poi_id"], "p_click": p_click, "p_order": p_click / 3}
    )[list(TRUTH_COLUMNS)]


def write_batch(tables: dict[str, pd.DataFrame], dir: Path, fmt: str = "parquet") -> Path:
    """Write ``tables`` as a batch folder (NAME.parquet or NAME.csv); a "truth" key goes to truth/."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        if name == "truth":
            (dir / "truth").mkdir(exist_ok=True)
            df.to_parquet(dir / "truth" / "impressions.parquet", index=False)
        elif fmt == "parquet":
            df.to_parquet(dir / f"{name}.parquet", index=False)
        elif fmt == "csv":
            out = df.copy()
            for col in out.columns:
                if isinstance(out[col].dtype, pd.DatetimeTZDtype):
                    # ISO-8601 with an explicit UTC designator, as the contract asks of CSV batches.
                    out[col] = out[col].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            out.to_csv(dir / f"{name}.csv", index=False, encoding="utf-8")
        else:
            raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    return dir


# ------------------------------------------------------------------------------------------------
# Tiny projects and worlds (a params.yaml, DVC and Feast files, curated tables, a tiny LLM)

REPO = Path(__file__).resolve().parents[1]

# Small enough for seconds per stage, large enough that every table has cold-start rows,
# clicks and orders.
TINY = {
    "generate": {
        "n_users": 60,
        "n_pois": 40,
        "n_requests": 300,
        "impressions_per_request": 5,
        "mean_behaviors_per_user": 30,
        "days": 20,
    },
    # A 2-layer, 32-wide Llama and a few steps per LLM stage: seconds, not minutes.
    "llm": {"vocab_size": 400, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
            "seq_len": 64, "batch_size": 4, "steps": 8, "warmup_steps": 2, "checkpoint_every": 4,
            "eval_every": 4, "eval_blocks": 4},
    "contrastive": {"pairs_per_strategy": 40, "heldout_pairs": 20, "head_hidden": 32, "embed_dim": 16,
                    "max_length": 64, "steps": 4, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2,
                    "log_every": 2},
    "distill": {"steps": 16, "warmup_steps": 2, "recovery_steps": 4, "prune_every": 2, "seq_len": 64,
                "batch_size": 4, "lr_warmup_steps": 2, "checkpoint_every": 8, "log_every": 4, "eval_blocks": 4},
    "ctr": {"epochs": 2, "batch_requests": 32, "max_history": 32, "embed_dim": 8, "mlp_hidden": [16, 8],
            "tower_hidden": [8], "attention_hidden": [8], "larr_d_model": 8, "collab_dim": 8, "n_prototypes": 4,
            "max_contexts": 8, "max_subsequence": 8, "sim_max": 8, "short_term": 4},
    "news": {"n_users": 40, "n_news": 200, "n_entities": 30, "train_impressions": 150, "dev_impressions": 60,
             "impression_size": 10, "epochs": 1, "embed_dim": 16, "num_heads": 2, "attention_hidden": 16,
             "batch_size": 32, "max_history": 10, "history_len": 10},
    # The tiny teacher (no distillation needed), a handful of steps and scored requests.
    "hkfr": {"base": "pretrained", "steps": 6, "batch_size": 4, "train_examples": 40, "max_knowledge_tokens": 48,
             "max_length": 96, "eval_requests": 20, "eval_option_examples": 10, "embedding_dim": 4,
             "checkpoint_every": 3, "log_every": 2, "snapshot_days": 5, "knowledge_max_chars": 300},
}

def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_project(dest: Path, overrides: dict | None = None, git: bool = False) -> Path:
    """Copy what a pipeline run needs into ``dest`` and write a tiny params.yaml there."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "params.tuned.yaml", "feature_repo", "components"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = _merge(_merge(params, TINY), overrides or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if git:
        run = lambda *a: subprocess.run(a, cwd=dest, check=True, capture_output=True, text=True)  # noqa: E731
        run("git", "init", "-q")
        run("git", "config", "user.email", "test@scenerec.invalid")
        run("git", "config", "user.name", "test")
        run("dvc", "init", "-q")
        (dest / ".gitignore").write_text("/data/\n/mlflow.db\n/mlartifacts/\n")
        run("git", "add", "-A")
        run("git", "commit", "-qm", "project")
    return dest



def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the servers the tests start bind loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group twice (Prefect 3.8 servers and workers need a second), then SIGKILL."""
    for _ in range(2):
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def project_cwd(root: Path):
    """Run the block from the project folder (relative paths of a project resolve there), then come back."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)


def featured_project(dest: Path, overrides: dict | None = None) -> Params:
    """``make_project`` then generate -> ingest -> features, run from the project folder; its params."""
    from components import steps

    root = make_project(dest, overrides)
    with project_cwd(root):
        params = load_params(root / "params.yaml")
        steps.generate_step(params)
        steps.ingest_step(params)
        steps.features_step(params)
    return params


def scoring_request(params: Params, n: int) -> pd.DataFrame:
    """A pyfunc scoring request: the first curated impression's user and scene, the first ``n`` PoIs reversed."""
    pois = pd.read_parquet(params.path("curated_dir") / "pois.parquet")["poi_id"].tolist()
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet").iloc[0]
    return pd.DataFrame({"request_id": "r1", "user_id": imp["user_id"], "poi_id": pois[:n][::-1],
                         "ts": str(imp["ts"]), "geohash": imp["geohash"], "location_type": imp["location_type"],
                         "weather": imp["weather"], "temperature_c": imp["temperature_c"],
                         "is_holiday": bool(imp["is_holiday"])})


def served_request(params: Params, n: int) -> tuple[pd.DataFrame, dict]:
    """The same request for the pyfunc (a frame) and for `scenerec serve`'s POST /score (a body): one
    hour after the last logged impression, so the model's snapshot and the online stores hold the same
    past, and with the positions the service gives (the candidates' order; the pyfunc's default is 0)."""
    last = pd.read_parquet(params.path("curated_dir") / "impressions.parquet")["ts"].max()
    req = scoring_request(params, n).assign(ts=(pd.Timestamp(last) + pd.Timedelta(hours=1)).isoformat(),
                                            position=range(n))
    first = req.iloc[0]
    body = {"user_id": str(first["user_id"]), "candidates": req["poi_id"].tolist(), "ts": str(first["ts"]),
            **{k: str(first[k]) for k in ("geohash", "location_type", "weather")},
            "temperature_c": float(first["temperature_c"]), "is_holiday": bool(first["is_holiday"])}
    return req, body


# A 2-layer, hidden-32 model on a few hundred documents: every stage runs in about a second.
TINY_LLM = {
    "vocab_size": 400, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
    "max_position": 64, "seq_len": 32, "batch_size": 4, "steps": 30, "warmup_steps": 3, "lr": 2e-2,
    "checkpoint_every": 5, "eval_every": 10, "eval_blocks": 8,
    "max_events_per_user_doc": 8, "max_docs_per_user": 2, "heldout_fraction": 0.15,
}


def make_llm_project(dest: Path, llm: dict | None = None, seed: int = 0) -> Path:
    """A tiny project with curated tables written straight from the generator (no ingestion needed)."""
    from components.data.generate import generate_tables

    root = make_project(dest, {"seed": seed, "llm": {**TINY_LLM, **(llm or {})}})
    params = load_params(root / "params.yaml")
    curated = params.path("curated_dir")
    curated.mkdir(parents=True, exist_ok=True)
    for name, df in generate_tables(GenerateConfig(**TINY["generate"]), seed).items():
        if name != "truth":
            df.to_parquet(curated / f"{name}.parquet", index=False)
    return root



TINY_WORLD = GenerateConfig(n_users=120, n_pois=50, n_requests=100, impressions_per_request=5,
                            mean_behaviors_per_user=40, days=20)
TINY_MINING = dict(heldout_fraction=0.3, min_cooccurrence=1, min_history=3, history_window=4,
                   pairs_per_strategy=200, heldout_pairs=60)


def make_tiny_params(root: Path, **contrastive) -> Params:
    """A project in ``root`` whose curated tables hold a tiny generated world (no ingest: the
    generator already writes the contract). Modules share one ``root`` per session, so the pairs
    are mined once (``load_pairs`` reuses them while the mining knobs agree)."""
    from components.data.generate import generate_tables

    root.mkdir(parents=True, exist_ok=True)
    params = Params(root=root, seed=7, contrastive=ContrastiveConfig(**{**TINY_MINING, **contrastive}))
    cur = params.path("curated_dir")
    if not (cur / "behaviors.parquet").exists():
        cur.mkdir(parents=True, exist_ok=True)
        for name, df in generate_tables(TINY_WORLD, params.seed).items():
            if name in ("pois", "users", "behaviors"):
                df.to_parquet(cur / f"{name}.parquet", index=False)
    return params


def tiny_root(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "tiny-world"



def build_tiny_lm(texts: list[str], out_dir) -> None:
    """A byte-level BPE on ``texts`` (our special tokens kept whole) and a 2-layer, 64-wide Llama."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from components.llm.text import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=800, special_tokens=["<pad>", "<s>", "</s>", *SPECIAL_TOKENS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         pad_token_id=hf_tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    hf_tok.save_pretrained(out_dir)


def mean_impression_auc(news_model, dev_dir: Path) -> tuple[int, float]:
    """(impressions with a click and a non-click, their mean AUC) of a news pyfunc on a MIND dev folder,
    scored in one call and computed with sklearn: an independent recomputation of ``dev.auc``."""
    from sklearn.metrics import roc_auc_score

    beh = pd.read_csv(Path(dev_dir) / "behaviors.tsv", sep="\t", header=None)
    reqs = [(h if isinstance(h, str) else "", [t.split("-") for t in i.split()]) for h, i in zip(beh[3], beh[4])]
    scored = news_model.predict(pd.DataFrame({"history": [h for h, _ in reqs],
                                              "candidates": [" ".join(n for n, _ in c) for _, c in reqs]}))
    aucs = []
    for i, (_, cands) in enumerate(reqs):
        labels = {n: int(y) for n, y in cands}
        if len(set(labels.values())) == 2:
            mine = scored[scored["request"] == i]
            aucs.append(roc_auc_score([labels[n] for n in mine["news_id"]], mine["score"]))
    return len(aucs), float(np.mean(aucs)) if aucs else float("nan")


# ------------------------------------------------------------------------------------------------
# Hand-made CTR batches (tests/unit/ctr, the served CoFARS tests): a tiny model config and input sizes

CTR_CFG = CTRConfig(embed_dim=8, mlp_hidden=[16, 8], tower_hidden=[8], attention_hidden=[8], larr_d_model=8,
                    larr_heads=2, collab_dim=8, n_prototypes=4, max_contexts=6, max_subsequence=5, sim_max=3,
                    short_term=3, max_history=64)
CTR_SHAPES = ModelShapes(n_users=10, n_pois=20, n_contexts=7, scene={"location_type": 4, "weather": 4,
                         "temperature_band": 4, "time_slot": 4, "day_type": 3, "area": 5}, n_numeric=5,
                         n_categories=6, n_bands={"price_band": 5, "rating_band": 5, "delivery_band": 5}, text_dim=12,
                         # piecewise-linear boundaries of the 5 numeric columns and distance (one constant column)
                         ple_edges=[[-1.0, 0.0, 1.0], [-2.0, -0.5, 0.5, 2.0], [], [0.0, 1.0], [-1.0, 1.0], [0.0, 0.7, 1.4]])


def make_ctr_batch(lengths, k=4, seed=0, cand_seed=None):
    """A batch of len(lengths) requests with k candidates; history i has lengths[i] behaviours."""
    import torch

    g = np.random.default_rng(seed)
    gc = np.random.default_rng(seed if cand_seed is None else cand_seed)
    r, n = len(lengths), max(max(lengths), 1)
    mask = np.arange(n)[None, :] < np.asarray(lengths)[:, None]

    def hist(high):
        return np.where(mask, g.integers(1, high, (r, n)), 0)

    b = {
        "user": g.integers(0, 10, r), "context": g.integers(1, 7, r), "scene": g.integers(0, 3, (r, 6)),
        "scene_value": g.integers(0, 9, (r, 6)), "scene_feats": g.normal(size=(r, 6, 12)).astype(np.float32),
        "scene_mask": np.ones((r, 6), bool), "scene_full": g.normal(size=(r, 12)).astype(np.float32),
        "cand_poi": gc.integers(0, 20, (r, k)), "cand_row": gc.integers(0, 20, (r, k)),
        "cand_category": gc.integers(0, 6, (r, k)), "cand_price": gc.integers(0, 5, (r, k)),
        "cand_rating": gc.integers(0, 5, (r, k)), "cand_delivery": gc.integers(0, 5, (r, k)),
        "cand_text": gc.normal(size=(r, k, 12)).astype(np.float32),
        "position": np.tile(np.arange(k), (r, 1)), "numeric": gc.normal(size=(r, k, 9)).astype(np.float32),
        "distance": gc.random((r, k)).astype(np.float32),
        "click": (gc.random((r, k)) < 0.3).astype(np.float32), "mask": np.ones((r, k), bool),
        "hist_poi": hist(20), "hist_row": hist(20), "hist_category": hist(6), "hist_price": hist(5),
        "hist_rating": hist(5), "hist_delivery": hist(5), "hist_behavior": hist(5), "hist_context": hist(7),
        "hist_text": g.normal(size=(r, n, 12)).astype(np.float32), "hist_mask": mask,
        "slot": g.integers(0, 6, r), "hist_slot": hist(6), "cand_logp": gc.normal(3.5, 0.5, (r, k)).astype(np.float32),
        "hist_logp": np.where(mask, g.normal(3.5, 0.5, (r, n)), 0).astype(np.float32),
    }
    b["order"] = b["click"] * (gc.random((r, k)) < 0.5)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in b.items()}


# A synthetic MIND world and PerCoNet small enough for seconds (tests/unit/news, tests/integration/news).
TINY_NEWS = dict(n_users=120, n_news=400, n_categories=4, n_entities=40, topic_words=10, common_words=30,
                 train_impressions=900, dev_impressions=200, impression_size=8, max_history=10, train_days=3,
                 embed_dim=32, num_heads=2, attention_hidden=16, history_len=10, epochs=3, batch_size=32,
                 max_abstract_len=24, max_title_len=12)


def fake_grads(model, seed: int = 1) -> None:
    """Seeded random gradients on every parameter (what the pruning scores read), without a backward pass."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch on one thread for a module (tiny matmuls gain nothing from threads, and OpenMP threads
    spinning on a shared, busy CPU turn a 1 s run into 20 s)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
