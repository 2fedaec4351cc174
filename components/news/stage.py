"""The news stage end to end: the MIND folder (synthetic by default) → PerCoNet trained and evaluated
on its dev split → registered as an MLflow pyfunc with the CTR model's promotion rules.

Folders under ``paths.news_dir``: ``mind/`` (the synthetic world, train/ and dev/), ``model/``.
"""
from __future__ import annotations

import shutil
import tempfile
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
        data = load_mind(folder / split, params.path("quarantine_dir"))
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


def register_and_promote(params: Params, run_id: str, by: str | None = None) -> dict:
    """Register ``news_dir/model`` as ``news.registered_name``; champion only when it beats the
    current champion's dev AUC on the same dev impressions by ``ctr.promotion_margin``."""
    import mlflow

    from components import registry
    from components.news.mind import load_mind
    from components.news.train import load_news_model

    name = params.news.registered_name
    mdir = model_dir(params)
    if not (mdir / "model.pt").exists():
        raise FileNotFoundError(f"{mdir}: no trained news model (run `scenerec news` first)")
    # The article table travels with the model; written outside the DVC-tracked model folder.
    tmp = Path(tempfile.mkdtemp(prefix="scenerec-news-"))
    news_file = tmp / "news.parquet"
    _news_table(mind_dir(params)).to_parquet(news_file, index=False)
    dev = load_mind(mind_dir(params) / "dev").behaviors.head(2)
    example = pd.DataFrame({"history": [" ".join(h) for h in dev["history"]],
                            "candidates": [" ".join(c) for c in dev["candidates"]]})
    py = NewsPyfunc()

    class _Ctx:
        artifacts = {"model": str(mdir), "news": str(news_file)}

    py.load_context(_Ctx())
    mv = registry.log_pyfunc(params, run_id, "news_model", NewsPyfunc(), _Ctx.artifacts, example,
                             py.predict(None, example), name)
    version = str(mv.version)
    c = registry.client(params)
    champion = registry.alias_version(c, name, registry.CHAMPION)
    challenger_m = evaluate_on_dev(params, load_news_model(mdir))
    champion_m = None
    if champion is not None and champion != version:
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@{registry.CHAMPION}")
        champion_m = evaluate_on_dev(params, loaded.unwrap_python_model().trained)
    shutil.rmtree(tmp, ignore_errors=True)
    return registry.settle(c, name, version, champion, challenger_m, champion_m, "dev.auc",
                           params.ctr.promotion_margin, by)


def metric_row(metrics: dict) -> dict:
    """The numbers of a news metrics dict (what reports/news.json holds)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and np.isfinite(v)}
