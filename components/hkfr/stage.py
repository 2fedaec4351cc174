"""The HKFR stage end to end (METHODS.md §3): knowledge snapshots and the instruction dataset
(``scenerec knowledge``), instruction tuning, evaluation and the user knowledge embedding
(``scenerec instruct``), registration as ``hkfr-instruct`` (``scenerec hkfr-register``, through ``registry.register_candidate``).

Files under ``paths.hkfr_dir``:
  knowledge/  snapshots.parquet (user, cutoff, text), train / test_order / test_choice.parquet
  model/      the tuned LLM (adapters merged) and its tokenizer
  user_knowledge.parquet  the Feast table: user_id, event_timestamp, k00..k<embedding_dim-1>, n_behaviors
  eval/       test P("yes") per impression and the PCA projection
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components.config import Params
from components.hkfr import tuning
from components.ctr.data import split_bounds
from components.hkfr.instructions import build_instructions, price_edges
from components.hkfr.knowledge import KnowledgeRules, knowledge_snapshots

FEAST_TABLE = "user_knowledge.parquet"


def embedding_column(i: int) -> str:
    """One value of the user knowledge embedding as a scalar Feast feature (k00, k01, ...)."""
    return f"k{i:02d}"


def knowledge_dir(params: Params) -> Path:
    return params.path("hkfr_dir") / "knowledge"


def eval_dir(params: Params) -> Path:
    return params.path("hkfr_dir") / "eval"


def rules(params: Params) -> KnowledgeRules:
    c = params.hkfr
    return KnowledgeRules(max_items=c.knowledge_max_items, recent=c.knowledge_recent, max_chars=c.knowledge_max_chars)


def _curated(params: Params, *names: str) -> dict[str, pd.DataFrame]:
    """The curated tables ``names`` (default: all four)."""
    cur = params.path("curated_dir")
    out = {}
    for name in names or ("impressions", "behaviors", "pois", "users"):
        path = cur / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: curated table missing (run `scenerec ingest` first)")
        out[name] = pd.read_parquet(path)
    return out


def cutoffs(impressions: pd.DataFrame, behaviors: pd.DataFrame, params: Params) -> list[pd.Timestamp]:
    """Snapshot times: every ``snapshot_days`` from the first behaviour's day, plus the validation and
    test starts (so each split reads the freshest knowledge that cannot contain its answers)."""
    first = pd.to_datetime(behaviors["ts"], utc=True).min() if len(behaviors) else pd.to_datetime(impressions["ts"], utc=True).min()
    last = pd.to_datetime(impressions["ts"], utc=True).max()
    step = pd.Timedelta(days=params.hkfr.snapshot_days)
    times = list(pd.date_range(first.floor("D"), last, freq=step))
    times += list(split_bounds(impressions, params))
    return sorted(set(times))


def knowledge(params: Params) -> dict:
    """Write the knowledge snapshots and the instruction dataset; return their sizes."""
    t0 = time.perf_counter()
    d = _curated(params)
    snaps = knowledge_snapshots(d["users"], d["behaviors"], d["pois"], cutoffs(d["impressions"], d["behaviors"], params),
                                rules(params), params.features)
    sets = build_instructions(d["impressions"], d["behaviors"], d["pois"], snaps, params)
    out = knowledge_dir(params)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    snaps.to_parquet(out / "snapshots.parquet", index=False)
    for name, df in sets.items():
        df.to_parquet(out / f"{name}.parquet", index=False)
    train = sets["train"]
    return {"snapshots": len(snaps), "users": int(snaps["user_id"].nunique()),
            "knowledge_chars.mean": round(float(snaps["knowledge"].str.len().mean()), 1),
            "knowledge_chars.max": int(snaps["knowledge"].str.len().max()),
            **{f"train.{t}": int((train["task"] == t).sum()) for t in train["task"].unique()},
            "train.yes_share": round(float((train.loc[train["task"] == "order", "label"] == 1).mean()), 3),
            "test_order.rows": len(sets["test_order"]), "test_choice.rows": len(sets["test_choice"]),
            "seconds": round(time.perf_counter() - t0, 2)}


def load_sets(params: Params) -> dict[str, pd.DataFrame]:
    """What ``knowledge`` wrote: snapshots, train, test_order and test_choice frames."""
    folder = knowledge_dir(params)
    if not (folder / "train.parquet").exists():
        raise FileNotFoundError(f"{folder}: no instruction dataset (run `scenerec knowledge` first)")
    return {n: pd.read_parquet(folder / f"{n}.parquet") for n in ("snapshots", "train", "test_order", "test_choice")}


def _auc(y, s) -> float:
    from components.ctr.metrics import auc

    y = np.asarray(y)
    return float(auc(y, s)) if len(np.unique(y)) == 2 else float("nan")


def evaluate(params: Params, model, tok, sets: dict[str, pd.DataFrame], users: pd.DataFrame,
             test_start: pd.Timestamp) -> tuple[dict, pd.DataFrame]:
    """Test AUC of P("yes") (overall, cold-start users) and the choice tasks' accuracy."""
    cfg = params.hkfr
    test = sets["test_order"].copy()
    test["p_yes"] = tuning.score_yes(model, tok, test, cfg.max_knowledge_tokens)
    reg = pd.to_datetime(users.set_index(users["user_id"].astype(str))["registered_at"], utc=True)
    test["cold_user"] = (test["user_id"].map(reg) >= test_start).to_numpy()
    m = {"test.rows": len(test), "test.auc": _auc(test["label"], test["p_yes"]),
         "test.auc.click": _auc(test["click"], test["p_yes"]), "test.auc.order": _auc(test["order"], test["p_yes"])}
    cold = test[test["cold_user"]]
    m.update({"test.cold_user.rows": len(cold), "test.cold_user.auc": _auc(cold["label"], cold["p_yes"])})
    choice = sets["test_choice"]
    train = sets["train"]
    for task in ("category", "price_band"):
        rows = choice[choice["task"] == task].reset_index(drop=True)
        options = sorted(set(train.loc[train["task"] == task, "answer"]) | set(rows["answer"]))
        if not len(rows) or len(options) < 2:
            continue
        lp = tuning.option_logprobs(model, tok, rows, options, cfg.max_knowledge_tokens)
        pick = np.asarray(options, dtype=object)[lp.argmax(1)]
        majority = train.loc[train["task"] == task, "answer"].mode()
        m[f"test.{task}.accuracy"] = float((pick == rows["answer"].to_numpy()).mean())
        m[f"test.{task}.majority_accuracy"] = float((rows["answer"] == (majority.iat[0] if len(majority) else "")).mean())
        m[f"test.{task}.rows"] = len(rows)
    return m, test


