"""Which of an embedder's two tables moves the downstream CTR model, and is it their content or their scale?

    python benchmarks/embedder_tables.py --keep DIR [--seeds 0 1 2]
        [--swap POI_EMBEDDER:SCENE_EMBEDDER ...] [--scale EMBEDDER:RMS ...] [--shuffle EMBEDDER:SEED ...]
        [--out FILE]

Reads a folder kept by ``benchmarks/embedders.py --keep DIR --ctr-seeds ...``: its downstream world
(``DIR/ctr_world``, a full project) and the tables each embedder wrote there
(``DIR/ctr_world/embeddings/NAME/{poi,scene}_embeddings.parquet``). Each variant writes a pair of
tables into a folder of its own and trains ``larr_cofars`` with the world's ``ctr:`` settings once per
seed (benchmarks/ctr_quality.py run_ours, as embedders.py's downstream runs do):

  --swap P:S     the PoI table of embedder P with the scene-value table of embedder S
  --scale E:R    both of E's tables centred on their own mean row and scaled to an RMS of R per row
                 (the same normalisation any table could get: does the spread, not the content, decide?)
  --shuffle E:N  both of E's tables with their rows moved among the ids along one random cycle (seed
                 N): the same vectors and spread, but no PoI or scene value keeps its own (the control
                 for "does the meaning of the tables move the CTR model at all?")

Prints test CTR / CTCVR AUC per seed and mean ± std per variant, with each table's spread (mean
cosine between rows, RMS of the centred rows); writes reports/benchmarks/embedder_tables.json.
"""
from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from report import save_report  # noqa: E402  (benchmarks/report.py)

CTR_MODEL = "larr_cofars"
TABLES = ("poi", "scene")
# kind -> (what its argument looks like, the label of its runs); the kinds are also the CLI flags
VARIANTS = {"swap": ("POI:SCENE", "poi_{a}+scene_{b}"), "scale": ("EMBEDDER:RMS", "{a}@rms_{b}"),
            "shuffle": ("EMBEDDER:SEED", "{a}@shuffled_{b}")}


def table_matrix(df: pd.DataFrame) -> np.ndarray:
    return np.stack([np.asarray(e, np.float32) for e in df["embedding"]])


