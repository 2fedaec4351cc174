"""The pipeline's steps as plain functions: each runs one component, writes its report files
(what `dvc metrics show` / `dvc plots show` read) and returns its metrics.

The CLI (and so `dvc repro`) and the Prefect tasks both call these, so every step has exactly
one implementation; the callers only decide where the metrics are logged. Each step is declared
once, in ``STEPS`` at the end of this file.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from components.atomic import write_atomic, write_json_atomic
from components.config import CTR_MODELS, Params
from components.locks import hold


def write_report(params: Params, name: str, data: dict) -> Path:
    """Write ``reports/<name>.json`` atomically (flat numbers, so `dvc metrics show` can read it)."""
    return write_json_atomic(params.path("reports_dir") / f"{name}.json", data)


def write_promotion_report(params: Params, name: str, result: dict, keep=lambda key: True) -> Path:
    """``reports/<name>.json`` of a register step: version, whether it was promoted, the champion,
    the margin and both sides' metrics (those ``keep`` accepts)."""
    report = {"version": int(result["version"]), "promoted": int(result["promoted"]),
              "champion": int(result["champion"]) if result["champion"] else 0, "margin": result["margin"]}
    for who in ("challenger", "champion", "baseline"):
        report.update({f"{who}.{k}": v for k, v in (result.get(f"{who}_metrics") or {}).items() if keep(k)})
    return write_report(params, name, report)


def generate_step(params: Params, out_dir: Path | None = None) -> dict:
    """Write a synthetic batch in the raw contract (default: paths.raw_batch)."""
    from components.data.generate import generate_batch

    default = params.path("raw_batch")
    out_dir = Path(out_dir) if out_dir else default
    t0 = time.perf_counter()
    counts = generate_batch(params.generate, params.seed, out_dir)
    seconds = time.perf_counter() - t0
    metrics = {**{f"rows.{k}": v for k, v in counts.items()}, **oracle_auc(out_dir), "seconds": round(seconds, 2)}
    # reports/generate.json describes the `generate` stage's output, paths.raw_batch; a batch
    # written elsewhere must not pass for it.
    if out_dir.resolve() == default.resolve():
        write_report(params, "generate", metrics)
    return metrics


def oracle_auc(batch_dir: Path) -> dict:
    """AUC of the generator's true probabilities: the ceiling any model's AUC is read against."""
    from sklearn.metrics import roc_auc_score

    truth_path = Path(batch_dir) / "truth" / "impressions.parquet"
    imp_path = next(iter(sorted(Path(batch_dir).glob("impressions.*"))), None)
    if not truth_path.exists() or imp_path is None:
        return {}
    cols = ["request_id", "poi_id", "click", "order"]
    imp = pd.read_parquet(imp_path, columns=cols) if imp_path.suffix == ".parquet" else pd.read_csv(imp_path, usecols=cols)
    merged = imp.merge(pd.read_parquet(truth_path), on=["request_id", "poi_id"], how="inner")
    out = {}
    if merged["click"].nunique() == 2:
        out["oracle_auc.ctr"] = round(float(roc_auc_score(merged["click"], merged["p_click"])), 4)
    if merged["order"].nunique() == 2:
        out["oracle_auc.ctcvr"] = round(float(roc_auc_score(merged["order"], merged["p_order"])), 4)
    return out


def ingest_step(params: Params, batch_dir: Path | None = None) -> dict:
    """Validate a batch against the contract and curate it; raises BatchRejected otherwise."""
    from components.data.ingest import ingest_batch

    batch_dir = Path(batch_dir) if batch_dir else params.path("raw_batch")
    t0 = time.perf_counter()
    with hold(params, "curated", f"ingest ({batch_dir})"):
        result = ingest_batch(batch_dir, params)
    metrics = _numbers(result)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    return metrics


def training_cutoff(params: Params) -> pd.Timestamp | None:
    """The CTR validation start on the curated impressions: data-dependent constants (learned band
    edges) are fitted on what comes before it. None without impressions."""
    from components.ctr.data import split_bounds

    path = params.path("curated_dir") / "impressions.parquet"
    if not path.exists():
        return None
    imp = pd.read_parquet(path, columns=["request_id", "ts"])
    return split_bounds(imp, params)[0] if imp["request_id"].nunique() >= 3 else None


