"""Test AUC of every CTR model, its baselines and the peers a user would train instead (LightGBM,
DeepCTR-Torch DIN and ESMM), mean and spread over seeds, beside the oracle AUC, on one world or
on the family of worlds (benchmarks/worlds.py).

    python benchmarks/ctr_quality.py [--quick] [--worlds default | family | NAME ...] [--seeds 0 1 2]
                                     [--models ...] [--peers lightgbm deepctr_din deepctr_esmm]

Needs the project's features and embeddings (``scenerec pipeline`` or ``dvc repro embed``); the
variant worlds are built on first use into data/worlds/. Every model sees the same split of the
same world; ours train with the ``ctr:`` settings of params.yaml (only the seed changes), the
peers with their libraries' usual settings and early stopping on the same validation split.
Every model runs on one CPU thread, so training rows/s (training rows x epochs / seconds; for
LightGBM rows / seconds of fitting the chosen variant's two boosters), the same per CPU-second of the
process (ours and DeepCTR; what shared cores do not distort) and scoring rows/s (test rows /
seconds) compare like with like. ``--quick``: seed 0, larr_cofars and din_full only.
``--combine REPORT[:MODEL,...] ...`` trains nothing: it merges reports (worlds run in parallel
processes, or the peers of an earlier run beside ours retrained) into ``--out`` with the family average.
Prints per world and model CTR / CTCVR AUC (mean ± std over seeds), GAUC, cold-user AUC, the
gap to the oracle and both speeds, then the family average; writes reports/benchmarks/ctr_quality.json.
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

from report import ctr_benchmark_setup, save_report, with_ctr_update  # noqa: E402  (benchmarks/report.py)

BASELINES = ("id_only", "avg_pool", "din_full", "sim_hard")
FULL = "larr_cofars"
ALL = BASELINES + ("cofars", "larr_din", FULL)
QUICK = ("din_full", FULL)
KEYS = ("all.auc.ctr", "all.auc.ctcvr", "all.gauc.ctr", "cold_user.auc.ctr", "cold_poi.auc.ctr")
# Training rows/s by the wall clock and per CPU-second of the (one-thread) training process: on
# shared cores the wall clock also counts other programs' load, the CPU time does not.
SPEEDS = ("train_rows_per_s", "train_cpu_rows_per_s", "score_rows_per_s")


def run_ours(name, ds, cfg, seed):
    """Train and score one of our models (any family: components/ctr/families.py); metrics with
    timings. The ensemble (and a seed bag, ``ctr.seed_bag``) also reports its weights and each
    member's test AUC alone, so that it is compared with its own members trained in the same run (a
    bag's first member is the model ``seed_bag: 1`` trains)."""
    from components.ctr import families
    from components.ctr.ensemble import EnsembleModel
    from components.ctr.evaluate import score_metrics

    cpu = time.process_time()
    model, info = families.train(name, ds, cfg, seed=seed, progress=False)
    cpu = time.process_time() - cpu
    t = time.perf_counter()
    grouped = isinstance(model, EnsembleModel)
    if grouped:  # the members scored once: alone, and combined
        from components.ctr.ensemble import combine

        member_scores = model.member_scores(ds.test, ds)
        scores = combine(member_scores, model.weights)
    else:
        scores = families.scores(model, ds.test, ds, cfg)
    score_s = time.perf_counter() - t
    metrics = score_metrics(scores, ds.test)
    if grouped:
        members = {m: score_metrics(s, ds.test) for m, s in zip(model.members, member_scores)}
        metrics.update(weights=model.weights, members={m: {k: v[k] for k in KEYS if k in v} for m, v in members.items()})
    # rows trained on: every epoch of the first fit, plus the refit's (ctr.refit: train + valid rows)
    seen = int(ds.train.mask.sum()) * info["epochs_run"]
    if "refit" in info:
        seen += info["refit"]["rows"] * info["refit"].get("epochs", 0)
        metrics["refit"] = info["refit"]
    if "bag" in info:  # the bag's other networks replay the last fit's epochs
        last = info["refit"] if "refit" in info else {"rows": int(ds.train.mask.sum()), "epochs": info["best_epoch"]}
        seen += (info["bag"]["members"] - 1) * last["rows"] * last.get("epochs", 0)
        metrics["bag"] = info["bag"]
    metrics.update(train_seconds=info["seconds"], epochs=info["epochs_run"], best_epoch=info["best_epoch"],
                   train_rows_per_s=seen / info["seconds"], train_cpu_rows_per_s=seen / cpu,
                   score_rows_per_s=len(scores["ctr"]) / score_s)
    return metrics


