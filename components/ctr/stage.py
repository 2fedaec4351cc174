"""The CTR stage end to end: train → evaluate on the test split → save the model with its serving
snapshot; then register the model in MLflow (``registry.register_candidate``): it takes ``champion``
only when it clears the promotion floor and beats the current champion on the same test rows by
``ctr.promotion_margin``."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from components.config import Params

MODEL_DIR = "model"
CHECKPOINTS = "checkpoints"


def ctr_dir(params: Params) -> Path:
    return params.path("ctr_dir")


def train_and_evaluate(params: Params, run_id: str | None = None, model_name: str | None = None,
                       out_dir: Path | None = None) -> tuple[dict, dict]:
    """Train ``ctr.model`` (or ``model_name``), evaluate it, save it to ``<ctr_dir>/model``.
    Returns (metrics, plots): test metrics beside the oracle, training summary, curves."""
    from components import tracking
    from components.ctr import families
    from components.ctr.data import build_dataset
    from components.ctr.evaluate import evaluate, headline
    from components.ctr.serving import CTRScorer, write_snapshot

    cfg = params.ctr
    name = model_name or cfg.model
    out_dir = Path(out_dir or ctr_dir(params))
    t0 = time.perf_counter()
    ds = build_dataset(params)
    data_s = time.perf_counter() - t0

    def log(row: dict, epoch: int) -> None:
        if run_id:
            tracking.log_metrics(params, run_id, {f"train.{k}": v for k, v in row.items() if k != "epoch"}, step=epoch)

    model, info = families.train(name, ds, cfg, seed=params.seed, ckpt_dir=out_dir / CHECKPOINTS, log=log)
    metrics, plots = evaluate(model, ds, cfg)
    model_dir = out_dir / MODEL_DIR
    if model_dir.exists():
        shutil.rmtree(model_dir)
    CTRScorer(model, ds.encoder, cfg, params.features).save(model_dir)
    write_snapshot(model_dir, params.path("features_dir"), params.path("curated_dir"), params.path("embeddings_dir"),
                   cfg.max_history, params.path("hkfr_dir") / "user_knowledge.parquet" if cfg.user_knowledge else None)
    (model_dir / "split.json").write_text(json.dumps({"valid_start_ns": ds.valid_start_ns,
                                                      "test_start_ns": ds.test_start_ns}))
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # finished: nothing left to resume
    summary = {
        "model": name, **{f"test.{k}": v for k, v in metrics.items()},
        "train.best_epoch": info["best_epoch"], "train.epochs_run": info["epochs_run"],
        "train.best_valid_auc_ctr": round(info["best_valid_auc_ctr"], 5), "train.seconds": info["seconds"],
        "train.parameters": info["parameters"], "data.seconds": round(data_s, 2),
        "data.train_requests": len(ds.train), "data.valid_requests": len(ds.valid), "data.test_requests": len(ds.test),
        "headline": headline(metrics),
    }
    # ctr.refit: trained again on train + valid (the valid figure above is the first fit's); ctr.seed_bag: the
    # bag's other networks (train.seconds counts both). Their scalars only (the refit's per-epoch lr stays out).
    for part in ("refit", "bag"):
        summary.update({f"train.{part}_{k}": v for k, v in info.get(part, {}).items() if isinstance(v, (int, float))})
    plots["training"] = [{"epoch": h["epoch"], "train_loss": round(h.get("train_loss", float("nan")), 5),
                          "valid_auc_ctr": round(h["valid_auc_ctr"], 5), "valid_auc_ctcvr": round(h["valid_auc_ctcvr"], 5)}
                         for h in info["history"]]
    return summary, plots


def _test_frame(params: Params, model_dir: Path) -> tuple[pd.DataFrame, int]:
    """The test rows of the training set (the split the model was evaluated on)."""
    from components.ctr.data import _ts_ns
    from components.features.store import TRAINING_SET

    split = json.loads((model_dir / "split.json").read_text())
    df = pd.read_parquet(params.path("features_dir") / TRAINING_SET)
    req_ts = df.groupby("request_id")["event_timestamp"].transform("min")
    df = df[_ts_ns(req_ts) >= split["test_start_ns"]]
    if (params.path("hkfr_dir") / "user_knowledge.parquet").exists():
        # A champion trained with ctr.user_knowledge needs it even when the challenger does not.
        from components.ctr.data import with_user_knowledge

        df = with_user_knowledge(params, df)
    return df, int(split["test_start_ns"])


def compare_on_test(params: Params, scorers: dict, model_dir: Path) -> dict[str, dict]:
    """Metrics of each scorer (name -> CTRScorer) on the same test rows with the current data."""
    from components.ctr.data import load_sources

    src = load_sources(params, training_set=False)  # the test rows come from _test_frame
    frame, test_start = _test_frame(params, model_dir)
    return {k: s.evaluate(frame, src.behaviors, src.pois, src.poi_embeddings, src.scene_embeddings, src.users,
                          src.truth, test_start) for k, s in scorers.items()}


def popularity_baseline(params: Params, model_dir: Path) -> dict:
    """The trivial scorer of the promotion floor on the same test rows: each PoI's smoothed click
    (and order) rate in the training split, with the metric keys of ``compare_on_test``."""
    from components import registry
    from components.ctr.data import _ts_ns
    from components.ctr.metrics import auc, gauc
    from components.features.store import TRAINING_SET

    split = json.loads((model_dir / "split.json").read_text())
    df = pd.read_parquet(params.path("features_dir") / TRAINING_SET,
                         columns=["request_id", "user_id", "poi_id", "event_timestamp", "click", "order"])
    req_ns = _ts_ns(df.groupby("request_id")["event_timestamp"].transform("min"))
    train, test = df[req_ns < split["valid_start_ns"]], df[req_ns >= split["test_start_ns"]]
    out = {"all.rows": len(test)}
    for task, label in (("ctr", "click"), ("ctcvr", "order")):
        p = registry.popularity(train["poi_id"], train[label], test["poi_id"])
        y = test[label].to_numpy()
        out[f"all.auc.{task}"] = float(auc(y, p)) if len(set(y)) == 2 else float("nan")
        out[f"all.gauc.{task}"] = float(gauc(y, p, test["user_id"].astype(str).to_numpy()))
    return out


def registry_candidate(params: Params, model_dir: Path | None = None, flow_run_id: str | None = None):
    """``<ctr_dir>/model`` as a ``registry.Candidate`` of ``ctr.registered_name``: its pyfunc, scored with the
    champion on the same test rows, ``ctr.promotion_metric`` / ``promotion_margin`` / ``promotion_floor_margin``."""
    from components import registry
    from components.ctr.serving import CTRPyfunc, example_request
    from components.serve.schema import pyfunc_signature

    cfg = params.ctr
    model_dir = Path(model_dir or ctr_dir(params) / MODEL_DIR)
    if not (model_dir / "model.json").exists():
        raise FileNotFoundError(f"{model_dir}: no trained CTR model (run `scenerec ctr` first)")
    architecture = json.loads((model_dir / "model.json").read_text())["name"]

    def prepare(tmp: Path):
        return {"model": str(model_dir)}, example_request(model_dir / "serving")

    def score(models: dict) -> dict:
        return compare_on_test(params, {k: m.scorer for k, m in models.items()}, model_dir)

    return registry.Candidate(
        name=cfg.registered_name, artifact_name="ctr_model", python_model=CTRPyfunc, prepare=prepare, score=score,
        metric=f"all.{cfg.promotion_metric}", margin=cfg.promotion_margin, floor_margin=cfg.promotion_floor_margin,
        baseline=lambda: popularity_baseline(params, model_dir), baseline_name="popularity",
        tags=registry.lineage_tags(params, "ctr", architecture, flow_run_id), signature=pyfunc_signature)