def write_user_knowledge(params: Params, model, tok, snapshots: pd.DataFrame, valid_start: pd.Timestamp) -> dict:
    """Embed every snapshot with the tuned model, reduce it by a PCA fitted on the training-period
    snapshots, and write the Feast table ``hkfr_dir/user_knowledge.parquet``."""
    cfg = params.hkfr
    t0 = time.perf_counter()
    x = tuning.knowledge_embeddings(model, tok, snapshots["knowledge"].tolist(), cfg.max_knowledge_tokens,
                                    cfg.eval_batch_size)
    ts = pd.to_datetime(snapshots["event_timestamp"], utc=True)
    fit_rows = (ts < valid_start).to_numpy()
    proj = tuning.fit_projection(x[fit_rows] if fit_rows.sum() > cfg.embedding_dim else x, cfg.embedding_dim)
    z = tuning.project(x, proj)
    table = pd.DataFrame({"user_id": snapshots["user_id"].astype(str).to_numpy(), "event_timestamp": ts.to_numpy(),
                          **{embedding_column(i): z[:, i] for i in range(z.shape[1])},
                          "n_behaviors": snapshots["n_behaviors"].astype("int64").to_numpy()})
    path = params.path("hkfr_dir") / FEAST_TABLE
    table.to_parquet(path, index=False)
    eval_dir(params).mkdir(parents=True, exist_ok=True)
    np.savez(eval_dir(params) / "projection.npz", **proj)
    return {"embedding.rows": len(table), "embedding.texts": int(len(set(snapshots["knowledge"]))),
            "embedding.dim": int(z.shape[1]), "embedding.seconds": round(time.perf_counter() - t0, 2)}


