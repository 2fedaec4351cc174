"""Where every benchmark leaves its figures: reports/benchmarks/NAME.json, beside the printed table."""
import json
from pathlib import Path


def save_report(report: dict, out: Path) -> Path:
    """Write ``report`` as JSON to ``out`` (folders created) and say where."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return out


def ctr_benchmark_setup(ap, argv, name: str, seeds: bool = True):
    """Shared start of the CTR benchmarks: ``--params``, ``--epochs``, ``--out`` and (``seeds``)
    ``--seeds`` added to ``ap``, parsed; returns (args, params, ctr config) or None after printing a
    parameters error."""
    import sys

    root = Path(__file__).resolve().parents[1]
    if seeds:
        ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default=str(root / "params.yaml"))
    ap.add_argument("--epochs", type=int, default=None, help="override ctr.epochs (early stopping still applies)")
    ap.add_argument("--out", default=str(root / "reports" / "benchmarks" / f"{name}.json"))
    args = ap.parse_args(argv)
    from components.config import ParamsError, load_params

    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return None
    cfg = params.ctr if args.epochs is None else params.ctr.model_copy(update={"epochs": args.epochs})
    return args, params, cfg
