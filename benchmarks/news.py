"""Does PerCoNet beat NRMS on news recommendation, by more than the spread over seeds?

    python benchmarks/news.py [--seeds 0 1 2] [--mind-dir DIR] [--ablations] [--keep DIR]

For each seed: a synthetic MIND world generated from that seed (``news:`` settings; or the real MIND
folder given with --mind-dir, then only the training seed changes), then PerCoNet and NRMS trained
on its train/ split with that seed and evaluated on dev/ (components/news/train.train_news). Reports
  auc, mrr, ndcg_at_5/10      per-impression means on dev (MIND's definitions)
  train imp/s                 training impressions per second (impressions x epochs / training time)
as mean and sample standard deviation over the seeds, PerCoNet / NRMS ratios, the paired difference
(per seed) and whether it exceeds the seed spread (the larger of the two standard deviations). On
synthetic worlds the oracle row ranks by the generator's true click utility: the ceiling of any model.
--ablations adds NRMS reading title + abstract and PerCoNet without persona / without the cross-view loss.
Writes reports/benchmarks/news.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from components.config import ParamsError, load_params  # noqa: E402
from components.config import NewsConfig  # noqa: E402
from components.news.mind import TRUTH_FILE, generate_mind, load_mind  # noqa: E402
from components.news.train import METRICS, impression_metrics, train_news  # noqa: E402
from report import save_report  # noqa: E402  (benchmarks/report.py)

# name -> (model, config overrides); the first two are the comparison, the rest --ablations.
VARIANTS = {
    "perconet": ("perconet", {}),
    "nrms": ("nrms", {}),
    "nrms+abstract": ("nrms", {"nrms_abstract": True}),
    "perconet-persona": ("perconet", {"persona_top_k": 0}),
    "perconet-contrast": ("perconet", {"contrastive_weight": 0.0}),
}


def oracle(dev_dir: Path) -> dict | None:
    """Metrics of ranking by the generator's noise-free utility (synthetic worlds only)."""
    if not (dev_dir / TRUTH_FILE).is_file():
        return None
    dev = load_mind(dev_dir)
    truth = pd.read_csv(dev_dir / TRUTH_FILE, sep="\t", header=None, dtype=str, keep_default_na=False)
    per = [m for y, u in zip(dev.behaviors["labels"], truth[1])
           if (m := impression_metrics(y, np.array(u.split(), dtype=float))) is not None]
    return {k: float(np.mean([m[k] for m in per])) for k in METRICS}


