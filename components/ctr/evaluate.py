"""Evaluation of a CTR model on the time-based test split: AUC, GAUC (per user) and logloss for CTR
and CTCVR, overall and for cold-start users / PoIs, each beside the oracle's figure on the same rows
(when the generator's truth file is present), plus ROC and calibration points for plots."""
from __future__ import annotations

import numpy as np

from components.config import CTRConfig
from components.ctr.data import CTRDataset, RequestData
from components.ctr.metrics import auc, calibration_bins, gauc, logloss, roc_points
from components.ctr import families

TASKS = {"ctr": ("click", "p_click"), "ctcvr": ("order", "p_order")}


def _flat(data: RequestData, scores: dict, name: str) -> np.ndarray | None:
    """A per-request or per-candidate array of ``data`` in the flat order of ``predict``."""
    v = getattr(data, name)
    if v is None:
        return None
    if v.ndim == 1:
        return v[scores["row"]]
    return v[scores["row"], scores["slot"]]


def score_metrics(scores: dict, data: RequestData) -> dict:
    """Metric dict ``{split}.{metric}.{task}`` (+ ``oracle_…`` twins) from ``predict`` output."""
    cold_user = _flat(data, scores, "cold_user")
    cold_poi = _flat(data, scores, "cold_poi")
    splits = {"all": np.ones(len(scores["ctr"]), bool), "cold_user": cold_user, "cold_poi": cold_poi}
    out: dict[str, float] = {}
    for split, sel in splits.items():
        if sel is None or not sel.any():
            continue
        out[f"{split}.rows"] = int(sel.sum())
        for task, (label, truth) in TASKS.items():
            y, p = scores[label][sel], scores[task][sel]
            users = scores["user"][sel]
            out[f"{split}.auc.{task}"] = auc(y, p)
            out[f"{split}.gauc.{task}"] = gauc(y, p, users)
            out[f"{split}.logloss.{task}"] = logloss(y, p)
            oracle = _flat(data, scores, truth)
            if oracle is not None:
                o = oracle[sel]
                out[f"{split}.oracle_auc.{task}"] = auc(y, o)
                out[f"{split}.oracle_gauc.{task}"] = gauc(y, o, users)
                out[f"{split}.oracle_logloss.{task}"] = logloss(y, o)
    return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in out.items()}


def evaluate(model, ds: CTRDataset, cfg: CTRConfig, data: RequestData | None = None) -> tuple[dict, dict]:
    """(metrics, plots) of ``model`` on the test split (or ``data``)."""
    data = data or ds.test
    scores = families.scores(model, data, ds, cfg)
    metrics = score_metrics(scores, data)
    plots = {
        "roc": [dict(task=t, **pt) for t, (label, _) in TASKS.items() for pt in roc_points(scores[label], scores[t])],
        "calibration": [dict(task=t, **pt) for t, (label, _) in TASKS.items()
                        for pt in calibration_bins(scores[label], scores[t], cfg.calibration_bins)],
    }
    return metrics, plots


def headline(metrics: dict) -> str:
    """One line a user reads first: "model X, oracle Y" for CTR and CTCVR AUC."""
    parts = []
    for task in TASKS:
        m, o = metrics.get(f"all.auc.{task}"), metrics.get(f"all.oracle_auc.{task}")
        parts.append(f"{task.upper()} AUC {m:.4f}" + (f" (oracle {o:.4f})" if o is not None else ""))
    return ", ".join(parts)
