"""Ranking and calibration metrics for CTR / CTCVR: AUC, GAUC (per user), logloss, ROC points and
calibration bins. Pure numpy + scikit-learn; every function takes flat label / score arrays."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score, roc_curve


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")
    return float(roc_auc_score(labels, scores))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """Group AUC: per-group AUC weighted by the group's number of rows, over groups with both
    classes (the usual per-user GAUC of industrial CTR papers); NaN when no group qualifies."""
    labels, scores, groups = np.asarray(labels), np.asarray(scores), np.asarray(groups)
    order = np.argsort(groups, kind="stable")
    g, labels, scores = groups[order], labels[order], scores[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    total, weight = 0.0, 0
    for a, b in zip(starts, ends):
        y = labels[a:b]
        if y.min() == y.max():
            continue
        total += roc_auc_score(y, scores[a:b]) * (b - a)
        weight += b - a
    return float(total / weight) if weight else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Binary cross-entropy of probabilities (clipped to [1e-7, 1 - 1e-7])."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def roc_points(labels: np.ndarray, scores: np.ndarray, n: int = 101) -> list[dict]:
    """The ROC curve resampled at ``n`` false-positive rates (small enough for a DVC plot)."""
    if len(labels) == 0 or np.min(labels) == np.max(labels):
        return []
    fpr, tpr, _ = roc_curve(labels, scores)
    grid = np.linspace(0, 1, n)
    return [{"fpr": round(float(x), 4), "tpr": round(float(y), 4)} for x, y in zip(grid, np.interp(grid, fpr, tpr))]


def calibration_bins(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-count bins of the predicted probability: mean prediction against observed rate."""
    if len(labels) == 0:
        return []
    order = np.argsort(probs, kind="stable")
    out = []
    for part in np.array_split(order, bins):
        if len(part):
            out.append({"predicted": round(float(np.mean(probs[part])), 5),
                        "observed": round(float(np.mean(labels[part])), 5), "count": int(len(part))})
    return out