def instruct_and_evaluate(params: Params, run_id: str | None = None) -> dict:
    """Tune, evaluate on the test split, export the user knowledge embedding to Feast."""
    from components.training import cpu_threads

    sets = load_sets(params)
    d = _curated(params, "impressions", "users")
    valid_start, test_start = split_bounds(d["impressions"], params)
    fit = tuning.instruct(params, sets["train"], run_id)
    t0 = time.perf_counter()
    with cpu_threads(params.hkfr.cpu_threads):
        model, tok = tuning.load_tuned(tuning.model_dir(params))
        metrics, scored = evaluate(params, model, tok, sets, d["users"], test_start)
        metrics["eval.seconds"] = round(time.perf_counter() - t0, 2)
        metrics.update(write_user_knowledge(params, model, tok, sets["snapshots"], valid_start))
    eval_dir(params).mkdir(parents=True, exist_ok=True)
    scored[["request_id", "user_id", "poi_id", "ts", "label", "click", "order", "cold_user", "p_yes"]].to_parquet(
        eval_dir(params) / "test_scores.parquet", index=False)
    metrics.update({f"train.{k}": v for k, v in fit.items()})
    metrics.update(_materialize(params))
    if run_id:
        from components import tracking

        tracking.log_params(params, run_id, {"hkfr": params.hkfr.model_dump(mode="json")})
        tracking.log_metrics(params, run_id, {k: v for k, v in metrics.items() if np.isfinite(v)})
    return metrics


def _materialize(params: Params) -> dict:
    """Load the user knowledge table into Feast's online store (the view ``user_knowledge``)."""
    from components.features.store import apply_definitions, materialize

    apply_definitions(params)
    out = materialize(params, views=["user_knowledge"], full=True)
    return {"feast.rows": int(out["rows"].get("user_knowledge", 0))}


# ------------------------------------------------------------------------------------------------
# Registry


class HKFRPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: rows ``user_id, poi_id, ts`` + the scene columns (``geohash, location_type,
    weather, temperature_c, is_holiday``); out: ``p_yes``, the tuned LLM's P("yes") that the user
    orders from the PoI in that scene, read with the user's latest knowledge snapshot before ``ts``."""

    def load_context(self, context):
        from components.config import Params as P

        self.params = P.model_validate(json.loads(Path(context.artifacts["params"]).read_text()))
        self.model, self.tok = tuning.load_tuned(context.artifacts["model"])
        self.snapshots = pd.read_parquet(context.artifacts["snapshots"])
        self.pois = pd.read_parquet(context.artifacts["pois"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from components.hkfr.instructions import attach_knowledge, poi_phrases, question, scene_phrases

        df = pd.DataFrame(model_input).reset_index(drop=True)
        need = ["user_id", "poi_id", "ts", "geohash", "location_type", "weather", "temperature_c", "is_holiday"]
        missing = [c for c in need if c not in df]
        if missing:
            raise ValueError(f"hkfr model input lacks column(s) {missing}; expected {need}")
        df["ts"] = pd.to_datetime(df["ts"], utc=True)
        rows = pd.DataFrame({
            "request_id": df["request_id"].astype(str) if "request_id" in df else df["user_id"].astype(str) + "@" + df["ts"].astype(str),
            "user_id": df["user_id"].astype(str), "ts": df["ts"],
            "prompt": question("order", scene_phrases(df, self.params.features),
                               poi_phrases(df["poi_id"], self.pois, price_edges(self.params))).to_numpy()})
        rows = attach_knowledge(rows, self.snapshots)
        p = tuning.score_yes(self.model, self.tok, rows, self.params.hkfr.max_knowledge_tokens)
        return pd.DataFrame({"p_yes": p})


def registry_candidate(params: Params, flow_run_id: str | None = None):
    """``hkfr_dir/model`` as a ``registry.Candidate`` of ``hkfr.registered_name``: test AUC of P("yes"),
    scored with the champion on the same rows, ``hkfr.promotion_margin`` / ``promotion_floor_margin``."""
    from components import registry

    cfg = params.hkfr
    mdir = tuning.model_dir(params)
    if not (mdir / "config.json").exists():
        raise FileNotFoundError(f"{mdir}: no tuned model (run `scenerec instruct` first)")
    sets = load_sets(params)
    d = _curated(params, "impressions", "pois")

    def prepare(tmp: Path):
        latest = sets["snapshots"].sort_values("event_timestamp").groupby("user_id", sort=False).tail(1)
        latest.to_parquet(tmp / "snapshots.parquet", index=False)
        d["pois"].to_parquet(tmp / "pois.parquet", index=False)
        (tmp / "params.json").write_text(json.dumps(params.model_dump(mode="json")))
        artifacts = {"model": str(mdir), "snapshots": str(tmp / "snapshots.parquet"), "pois": str(tmp / "pois.parquet"),
                     "params": str(tmp / "params.json")}
        test = d["impressions"].merge(sets["test_order"][["request_id", "poi_id"]].head(4), on=["request_id", "poi_id"])
        example = test[["request_id", "user_id", "poi_id", "ts", "geohash", "location_type", "weather",
                        "temperature_c", "is_holiday"]].reset_index(drop=True)
        example["ts"] = example["ts"].astype(str)
        return artifacts, example

    def score(models: dict) -> dict:
        saved = _saved_test_auc(params)  # the challenger was scored on these rows by `scenerec instruct`
        return {k: (saved if k == "challenger" and saved else _test_auc(params, m.model, m.tok, sets))
                for k, m in models.items()}

    return registry.Candidate(
        name=cfg.registered_name, artifact_name="hkfr_model", python_model=HKFRPyfunc, prepare=prepare, score=score,
        metric="test.auc", margin=cfg.promotion_margin, floor_margin=cfg.promotion_floor_margin,
        baseline=lambda: popularity_baseline(sets), baseline_name="popularity",
        tags=registry.lineage_tags(params, "hkfr", f"{cfg.base}+{cfg.method}", flow_run_id))


def popularity_baseline(sets: dict[str, pd.DataFrame]) -> dict:
    """The trivial scorer of the promotion floor on the test rows: each PoI's "yes" rate among the
    training order questions (smoothed towards the overall rate)."""
    from components import registry

    train = sets["train"][sets["train"]["task"] == "order"]
    test = sets["test_order"]
    return {"test.auc": _auc(test["label"], registry.popularity(train["poi_id"], train["label"], test["poi_id"]))}


def _saved_test_auc(params: Params) -> dict | None:
    """The tuned model's test AUC from the P("yes") that ``scenerec instruct`` saved for it (the
    same rows the champion is scored on), or None when they are missing or older than the model."""
    path = eval_dir(params) / "test_scores.parquet"
    weights = next(iter(sorted(tuning.model_dir(params).glob("*.safetensors"))), None)
    if not path.exists() or weights is None or path.stat().st_mtime < weights.stat().st_mtime:
        return None
    scored = pd.read_parquet(path)
    return {"test.auc": _auc(scored["label"], scored["p_yes"])}


def _test_auc(params: Params, model, tok, sets) -> dict:
    test = sets["test_order"]
    return {"test.auc": _auc(test["label"], tuning.score_yes(model, tok, test, params.hkfr.max_knowledge_tokens))}
