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
}


def _print_metrics(title: str, metrics: dict) -> None:
    print(f"{title}:")
    for k, v in metrics.items():
        print(f"  {k:<40} {v}")


def _tracked(params, name: str, fn, *args) -> dict:
    """Run a step inside an MLflow run of its own and log its metrics there."""
    from components import tracking

    import inspect

    takes_run = "run_id" in inspect.signature(fn).parameters
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 alone tracks
        return fn(params, *args, **({"run_id": None} if takes_run else {}))
    from components.steps import STEP_SECTIONS

    section = getattr(params, STEP_SECTIONS.get(name, name), None)
    logged = {"seed": params.seed, **({name: section.model_dump(mode="json")} if section is not None else {})}
    with tracking.tracked_run(params, name, tags={"scenerec.step": name, "scenerec.source": "cli"}) as run_id:
        tracking.log_params(params, run_id, logged)
        metrics = fn(params, *args, **({"run_id": run_id} if takes_run else {}))
        tracking.log_metrics(params, run_id, metrics)
    return metrics


def cmd_generate(args, params) -> int:
    from components.steps import generate_step

    metrics = _tracked(params, "generate", generate_step, Path(args.out) if args.out else None)
    _print_metrics(f"generated batch in {args.out or params.path('raw_batch')}", metrics)
    return 0


def cmd_ingest(args, params) -> int:
    from components.steps import ingest_step

    batch = Path(args.batch_dir) if args.batch_dir else params.path("raw_batch")
    metrics = _tracked(params, "ingest", ingest_step, batch)
    _print_metrics(f"batch {batch} accepted and curated in {params.path('curated_dir')}", metrics)
    return 0


def cmd_features(args, params) -> int:
    from components.steps import features_step

    metrics = _tracked(params, "features", features_step)
    _print_metrics("features built, Feast repo applied, online store materialised", metrics)
    return 0


def _llm_command(step: str):
    def run(args, params) -> int:
        import components.steps as steps

        fn = getattr(steps, f"{step}_step")
        extra = (args.model,) if step == "contrastive" else ()
        name = f"{step}_{args.model}" if step == "contrastive" else step
        metrics = _tracked(params, name, fn, *extra)
        _print_metrics(f"{name} done", metrics)
        return 0

    return run


def cmd_ctr(args, params) -> int:
    from components.steps import ctr_step

    if args.model:  # one way to choose the model: --model overrides ctr.model, so the run logs it
        params = params.model_copy(update={"ctr": params.ctr.model_copy(update={"model": args.model})})
    metrics = _tracked(params, "ctr", ctr_step)
    print(metrics.get("headline", ""))
    _print_metrics(f"CTR model {metrics.get('model')} trained and evaluated; saved in {params.path('ctr_dir')}",
                   {k: v for k, v in metrics.items() if k.startswith(("test.all", "train."))})
    return 0


def cmd_tune(args, params) -> int:
    from components.steps import tune_step

    out = _tracked(params, "tune", tune_step, args.trials, args.budget_seconds)
    print(f"best validation CTR AUC {out['best_valid_auc_ctr']} after {out['trials']} trials: {out['best']}")
    print(f"  written to {out['written']} (merged over params.yaml: `scenerec ctr` / `dvc repro` train with it)")
    return 0


def _print_registration(r: dict) -> None:
    """One line for a register step's result (``registry.settle``)."""
    print(f"{r['name']} version {r['version']} registered as {r['alias']}: {r['reason']}")


def cmd_ctr_register(args, params) -> int:
    from components.steps import ctr_register_step

    result = _tracked(params, "ctr_register", ctr_register_step)
    _print_registration(result)
    print(f"  champion now: version {result['champion']} (models:/{result['name']}@champion)")
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


def cmd_news_data(args, params) -> int:
    from components.steps import news_data_step

    metrics = _tracked(params, "news_data", news_data_step)
    _print_metrics("MIND data ready", metrics)
    return 0


def cmd_news(args, params) -> int:
    from components.steps import news_step

    metrics = _tracked(params, "news", news_step)
    _print_metrics(f"PerCoNet trained and evaluated on dev; saved in {params.path('news_dir') / 'model'}", metrics)
    return 0


def cmd_news_register(args, params) -> int:
    from components.steps import news_register_step

    _print_registration(_tracked(params, "news_register", news_register_step))
    return 0


def cmd_knowledge(args, params) -> int:
    from components.steps import knowledge_step

    metrics = _tracked(params, "knowledge", knowledge_step)
    _print_metrics(f"HKFR knowledge snapshots and instruction dataset in {params.path('hkfr_dir') / 'knowledge'}", metrics)
    return 0