def features_step(params: Params) -> dict:
    """Build the timestamped feature tables, apply the Feast repo, materialise the online
    store and write the point-in-time training set; also writes data plots for DVC."""
    from components.data.ingest import recover_curated
    from components.features.engineering import build_feature_tables
    from components.features.store import apply_definitions, build_training_set, materialize

    t0 = time.perf_counter()
    with hold(params, "curated", "features run (reading curated data)", shared=True), \
            hold(params, "features", "features run"):
        recover_curated(params.path("curated_dir"))  # an ingest killed after its commit point
        rows = build_feature_tables(params.path("curated_dir"), params.features, params.path("features_dir"),
                                    fit_until=training_cutoff(params))
        apply_definitions(params)
        mat = materialize(params)
        from components.serve.online import load_behaviors

        mat["behaviors"] = load_behaviors(params)  # the online behaviour store the service reads histories from
        training = build_training_set(params)
    train_rows = len(pd.read_parquet(training, columns=["user_id"]))
    metrics = {
        **{f"rows.{k}": v for k, v in _numbers(rows).items()},
        **{f"materialize.{k}": v for k, v in _numbers(mat).items()},
        "rows.training_set": train_rows,
    }
    metrics.update(data_plots(params))
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(params, "features", metrics)
    return metrics


def data_plots(params: Params) -> dict:
    """CTR by position and by scene slice of the curated impressions, as CSV plots for DVC."""
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet")
    out = params.path("reports_dir") / "plots"
    out.mkdir(parents=True, exist_ok=True)
    by_pos = imp.groupby("position").agg(ctr=("click", "mean"), cvr=("order", "mean")).reset_index()
    _write_csv(by_pos, out / "ctr_by_position.csv")
    hour = imp["ts"].dt.hour
    by_scene = (
        imp.assign(hour=hour).groupby(["location_type", "weather"]).agg(ctr=("click", "mean"), n=("click", "size"))
        .reset_index()
    )
    _write_csv(by_scene, out / "ctr_by_scene.csv")
    by_hour = imp.assign(hour=hour).groupby("hour").agg(ctr=("click", "mean")).reset_index()
    _write_csv(by_hour, out / "ctr_by_hour.csv")
    return {"data.ctr": float(imp["click"].mean()), "data.order_rate": float(imp["order"].mean())}


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    """A DVC plot file, written to a temp file and renamed (never seen half-written)."""
    return write_atomic(path, lambda tmp: df.to_csv(tmp, index=False))


def _numbers(obj) -> dict:
    """The numeric fields of a dict or dataclass, flattened with dots."""
    if hasattr(obj, "__dataclass_fields__"):
        obj = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    if not isinstance(obj, dict):
        return {}
    out = {}
    for k, v in obj.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _numbers(v).items()})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = v
        elif isinstance(v, bool):
            out[str(k)] = int(v)
    return out


def example_keys(params: Params) -> dict:
    """A real user and PoI from the curated data, for the closing hint of a run."""
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet", columns=["user_id", "poi_id", "click"])
    row = imp[imp["click"] == 1].iloc[0] if imp["click"].any() else imp.iloc[0]
    return {"example_user": str(row["user_id"]), "example_poi": str(row["poi_id"])}


# ----------------------------------------------------------------------------------------------
# LLM stages (LARR stages 1-2, HomoDistil). Folders under paths.llm_dir:
#   corpus/ tokenizer/ -> pretrained/ -> encoder_teacher/ ; pretrained/ -> student/ -> encoder_student/
# model -> (backbone folder, encoder folder) under paths.llm_dir
LLM_ENCODERS = {"teacher": ("pretrained", "encoder_teacher"), "student": ("student", "encoder_student")}


def encoder_registered_name(params: Params, model: str) -> str:
    """The registry name of the teacher's encoder is ``contrastive.registered_name``; the student's
    is the same name with ``-student``."""
    base = params.contrastive.registered_name
    return base if model == "teacher" else f"{base}-{model}"