def centred(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The table centred on its mean row, and the RMS per row of that."""
    c = x - x.mean(0)
    return c, float(np.sqrt((c ** 2).sum(1).mean()))


def spread(x: np.ndarray) -> dict[str, float]:
    """Mean cosine between distinct rows and the RMS per row of the table centred on its mean row."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    cos = u @ u.T
    n = len(x)
    return {"mean_cosine": round(float((cos.sum() - np.trace(cos)) / (n * (n - 1))), 3),
            "centred_rms": round(centred(x)[1], 3)}


def rescaled(x: np.ndarray, rms: float) -> np.ndarray:
    c, r = centred(x)
    return c * (rms / max(r, 1e-12))


def derangement(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The rows of ``x`` moved along one random cycle through all of them: no row keeps its own
    vector (with two rows or more), whatever the seed."""
    order = rng.permutation(len(x))
    out = np.empty_like(x)
    out[order] = x[np.roll(order, 1)]
    return out


def parse_variant(text: str, kind: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not sep or not a or not b:
        raise SystemExit(f"--{kind} {text!r}: expected {VARIANTS[kind][0]}")
    if kind == "shuffle" and not b.isdigit():
        raise SystemExit(f"--shuffle {text!r}: the seed must be a non-negative integer")
    if kind == "scale":
        try:
            if float(b) <= 0:
                raise ValueError
        except ValueError:
            raise SystemExit(f"--scale {text!r}: the RMS must be a positive number") from None
    return a, b


@functools.lru_cache(maxsize=None)
def read_table(emb_root: Path, name: str, table: str) -> pd.DataFrame:
    """``table`` (poi / scene) as embedder ``name`` wrote it, read once per run (callers do not modify it)."""
    path = emb_root / name / f"{table}_embeddings.parquet"
    if not path.exists():
        known = sorted(p.name for p in emb_root.iterdir() if p.is_dir()) if emb_root.exists() else []
        raise SystemExit(f"{path} not found: embedders with tables in this folder: {known}")
    return pd.read_parquet(path)


def variant_tables(emb_root: Path, kind: str, a: str, b: str) -> dict[str, pd.DataFrame]:
    """The (poi, scene) tables of one variant."""
    if kind == "swap":
        return {"poi": read_table(emb_root, a, "poi"), "scene": read_table(emb_root, b, "scene")}
    out = {}
    rng = np.random.default_rng(int(b)) if kind == "shuffle" else None
    for t in TABLES:
        df = read_table(emb_root, a, t)
        x = table_matrix(df)
        x = derangement(x, rng) if rng is not None else rescaled(x, float(b)).astype(np.float32)
        out[t] = df.assign(embedding=list(x))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, required=True, help="a folder kept by benchmarks/embedders.py --ctr-seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    for kind, (form, _) in VARIANTS.items():
        ap.add_argument(f"--{kind}", nargs="*", default=[], metavar=form)
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "embedder_tables.json")
    args = ap.parse_args(argv)
    variants = [(kind, *parse_variant(v, kind)) for kind in VARIANTS for v in getattr(args, kind)]
    if not variants:
        ap.error("give at least one --swap, --scale or --shuffle")
    world = args.keep / "ctr_world"
    if not (world / "params.yaml").exists():
        print(f"{world}/params.yaml not found: run benchmarks/embedders.py --keep {args.keep} --ctr-seeds ... first",
              file=sys.stderr)
        return 2

    from ctr_quality import run_ours, summarise  # benchmarks/ctr_quality.py

    from components.config import load_params
    from components.ctr.data import build_dataset

    params = load_params(world / "params.yaml")
    emb_root = world / "embeddings"
    t0 = time.perf_counter()
    runs, stats = {}, {}
    for kind, a, b in variants:
        label = VARIANTS[kind][1].format(a=a, b=b)
        folder = world / "embeddings_variants" / label
        folder.mkdir(parents=True, exist_ok=True)
        tables = variant_tables(emb_root, kind, a, b)
        for t, df in tables.items():
            df.to_parquet(folder / f"{t}_embeddings.parquet", index=False)
        stats[label] = {t: spread(table_matrix(df)) for t, df in tables.items()}
        pv = params.model_copy(update={"paths": params.paths.model_copy(update={"embeddings_dir": str(folder)})})
        ds = build_dataset(pv)
        runs[label] = []
        for seed in args.seeds:
            m = run_ours(CTR_MODEL, ds, params.ctr, seed)
            runs[label].append(m)
            print(f"  {label:<44} seed {seed} CTR AUC {m['all.auc.ctr']:.4f}  CTCVR AUC {m['all.auc.ctcvr']:.4f}  "
                  f"epochs {m['epochs']}", flush=True)
        del ds
    table = summarise(runs)
    print(f"\n{CTR_MODEL} test AUC per table variant (seeds {args.seeds}, mean ± std)")
    print(f"{'variant':<44} {'CTR AUC':>15} {'CTCVR AUC':>17}  spread poi / scene (mean cos, centred RMS)")
    for label, row in table.items():
        s = stats[label]
        print(f"{label:<44} {row['all.auc.ctr']['mean']:.4f} ± {row['all.auc.ctr']['std']:.4f}  "
              f"{row['all.auc.ctcvr']['mean']:.4f} ± {row['all.auc.ctcvr']['std']:.4f}  "
              f"{s['poi']['mean_cosine']:.2f}/{s['poi']['centred_rms']:.2f}  "
              f"{s['scene']['mean_cosine']:.2f}/{s['scene']['centred_rms']:.2f}")
    as_written = {name: {t: spread(table_matrix(read_table(emb_root, name, t))) for t in TABLES}
                  for name in sorted(p.name for p in emb_root.iterdir() if p.is_dir())}
    save_report({"benchmark": "embedder_tables", "machine": platform.platform(), "model": CTR_MODEL,
                 "world": str(world.relative_to(args.keep)), "seeds": args.seeds,
                 "variants": [{"kind": k, "a": a, "b": b} for k, a, b in variants],
                 "summary": table, "table_spread": stats, "table_spread_as_written": as_written,
                 "runs": runs, "ctr": params.ctr.model_dump(mode="json"),
                 "seconds": round(time.perf_counter() - t0, 1)}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
