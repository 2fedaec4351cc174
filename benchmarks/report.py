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
    """Shared start of the CTR benchmarks: ``--params``, ``--epochs``, ``--set``, ``--out`` and
    (``seeds``) ``--seeds`` added to ``ap``, parsed; returns (args, params, ctr config) or None after
    printing a parameters error. ``--epochs`` and every ``--set KEY=VALUE`` land in
    ``args.ctr_update``, applied to that config and to the params' ``ctr:`` (which ``build_dataset``
    reads: the split, the user vocabulary and the bins are ctr knobs too), and, by
    ``with_ctr_update``, to a variant world's."""
    import sys

    import yaml
    from pydantic import ValidationError

    root = Path(__file__).resolve().parents[1]
    if seeds:
        ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default=str(root / "params.yaml"))
    ap.add_argument("--epochs", type=int, default=None, help="override ctr.epochs (early stopping still applies)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="override ctr.KEY for this run, validated as in params.yaml (e.g. --set cross_layers=1)")
    ap.add_argument("--out", default=str(root / "reports" / "benchmarks" / f"{name}.json"))
    args = ap.parse_args(argv)
    from components.config import ParamsError, load_params

    args.ctr_update = {} if args.epochs is None else {"epochs": args.epochs}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"--set {item!r}: expected KEY=VALUE (a key of the ctr: section)", file=sys.stderr)
            return None
        args.ctr_update[key.removeprefix("ctr.")] = yaml.safe_load(value)
    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(e, file=sys.stderr)
        return None
    try:  # the ctr: section forbids unknown keys and checks every value's range
        cfg = with_ctr_update(params.ctr, args.ctr_update)
    except ValidationError as e:
        print(f"--set: {e}", file=sys.stderr)
        return None
    # params carry the update too: some ctr knobs shape the dataset (build_dataset reads params.ctr)
    return args, params.model_copy(update={"ctr": cfg}), cfg


def with_ctr_update(ctr, update: dict):
    """``ctr`` (a CTRConfig) with ``update`` merged over it, validated as params.yaml is."""
    return type(ctr).model_validate({**ctr.model_dump(), **update}) if update else ctr