def corpus_step(params: Params, run_id: str | None = None) -> dict:
    """Corpus documents with field special tokens, and the tokenizer."""
    from components.llm.corpus import build_corpus

    metrics = _numbers(build_corpus(params))
    write_report(params, "corpus", metrics)
    return metrics


def pretrain_step(params: Params, run_id: str | None = None) -> dict:
    """Continual pretraining of the causal LM on the corpus (resumes from the last checkpoint)."""
    from components.llm.pretrain import pretrain

    metrics = _numbers(pretrain(params, run_id))
    write_report(params, "pretrain", _finished_report(params, "pretrain", metrics))
    return metrics


def _finished_report(params: Params, name: str, metrics: dict) -> dict:
    """``metrics`` for reports/<name>.json without NaN: a rerun of a finished training trains no
    step, so its loss is undefined; the report keeps the values of the run that trained."""
    path = params.path("reports_dir") / f"{name}.json"
    try:
        before = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        before = {}
    nan = lambda v: isinstance(v, float) and math.isnan(v)  # noqa: E731
    out = {k: v for k, v in metrics.items() if not nan(v)}
    out.update({k: before[k] for k, v in metrics.items() if nan(v) and k in before and not nan(before[k])})
    return out


def pairs_step(params: Params, run_id: str | None = None) -> dict:
    """Mine the three kinds of positive pairs (user-user, PoI-PoI, user-PoI) from the logs."""
    from components.llm.pairs import mine_pairs

    pairs = mine_pairs(params)
    metrics = {f"pairs.{k}": len(v) for k, v in pairs.items()}
    write_report(params, "pairs", metrics)
    return metrics


def contrastive_step(params: Params, model: str = "teacher", run_id: str | None = None) -> dict:
    """Contrastive fine-tuning of the teacher or the student into a text encoder; registers it."""
    from components.llm.contrastive import contrastive_step as finetune, for_student

    backbone, encoder = LLM_ENCODERS[model]
    registered = encoder_registered_name(params, model)
    llm = params.path("llm_dir")
    tuned = for_student(params) if model == "student" else params
    # The student also learns the fine-tuned teacher's similarities (contrastive.teacher_weight > 0).
    teacher = llm / LLM_ENCODERS["teacher"][1] if model == "student" else None
    metrics = _numbers(finetune(tuned, llm / backbone, llm / encoder, run_id=run_id, register_as=registered,
                                teacher_dir=teacher))
    write_report(params, f"contrastive_{model}", metrics)
    return metrics


def distill_step(params: Params, run_id: str | None = None) -> dict:
    """HomoDistil (distill.schedule): prune a copy of the pretrained teacher while distilling it, or the
    one-shot / plain-distillation baselines."""
    from components.llm.distill import homodistil

    llm = params.path("llm_dir")
    # distill.teacher: encoder — the pretrained LM with the contrastive teacher's body
    metrics = _numbers(homodistil(params, llm / "pretrained", llm / "student", run_id=run_id,
                                  encoder_dir=llm / LLM_ENCODERS["teacher"][1]))
    write_report(params, "distill", metrics)
    return metrics


def embed_step(params: Params, run_id: str | None = None) -> dict:
    """Scene-value and PoI embeddings from the chosen encoder into Feast (offline and online)."""
    from components.llm.embed import embed_step as embed

    with hold(params, "features", "embed (writing Feast)"):
        metrics = _numbers(embed(params))
    write_report(params, "embed", metrics)
    return metrics


# ----------------------------------------------------------------------------------------------
# CTR stage (LARR stage 3 + CoFARS): model under paths.ctr_dir/model, reports/ctr*.json


class MissingPrerequisite(FileNotFoundError):
    """A step's input from an earlier step is missing; the message names the step to run."""


