"""Per-request latency of scoring B candidates against a history of n behaviours: CoFARS (one
context-selected sub-sequence per request) vs DIN over the full sequence vs SIM-hard (a category
search per candidate), plus the test AUC of the three trained models on the same data.

    python benchmarks/long_sequence.py [--params params.yaml] [--candidates 500] [--lengths 1000 5000 20000]

Needs the project's features (``scenerec pipeline``). The three models are trained by the same loop
with the ``ctr:`` settings (seed 0). Latency: one request with B candidates and a history of n real
behaviours (the heaviest user's log, tiled to length n), model forward only (batch assembly is the
same for all three), no gradients, median of --repeat runs after a warm-up, torch threads as
``ctr.cpu_threads``. Writes reports/benchmarks/long_sequence.json.
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
import torch  # noqa: E402

from report import ctr_benchmark_setup, save_report  # noqa: E402  (benchmarks/report.py)

MODELS = ("cofars", "din_full", "sim_hard")


def long_request(ds, n: int, candidates: int, seed: int = 0):
    """(RequestData of one request with ``candidates`` PoIs, History whose slice has n behaviours)."""
    from components.ctr.data import History

    rng = np.random.default_rng(seed)
    h = ds.history
    heavy = max(h.user_start, key=lambda u: h.user_end[u] - h.user_start[u])
    a, b = h.user_start[heavy], h.user_end[heavy]
    idx = np.resize(np.arange(a, b), n)  # tile the real log to length n
    hist = History(np.arange(n, dtype=np.int64), h.poi_row[idx], h.behavior[idx], h.context[idx],
                   {heavy: 0}, {heavy: n}, h.slot[idx] if h.slot is not None else None)
    req = ds.test.take(np.array([0]))
    k = req.poi_row.shape[1]
    pick = rng.integers(0, k, candidates)
    for name in ("poi_row", "position", "numeric", "distance", "click", "order", "mask", "cold_poi"):
        setattr(req, name, getattr(req, name)[:, pick])
    req.poi_row = rng.choice(len(ds.pois.ids), (1, candidates))
    req.mask = np.ones((1, candidates), bool)
    req.hist_start, req.hist_end = np.array([0]), np.array([n])
    req.user_id = np.array([heavy], dtype=object)
    return req, hist


def latency(model, batch, repeat: int) -> float:
    with torch.no_grad():
        model(batch)  # warm-up
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            model(batch)
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 5000, 20000])
    ap.add_argument("--repeat", type=int, default=5)
    setup = ctr_benchmark_setup(ap, argv, "long_sequence", seeds=False)
    if setup is None:
        return 2
    args, params, cfg = setup
    from components.ctr.data import build_dataset, make_batch, to_tensors
    from components.ctr.evaluate import evaluate
    from components.ctr.train import train_model
    from components.training import cpu_threads

    ds = build_dataset(params)
    models, quality = {}, {}
    for name in MODELS:
        model, info = train_model(name, ds, cfg, seed=0, progress=False)
        metrics, _ = evaluate(model, ds, cfg)
        models[name] = model.eval()
        quality[name] = {"auc.ctr": metrics["all.auc.ctr"], "auc.ctcvr": metrics["all.auc.ctcvr"],
                         "train_seconds": info["seconds"]}
        print(f"trained {name}: CTR AUC {metrics['all.auc.ctr']:.4f}, CTCVR AUC {metrics['all.auc.ctcvr']:.4f}",
              flush=True)

    rows = []
    with cpu_threads(cfg.cpu_threads):
        threads = torch.get_num_threads()
        for n in args.lengths:
            req, hist = long_request(ds, n, args.candidates)
            batch = to_tensors(make_batch(req, np.array([0]), hist, ds.pois, max_history=n))
            row = {"n": n, "candidates": args.candidates}
            for name, model in models.items():
                row[f"{name}_ms"] = round(1000 * latency(model, batch, args.repeat), 2)
            if "cofars" in models:
                with torch.no_grad():
                    sel = models["cofars"].select(batch)["mask"]
                row["cofars_selected"] = int(min(sel.sum(), cfg.max_subsequence))
            row["din_full_over_cofars"] = round(row["din_full_ms"] / row["cofars_ms"], 2)
            row["sim_hard_over_cofars"] = round(row["sim_hard_ms"] / row["cofars_ms"], 2)
            rows.append(row)
            print(f"n={n:>6}: " + ", ".join(f"{m} {row[f'{m}_ms']:.1f} ms" for m in models)
                  + f"  (DIN-full / CoFARS {row['din_full_over_cofars']}×)", flush=True)

    print(f"\nPer-request latency, B = {args.candidates} candidates, torch threads {threads}")
    print(f"{'n':>7}{'CoFARS ms':>12}{'DIN-full ms':>13}{'SIM-hard ms':>13}{'DIN/CoFARS':>12}{'SIM/CoFARS':>12}")
    for r in rows:
        print(f"{r['n']:>7}{r['cofars_ms']:>12.1f}{r['din_full_ms']:>13.1f}{r['sim_hard_ms']:>13.1f}"
              f"{r['din_full_over_cofars']:>11.2f}×{r['sim_hard_over_cofars']:>11.2f}×")
    print("test AUC (same data, seed 0): " + ", ".join(
        f"{m} CTR {q['auc.ctr']:.4f} / CTCVR {q['auc.ctcvr']:.4f}" for m, q in quality.items()))
    at5k = next((r for r in rows if r["n"] == 5000), None)
    if at5k:
        print(f"target CoFARS ≥ 5× faster than DIN-full at n = 5000: {at5k['din_full_over_cofars']}× -> "
              + ("met" if at5k["din_full_over_cofars"] >= 5 else "NOT met"))
    save_report({"benchmark": "long_sequence", "machine": platform.platform(), "device": "cpu",
                 "threads": threads, "latency": rows, "quality": quality,
                 "ctr": cfg.model_dump(mode="json")}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