def cmd_instruct(args, params) -> int:
    from components.steps import instruct_step

    metrics = _tracked(params, "instruct", instruct_step)
    _print_metrics(f"HKFR instruction-tuned LLM in {params.path('hkfr_dir') / 'model'}; user knowledge in Feast", metrics)
    return 0


def cmd_hkfr_register(args, params) -> int:
    from components.steps import hkfr_register_step

    _print_registration(_tracked(params, "hkfr_register", hkfr_register_step))
    return 0


def cmd_online(args, params) -> int:
    from components.features.store import online_features

    values = online_features(params, args.user_id, args.poi_id, args.context_id)
    print(json.dumps(values, indent=2, default=str))
    return 0


def cmd_serve(args, params) -> int:
    from components.serve.app import serve

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


def cmd_pipeline(args, params) -> int:
    from flows.pipeline import pipeline

    result = pipeline(batch_dir=args.batch, params_file=str(params.root / "params.yaml")
                      if args.params is None else args.params)
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

    g = sub.add_parser("generate", help="write a synthetic batch in the raw data contract (with the truth file)")
    g.add_argument("--out", default=None, help="batch folder to write (default: paths.raw_batch)")
    g.set_defaults(func=cmd_generate)

    i = sub.add_parser("ingest", help="validate a batch against the contract (Great Expectations) and curate it")
    i.add_argument("batch_dir", nargs="?", default=None, help="batch folder (default: paths.raw_batch)")
    i.set_defaults(func=cmd_ingest)

    f = sub.add_parser("features", help="build feature tables, `feast apply`, materialise, write the training set")
    f.set_defaults(func=cmd_features)

    for step, text in [
        ("corpus", "build the LLM corpus (field special tokens) and its tokenizer"),
        ("pretrain", "continual pretraining of the causal LM (resumes from the last checkpoint)"),
        ("pairs", "mine user-user, PoI-PoI and user-PoI positive pairs"),
        ("contrastive", "contrastive fine-tuning into a text encoder; registers it in MLflow"),
        ("distill", "HomoDistil: distil the teacher into a pruned student"),
        ("embed", "embed every scene value and PoI once; write them to Feast"),
    ]:
        sp = sub.add_parser(step, help=text)
        if step == "contrastive":
            sp.add_argument("--model", choices=["teacher", "student"], default="teacher",
                            help="fine-tune the pretrained teacher or the distilled student")
        sp.set_defaults(func=_llm_command(step))

    from components.config import CTR_MODELS

    c = sub.add_parser("ctr", help="train the CTR/CTCVR model (LARR + CoFARS by default), evaluate it beside the oracle")
    c.add_argument("--model", choices=CTR_MODELS, default=None, help="model or baseline (default: ctr.model)")
    c.set_defaults(func=cmd_ctr)
    cr = sub.add_parser("ctr-register", help="register the trained CTR model; champion only if better by the margin")
    cr.set_defaults(func=cmd_ctr_register)
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

    nd = sub.add_parser("news-data", help="write the synthetic MIND world, or validate news.mind_dir (GX)")
    nd.set_defaults(func=cmd_news_data)
    nw = sub.add_parser("news", help="train PerCoNet on the MIND train split, evaluate AUC/MRR/nDCG on dev")
    nw.set_defaults(func=cmd_news)
    nr = sub.add_parser("news-register", help="register the news model; champion only if better by the margin")
    nr.set_defaults(func=cmd_news_register)
    kn = sub.add_parser("knowledge", help="HKFR: per-user knowledge texts (snapshots) and the instruction dataset")
    kn.set_defaults(func=cmd_knowledge)
    it = sub.add_parser("instruct", help="HKFR: instruction-tune the LLM (LoRA), score P(yes), export user knowledge")
    it.set_defaults(func=cmd_instruct)
    hr = sub.add_parser("hkfr-register", help="register the HKFR model; champion only if better by the margin")
    hr.set_defaults(func=cmd_hkfr_register)

    o = sub.add_parser("online", help="read online features for a user, a PoI and a context from Feast")
    o.add_argument("--user-id", required=True)
    o.add_argument("--poi-id", required=True)
    o.add_argument("--context-id", default=None, help='e.g. "office|lunch|rainy"')
    o.set_defaults(func=cmd_online)

    sv = sub.add_parser("serve", help="serve the champion CTR model over HTTP (127.0.0.1 by default)")
    sv.add_argument("--host", default=None, help="bind address (default: serve.host)")
    sv.add_argument("--port", type=int, default=None, help="port (default: serve.port)")
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