def run_peer(name, ds, cfg, seed):
    """Train and score one peer (benchmarks/ctr_peers.py); metrics with timings."""
    import torch

    from components.ctr.data import with_valid_in_train
    from components.ctr.evaluate import score_metrics
    from components.ctr.tabular import train_gbdt

    torch.set_num_threads(1)  # the same one core as ours (ctr.cpu_threads)
    if name == "lightgbm":
        model, info = train_gbdt(ds, seed=seed, max_history=cfg.max_history)
        chosen = info["variants"][info["variant"]]
        train_rows_per_s = info["train_rows"] / chosen["seconds"]
        train_cpu_rows_per_s = float("nan")  # not measured for LightGBM
        extra = {"variant": info["variant"], "variant_valid_auc": {k: round(v["valid_auc_ctr"], 4)
                                                                   for k, v in info["variants"].items()}}
        if cfg.refit:  # the same protocol as ours: trained again on train + valid with the chosen rounds
            from components.ctr.tabular import refit_gbdt

            t_refit = time.perf_counter()
            model = refit_gbdt(model, info, with_valid_in_train(ds), seed=seed, max_history=cfg.max_history)
            info["seconds"] += time.perf_counter() - t_refit  # train_seconds: both fits, as for ours
            extra["refit"] = True
    else:
        from ctr_peers import train_deepctr

        model, info = train_deepctr(name.split("_", 1)[1], ds, seed=seed)
        train_rows_per_s = info["train_rows"] * info["epochs_run"] / info["seconds"]
        train_cpu_rows_per_s = info["train_rows"] * info["epochs_run"] / info["cpu_seconds"]
        extra = {}
    t = time.perf_counter()
    scores = model.predict(ds.test, ds)
    score_s = time.perf_counter() - t
    metrics = score_metrics(scores, ds.test)
    metrics.update(train_seconds=info["seconds"], epochs=info["epochs_run"], train_rows_per_s=train_rows_per_s,
                   train_cpu_rows_per_s=train_cpu_rows_per_s,
                   score_rows_per_s=len(scores["ctr"]) / score_s, **extra)
    return metrics


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Mean / std / values over seeds of each metric and speed, per model."""
    table = {}
    for name, rs in runs.items():
        row = {}
        for k in KEYS + SPEEDS:
            vals = np.array([r.get(k, np.nan) for r in rs], dtype=float)
            nd = 1 if k in SPEEDS else 4
            row[k] = {"mean": round(float(np.nanmean(vals)), nd), "std": round(float(np.nanstd(vals)), nd),
                      "values": [round(float(v), nd) for v in vals]}
        row["train_seconds"] = round(float(np.mean([r["train_seconds"] for r in rs])), 1)
        row["epochs"] = [r["epochs"] for r in rs]
        if "variant" in rs[0]:
            row["variant"] = [r["variant"] for r in rs]
        table[name] = row
    return table


def verdict(table: dict, rivals: list[str], subject: str = FULL) -> dict:
    """``subject`` (larr_cofars) against the best rival per task: margin, seed spread, beaten beyond the spread."""
    out = {}
    present = [b for b in rivals if b in table and b != subject]
    if subject not in table or not present:
        return out
    for task in ("ctr", "ctcvr"):
        key = f"all.auc.{task}"
        best = max(present, key=lambda b: table[b][key]["mean"])
        full, base = table[subject][key], table[best][key]
        one_seed = len(full["values"]) < 2  # no spread measured: "beyond the spread" cannot be told
        out[task] = {"best": best, "margin": round(full["mean"] - base["mean"], 4),
                     "seed_spread": None if one_seed else max(full["std"], base["std"]),
                     "beats_every_one_beyond_spread": None if one_seed else all(
                         full["mean"] - table[b][key]["mean"] > max(full["std"], table[b][key]["std"]) for b in present)}
    return out


def speed_ratios(table: dict, peers: list[str]) -> dict:
    """larr_cofars's training and scoring rows/s over each peer's (issue 14: training >= 1.5x DIN's);
    a speed not measured for a peer is left out."""
    if FULL not in table:
        return {}
    return {p: {k: round(table[FULL][k]["mean"] / table[p][k]["mean"], 2) for k in SPEEDS
                if table[p][k]["mean"] > 0 and table[FULL][k]["mean"] > 0}
            for p in peers if p in table}


def print_world(world: str, table: dict, oracle: dict, seeds) -> None:
    o_ctr, o_ctcvr = oracle.get("all.oracle_auc.ctr"), oracle.get("all.oracle_auc.ctcvr")
    print(f"\n[{world}] test AUC over seeds {seeds} (mean ± std); oracle CTR {o_ctr}, CTCVR {o_ctcvr}")
    print(f"{'model':<14}{'CTR AUC':>17}{'CTCVR AUC':>17}{'GAUC ctr':>17}{'cold user':>17}{'oracle gap':>11}"
          f"{'train rows/s':>13}{'score rows/s':>13}")
    for name, row in table.items():
        gap = (o_ctr - row["all.auc.ctr"]["mean"]) if o_ctr else float("nan")
        cells = [f"{row[k]['mean']:.4f} ± {row[k]['std']:.4f}" for k in
                 ("all.auc.ctr", "all.auc.ctcvr", "all.gauc.ctr", "cold_user.auc.ctr")]
        print(f"{name:<14}" + "".join(f"{c:>17}" for c in cells) + f"{gap:>11.4f}"
              f"{row['train_rows_per_s']['mean']:>13.0f}{row['score_rows_per_s']['mean']:>13.0f}"
              + (f"  ({', '.join(sorted(set(row['variant'])))})" if "variant" in row else ""))


def family_summary(worlds: dict, models: list[str], peers: list[str], subject: str = FULL) -> tuple[dict, dict]:
    """Each model's AUC averaged over the worlds (per seed, then mean ± std over seeds), printed,
    and ``subject`` (larr_cofars) against the best peer on that average and on every world."""
    avg = {}
    for name in models:
        if not all(name in w["runs"] for w in worlds.values()):
            continue  # a family average only over worlds that all ran the model
        row = {}
        for k in ("all.auc.ctr", "all.auc.ctcvr"):
            n = min(len(w["runs"][name]) for w in worlds.values())
            per_seed = np.array([[r.get(k, np.nan) for r in w["runs"][name][:n]] for w in worlds.values()], float)
            fam = np.nanmean(per_seed, 0)  # one family mean per seed
            row[k] = {"mean": round(float(fam.mean()), 4), "std": round(float(fam.std()), 4)}
        avg[name] = row
    if len(worlds) > 1:
        print(f"\nFamily average over {list(worlds)} (mean ± std over seeds of the per-seed family mean)")
        print(f"{'model':<14}{'CTR AUC':>18}{'CTCVR AUC':>18}")
        for name, row in avg.items():
            print(f"{name:<14}{row['all.auc.ctr']['mean']:>9.4f} ± {row['all.auc.ctr']['std']:.4f}"
                  f"{row['all.auc.ctcvr']['mean']:>9.4f} ± {row['all.auc.ctcvr']['std']:.4f}")
    peers = [p for p in peers if p in avg]
    summary = {}
    if subject in avg and peers:
        best = max(peers, key=lambda p: avg[p]["all.auc.ctr"]["mean"])
        summary = {"subject": subject, "best_peer_on_family_ctr": best,
                   "family_margin_ctr": round(avg[subject]["all.auc.ctr"]["mean"] - avg[best]["all.auc.ctr"]["mean"], 4),
                   "beats_best_peer_beyond_spread_on_every_world": {
                       w: {t: v["beats_every_one_beyond_spread"] for t, v in d["verdict_vs_peers"].items()}
                       for w, d in worlds.items()}}
        print(f"\n{subject} vs best peer on the family average ({best}): CTR AUC {summary['family_margin_ctr']:+.4f} "
              f"(target >= +0.005)")
        for w, d in worlds.items():
            for task, v in d["verdict_vs_peers"].items():
                spread = "one seed: no spread" if v["seed_spread"] is None else f"spread {v['seed_spread']:.4f}"
                beats = v["beats_every_one_beyond_spread"]
                print(f"  [{w}] {task.upper()}: best peer {v['best']}, margin {v['margin']:+.4f} ({spread}); "
                      f"beats every peer beyond the spread: {'n/a' if beats is None else beats}")
    return avg, summary


def parse_source(spec: str) -> tuple[str, set[str] | None]:
    """``REPORT`` or ``REPORT:MODEL,MODEL``: a report, and which of its models to take (None: all)."""
    path, _, models = spec.partition(":")
    return path, set(filter(None, models.split(","))) or None


def combine(specs: list[str], out: Path, subject: str = FULL, leave_out: list[str] = ()) -> int:
    """Merge several ctr_quality reports into one with the family average, and print it: runs split
    over processes (by world, or by seed of one world), or models measured in different runs — e.g.
    the peers of an earlier report beside ours retrained after a change, since the peers read nothing
    our settings change (``REPORT:lightgbm,deepctr_din`` takes only those models of REPORT). Runs of
    the same world and model from several reports are pooled (their seeds must differ). The first
    report's settings (``ctr``, ``ctr_overrides``) head the result; ``sources`` says what came from where.
    ``leave_out``: worlds left out of the result (e.g. the other generator's world, which is not in
    the family, when one run measured it beside family worlds)."""
    import json

    from ctr_peers import PEERS

    worlds, first, sources = {}, None, {}
    seeds: dict[str, set] = {}  # per world: every seed of any model
    model_seeds: dict[tuple[str, str], list] = {}  # per (world, model): must not repeat
    for spec in specs:
        p, keep = parse_source(spec)
        d = json.loads(Path(p).read_text())
        first = first or d
        taken = set()
        for w, v in d["worlds"].items():
            if w in leave_out:
                continue
            runs_in = {m: rs for m, rs in v["runs"].items() if keep is None or m in keep}
            taken |= set(runs_in)
            if w not in worlds:
                worlds[w] = {**v, "runs": {}}
            for m, rs in runs_in.items():
                have = model_seeds.setdefault((w, m), [])
                if set(have) & set(d["seeds"]):
                    raise ValueError(f"{p}: world {w!r} model {m!r} seeds {d['seeds']} are already in an earlier report")
                have += d["seeds"]
                seeds.setdefault(w, set()).update(d["seeds"])
                worlds[w]["runs"][m] = worlds[w]["runs"].get(m, []) + rs
            worlds[w]["oracle"] = worlds[w]["oracle"] or v["oracle"]
        if keep is not None and keep - taken:
            raise ValueError(f"{p}: no runs of {sorted(keep - taken)} in it (it has {sorted(taken) or 'none of those'})")
        name = Path(p).resolve()
        name = str(name.relative_to(ROOT)) if name.is_relative_to(ROOT) else name.name  # no machine paths in reports
        sources[name] = {"models": sorted(taken), "seeds": d["seeds"], "ctr_overrides": d.get("ctr_overrides", {})}
    seeds = {w: sorted(seeds.get(w, ())) for w in worlds}
    peers = list(PEERS)
    for w, v in worlds.items():
        runs = {m: rs for m, rs in v["runs"].items() if rs}
        v["models"] = summarise(runs)
        v["verdict_vs_peers"] = verdict(v["models"], [p for p in peers if p in v["models"]], subject)
        v["verdict_vs_baselines"] = verdict(v["models"], [b for b in BASELINES if b in v["models"]], subject)
        v["speed_vs_peers"] = speed_ratios(v["models"], peers)
        v["seeds"] = seeds[w]
        print_world(w, v["models"], v["oracle"], seeds[w])
    models = list(dict.fromkeys(m for w in worlds.values() for m in w["models"]))
    avg, summary = family_summary(worlds, models, [p for p in PEERS if p in models], subject)
    default = worlds.get("default") or next(iter(worlds.values()))
    save_report({**first, "seeds": sorted(set(s for v in seeds.values() for s in v)), "worlds": worlds,
                 "family_average": avg, "summary": summary, "sources": sources,
                 "oracle": default["oracle"], "models": default["models"]}, out)
    return 0


def main(argv=None) -> int:
    from ctr_peers import PEERS
    from worlds import OTHER_GENERATOR, WORLDS, family, world_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help=f"our models (default: all; --quick: {QUICK})")
    ap.add_argument("--peers", nargs="*", default=list(PEERS), help="peers to train beside them ([] = none)")
    ap.add_argument("--worlds", nargs="+", default=["default"],
                    help=f"default | family | any of {list(WORLDS)}; also {list(OTHER_GENERATOR)} (another "
                         "generator, benchmarks/alt_generator.py; not in the family)")
    ap.add_argument("--quick", action="store_true", help="seed 0 only, larr_cofars and din_full only")
    ap.add_argument("--world-llm", choices=["shared", "per_world"], default="shared",
                    help="variant worlds embed with the default project's encoder (shared) or run their own LLM stages")
    ap.add_argument("--combine", nargs="+", default=None, metavar="REPORT[:MODEL,...]",
                    help="train nothing: merge these reports (or only the named models of one) into --out "
                         "with the family average")
    ap.add_argument("--leave-out", nargs="+", default=[], metavar="WORLD",
                    help="with --combine: worlds of the reports left out of the result")
    ap.add_argument("--subject", default=FULL, help="the model the verdicts and the family margin are about "
                                                    "(e.g. ensemble; it must be among the models run or combined)")
    setup = ctr_benchmark_setup(ap, argv, "ctr_quality")
    if setup is None:
        return 2
    args, params, cfg = setup
    if args.combine:
        return combine(args.combine, Path(args.out), args.subject, args.leave_out)
    import importlib.util

    # Checked before hours of training, not when the first DeepCTR peer is reached.
    if any(p.startswith("deepctr_") for p in args.peers) and importlib.util.find_spec("deepctr_torch") is None:
        print("the deepctr_* peers need DeepCTR-Torch: pip install -c constraints.txt -e '.[bench]' (make bench "
              "does it), or leave them out with --peers lightgbm", file=sys.stderr)
        return 2
    from components.ctr.data import build_dataset
    # The first optimizer a process builds imports torch._dynamo (seconds): paid here, not by whichever
    # model happens to train first.
    import torch._dynamo  # noqa: F401

    seeds = [args.seeds[0]] if args.quick else args.seeds
    ours = args.models if args.models is not None else list(QUICK if args.quick else ALL)
    models = ours + [p for p in args.peers if p not in ours]
    t0 = time.perf_counter()
    worlds = {}
    for world in family(args.worlds):
        wp = world_params(params, world, llm=args.world_llm)
        # the overrides reach the dataset too (split, user vocabulary, bins are ctr knobs)
        wp = wp.model_copy(update={"ctr": with_ctr_update(wp.ctr, args.ctr_update)})
        wcfg = wp.ctr
        t1 = time.perf_counter()
        ds = build_dataset(wp)
        print(f"[{world}] data: {int(ds.train.mask.sum())} / {int(ds.valid.mask.sum())} / {int(ds.test.mask.sum())} "
              f"impressions (train / valid / test), {time.perf_counter() - t1:.1f} s", flush=True)
        runs: dict[str, list[dict]] = {m: [] for m in models}
        oracle: dict = {}
        for seed in seeds:
            for name in models:
                t1 = time.perf_counter()
                m = (run_peer if name in PEERS else run_ours)(name, ds, wcfg, seed)
                runs[name].append(m)
                oracle = {k: v for k, v in m.items() if "oracle_auc" in k or "oracle_gauc" in k} or oracle
                print(f"  [{world}] seed {seed} {name:<13} CTR AUC {m['all.auc.ctr']:.4f}  CTCVR AUC "
                      f"{m['all.auc.ctcvr']:.4f}  epochs {m['epochs']}  ({time.perf_counter() - t1:.0f} s)", flush=True)
                for member, r in m.get("members", {}).items():  # the ensemble's members, alone
                    print(f"  [{world}] seed {seed}   member {member:<13} CTR AUC {r['all.auc.ctr']:.4f}  CTCVR AUC "
                          f"{r['all.auc.ctcvr']:.4f}  weights ctr {m['weights']['ctr']} ctcvr {m['weights']['ctcvr']}",
                          flush=True)
        table = summarise(runs)
        worlds[world] = {"oracle": oracle, "models": table, "runs": runs,
                         "verdict_vs_peers": verdict(table, [p for p in args.peers if p in table], args.subject),
                         "verdict_vs_baselines": verdict(table, [b for b in BASELINES if b in table], args.subject),
                         "generate": wp.generate.model_dump(mode="json")}
        print_world(world, table, oracle, seeds)
        worlds[world]["speed_vs_peers"] = speed_ratios(table, args.peers)
        for p, r in worlds[world]["speed_vs_peers"].items():
            print(f"  [{world}] {FULL} / {p}: " + ", ".join(f"{k.replace('_per_s', '/s').replace('_', ' ')} "
                                                          f"x{v:.2f}" for k, v in r.items()))
        del ds

    avg, summary = family_summary(worlds, models, args.peers, args.subject)
    default = worlds.get("default") or next(iter(worlds.values()))
    save_report({"benchmark": "ctr_quality", "machine": platform.platform(), "seeds": seeds, "quick": args.quick,
                 "ctr_overrides": args.ctr_update,
                 "worlds": worlds, "family_average": avg, "summary": summary,
                 # the default world's figures at the top level, as before the world family
                 "oracle": default["oracle"], "models": default["models"],
                 "ctr": cfg.model_dump(mode="json"), "seconds": round(time.perf_counter() - t0, 1)}, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
