"""Is the HomoDistil student smaller, faster and nearly as good as its teacher, and better than plain distillation?

    python benchmarks/distill.py [--params params.yaml] [--steps N] [--no-contrastive] [--keep DIR]

Needs the pretrained teacher and its corpus of the project (``llm_dir/pretrained``,
``llm_dir/corpus/{train,heldout}.txt``, as written by ``scenerec pipeline``). In one run it
distils the teacher twice with the ``distill:`` settings of params.yaml:
  homodistil      components/llm/distill.homodistil: exact copy, pruned while distilling
  plain_truncate  plain_distill(init="truncate"): same final shape, losses and steps, no homotopic pruning
then measures teacher and both students on:
  params          total (embeddings included, tied once) and non-embedding
  encode/s        texts per second of the pooled embedding forward pass (head-less TextEncoder,
                  batch 64, held-out corpus documents; best of --repeat, models interleaved)
  ppl             held-out LM perplexity (the same evenly spaced held-out blocks for all three)
  recall@10       on the held-out pairs after the same contrastive fine-tuning of each model
                  (contrastive.finetune + evaluate, params.yaml's `contrastive:`), mean of strategies
Prints a table with ratios against the teacher and the targets met; writes reports/benchmarks/distill.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from components.config import ParamsError, load_params  # noqa: E402
from report import save_report  # noqa: E402  (benchmarks/report.py)

MODELS = ("teacher", "homodistil", "plain_truncate")


def _missing(params) -> list[Path]:
    llm = params.path("llm_dir")
    need = [llm / "pretrained" / "config.json", llm / "corpus" / "train.txt", llm / "corpus" / "heldout.txt"]
    return [p for p in need if not p.exists()]


def encode_throughput(model_dirs: dict[str, Path], texts: list[str], repeat: int, batch_size: int = 64) -> dict:
    """Texts/s of a head-less TextEncoder (backbone + pooling) per model; best of ``repeat``, interleaved
    so that load on a shared machine hits every model alike."""
    from components.config import ContrastiveConfig
    from components.llm.encoder import TextEncoder

    encoders = {k: TextEncoder.from_backbone(d, ContrastiveConfig(), head=False) for k, d in model_dirs.items()}
    for enc in encoders.values():
        enc.encode(texts[:batch_size], batch_size=batch_size)  # warm-up
    best = {k: float("inf") for k in encoders}
    for _ in range(repeat):
        for k, enc in encoders.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            enc.encode(texts, batch_size=batch_size)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[k] = min(best[k], time.perf_counter() - t)
    return {k: len(texts) / s for k, s in best.items()}


def contrastive_recall(params, model_dirs: dict[str, Path], work: Path) -> dict:
    """Mean (and per-strategy) recall@k on held-out pairs after the same contrastive fine-tuning."""
    from components.llm.contrastive import evaluate, finetune
    from components.llm.encoder import TextEncoder
    from components.llm.pairs import by_strategy, load_pairs

    cfg = params.contrastive
    pairs = load_pairs(params)
    train, held = by_strategy(pairs, "train"), by_strategy(pairs, "heldout")
    out = {}
    for name, model_dir in model_dirs.items():
        enc_dir = work / f"encoder_{name}"
        finetune(params, model_dir, enc_dir, None, pairs=train)
        scores = evaluate(TextEncoder.load(enc_dir), held, k=cfg.eval_k, batch_size=cfg.eval_batch_size,
                          seed=params.seed)
        key = f"recall_at_{cfg.eval_k}"
        out[name] = {
            "mean": scores[f"mean.finetuned.{key}"],
            "random": scores[f"mean.random.{key}"],
            **{s: scores[f"{s}.finetuned.{key}"] for s in held if f"{s}.finetuned.{key}" in scores},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=os.environ.get("SCENEREC_PARAMS", "params.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="override distill.steps (warm-up/recovery scaled alike)")
    ap.add_argument("--no-contrastive", action="store_true", help="skip the fine-tuning: report perplexity only")
    ap.add_argument("--repeat", type=int, default=3, help="best of N encode timings per model")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for the encode timings (1: steadiest on shared cores; 0: torch's default)")
    ap.add_argument("--encode-texts", type=int, default=512, help="held-out documents encoded per timing")
    ap.add_argument("--eval-blocks", type=int, default=128, help="held-out blocks for perplexity")
    ap.add_argument("--keep", type=Path, default=None, help="keep students and encoders in this folder")
    ap.add_argument("--out", type=Path, default=None, help="default: <reports_dir>/benchmarks/distill.json")
    args = ap.parse_args(argv)

    try:
        overrides = {}
        if args.steps:
            base = load_params(args.params).distill
            f = args.steps / base.steps
            overrides = {"distill": {"steps": args.steps, "warmup_steps": round(base.warmup_steps * f),
                                     "recovery_steps": round(base.recovery_steps * f),
                                     "prune_every": max(1, round(base.prune_every * f))}}
        params = load_params(args.params, overrides)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return 2
    if missing := _missing(params):
        print("benchmarks/distill.py needs the pretrained teacher and its corpus, missing:\n  "
              + "\n  ".join(map(str, missing))
              + "\nProduce them in this project with `scenerec pipeline` (generate, ingest, corpus, pretrain),"
                " or point --params at a project that has them.", file=sys.stderr)
        return 2

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.llm import distill
    from components.llm.corpus import read_lines
    from components.llm.pruning import count_params

    llm = params.path("llm_dir")
    teacher_dir = llm / "pretrained"
    keep = args.keep
    tmp = None if keep else tempfile.TemporaryDirectory(prefix="scenerec-distill-")
    work = Path(keep or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = {
            "homodistil": distill.homodistil(params, teacher_dir, work / "homodistil"),
            "plain_truncate": distill.plain_distill(params, teacher_dir, work / "plain_truncate", init="truncate"),
        }
        dirs = {"teacher": teacher_dir, "homodistil": work / "homodistil", "plain_truncate": work / "plain_truncate"}

        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        blocks = distill.load_blocks(tokenizer, llm / "corpus" / "heldout.txt", params.distill.seq_len,
                                     limit=args.eval_blocks)
        sizes, ppl = {}, {}
        for name, d in dirs.items():
            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
            if torch.cuda.is_available():
                model = model.cuda()
            sizes[name] = count_params(model.config)
            ppl[name] = distill.heldout_perplexity(model, blocks)
            del model

        texts = read_lines(llm / "corpus" / "heldout.txt")[: args.encode_texts]
        if args.threads:
            torch.set_num_threads(args.threads)
        speed = encode_throughput(dirs, texts, args.repeat)

        recall, recall_note = None, None
        if args.no_contrastive:
            recall_note = "skipped (--no-contrastive)"
        else:
            try:
                import components.llm.contrastive  # noqa: F401
            except ImportError as e:
                recall_note = f"components/llm/contrastive.py unavailable ({e}); perplexity only"
            if recall_note is None:
                recall = contrastive_recall(params, dirs, work)
    finally:
        if tmp is not None:
            tmp.cleanup()

    t = "teacher"
    table = {}
    for name in MODELS:
        row = {
            "params": sizes[name]["total"],
            "params_ratio": sizes[name]["total"] / sizes[t]["total"],
            "non_embedding_params": sizes[name]["non_embedding"],
            "non_embedding_ratio": sizes[name]["non_embedding"] / sizes[t]["non_embedding"],
            "encode_texts_per_s": speed[name],
            "speedup": speed[name] / speed[t],
            "heldout_ppl": ppl[name],
            "ppl_ratio": ppl[name] / ppl[t],
        }
        if recall:
            row["recall_at_10"] = recall[name]["mean"]
            row["recall_ratio"] = recall[name]["mean"] / recall[t]["mean"] if recall[t]["mean"] else float("nan")
            row["recall_by_strategy"] = {k: v for k, v in recall[name].items() if k not in ("mean", "random")}
        table[name] = row

    h, p = table["homodistil"], table["plain_truncate"]
    targets = {
        "student_params_le_30pct": h["params_ratio"] <= 0.30,
        "encode_speedup_ge_2x": h["speedup"] >= 2.0,
        "ppl_better_than_plain": h["heldout_ppl"] < p["heldout_ppl"],
    }
    if recall:
        targets["recall_ge_90pct_of_teacher"] = h["recall_ratio"] >= 0.90
        targets["recall_better_than_plain"] = h["recall_at_10"] > p["recall_at_10"]

    shape = runs["homodistil"]["shape"]
    print(f"teacher {runs['homodistil']['teacher_shape']} -> student {shape}; "
          f"{params.distill.steps} distillation steps each ({runs['homodistil']['seconds']:.0f} s homodistil, "
          f"{runs['plain_truncate']['seconds']:.0f} s plain)")
    cols = f"{'model':<16}{'params':>11}{'x':>7}{'non-emb':>11}{'x':>7}{'encode/s':>10}{'x':>7}{'ppl':>9}{'x':>7}"
    if recall:
        cols += f"{'R@10':>8}{'x':>7}"
    print(cols)
    for name, r in table.items():
        line = (f"{name:<16}{r['params']:>11,}{r['params_ratio']:>7.2f}{r['non_embedding_params']:>11,}"
                f"{r['non_embedding_ratio']:>7.2f}{r['encode_texts_per_s']:>10.0f}{r['speedup']:>7.2f}"
                f"{r['heldout_ppl']:>9.2f}{r['ppl_ratio']:>7.2f}")
        if recall:
            line += f"{r['recall_at_10']:>8.3f}{r['recall_ratio']:>7.2f}"
        print(line)
    print("x: ratio to the teacher measured in this run (params, non-embedding params, texts/s, perplexity, recall@10)")
    if recall:
        print(f"random embeddings recall@10: {recall[t]['random']:.3f}")
    else:
        print(f"recall@10: {recall_note}")
    for k, ok in targets.items():
        print(f"  {'met ' if ok else 'MISS'}  {k}")

    report = {
        "teacher_dir": str(teacher_dir),
        "distill": params.distill.model_dump(),
        "teacher_shape": runs["homodistil"]["teacher_shape"],
        "student_shape": shape,
        "results": table,
        "recall_note": recall_note,
        "targets": targets,
        "train_seconds": {k: v["seconds"] for k, v in runs.items()},
        "resumed_from_step": {k: v["resumed_from"] for k, v in runs.items()},  # > 0: timings cover the rest only
        "final_train_loss": {k: v["final_loss"] for k, v in runs.items()},
        "encode": {"texts": len(texts), "batch_size": 64, "repeat": args.repeat, "threads": torch.get_num_threads(),
                   "device": "cuda" if torch.cuda.is_available() else "cpu"},
        "heldout_blocks": len(blocks),
        "machine": f"{platform.machine()} {platform.python_version()} torch {torch.__version__}",
    }
    out = args.out or params.path("reports_dir") / "benchmarks" / "distill.json"
    save_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
