"""What ``ctr.seed_bag`` buys: a bag's test AUC against its own networks alone, from
``benchmarks/ctr_quality.py`` reports of a bagged model (each run reports the bag and every member
scored alone on the same test rows; the first member is what ``seed_bag: 1`` would serve).

    python benchmarks/ctr_quality.py --worlds default trending_market --world-llm per_world \\
        --models larr_cofars --peers lightgbm --set ctr.seed_bag=2 --out /tmp/bag.json
    python benchmarks/ctr_seed_bag.py /tmp/bag.json [more reports] --out reports/benchmarks/ctr_seed_bag.json

Per world and seed it prints the bag, each member, their mean (what one network scores in
expectation, its seed being arbitrary) and the bag's gain over that mean, for CTR and CTCVR AUC,
beside the best peer of the same run; then the means over runs, the share of runs the bag gains
in, and the family average over the worlds given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

TASKS = {"ctr": "all.auc.ctr", "ctcvr": "all.auc.ctcvr"}


def bag_runs(report: dict, model: str) -> dict[str, list[dict]]:
    """world -> one row per seed: the bag's and its members' AUC per task, and the best peer's."""
    out = {}
    for world, w in report["worlds"].items():
        runs = w["runs"].get(model) or []
        peers = {name: r for name, r in w["runs"].items() if name != model}
        rows = []
        for i, run in enumerate(runs):
            members = run.get("members")
            if not members or len(members) < 2:
                raise SystemExit(f"{world}: {model} has no bag members in this report (run ctr_quality.py with "
                                 "--set ctr.seed_bag=2 or more)")
            row = {"seed": report["seeds"][i] if i < len(report["seeds"]) else i}
            for task, key in TASKS.items():
                alone = [m[key] for m in members.values()]
                row[task] = {"bag": run[key], "members": dict(zip(members, alone)), "member_mean": float(np.mean(alone)),
                             "gain_over_member_mean": run[key] - float(np.mean(alone)),
                             "gain_over_first_member": run[key] - alone[0]}
                best = max(((name, r[i][key]) for name, r in peers.items() if i < len(r)), key=lambda x: x[1],
                           default=None)
                if best is not None:
                    row[task]["best_peer"] = {"name": best[0], "auc": best[1]}
            rows.append(row)
        out[world] = rows
    return out


def summarise(worlds: dict[str, list[dict]]) -> dict:
    summary = {}
    for world, rows in worlds.items():
        s = {"runs": len(rows)}
        for task in TASKS:
            gains = [r[task]["gain_over_member_mean"] for r in rows]
            s[task] = {"bag": float(np.mean([r[task]["bag"] for r in rows])),
                       "member_mean": float(np.mean([r[task]["member_mean"] for r in rows])),
                       "gain_over_member_mean": float(np.mean(gains)),
                       "runs_with_a_gain": int(sum(g > 0 for g in gains))}
            if all("best_peer" in r[task] for r in rows):
                s[task]["best_peer"] = float(np.mean([r[task]["best_peer"]["auc"] for r in rows]))
        summary[world] = s
    fam = {task: {k: float(np.mean([summary[w][task][k] for w in summary])) for k in ("bag", "member_mean",
                                                                                     "gain_over_member_mean")}
           for task in TASKS}
    return {"worlds": summary, "average_over_worlds": fam}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="ctr_quality.py reports of a bagged model")
    ap.add_argument("--model", default="larr_cofars")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "reports" / "benchmarks" / "ctr_seed_bag.json"))
    args = ap.parse_args(argv)
    worlds: dict[str, list[dict]] = {}
    for path in args.reports:
        for world, rows in bag_runs(json.loads(Path(path).read_text()), args.model).items():
            worlds.setdefault(world, []).extend(rows)
    result = summarise(worlds)
    print(f"{'world':<20} {'seed':>4} {'task':<6} {'bag':>7} {'members alone':<22} {'gain':>8} {'best peer':>10}")
    for world, rows in worlds.items():
        for r in rows:
            for task in TASKS:
                t = r[task]
                alone = " ".join(f"{v:.4f}" for v in t["members"].values())
                peer = f"{t['best_peer']['auc']:.4f}" if "best_peer" in t else "—"
                print(f"{world:<20} {r['seed']:>4} {task:<6} {t['bag']:.4f} {alone:<22} "
                      f"{t['gain_over_member_mean']:+.4f} {peer:>10}")
    print("\nmean over seeds: bag / one network (member mean) / gain, runs with a gain")
    for world, s in result["worlds"].items():
        print(f"{world:<20} " + "   ".join(
            f"{task} {s[task]['bag']:.4f} / {s[task]['member_mean']:.4f} / {s[task]['gain_over_member_mean']:+.4f}, "
            f"{s[task]['runs_with_a_gain']} of {s['runs']}" for task in TASKS))
    fam = result["average_over_worlds"]
    print("average over the worlds: " + "   ".join(
        f"{task} {fam[task]['bag']:.4f} / {fam[task]['member_mean']:.4f} / {fam[task]['gain_over_member_mean']:+.4f}"
        for task in TASKS))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "ctr_seed_bag", "model": args.model,
                               "sources": [Path(p).name for p in args.reports], **result,
                               "runs": worlds}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