def ctr_prerequisites(params: Params) -> dict[str, str]:
    """Check what ``ctr.model`` needs before any work; returns tags for the run (what it trains without).

    A LARR model reads the llm flow's scene embeddings: without them it stops, unless
    ``ctr.require_scene_embeddings`` is false, then it trains without and says so in the tags."""
    if not (params.path("features_dir") / "training_set.parquet").exists():
        raise MissingPrerequisite(f"{params.path('features_dir')}: no training set; run the `features` flow "
                                  "(scenerec features) first")
    emb = params.path("embeddings_dir") / "scene_embeddings.parquet"
    if not params.ctr.model.startswith("larr") or emb.exists():
        return {}
    if params.ctr.require_scene_embeddings:
        raise MissingPrerequisite(
            f"ctr.model={params.ctr.model} needs the scene embeddings {emb}, which do not exist: run the `llm` "
            "flow (scenerec embed, after corpus / pretrain / pairs / contrastive / distill) first, pick a model "
            "without `larr`, or set ctr.require_scene_embeddings: false to train without them")
    return {"scenerec.warning": f"{params.ctr.model} trained WITHOUT scene embeddings ({emb} missing)",
            "scenerec.scene_embeddings": "missing"}


def ctr_step(params: Params, run_id: str | None = None) -> dict:
    """Train ``ctr.model``, evaluate it on the test split beside the oracle, save it."""
    from components.ctr.stage import train_and_evaluate

    ctr_prerequisites(params)
    summary, plots = train_and_evaluate(params, run_id)
    files = write_ctr_plots(params, plots)
    write_report(params, "ctr", {k: v for k, v in summary.items() if k not in ("model", "headline")})
    if run_id:
        from components import tracking

        for path in files + ctr_figures(params, plots):
            tracking.log_artifact(params, run_id, path, "plots")
    return summary


def tune_step(params: Params, trials: int, budget_seconds: float, run_id: str | None = None) -> dict:
    """Optuna search over the CTR knobs (trials nested under ``run_id``); best -> params.tuned.yaml."""
    from components.ctr.tune import tune_ctr

    out = tune_ctr(params, trials, budget_seconds, parent_run_id=run_id)
    write_report(params, "tune", {"best_valid_auc_ctr": out["best_valid_auc_ctr"], "trials": out["trials"],
                                  "seconds": out["seconds"], **{f"best.{k}": v for k, v in out["best"].items()}})
    return out


def write_ctr_plots(params: Params, plots: dict) -> list[Path]:
    """reports/plots/ctr_{roc,calibration,training}.csv, one column per task (DVC plots)."""
    out = params.path("reports_dir") / "plots"
    out.mkdir(parents=True, exist_ok=True)
    frames = {}
    roc = pd.DataFrame(plots["roc"])
    if len(roc):
        frames["roc"] = roc.pivot_table(index="fpr", columns="task", values="tpr").reset_index()
    cal = pd.DataFrame(plots["calibration"])
    if len(cal):
        cal["bin"] = cal.groupby("task").cumcount()
        wide = cal.pivot_table(index="bin", columns="task", values=["predicted", "observed"])
        wide.columns = [f"{a}_{b}" for a, b in wide.columns]
        frames["calibration"] = wide.reset_index()
    frames["training"] = pd.DataFrame(plots["training"])
    paths = []
    for name, df in frames.items():
        path = out / f"ctr_{name}.csv"
        _write_csv(df, path)
        paths.append(path)
    return paths


