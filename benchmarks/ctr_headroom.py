"""How much of the oracle gap a CTR model could close at this data size: the same model, told the world's secrets.

    python benchmarks/ctr_headroom.py [--params params.yaml] [--seeds 0 1 2] [--model larr_cofars] [--epochs N]

Synthetic data only: the generator is run again from ``params.generate`` and ``seed`` to recover the
variables it never writes (``components.data.generate.hidden_variables``), and the benchmark stops
if that world does not match the curated tables. Each rung trains the same model with the same loop,
split and settings as ``ctr_quality`` and only adds columns to its Feast training set (user-side ones
under ``user_profile__``, so they also enter the user embedding; PoI-side ones under ``poi_profile__``):

1. the model as the pipeline trains it;
2. + the users' latent taste, price level, price sensitivity and collaborative factor alone: the
   most any user knowledge embedding (HKFR's, for one) could tell the model about a user;
3. + the PoIs' latent taste, log price, static appeal (quality + popularity − delivery) and
   collaborative factor;
4. + both;
5. the PoI latents, the user's collaborative factor and the **scene-adjusted** wants of the request
   (taste, price level and sensitivity of this user in this scene): every input of the click logit;
6. the generator's click logit itself, before its hidden noise (one column).

Beside them, with no training: the noise-free ceiling (AUC of rung 6's column) and the oracle (the
truth file's ``p_click``, which includes the noise). Rungs 3-5 show how far learning the generator's
function from the default number of impressions can go even when nothing is hidden; the issue's
target (half of the best baseline → oracle distance, read from ``reports/benchmarks/ctr_quality.json``
when present) is printed beside them. Writes reports/benchmarks/ctr_headroom.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ctr_quality import BASELINES  # noqa: E402  (benchmarks/ctr_quality.py)
from report import ctr_benchmark_setup, save_report  # noqa: E402  (benchmarks/report.py)

from components.data.generate import K_COLLAB, TASTE_DIMS as TASTE, hidden_variables  # noqa: E402

COLLAB = tuple(f"collab{j}" for j in range(K_COLLAB))
POI_LATENT = TASTE + ("log_price", "static") + COLLAB
USER_LATENT = TASTE + ("price_mu", "price_lambda") + COLLAB
WANTS = tuple(f"want_{d}" for d in TASTE) + ("want_mu", "want_lambda")
# rung -> the groups of hidden columns ``with_hidden`` adds
RUNGS = {
    "as trained": (),
    "+ user latents only": ("user",),
    "+ PoI latents": ("poi",),
    "+ PoI and user latents": ("poi", "user"),
    "+ PoI latents, user collab, scene-adjusted wants": ("poi", "user_collab", "wants"),
    "+ noise-free click logit only": ("logit",),
}


def _world_matches(hidden: dict, src) -> str | None:
    """Why the regenerated world is not the curated data, or None when it is."""
    users = set(src.training_set["user_id"].astype(str))
    if not users <= set(hidden["users"]["user_id"]):
        return "training-set users the generator (params.generate, seed) does not make"
    pairs = src.training_set[["request_id", "poi_id"]].astype(str)
    known = pd.MultiIndex.from_frame(hidden["impressions"][["request_id", "poi_id"]])
    missing = ~pd.MultiIndex.from_frame(pairs).isin(known)
    if missing.any():
        return f"{int(missing.sum())} training-set impressions the generator does not make"
    return None


def with_hidden(frame: pd.DataFrame, hidden: dict, groups: tuple) -> pd.DataFrame:
    """``frame`` (the Feast training set) with the latent columns of ``groups`` added."""
    out = frame.copy()
    uid, pid, rid = (out[c].astype(str) for c in ("user_id", "poi_id", "request_id"))
    users, pois = hidden["users"].set_index("user_id"), hidden["pois"].set_index("poi_id")
    requests = hidden["requests"].set_index("request_id")
    if "poi" in groups:
        for c in POI_LATENT:
            out[f"poi_profile__hidden_{c}"] = pid.map(pois[c]).to_numpy(np.float64)
    if "user" in groups or "user_collab" in groups:
        for c in USER_LATENT if "user" in groups else COLLAB:
            out[f"user_profile__hidden_{c}"] = uid.map(users[c]).to_numpy(np.float64)
    if "wants" in groups:
        for c in WANTS:
            out[f"user_profile__hidden_{c}"] = rid.map(requests[c]).to_numpy(np.float64)
    if "logit" in groups:
        logit = hidden["impressions"].set_index(["request_id", "poi_id"])["click_logit"]
        key = pd.MultiIndex.from_arrays([rid.to_numpy(), pid.to_numpy()])
        out["poi_profile__hidden_click_logit"] = logit.reindex(key).to_numpy(np.float64)
    return out


def _target(oracle: float) -> tuple[float | None, str | None]:
    """Half of the best baseline → oracle distance, from the last ctr_quality run (if any)."""
    path = ROOT / "reports" / "benchmarks" / "ctr_quality.json"
    if not path.exists():
        return None, None
    rep = json.loads(path.read_text())
    base = {m: v["all.auc.ctr"]["mean"] for m, v in rep.get("models", {}).items()
            if m in BASELINES and "all.auc.ctr" in v}
    if not base:
        return None, None
    best = max(base, key=base.get)
    return base[best] + (oracle - base[best]) / 2, best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="larr_cofars")
    ap.add_argument("--rungs", nargs="+", type=int, default=list(range(1, len(RUNGS) + 1)),
                    help="which rungs to train (1-based, see the docstring)")
    setup = ctr_benchmark_setup(ap, argv, "ctr_headroom")
    if setup is None:
        return 2
    args, params, cfg = setup
    from components.ctr.data import build_dataset, load_sources
    from components.ctr.evaluate import evaluate
    from components.ctr.metrics import auc
    from components.ctr.train import train_model

    t0 = time.perf_counter()
    src = load_sources(params)
    hidden = hidden_variables(params.generate, params.seed)
    why = _world_matches(hidden, src)
    if why:
        print(f"ctr_headroom needs the synthetic data of params.generate with seed {params.seed}: {why}",
              file=sys.stderr)
        return 2
    print(f"world regenerated and matched to the training set in {time.perf_counter() - t0:.1f} s")
    params = params.model_copy(update={"ctr": cfg})
    names = list(RUNGS)
    rows: dict[str, dict] = {}
    ceiling = oracle = None
    for i in args.rungs:
        rung = names[i - 1]
        frame = with_hidden(src.training_set, hidden, RUNGS[rung])
        ds = build_dataset(params, sources=dataclasses.replace(src, training_set=frame))
        if "logit" in RUNGS[rung]:
            j = ds.encoder.numeric.index("poi_profile__hidden_click_logit")
            m = ds.test.mask
            ceiling = auc(ds.test.click[m], ds.test.numeric[..., j][m])
        runs = []
        for seed in args.seeds:
            t1 = time.perf_counter()
            model, _ = train_model(args.model, ds, cfg, seed=seed, progress=False)
            metrics, _ = evaluate(model, ds, cfg)
            oracle = metrics.get("all.oracle_auc.ctr", oracle)
            runs.append(metrics)
            print(f"  {rung:<50} seed {seed}: CTR AUC {metrics['all.auc.ctr']:.4f}  "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)
        rows[rung] = {k: {"mean": float(np.mean([r[k] for r in runs])), "std": float(np.std([r[k] for r in runs])),
                          "runs": [float(r[k]) for r in runs]}
                      for k in ("all.auc.ctr", "all.auc.ctcvr", "cold_user.auc.ctr") if all(k in r for r in runs)}
    target, best = _target(oracle) if oracle is not None else (None, None)

    print(f"\n{args.model}, same training loop, {len(args.seeds)} seed(s); columns added to the training set")
    print(f"{'rung':<52} {'CTR AUC':>17} {'CTCVR AUC':>17} {'cold-user CTR':>14}")
    for rung, r in rows.items():
        c, v = r["all.auc.ctr"], r["all.auc.ctcvr"]
        cold = r.get("cold_user.auc.ctr", {}).get("mean", float("nan"))
        print(f"{rung:<52} {c['mean']:.4f} ± {c['std']:.4f}  {v['mean']:.4f} ± {v['std']:.4f} {cold:>14.4f}")
    if ceiling is not None:
        print(f"{'noise-free ceiling (rung 6 column, no training)':<52} {ceiling:.4f}")
    if oracle is not None:
        print(f"{'oracle (truth p_click, knows the hidden noise)':<52} {oracle:.4f}")
    if target is not None:
        print(f"{'target: half of ' + best + ' -> oracle':<52} {target:.4f}")
    save_report({
        "benchmark": "ctr_headroom", "model": args.model, "seeds": args.seeds, "rungs": rows,
        "noise_free_ceiling_auc_ctr": ceiling, "oracle_auc_ctr": oracle, "half_gap_target_auc_ctr": target,
        "best_baseline": best, "epochs": cfg.epochs, "machine": platform.machine(), "python": platform.python_version(),
        "seconds": time.perf_counter() - t0,
    }, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
