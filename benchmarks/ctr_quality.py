"""Test AUC of every CTR model and baseline, mean and spread over seeds, beside the oracle AUC.

    python benchmarks/ctr_quality.py [--params params.yaml] [--seeds 0 1 2] [--models ...] [--epochs N]

Needs the project's features and embeddings (``scenerec pipeline`` or ``dvc repro embed``). Every
model is trained by the same loop (components/ctr/train.py) on the same split with the ``ctr:``
settings of params.yaml; only the seed changes. Prints per model: CTR / CTCVR AUC and GAUC (mean ±
std over seeds), cold-start-user CTR AUC, the gap to the oracle and the share of the best-baseline →
oracle gap the model closes; writes reports/benchmarks/ctr_quality.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from report import ctr_benchmark_setup, save_report  # noqa: E402  (benchmarks/report.py)

BASELINES = ("id_only", "avg_pool", "din_full", "sim_hard")
FULL = "larr_cofars"
ALL = BASELINES + ("cofars", "larr_din", FULL)
KEYS = ("all.auc.ctr", "all.auc.ctcvr", "all.gauc.ctr", "cold_user.auc.ctr", "cold_poi.auc.ctr")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(ALL))
    setup = ctr_benchmark_setup(ap, argv, "ctr_quality")
    if setup is None:
        return 2
    args, params, cfg = setup
    from components.ctr.data import build_dataset
    from components.ctr.evaluate import evaluate
    from components.ctr.train import train_model

    t0 = time.perf_counter()
    ds = build_dataset(params)
    print(f"data: {len(ds.train)} / {len(ds.valid)} / {len(ds.test)} requests (train / valid / test), "
          f"{time.perf_counter() - t0:.1f} s")
    runs: dict[str, list[dict]] = {m: [] for m in args.models}
    oracle: dict = {}
    for seed in args.seeds:
        for name in args.models:
            t1 = time.perf_counter()
            model, info = train_model(name, ds, cfg, seed=seed, progress=False)
            metrics, _ = evaluate(model, ds, cfg)
            metrics["train_seconds"] = info["seconds"]
            metrics["epochs"] = info["epochs_run"]
            runs[name].append(metrics)
            oracle = {k: v for k, v in metrics.items() if "oracle_auc" in k or "oracle_gauc" in k}
            print(f"  seed {seed} {name:<12} CTR AUC {metrics['all.auc.ctr']:.4f}  CTCVR AUC "
                  f"{metrics['all.auc.ctcvr']:.4f}  ({time.perf_counter() - t1:.0f} s)", flush=True)

    table = {}
    for name, rs in runs.items():
        row = {}
        for k in KEYS + ("all.auc.ctcvr",):
            vals = np.array([r.get(k, np.nan) for r in rs], dtype=float)
            row[k] = {"mean": round(float(np.nanmean(vals)), 4), "std": round(float(np.nanstd(vals)), 4),
                      "values": [round(float(v), 4) for v in vals]}
        row["train_seconds"] = round(float(np.mean([r["train_seconds"] for r in rs])), 1)
        table[name] = row

    o_ctr, o_ctcvr = oracle.get("all.oracle_auc.ctr"), oracle.get("all.oracle_auc.ctcvr")
    present = [b for b in BASELINES if b in table]
    verdict = {}
    if FULL in table and present:
        for task, o in (("ctr", o_ctr), ("ctcvr", o_ctcvr)):
            key = f"all.auc.{task}"
            best = max(present, key=lambda b: table[b][key]["mean"])
            full, base = table[FULL][key], table[best][key]
            spread = max(full["std"], base["std"])
            closed = (full["mean"] - base["mean"]) / (o - base["mean"]) if o and o > base["mean"] else float("nan")
            verdict[task] = {"best_baseline": best, "margin": round(full["mean"] - base["mean"], 4),
                             "seed_spread": spread, "beats_every_baseline_beyond_spread":
                             all(full["mean"] - table[b][key]["mean"] > max(full["std"], table[b][key]["std"])
                                 for b in present),
                             "share_of_gap_to_oracle_closed": round(closed, 3)}

    print(f"\nTest AUC over seeds {args.seeds} (mean ± std); oracle CTR {o_ctr}, CTCVR {o_ctcvr}")
    print(f"{'model':<14}{'CTR AUC':>16}{'CTCVR AUC':>16}{'GAUC ctr':>16}{'cold user':>16}{'× oracle gap':>14}")
    for name, row in table.items():
        gap = (o_ctr - row["all.auc.ctr"]["mean"]) if o_ctr else float("nan")
        cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in
                 ("all.auc.ctr", "all.auc.ctcvr", "all.gauc.ctr", "cold_user.auc.ctr")]
        print(f"{name:<14}" + "".join(f"{c:>16}" for c in cells) + f"{gap:>14.4f}")
    for task, v in verdict.items():
        print(f"{FULL} vs best baseline ({v['best_baseline']}) on {task.upper()}: {v['margin']:+.4f} "
              f"(seed spread {v['seed_spread']:.4f}); beats every baseline beyond the spread: "
              f"{v['beats_every_baseline_beyond_spread']}; share of the gap to the oracle closed: "
              f"{v['share_of_gap_to_oracle_closed']}")
    save_report({"benchmark": "ctr_quality", "machine": platform.platform(), "seeds": args.seeds,
                 "oracle": oracle, "models": table, "verdict": verdict, "runs": runs,
                 "ctr": cfg.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 1)}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