def ctr_figures(params: Params, plots: dict) -> list[Path]:
    """ROC, calibration and training-curve PNGs (for MLflow) from the plot rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = params.path("reports_dir") / "figures"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for task in ("ctr", "ctcvr"):
        roc = [r for r in plots.get("roc", []) if r["task"] == task]
        axes[0].plot([r["fpr"] for r in roc], [r["tpr"] for r in roc], label=task)
        cal = [r for r in plots.get("calibration", []) if r["task"] == task]
        axes[1].plot([r["predicted"] for r in cal], [r["observed"] for r in cal], "o-", label=task)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[0].set(title="ROC (test)", xlabel="false positive rate", ylabel="true positive rate")
    hi = max([r["predicted"] for r in plots.get("calibration", [])] + [r["observed"] for r in plots.get("calibration", [])]
             + [0.01])
    axes[1].plot([0, hi], [0, hi], "k:", lw=0.8)
    axes[1].set(title="calibration (test)", xlabel="mean predicted", ylabel="observed rate")
    tr = plots.get("training", [])
    axes[2].plot([r["epoch"] for r in tr], [r["valid_auc_ctr"] for r in tr], "o-", label="valid AUC ctr")
    axes[2].plot([r["epoch"] for r in tr], [r["valid_auc_ctcvr"] for r in tr], "o-", label="valid AUC ctcvr")
    axes[2].set(title="training", xlabel="epoch")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    path = out_dir / "ctr_curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths


def ctr_register_step(params: Params, run_id: str, flow_run_id: str | None = None) -> dict:
    """Register the trained CTR model in MLflow run ``run_id``; champion only if it clears the floor
    and beats the current one by the margin. ``flow_run_id``: the Prefect flow run, tagged on the version."""
    from components import registry
    from components.ctr.stage import registry_candidate

    with hold(params, "registry", "model registration"):
        result = registry.register_candidate(params, run_id, registry_candidate(params, flow_run_id=flow_run_id))
    write_promotion_report(params, "ctr_promotion", result, lambda k: k.startswith("all.") and "oracle" not in k)
    return result


# ----------------------------------------------------------------------------------------------
# News (PerCoNet on the MIND format): paths.news_dir/{mind,model}, reports/news*.json


def news_data_step(params: Params, run_id: str | None = None) -> dict:
    """The synthetic MIND world (``news.mind_dir`` null), or the user's MIND folder validated."""
    from components.news.stage import metric_row, news_data

    metrics = metric_row(_numbers(news_data(params)))
    write_report(params, "news_data", metrics)
    return metrics


def news_step(params: Params, run_id: str | None = None) -> dict:
    """Train PerCoNet on the MIND train split and evaluate it per impression on dev."""
    from components.news.stage import metric_row, train

    metrics = metric_row(_numbers(train(params)))
    write_report(params, "news", metrics)
    return metrics


def news_register_step(params: Params, run_id: str, flow_run_id: str | None = None) -> dict:
    """Register the news model; champion only if it clears the floor and beats the champion's dev AUC by the margin."""
    from components import registry
    from components.news.stage import registry_candidate

    with hold(params, "registry", "model registration"):
        result = registry.register_candidate(params, run_id, registry_candidate(params, flow_run_id=flow_run_id))
    write_promotion_report(params, "news_promotion", result)
    return result


def knowledge_step(params: Params, run_id: str | None = None) -> dict:
    """HKFR: each user's knowledge text per snapshot, and the instruction dataset (time split)."""
    from components.hkfr.stage import knowledge

    metrics = _numbers(knowledge(params))
    write_report(params, "knowledge", metrics)
    return metrics


def instruct_step(params: Params, run_id: str | None = None) -> dict:
    """HKFR: instruction-tune the LLM (LoRA by default), evaluate P("yes") on the test split, and
    export the user knowledge embedding to Feast."""
    from components.hkfr.stage import instruct_and_evaluate

    with hold(params, "features", "instruct (writing user knowledge to Feast)"):
        metrics = {k: v for k, v in _numbers(instruct_and_evaluate(params, run_id)).items() if v == v}
    write_report(params, "hkfr", metrics)
    return metrics


def hkfr_register_step(params: Params, run_id: str, flow_run_id: str | None = None) -> dict:
    """Register the tuned LLM as ``hkfr-instruct``; champion only if its test AUC clears the floor and beats the champion's."""
    from components import registry
    from components.hkfr.stage import registry_candidate

    with hold(params, "registry", "model registration"):
        result = registry.register_candidate(params, run_id, registry_candidate(params, flow_run_id=flow_run_id))
    write_promotion_report(params, "hkfr_promotion", result)
    return result


# ----------------------------------------------------------------------------------------------
# The step registry: each step declared once. The CLI's step subcommands (components/cli.py), the
# Prefect tasks' names and tags (flows/), DVC_STAGES and the tests' step sets are derived from
# STEPS; dvc.yaml stays the file a user reads, and tests/unit/test_steps.py fails when it and
# STEPS disagree. A new step: its function above, its Step below, its stage in dvc.yaml and its
# knobs in params.yaml.


