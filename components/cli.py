"""`scenerec`: one command with a subcommand per pipeline step.

`dvc.yaml` runs these same subcommands, and the Prefect flows call the same step functions
(components/steps.py), so a step behaves the same however it is started.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# Offline, no-telemetry defaults; every one can be overridden from the environment.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "FEAST_USAGE": "False",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect's own default (20 s) is too short for its temporary server on a busy 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


def _tracked(params, name: str, fn, *args, section: str | None = None, **kwargs) -> dict:
    """Run a step inside an MLflow run of its own and log its metrics there; ``section``: the
    params.yaml section logged with it (default: the registered step's)."""
    from components import tracking

    import inspect

    takes_run = "run_id" in inspect.signature(fn).parameters
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 alone tracks
        return fn(params, *args, **kwargs, **({"run_id": None} if takes_run else {}))
    from components.steps import STEPS

    section = section or (STEPS[name].section if name in STEPS else name)
    section_values = getattr(params, section, None)
    logged = {"seed": params.seed, **({name: section_values.model_dump(mode="json")} if section_values is not None else {})}
    with tracking.tracked_run(params, name, tags={"scenerec.step": name, "scenerec.source": "cli"}) as run_id:
        tracking.log_params(params, run_id, logged)
        metrics = fn(params, *args, **kwargs, **({"run_id": run_id} if takes_run else {}))
        tracking.log_metrics(params, run_id, metrics)
    return metrics


def _step_command(steps: list):
    """The subcommand of the registered steps sharing one command: the argument values pick the
    step (``Step.fixed``); it runs tracked, then prints its summary."""
    def run(args, params) -> int:
        arguments = {a.dest: getattr(args, a.dest) for a in steps[0].arguments}
        step = next(s for s in steps if all(arguments.get(k) == v for k, v in s.fixed.items()))
        for a in step.arguments:
            if a.overrides and arguments[a.dest] is not None:
                section, knob = a.overrides.split(".")
                values = getattr(params, section).model_copy(update={knob: arguments[a.dest]})
                params = params.model_copy(update={section: values})
        kwargs = {a.dest: arguments[a.dest] for a in step.arguments if not a.overrides}
        result = _tracked(params, step.name, step.function, **kwargs)
        print(step.describe(params, arguments, result))
        return 0

    return run


def add_step_commands(sub) -> None:
    """One subcommand per command of the step registry (``components.steps.STEPS``)."""
    from components.steps import STEPS

    commands: dict[str, list] = {}
    for step in STEPS.values():
        commands.setdefault(step.command, []).append(step)
    for command, steps in commands.items():
        sp = sub.add_parser(command, help=steps[0].help)
        for a in steps[0].arguments:
            sp.add_argument(*a.flags, **a.options)
        sp.set_defaults(func=_step_command(steps))


def cmd_tune(args, params) -> int:
    from components.steps import tune_step

    out = _tracked(params, "tune", tune_step, args.trials, args.budget_seconds, section="ctr")
    print(f"best validation CTR AUC {out['best_valid_auc_ctr']} after {out['trials']} trials: {out['best']}")
    print(f"  written to {out['written']} (merged over params.yaml: `scenerec ctr` / `dvc repro` train with it)")
    return 0


def cmd_promote(args, params) -> int:
    from components import registry

    from components.locks import hold

    name = args.name or params.ctr.registered_name
    with hold(params, "registry", f"promote {name}"):
        out = registry.promote(params, name, args.version, args.reason, by=args.by)
    print(f"{name}: champion is version {out['champion']} (was {out['previous']}); reason: {args.reason}")
    return 0


def cmd_rollback(args, params) -> int:
    from components import registry

    from components.locks import hold

    name = args.name or params.ctr.registered_name
    with hold(params, "registry", f"rollback {name}"):
        out = registry.rollback(params, name, args.reason, by=args.by)
    print(f"{name}: rolled back from version {out['rolled_back']} to version {out['champion']}; reason: {args.reason}")
    return 0


def cmd_audit(args, params) -> int:
    from components import registry

    name = args.name or params.ctr.registered_name
    out = registry.audit(params, name)
    shown = ", ".join(f"{a} = version {v}" for a, v in sorted(out["aliases"].items())) or "none"
    print(f"{name} aliases now: {shown}")
    for row in out["history"]:
        print(f"{row['at']}  v{row['version']:<4} {row['entry']}")
    for u in out["unaudited"]:
        print(f"UNAUDITED: @{u['alias']} is {_v(u['now'])} but the last audit entry left it at {_v(u['audited'])}: "
              f"changed outside scenerec (e.g. MLflow's alias editor). Record it with `scenerec promote --name "
              f"{name} --version {u['now'] or u['audited']} --reason ...`, or restore it the same way.")
    return 1 if out["unaudited"] else 0


def _v(version: str | None) -> str:
    return f"version {version}" if version else "unset"


def cmd_online(args, params) -> int:
    from components.features.store import online_features

    values = online_features(params, args.user_id, args.poi_id, args.context_id)
    print(json.dumps(values, indent=2, default=str))
    return 0


def cmd_serve(args, params) -> int:
    from components.serve.app import serve

    if args.workers is not None:
        params = params.model_copy(update={"serve": params.serve.model_copy(update={"workers": args.workers})})
    serve(params, args.host, args.port)
    return 0


def cmd_push(args, params) -> int:
    import pandas as pd

    from components.serve.online import push_behaviors
    from components.serve.schema import InvalidRequest

    path = Path(args.file)
    df = (pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path) if path.suffix == ".csv"
          else pd.read_json(path, lines=path.suffix == ".jsonl"))
    try:
        n = push_behaviors(params, df)
    except InvalidRequest as e:
        print(f"scenerec push: {path}: nothing pushed\n" + "\n".join(e.errors), file=sys.stderr)
        return 3
    print(f"pushed {n} behaviours from {path}: the next request sees them")
    return 0