def run_variant(name: str, cfg: NewsConfig, mind_dir: Path, out_dir: Path, seed: int) -> dict:
    """Train and evaluate one variant of VARIANTS on ``mind_dir`` with ``seed``."""
    kind, over = VARIANTS[name]
    return train_news(cfg.model_copy(update=over), mind_dir, out_dir, model=kind, seed=seed)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table, write the report; 0 on success, 2 on bad parameters."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=os.environ.get("SCENEREC_PARAMS", "params.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mind-dir", type=Path, default=None,
                    help="a MIND folder with train/ and dev/ (default: a synthetic world per seed)")
    ap.add_argument("--ablations", action="store_true", help="also NRMS+abstract, PerCoNet without persona / contrast")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on shared cores)")
    ap.add_argument("--keep", type=Path, default=None, help="keep worlds and models in this folder")
    ap.add_argument("--out", type=Path, default=None, help="default: <reports_dir>/benchmarks/news.json")
    args = ap.parse_args(argv)

    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return 2
    cfg = getattr(params, "news", None) or NewsConfig()  # the news: section, once params.yaml has one
    cfg = cfg.model_copy(update={"cpu_threads": args.threads, "checkpoint": False})
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(VARIANTS) if args.ablations else ["perconet", "nrms"]

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="scenerec-news-")
    work = Path(args.keep or tmp.name)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    oracles: list[dict] = []
    t0 = time.perf_counter()
    try:
        for seed in args.seeds:
            mind_dir = args.mind_dir
            if mind_dir is None:
                mind_dir = work / f"world_{seed}"
                generate_mind(mind_dir, cfg, seed)
                if (o := oracle(mind_dir / "dev")) is not None:
                    oracles.append(o)
            for name in names:
                m = run_variant(name, cfg, mind_dir, work / f"{name}_{seed}", seed)
                if args.mind_dir is None:  # a temporary folder: the report names the world, not the path
                    m["mind_dir"] = mind_dir.name
                runs[name].append(m)
                print(f"seed {seed} {name:<18} " + " ".join(f"{k} {m[f'dev.{k}']:.4f}" for k in METRICS)
                      + f"  {m['train.impressions_per_s']:.0f} imp/s  {m['seconds']:.0f} s", flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()

    summary = {}
    for name, ms in runs.items():
        row = {}
        for k in METRICS:
            row[k] = dict(zip(("mean", "sd"), _mean_sd([m[f"dev.{k}"] for m in ms])))
        row["train_impressions_per_s"] = dict(zip(("mean", "sd"), _mean_sd([m["train.impressions_per_s"] for m in ms])))
        row["seconds"] = dict(zip(("mean", "sd"), _mean_sd([m["seconds"] for m in ms])))
        summary[name] = row

    p, n = summary["perconet"], summary["nrms"]
    comparison, targets = {}, {}
    for k in METRICS:
        diffs = [a[f"dev.{k}"] - b[f"dev.{k}"] for a, b in zip(runs["perconet"], runs["nrms"])]
        spread = max(p[k]["sd"], n[k]["sd"])
        comparison[k] = {"ratio": p[k]["mean"] / n[k]["mean"], "diff_mean": float(np.mean(diffs)),
                         "diff_min": float(np.min(diffs)), "spread": spread}
        targets[f"{k}_beats_nrms_by_more_than_spread"] = bool(np.mean(diffs) > spread and np.min(diffs) > 0)
    speed_ratio = p["train_impressions_per_s"]["mean"] / n["train_impressions_per_s"]["mean"]

    first = runs["perconet"][0]
    print(f"\nPerCoNet vs NRMS, {len(args.seeds)} seeds ({', '.join(map(str, args.seeds))}); "
          f"{first['train.impressions']} train impressions x {cfg.epochs} epochs, {first['dev.impressions']} dev "
          f"impressions per seed; {time.perf_counter() - t0:.0f} s in all")
    head = f"{'':<18}" + "".join(f"{k:>17}" for k in METRICS) + f"{'train imp/s':>17}"
    print(head)
    for name in names:
        s = summary[name]
        print(f"{name:<18}" + "".join(f"{s[k]['mean']:>10.4f} ±{s[k]['sd']:.4f}" for k in METRICS)
              + f"{s['train_impressions_per_s']['mean']:>11.0f} ±{s['train_impressions_per_s']['sd']:<5.0f}")
    if oracles:
        o = {k: float(np.mean([x[k] for x in oracles])) for k in METRICS}
        print(f"{'oracle utility':<18}" + "".join(f"{o[k]:>17.4f}" for k in METRICS))
    print(f"{'ratio P/N':<18}" + "".join(f"{comparison[k]['ratio']:>16.3f}x" for k in METRICS)
          + f"{speed_ratio:>16.3f}x")
    print(f"{'diff P-N (min)':<18}" + "".join(
        f"{comparison[k]['diff_mean']:>+8.4f} ({comparison[k]['diff_min']:+.3f})" for k in METRICS))
    print(f"{'spread (max sd)':<18}" + "".join(f"{comparison[k]['spread']:>17.4f}" for k in METRICS))
    print("±: sample sd over seeds; ratio and diff: PerCoNet against NRMS in this run (diff paired per seed)")
    for k, ok in targets.items():
        print(f"  {'met ' if ok else 'MISS'}  {k}")

    report = {
        "news": cfg.model_dump(mode="json"),
        "seeds": args.seeds,
        "mind_dir": str(args.mind_dir) if args.mind_dir else "synthetic (one world per seed)",
        "summary": summary,
        "comparison": comparison,
        "train_speed_ratio": speed_ratio,
        "oracle": oracles or None,
        "targets": targets,
        "runs": runs,
        "machine": f"{platform.machine()} {platform.python_version()} torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread(s), {'cuda' if torch.cuda.is_available() else 'cpu'}",
    }
    save_report(report, args.out or params.path("reports_dir") / "benchmarks" / "news.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
