"""Builders for registry tests: a pyfunc whose quality is written in its artifact, so a test sets
the AUC a candidate scores and exercises the real registration, alias rule and audit in MLflow."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from components.registry import Candidate


class QualityModel(mlflow.pyfunc.PythonModel):
    """Scores every row with the AUC its artifact names (what ``score`` reports for it)."""

    def load_context(self, context):
        self.auc = json.loads(Path(context.artifacts["quality"]).read_text())["auc"]

    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"score": [float(self.auc)] * len(model_input)})


def quality_candidate(name: str, auc: float, baseline_auc: float = 0.55, margin: float = 0.01,
                      floor_margin: float = 0.01, tags: dict | None = None, score=None) -> Candidate:
    """A candidate of registered model ``name`` that scores ``auc`` beside a baseline of ``baseline_auc``."""

    def prepare(tmp: Path):
        (tmp / "quality.json").write_text(json.dumps({"auc": auc}))
        return {"quality": str(tmp / "quality.json")}, pd.DataFrame({"x": [1.0, 2.0]})

    return Candidate(name=name, artifact_name="quality_model", python_model=QualityModel, prepare=prepare,
                     score=score or (lambda models: {k: {"auc": m.auc} for k, m in models.items()}),
                     metric="auc", margin=margin, floor_margin=floor_margin,
                     baseline=lambda: {"auc": baseline_auc}, tags=tags or {}, pip_requirements=["mlflow"])