@dataclass(frozen=True)
class Arg:
    """One CLI argument of a step command: argparse's ``add_argument(*flags, **options)``. Its value
    goes to the step function as the keyword ``dest``, or, with ``overrides`` ("section.field"),
    replaces that knob of params.yaml for the run (so the run logs it)."""

    flags: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    overrides: str | None = None

    @property
    def dest(self) -> str:
        """The argparse destination: ``dest=`` if given, else the first flag's name."""
        return self.options.get("dest") or self.flags[0].lstrip("-").replace("-", "_")


def arg(*flags: str, overrides: str | None = None, **options: Any) -> Arg:
    """An :class:`Arg` written like ``parser.add_argument``."""
    return Arg(tuple(flags), options, overrides)


@dataclass(frozen=True)
class Step:
    """A pipeline step: its function and everything the CLI, DVC and Prefect need to run it."""

    name: str                      # DVC stage and MLflow run name
    function: Callable[..., dict]  # the one implementation, f(params, **arguments[, run_id])
    section: str                   # params.yaml section logged with the run
    help: str                      # the CLI subcommand's help
    flow: str                      # the Prefect flow that runs it
    task: str                      # its Prefect task's name
    tags: tuple[str, ...] = ("io",)  # its Prefect task's tags (`gpu`: a GPU work pool, concurrency limits)
    params: tuple[str, ...] = ()   # the params.yaml keys DVC watches (default: the section)
    inputs: tuple[str, ...] = ()   # data it reads, as dvc.yaml's deps write them (code deps: dvc.yaml only)
    outputs: tuple[str, ...] = ()  # data it writes, as dvc.yaml's outs write them
    command: str = ""              # CLI subcommand (default: the name with dashes)
    arguments: tuple[Arg, ...] = ()  # CLI arguments; steps sharing a command share them
    fixed: Mapping[str, Any] = field(default_factory=dict)  # argument values that select this step of its command
    stage_args: str = ""           # what dvc.yaml's cmd passes after the subcommand
    registers: bool = False        # registers a model version and settles the champion alias
    summary: Callable[[Params, dict, dict], str] | None = None  # the CLI's closing text (params, arguments, result)

    def __post_init__(self):
        object.__setattr__(self, "command", self.command or self.name.replace("_", "-"))
        object.__setattr__(self, "params", self.params or (self.section,))

    @property
    def cmd(self) -> str:
        """The command line of the step's DVC stage."""
        return " ".join(["scenerec", self.command, *([self.stage_args] if self.stage_args else [])])

    def describe(self, params: Params, arguments: dict, result: dict) -> str:
        """What the CLI prints when the step is done."""
        if self.summary is not None:
            return self.summary(params, arguments, result)
        return registration_line(result) if self.registers else metric_lines(f"{self.name} done", result)


def metric_lines(title: str, metrics: dict) -> str:
    """A title and one aligned line per metric (the CLI's output of a step)."""
    return "\n".join([f"{title}:", *(f"  {k:<40} {v}" for k, v in metrics.items())])


def registration_line(result: dict) -> str:
    """One line for a register step's result (``registry.settle``)."""
    return f"{result['name']} version {result['version']} registered as {result['alias']}: {result['reason']}"


def _ctr_summary(params: Params, arguments: dict, metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k.startswith(("test.all", "train."))}
    return "\n".join([metrics.get("headline", ""), metric_lines(
        f"CTR model {metrics.get('model')} trained and evaluated; saved in {params.path('ctr_dir')}", shown)])


def _ctr_register_summary(params: Params, arguments: dict, result: dict) -> str:
    return "\n".join([registration_line(result),
                      f"  champion now: version {result['champion']} (models:/{result['name']}@champion)"])


def _titled(title: Callable[[Params, dict], str]) -> Callable[[Params, dict, dict], str]:
    return lambda params, arguments, metrics: metric_lines(title(params, arguments), metrics)


_MODEL_ARG = arg("--model", choices=["teacher", "student"], default="teacher",
                 help="fine-tune the pretrained teacher or the distilled student")
_LLM = "${paths.llm_dir}"
_CURATED = "${paths.curated_dir}"


def _registry(*steps: Step) -> dict[str, Step]:
    return {s.name: s for s in steps}


