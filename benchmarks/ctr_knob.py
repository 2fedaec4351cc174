"""What one CTR knob changes: ``benchmarks/ctr_quality.py`` reports run with it against reports run
without it, world by world and seed by seed (same builds, same seeds), beside the best peer of the
reports without it.

    python benchmarks/ctr_quality.py --worlds W --world-llm per_world --models larr_cofars --peers \\
        --seeds 0 1 2 --set log_poi_dim=16 --out /tmp/knob/W.json          # per world
    python benchmarks/ctr_knob.py --with /tmp/knob/*.json --without reports/benchmarks/ctr_seed_bag/family.json \\
        --label log_poi_dim=16 --out reports/benchmarks/ctr_log_poi.json
    # --without runs that trained no peer: --peers-from REPORT... reads the peers from other reports

Per world it prints the model's CTR and CTCVR AUC without and with the knob (mean ± std over the
seeds both sides ran), the change per seed and on average, and the margin over the best peer with
the knob (beyond the larger of the two seed spreads or not). Then the change averaged over the
family's worlds (benchmarks/worlds.py ``WORLDS``: the defaults are chosen on it) and, apart, over
the other generator's worlds (``OTHER_GENERATOR``: nothing is chosen on them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worlds import OTHER_GENERATOR, WORLDS  # noqa: E402

TASKS = {"ctr": "all.auc.ctr", "ctcvr": "all.auc.ctcvr"}


def per_seed(reports: list[dict], model: str) -> dict[str, dict[int, dict]]:
    """world -> seed -> that run's metrics for ``model`` (a seed met twice for a world is an error)."""
    out: dict[str, dict[int, dict]] = {}
    for rep in reports:
        for world, w in rep["worlds"].items():
            seeds = w.get("seeds", rep["seeds"])
            for seed, run in zip(seeds, w["runs"].get(model) or []):
                if seed in out.setdefault(world, {}):
                    raise ValueError(f"world {world!r} seed {seed}: {model} is in two reports")
                out[world][seed] = run
    return out


def peers_of(reports: list[dict], model: str) -> dict[str, dict[str, dict[int, dict]]]:
    """world -> peer -> seed -> metrics, for every other model of the reports."""
    out: dict[str, dict[str, dict[int, dict]]] = {}
    for rep in reports:
        for world, w in rep["worlds"].items():
            seeds = w.get("seeds", rep["seeds"])
            for name, runs in w["runs"].items():
                if name != model:
                    out.setdefault(world, {}).setdefault(name, {}).update(zip(seeds, runs))
    return out


def compare(with_runs: dict, without_runs: dict, peers: dict) -> dict:
    """Per world present on both sides: each side's AUC over the common seeds, the change, the margin
    over the best peer with the knob."""
    worlds = {}
    for world in with_runs:
        seeds = sorted(set(with_runs[world]) & set(without_runs.get(world, {})))
        if not seeds:
            continue
        row: dict = {"seeds": seeds}
        for task, key in TASKS.items():
            a = np.array([without_runs[world][s][key] for s in seeds], float)
            b = np.array([with_runs[world][s][key] for s in seeds], float)
            row[task] = {"without": [round(x, 4) for x in a], "with": [round(x, 4) for x in b],
                         "without_mean": round(float(a.mean()), 4), "with_mean": round(float(b.mean()), 4),
                         "change": round(float((b - a).mean()), 4), "gains_in": int((b > a).sum())}
            rivals = {p: np.array([r[key] for r in runs.values()], float)
                      for p, runs in peers.get(world, {}).items() if runs and all(key in r for r in runs.values())}
            if rivals:
                best = max(rivals, key=lambda p: rivals[p].mean())
                spread = max(float(b.std()), float(rivals[best].std()))
                margin = float(b.mean() - rivals[best].mean())
                row[task]["best_peer"] = {"name": best, "mean": round(float(rivals[best].mean()), 4),
                                          "margin_with": round(margin, 4), "spread": round(spread, 4),
                                          "beyond_spread": bool(len(seeds) > 1 and margin > spread),
                                          "behind_beyond_spread": bool(len(seeds) > 1 and margin < -spread)}
        worlds[world] = row
    return worlds


def average(worlds: dict, names) -> dict:
    """Mean change and mean AUC with and without, over the worlds of ``names`` that were compared."""
    got = [w for w in worlds if w in names]
    if not got:
        return {}
    return {"worlds": got, **{task: {"change": round(float(np.mean([worlds[w][task]["change"] for w in got])), 4),
                                     "without": round(float(np.mean([worlds[w][task]["without_mean"] for w in got])), 4),
                                     "with": round(float(np.mean([worlds[w][task]["with_mean"] for w in got])), 4)}
                                for task in TASKS}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--with", nargs="+", required=True, dest="with_", metavar="REPORT", help="runs with the knob")
    ap.add_argument("--without", nargs="+", required=True, metavar="REPORT", help="runs without it (and the peers)")
    ap.add_argument("--peers-from", nargs="+", default=None, metavar="REPORT",
                    help="read the peers from these reports instead (when the --without runs trained none)")
    ap.add_argument("--model", default="larr_cofars")
    ap.add_argument("--label", default="the knob", help="what the --with reports changed, for the printout")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    load = lambda ps: [json.loads(Path(p).read_text()) for p in ps]  # noqa: E731
    with_reps, without_reps = load(args.with_), load(args.without)
    worlds = compare(per_seed(with_reps, args.model), per_seed(without_reps, args.model),
                     peers_of(load(args.peers_from) if args.peers_from else without_reps, args.model))
    if not worlds:
        print("no world and seed is in both the --with and the --without reports", file=sys.stderr)
        return 2
    print(f"{args.model}: without -> with {args.label}; test AUC, mean over the seeds both sides ran")
    print(f"{'world':<20}{'seeds':<8}{'CTR without':>12}{'with':>8}{'change':>9}{'gains':>7}"
          f"{'CTCVR change':>14}{'   CTR vs best peer, with'}")
    for world, r in worlds.items():
        c, v = r["ctr"], r["ctcvr"]
        peer = c.get("best_peer")
        where = "beyond" if peer and peer["beyond_spread"] else "behind, beyond" if peer and peer["behind_beyond_spread"] \
            else "within"
        vs = f"   {peer['margin_with']:+.4f} vs {peer['name']} ({where} {peer['spread']:.4f})" if peer else ""
        print(f"{world:<20}{','.join(map(str, r['seeds'])):<8}{c['without_mean']:>12.4f}{c['with_mean']:>8.4f}"
              f"{c['change']:>+9.4f}{c['gains_in']:>4}/{len(r['seeds'])}{v['change']:>+14.4f}{vs}")
    fam, other = average(worlds, WORLDS), average(worlds, OTHER_GENERATOR)
    for label, avg in (("family", fam), ("other generator", other)):
        if avg:
            print(f"mean change over the {label} worlds ({len(avg['worlds'])}): CTR {avg['ctr']['change']:+.4f} "
                  f"({avg['ctr']['without']:.4f} -> {avg['ctr']['with']:.4f}), CTCVR {avg['ctcvr']['change']:+.4f}")
    if args.out:
        root = Path(__file__).resolve().parents[1]

        def rel(p):  # no machine paths in reports
            p = Path(p).resolve()
            return str(p.relative_to(root)) if p.is_relative_to(root) else p.name

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "benchmark": "ctr_knob", "model": args.model, "knob": args.label,
            "with": [rel(p) for p in args.with_], "without": [rel(p) for p in args.without],
            "worlds": worlds, "family_average": fam, "other_generator_average": other}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