def pipeline_arguments(args, params) -> dict:
    """The `pipeline` flow's parameters for ``scenerec pipeline`` (typed as its form types them)."""
    return {"batch_dir": args.batch or "",
            "params_file": str(params.root / "params.yaml") if args.params is None else args.params}


def cmd_pipeline(args, params) -> int:
    from flows.pipeline import pipeline

    result = pipeline(**pipeline_arguments(args, params))
    print(result["summary"] if isinstance(result, dict) and "summary" in result else result)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scenerec",
        description="SceneRec: validated ingestion, feature store and LLM-aided CTR models, step by step.",
    )
    p.add_argument("--params", default=None, help="parameters file (default: ./params.yaml or $SCENEREC_PARAMS)")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_step_commands(sub)
    tu = sub.add_parser("tune", help="Optuna search over the CTR knobs on the validation split; best -> params.tuned.yaml")
    tu.add_argument("--trials", type=int, default=20, help="at most this many trials")
    tu.add_argument("--budget-seconds", type=float, default=1800.0, help="stop starting trials after this long")
    tu.set_defaults(func=cmd_tune)
    for cmd, text, fn in [("promote", "give a model version the champion alias (manual path)", cmd_promote),
                          ("rollback", "give the champion alias back to the previous champion", cmd_rollback),
                          ("audit", "show the aliases and the audit trail; flags alias changes made outside scenerec (exit 1)",
                           cmd_audit)]:
        sp = sub.add_parser(cmd, help=text)
        sp.add_argument("--name", default=None, help="registered model (default: ctr.registered_name)")
        if cmd == "promote":
            sp.add_argument("--version", required=True)
        if cmd != "audit":
            sp.add_argument("--reason", required=True, help="why: kept in the version's audit tags")
            sp.add_argument("--by", default=None, help="who (default: $SCENEREC_USER or the login name)")
        sp.set_defaults(func=fn)

    o = sub.add_parser("online", help="read online features for a user, a PoI and a context from Feast")
    o.add_argument("--user-id", required=True)
    o.add_argument("--poi-id", required=True)
    o.add_argument("--context-id", default=None, help='e.g. "office|lunch|rainy"')
    o.set_defaults(func=cmd_online)

    sv = sub.add_parser("serve", help="serve the champion CTR model over HTTP (127.0.0.1 by default)")
    sv.add_argument("--host", default=None, help="bind address (default: serve.host)")
    sv.add_argument("--port", type=int, default=None, help="port (default: serve.port)")
    sv.add_argument("--workers", type=int, default=None, choices=range(1, 65), metavar="N",
                    help="worker processes, 1-64 (default: serve.workers)")
    sv.set_defaults(func=cmd_serve)
    pu = sub.add_parser("push", help="push new behaviours (parquet/csv/json[l], curated behaviour columns) online")
    pu.add_argument("file")
    pu.set_defaults(func=cmd_push)

    pl = sub.add_parser("pipeline", help="run the whole pipeline as a Prefect flow (no server needed)")
    pl.add_argument("--batch", default=None, help="your own batch folder (default: generate a synthetic one)")
    pl.set_defaults(func=cmd_pipeline)
    return p


def main(argv: list[str] | None = None) -> int:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    args = build_parser().parse_args(argv)
    from components.config import ParamsError, for_profile, is_profile, load_params
    from components.data.validate import BatchRejected
    from components.registry import RegistryError

    try:
        params = load_params(args.params)
        if is_profile(args.params):  # the same namespace as the flows give this params file
            params = for_profile(params, args.params)
        return args.func(args, params)
    except ParamsError as e:
        print(f"scenerec: {e}", file=sys.stderr)
        return 2
    except BatchRejected as e:  # the rejection path: a clear message, no traceback
        print(f"scenerec {args.command}: batch rejected\n{e}", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug for the traceback
        if args.debug:
            raise
        if type(e).__name__ == "LockTimeout":  # another command holds the lock: say who
            print(f"scenerec {args.command}: {e}", file=sys.stderr)
            return 4
        print(f"scenerec {args.command}: {e if isinstance(e, RegistryError) else f'{type(e).__name__}: {e}'}"
              " (--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