# In pipeline order (the order of dvc.yaml and of a `scenerec pipeline` run).
STEPS: dict[str, Step] = _registry(
    Step("generate", generate_step, "generate", flow="generate", task="generate-batch",
         help="write a synthetic batch in the raw data contract (with the truth file)",
         params=("seed", "generate"), outputs=("${paths.raw_batch}",), stage_args="--out ${paths.raw_batch}",
         arguments=(arg("--out", dest="out_dir", metavar="OUT", default=None,
                        help="batch folder to write (default: paths.raw_batch)"),),
         summary=_titled(lambda p, a: f"generated batch in {a['out_dir'] or p.path('raw_batch')}")),
    Step("ingest", ingest_step, "ingest", flow="ingest", task="validate-and-curate",
         help="validate a batch against the contract (Great Expectations) and curate it",
         inputs=("${paths.raw_batch}",), outputs=(_CURATED,), stage_args="${paths.raw_batch}",
         arguments=(arg("batch_dir", nargs="?", default=None, help="batch folder (default: paths.raw_batch)"),),
         summary=_titled(lambda p, a: f"batch {Path(a['batch_dir']) if a['batch_dir'] else p.path('raw_batch')} "
                                      f"accepted and curated in {p.path('curated_dir')}")),
    Step("features", features_step, "features", flow="features", task="build-and-materialise-features",
         help="build feature tables, `feast apply`, materialise, write the training set",
         inputs=(_CURATED,), outputs=("${paths.features_dir}",),
         summary=_titled(lambda p, a: "features built, Feast repo applied, online store materialised")),
    # LLM stages (LARR stages 1-2, HomoDistil)
    Step("corpus", corpus_step, "llm", flow="llm", task="build-corpus",
         help="build the LLM corpus (field special tokens) and its tokenizer",
         inputs=(_CURATED,), outputs=(f"{_LLM}/corpus", f"{_LLM}/tokenizer")),
    Step("pretrain", pretrain_step, "llm", flow="llm", task="continual-pretraining", tags=("gpu",),
         help="continual pretraining of the causal LM (resumes from the last checkpoint)",
         inputs=(f"{_LLM}/corpus", f"{_LLM}/tokenizer"), outputs=(f"{_LLM}/pretrained",)),
    Step("pairs", pairs_step, "contrastive", flow="llm", task="mine-pairs",
         help="mine user-user, PoI-PoI and user-PoI positive pairs",
         inputs=(_CURATED,), outputs=(f"{_LLM}/pairs",)),
    Step("contrastive_teacher", contrastive_step, "contrastive", flow="llm", task="contrastive-fine-tuning",
         tags=("gpu",), help="contrastive fine-tuning into a text encoder; registers it in MLflow",
         command="contrastive", arguments=(_MODEL_ARG,), fixed={"model": "teacher"}, stage_args="--model teacher",
         inputs=(f"{_LLM}/pretrained", f"{_LLM}/pairs"), outputs=(f"{_LLM}/encoder_teacher",)),
    Step("distill", distill_step, "distill", flow="llm", task="homodistil", tags=("gpu",),
         help="HomoDistil: distil the teacher into a pruned student",
         inputs=(f"{_LLM}/pretrained", f"{_LLM}/corpus", f"{_LLM}/encoder_teacher"),  # teacher: distill.teacher
         outputs=(f"{_LLM}/student",)),
    Step("contrastive_student", contrastive_step, "contrastive", flow="llm", task="contrastive-fine-tuning",
         tags=("gpu",), help="contrastive fine-tuning into a text encoder; registers it in MLflow",
         command="contrastive", arguments=(_MODEL_ARG,), fixed={"model": "student"}, stage_args="--model student",
         inputs=(f"{_LLM}/student", f"{_LLM}/pairs", f"{_LLM}/encoder_teacher"),  # teacher: contrastive.teacher_weight
         outputs=(f"{_LLM}/encoder_student",)),
    Step("embed", embed_step, "embed", flow="llm", task="embed-scenes-and-pois", tags=("gpu",),
         help="embed every scene value and PoI once; write them to Feast",
         inputs=(f"{_LLM}/encoder_${{embed.encoder}}", _CURATED, "${paths.features_dir}"),
         outputs=("${paths.embeddings_dir}",)),
    # HKFR: heterogeneous knowledge -> instruction-tuned LLM -> user knowledge feature
    Step("knowledge", knowledge_step, "hkfr", flow="hkfr", task="knowledge-and-instructions",
         help="HKFR: per-user knowledge texts (snapshots) and the instruction dataset",
         params=("seed", "features", "hkfr", "ctr.valid_fraction", "ctr.test_fraction"),
         inputs=(_CURATED,), outputs=("${paths.hkfr_dir}/knowledge",),
         summary=_titled(lambda p, a: "HKFR knowledge snapshots and instruction dataset in "
                                      f"{p.path('hkfr_dir') / 'knowledge'}")),
    Step("instruct", instruct_step, "hkfr", flow="hkfr", task="instruction-tuning", tags=("gpu",),
         help="HKFR: instruction-tune the LLM (LoRA), score P(yes), export user knowledge",
         params=("seed", "hkfr"), inputs=("${paths.hkfr_dir}/knowledge", f"{_LLM}/${{hkfr.base}}"),
         outputs=("${paths.hkfr_dir}/model", "${paths.hkfr_dir}/eval", "${paths.hkfr_dir}/user_knowledge.parquet"),
         summary=_titled(lambda p, a: f"HKFR instruction-tuned LLM in {p.path('hkfr_dir') / 'model'}; "
                                      "user knowledge in Feast")),
    Step("hkfr_register", hkfr_register_step, "hkfr", flow="hkfr", task="register-hkfr-model", registers=True,
         help="register the HKFR model; champion only if better by the margin",
         params=("hkfr.registered_name", "hkfr.promotion_margin", "hkfr.promotion_floor_margin"),
         inputs=("${paths.hkfr_dir}/model",)),
    # CTR (LARR stage 3 + CoFARS), registry
    Step("ctr", ctr_step, "ctr", flow="ctr", task="train-and-evaluate-ctr", tags=("gpu",),
         help="train the CTR/CTCVR model (LARR + CoFARS by default), evaluate it beside the oracle",
         params=("seed", "ctr"), arguments=(arg("--model", choices=CTR_MODELS, default=None, overrides="ctr.model",
                                                help="model or baseline (default: ctr.model)"),),
         inputs=("params.tuned.yaml", "${paths.features_dir}", "${paths.embeddings_dir}", _CURATED,
                 "${paths.hkfr_dir}/user_knowledge.parquet"),
         outputs=("${paths.ctr_dir}",), summary=_ctr_summary),
    Step("ctr_register", ctr_register_step, "ctr", flow="ctr", task="register-and-promote-ctr", registers=True,
         help="register the trained CTR model; champion only if better by the margin",
         params=("ctr.registered_name", "ctr.promotion_metric", "ctr.promotion_margin", "ctr.promotion_floor_margin"),
         inputs=("${paths.ctr_dir}",), summary=_ctr_register_summary),
    # News (PerCoNet on the MIND format)
    Step("news_data", news_data_step, "news", flow="news", task="mind-data",
         help="write the synthetic MIND world, or validate news.mind_dir (GX)",
         params=("seed", "news"), outputs=("${paths.news_dir}/mind",),
         summary=_titled(lambda p, a: "MIND data ready")),
    Step("news", news_step, "news", flow="news", task="train-perconet", tags=("gpu",),
         help="train PerCoNet on the MIND train split, evaluate AUC/MRR/nDCG on dev",
         params=("seed", "news"), inputs=("${paths.news_dir}/mind",), outputs=("${paths.news_dir}/model",),
         summary=_titled(lambda p, a: "PerCoNet trained and evaluated on dev; saved in "
                                      f"{p.path('news_dir') / 'model'}")),
    Step("news_register", news_register_step, "news", flow="news", task="register-news-model", registers=True,
         help="register the news model; champion only if better by the margin",
         params=("news.registered_name", "news.promotion_margin", "news.promotion_floor_margin"),
         inputs=("${paths.news_dir}/model",)),
)
