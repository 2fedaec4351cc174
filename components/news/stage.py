"""The news stage end to end: the MIND folder (synthetic by default) → PerCoNet trained and evaluated
on its dev split → registered as an MLflow pyfunc through ``registry.register_candidate`` (its own margin and floor).

Folders under ``paths.news_dir``: ``mind/`` (the synthetic world, train/ and dev/), ``model/``.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components.config import Params

MODEL = "perconet"


def mind_dir(params: Params) -> Path:
    """The MIND folder the news stage reads: ``news.mind_dir`` or the synthetic one."""
    return Path(params.news.mind_dir) if params.news.mind_dir else params.path("news_dir") / "mind"


def model_dir(params: Params) -> Path:
    return params.path("news_dir") / "model"


def news_data(params: Params) -> dict:
    """Write the synthetic MIND world (``news.mind_dir`` null), or validate the user's folder."""
    from components.news.mind import generate_mind, load_mind

    folder = mind_dir(params)
    if params.news.mind_dir is None:
        if folder.exists():
            shutil.rmtree(folder)
        out = generate_mind(folder, params.news, params.seed)
        return {k: v for k, v in out.items() if isinstance(v, (int, float))}
    out = {}
    for split in ("train", "dev"):
        data = load_mind(folder / split, params.path("quarantine_dir"), quarantine_keep=params.ingest.quarantine_keep)
        out[f"{split}.news"], out[f"{split}.impressions"] = len(data.news), len(data.behaviors)
    return out


def train(params: Params, model: str = MODEL) -> dict:
    """Train PerCoNet (or NRMS) on the MIND folder's train split, evaluate it on dev, save it."""
    from components.news.train import train_news

    out = model_dir(params)
    return train_news(params.news, mind_dir(params), out, model=model, seed=params.seed,
                      quarantine_dir=params.path("quarantine_dir"))


def _news_table(folder: Path) -> pd.DataFrame:
    from components.news.mind import load_mind

    frames = [load_mind(folder / s).news for s in ("train", "dev") if (folder / s).exists()]
    return pd.concat(frames, ignore_index=True).drop_duplicates("news_id", keep="last")


def evaluate_on_dev(params: Params, trained) -> dict:
    """Dev metrics of a loaded model (``TrainedNewsModel``) on the current MIND folder."""
    from components.news.mind import load_mind
    from components.news.train import evaluate, prepare_impressions

    dev = load_mind(mind_dir(params) / "dev")
    beh = dev.behaviors if params.news.max_eval_impressions is None else dev.behaviors.iloc[:params.news.max_eval_impressions]
    index = trained.index(dev.news)
    return {f"dev.{k}": v for k, v in evaluate(trained.model, index, prepare_impressions(beh, index),
                                              params.news.eval_batch_size).items()}


class NewsPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: one row per user request, ``history`` and ``candidates`` as space-separated
    news ids (MIND style); out: one row per candidate with its ``score``, best first per request,
    and ``persona`` — the persona entities behind the recommendation."""

    def load_context(self, context):
        from components.news.train import load_news_model

        self.trained = load_news_model(context.artifacts["model"])
        self.index = self.trained.index(pd.read_parquet(context.artifacts["news"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = []
        df = pd.DataFrame(model_input)
        for c in ("history", "candidates"):
            if c not in df:
                raise ValueError(f"news model input lacks column {c!r}; expected history and candidates "
                                 "(space-separated news ids)")
        for i, r in enumerate(df.itertuples(index=False)):
            history = str(r.history or "").split()
            cands = str(r.candidates).split()
            for rank, item in enumerate(self.trained.explain(self.index, history, cands)):
                rows.append({"request": i, "news_id": item["news_id"], "rank": rank, "score": item["score"],
                             "persona": ", ".join(p["label"] for p in item["persona"])})
        return pd.DataFrame(rows, columns=["request", "news_id", "rank", "score", "persona"])


def _dev_impressions(params: Params) -> pd.DataFrame:
    """The dev impressions the registry scores champion, challenger and baseline on."""
    from components.news.mind import load_mind

    beh = load_mind(mind_dir(params) / "dev").behaviors
    return beh if params.news.max_eval_impressions is None else beh.iloc[:params.news.max_eval_impressions]


def popularity_baseline(params: Params) -> dict:
    """The trivial scorer of the promotion floor on the dev impressions: each article's click rate in
    the train impressions (smoothed towards the overall rate), mean AUC per impression as ``dev.auc``."""
    from components import registry
    from components.news.mind import load_mind
    from components.news.train import impression_metrics

    train = load_mind(mind_dir(params) / "train").behaviors
    dev = _dev_impressions(params)
    scores = registry.popularity([n for c in train["candidates"] for n in c], [y for ys in train["labels"] for y in ys],
                                 [n for c in dev["candidates"] for n in c])
    ends = np.cumsum([len(c) for c in dev["candidates"]])
    per = [m for ys, s in zip(dev["labels"], np.split(scores, ends[:-1]))
           if (m := impression_metrics(ys, s)) is not None]
    return {"dev.auc": float(np.mean([m["auc"] for m in per])) if per else float("nan"), "dev.impressions": len(per)}


def registry_candidate(params: Params, flow_run_id: str | None = None):
    """``news_dir/model`` as a ``registry.Candidate`` of ``news.registered_name``: dev AUC, scored with the
    champion on the same dev impressions, ``news.promotion_margin`` / ``promotion_floor_margin``."""
    from components import registry
    from components.news.mind import load_mind

    cfg = params.news
    mdir = model_dir(params)
    if not (mdir / "model.pt").exists():
        raise FileNotFoundError(f"{mdir}: no trained news model (run `scenerec news` first)")
    from components.news.train import CONFIG_FILE

    architecture = json.loads((mdir / CONFIG_FILE).read_text())["model"]

    def prepare(tmp: Path):
        # The article table travels with the model; written outside the DVC-tracked model folder.
        _news_table(mind_dir(params)).to_parquet(tmp / "news.parquet", index=False)
        dev = load_mind(mind_dir(params) / "dev").behaviors.head(2)
        example = pd.DataFrame({"history": [" ".join(h) for h in dev["history"]],
                                "candidates": [" ".join(c) for c in dev["candidates"]]})
        return {"model": str(mdir), "news": str(tmp / "news.parquet")}, example

    def score(models: dict) -> dict:
        return {k: evaluate_on_dev(params, m.trained) for k, m in models.items()}

    return registry.Candidate(
        name=cfg.registered_name, artifact_name="news_model", python_model=NewsPyfunc, prepare=prepare, score=score,
        metric="dev.auc", margin=cfg.promotion_margin, floor_margin=cfg.promotion_floor_margin,
        baseline=lambda: popularity_baseline(params), baseline_name="popularity",
        tags=registry.lineage_tags(params, "news", architecture, flow_run_id))


def metric_row(metrics: dict) -> dict:
    """The numbers of a news metrics dict (what reports/news.json holds)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and np.isfinite(v)}
