"""HKFR: AUC of the instruction-tuned LLM's P("yes"), and of the CTR model with and without the
user knowledge embedding, overall and on cold-start users, mean and spread over seeds.

    python benchmarks/hkfr.py [--params params.yaml] [--seeds 0 1 2] [--model larr_cofars] [--epochs N]

Needs the project's features, embeddings and HKFR instruction dataset (``scenerec pipeline``, or
``dvc repro knowledge``). Per seed: the LLM is instruction-tuned (``hkfr:`` settings, that seed) into
a temporary folder, scored on the test impressions, and its knowledge embedding exported; then the
CTR model (``ctr.model`` unless --model) is trained twice by the same loop with the same seed, once
without and once with the embedding joined point-in-time by Feast (``ctr.user_knowledge``).
The project's own user knowledge table is put back at the end. Writes reports/benchmarks/hkfr.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from report import ctr_benchmark_setup, save_report  # noqa: E402  (benchmarks/report.py)

KEYS = ("hkfr.test.auc", "hkfr.test.cold_user.auc", "ctr.without.all.auc.ctr", "ctr.with.all.auc.ctr",
        "ctr.without.cold_user.auc.ctr", "ctr.with.cold_user.auc.ctr", "ctr.without.all.auc.ctcvr",
        "ctr.with.all.auc.ctcvr")


def _stats(vals) -> dict:
    v = np.asarray(vals, dtype=float)
    return {"mean": round(float(np.nanmean(v)), 4), "std": round(float(np.nanstd(v)), 4),
            "values": [round(float(x), 4) for x in v]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="CTR model (default: ctr.model)")
    setup = ctr_benchmark_setup(ap, argv, "hkfr")
    if setup is None:
        return 2
    args, params, cfg = setup
    import pandas as pd

    from components.ctr.data import build_dataset
    from components.ctr.evaluate import evaluate as evaluate_ctr
    from components.ctr.train import train_model
    from components.hkfr import stage, tuning
    from components.ctr.data import split_bounds
    from components.training import cpu_threads

    import signal

    # A SIGTERM still runs the `finally` below, so the project's own knowledge table comes back.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    name = args.model or cfg.model
    t0 = time.perf_counter()
    sets = stage.load_sets(params)
    cur = params.path("curated_dir")
    impressions, users = pd.read_parquet(cur / "impressions.parquet"), pd.read_parquet(cur / "users.parquet")
    valid_start, test_start = split_bounds(impressions, params)
    table = params.path("hkfr_dir") / stage.FEAST_TABLE
    backup = Path(tempfile.mkdtemp(prefix="hkfr-bench-")) / stage.FEAST_TABLE
    had_table = table.exists()
    if had_table:
        shutil.copy2(table, backup)
    without = build_dataset(params.model_copy(update={"ctr": cfg.model_copy(update={"user_knowledge": False})}))
    print(f"CTR data without knowledge: {len(without.train)} / {len(without.valid)} / {len(without.test)} requests; "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    runs = []
    try:
        for seed in args.seeds:
            t1 = time.perf_counter()
            tmp = Path(tempfile.mkdtemp(prefix=f"hkfr-seed{seed}-"))
            p = params.model_copy(update={"seed": seed, "paths": params.paths.model_copy(update={"hkfr_dir": str(tmp)})})
            fit = tuning.instruct(p, sets["train"])
            with cpu_threads(p.hkfr.cpu_threads):
                model, tok = tuning.load_tuned(tuning.model_dir(p))
                hk, _ = stage.evaluate(p, model, tok, sets, users, test_start)
                stage.write_user_knowledge(p, model, tok, sets["snapshots"], valid_start)
            shutil.copy2(tmp / stage.FEAST_TABLE, table)  # what Feast's offline store reads for the join
            shutil.rmtree(tmp, ignore_errors=True)
            with_k = build_dataset(params.model_copy(update={"ctr": cfg.model_copy(update={"user_knowledge": True})}))
            row = {"seed": seed, "hkfr.train_seconds": fit["seconds"],
                   **{f"hkfr.{k}": v for k, v in hk.items() if k.startswith("test.")}}
            for tag, ds in (("without", without), ("with", with_k)):
                c = cfg.model_copy(update={"user_knowledge": tag == "with"})
                m, info = train_model(name, ds, c, seed=seed, progress=False)
                metrics, _ = evaluate_ctr(m, ds, c)
                row.update({f"ctr.{tag}.{k}": v for k, v in metrics.items()})
                row[f"ctr.{tag}.train_seconds"] = info["seconds"]
            runs.append(row)
            print(f"  seed {seed}: P(yes) AUC {row['hkfr.test.auc']:.4f} (cold {row['hkfr.test.cold_user.auc']:.4f}); "
                  f"{name} CTR AUC without {row['ctr.without.all.auc.ctr']:.4f} / with {row['ctr.with.all.auc.ctr']:.4f}; "
                  f"cold users {row['ctr.without.cold_user.auc.ctr']:.4f} / {row['ctr.with.cold_user.auc.ctr']:.4f} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
    finally:
        if had_table:
            shutil.copy2(backup, table)
        shutil.rmtree(backup.parent, ignore_errors=True)

    summary = {k: _stats([r.get(k, np.nan) for r in runs]) for k in KEYS}
    verdict = {}
    for split in ("all", "cold_user"):
        a, b = summary[f"ctr.without.{split}.auc.ctr"], summary[f"ctr.with.{split}.auc.ctr"]
        delta = [w - o for w, o in zip(b["values"], a["values"])]
        spread = max(a["std"], b["std"])
        verdict[split] = {"delta_mean": round(float(np.mean(delta)), 4), "seed_spread": spread,
                          "improves_beyond_spread": bool(np.mean(delta) > spread)}
    print(f"\nHKFR over seeds {args.seeds} (mean ± std); CTR model {name}")
    print(f"  P(yes) test AUC            {summary['hkfr.test.auc']['mean']:.4f} ± {summary['hkfr.test.auc']['std']:.4f}"
          f"   cold-start users {summary['hkfr.test.cold_user.auc']['mean']:.4f} ± "
          f"{summary['hkfr.test.cold_user.auc']['std']:.4f}")
    print(f"  {'CTR AUC':<26}{'without':>18}{'with knowledge':>18}{'delta':>10}")
    for split, label in (("all", "all users"), ("cold_user", "cold-start users")):
        a, b = summary[f"ctr.without.{split}.auc.ctr"], summary[f"ctr.with.{split}.auc.ctr"]
        print(f"  {label:<26}{a['mean']:>10.4f} ± {a['std']:.4f}{b['mean']:>10.4f} ± {b['std']:.4f}"
              f"{verdict[split]['delta_mean']:>+10.4f}")
    a, b = summary["ctr.without.all.auc.ctcvr"], summary["ctr.with.all.auc.ctcvr"]
    print(f"  {'CTCVR AUC, all users':<26}{a['mean']:>10.4f} ± {a['std']:.4f}{b['mean']:>10.4f} ± {b['std']:.4f}")
    v = verdict["cold_user"]
    print(f"target (knowledge improves cold-start CTR AUC beyond the seed spread): {v['improves_beyond_spread']} "
          f"({v['delta_mean']:+.4f} vs spread {v['seed_spread']:.4f})")
    save_report({"benchmark": "hkfr", "machine": platform.platform(), "seeds": args.seeds, "ctr_model": name,
                 "summary": summary, "verdict": verdict, "runs": runs, "hkfr": params.hkfr.model_dump(mode="json"),
                 "ctr": cfg.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 1)}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
