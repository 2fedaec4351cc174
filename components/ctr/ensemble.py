"""``ctr.model: ensemble``: two or three CTR models of any family (``ctr.ensemble_members``, by
default ``larr_cofars`` and ``lightgbm``), each trained as it would be alone, scored together as

    logit p = Σ_i w_i · logit p_i      (per task: CTR and CTCVR have their own weights)

with weights on the simplex (multiples of ``ctr.ensemble_weight_step`` summing to 1) chosen by
AUC on the validation split — the split every member already early-stops on; the test split is
never seen. A weight of 1 on one member is on the grid, so the ensemble is never chosen worse than
its best member on validation; a mix is kept only when it beats that member in
``ctr.ensemble_confidence`` of bootstrap resamples of the validation rows (``fit_weights``).
CTCVR is capped at CTR (P(click and order) ≤ P(click)).

Why: where tabular columns carry most of a click (convenience / grocery markets) a tree reads them
as well as the neural model and is better on cold users, while the neural model reads the scene and
the long history; their errors differ, so a validation-weighted average of their logits beats both
(README, CTR section; reports/benchmarks/ctr_ensemble.json). This is the stacking users know from
AutoGluon / H2O, kept to one scalar per member so that it cannot overfit the validation split.
"""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np

from components.config import CTRConfig
from components.ctr.data import CTRDataset, RequestData
from components.ctr.metrics import auc

TASKS = {"ctr": "click", "ctcvr": "order"}
_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def weight_grid(n: int, step: float) -> np.ndarray:
    """Every weight vector of ``n`` non-negative multiples of ``step`` summing to 1, shape (k, n);
    the first member's full weight first (ties keep the earlier row)."""
    k = int(round(1 / step))
    rows = [c for c in itertools.product(range(k, -1, -1), repeat=n - 1) if sum(c) <= k]
    return np.array([[*c, k - sum(c)] for c in rows], np.float64) / k


def combine(member_scores: list[dict], weights: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """The flat dict of ``train.predict`` for the weighted members (all scored on the same rows)."""
    first = member_scores[0]
    for s in member_scores[1:]:
        if not (np.array_equal(s["row"], first["row"]) and np.array_equal(s["slot"], first["slot"])):
            raise ValueError("ensemble members scored different candidates (row / slot differ)")
    out = {k: first[k] for k in ("click", "order", "user", "row", "slot")}
    for task in TASKS:
        z = sum(w * logit(s[task]) for w, s in zip(weights[task], member_scores))
        out[task] = 1 / (1 + np.exp(-z))
    out["ctcvr"] = np.minimum(out["ctcvr"], out["ctr"])
    return out


def fit_weights(member_scores: list[dict], step: float, confidence: float = 0.9, resamples: int = 200,
                seed: int = 0) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per task, the grid's weights with the best AUC on these (validation) scores, and that AUC.

    A mix is kept only when it beats the best member alone in at least ``confidence`` of
    ``resamples`` paired bootstrap resamples of the rows; otherwise that member alone is chosen.
    With few positives (a CTCVR task with a few dozen orders in the validation split) the best mix is
    mostly noise, and a weak member would be mixed in on its strength."""
    grid = weight_grid(len(member_scores), step)
    alone = [int(np.flatnonzero(np.isclose(grid[:, m], 1.0))[0]) for m in range(len(member_scores))]
    n = len(member_scores[0]["click"])
    draws = []  # the same resamples for every task, drawn when a mix first needs the test

    def resampled():
        if not draws:
            rng = np.random.default_rng(seed)
            draws.extend(rng.integers(0, n, n) for _ in range(resamples))
        return draws
    weights, best = {}, {}
    for task, label in TASKS.items():
        y = member_scores[0][label]
        z = np.stack([logit(s[task]) for s in member_scores], 1)
        aucs = np.array([auc(y, z @ w) for w in grid])
        i = int(np.nanargmax(aucs))
        j = max(alone, key=lambda r: aucs[r])
        if i != j and confidence > 0:
            a, b = z @ grid[i], z @ grid[j]
            wins = np.mean([auc(y[d], a[d]) > auc(y[d], b[d]) for d in resampled()])
            i = i if wins >= confidence else j
        weights[task], best[task] = [round(float(v), 6) for v in grid[i]], float(aucs[i])
    return weights, best


def member_family(key: str) -> str:
    """The model family of an ensemble member's key: ``larr_cofars.seed1`` (a seed bag's second network,
    ``families.bag``) is a ``larr_cofars``."""
    return key.split(".", 1)[0]


def _without_timings(d):
    """``d`` with every ``seconds`` key left out, at any depth."""
    if isinstance(d, dict):
        return {k: _without_timings(v) for k, v in d.items() if k != "seconds"}
    return d


class EnsembleModel:
    """Trained members (key -> model) and their per-task weights; scores like a GBDTModel does.
    ``name``: ``ensemble``, or the family of a seed bag (``families.bag``), which is what the model
    folder, the registry and the service call it."""

    # Not CoFARS itself: the online service scores each CoFARS member from its own served per-user
    # state and the others from the history (components/serve/scoring.py: served_nets, score_request).
    sequence = None

    def __init__(self, members: dict, weights: dict[str, list[float]], cfg: CTRConfig, info: dict | None = None,
                 name: str = "ensemble"):
        self.members, self.weights, self.cfg, self.info, self.name = members, weights, cfg, info or {}, name

    @property
    def use_text(self) -> bool:
        return any(getattr(m, "use_text", False) for m in self.members.values())

    def eval(self) -> "EnsembleModel":
        for m in self.members.values():
            m.eval()
        return self

    def use_scene_table(self, table) -> None:
        for m in self.members.values():
            if getattr(m, "use_text", False):
                m.use_scene_table(table)

    def member_scores(self, data: RequestData, ds: CTRDataset, served: dict | None = None) -> list[dict]:
        """Each member's flat scores; ``served`` (id(member) -> scores) stands in for the members it has."""
        from components.ctr import families

        served = served or {}
        return [served[id(m)] if id(m) in served else families.scores(m, data, ds, self.cfg)
                for m in self.members.values()]

    def predict(self, data: RequestData, ds: CTRDataset, served: dict | None = None) -> dict[str, np.ndarray]:
        return combine(self.member_scores(data, ds, served), self.weights)

    def save(self, out_dir) -> None:
        """``members/<name>/`` (each member's own files) and ``ensemble.json`` (order, weights, info)."""
        from components.ctr import families

        out_dir = Path(out_dir)
        metas = {name: families.save(m, out_dir / "members" / name) for name, m in self.members.items()}
        # No timings in the folder: the same model trained again on the same data is byte for byte
        # the same folder, so the registry reuses its version (registry.artifact_fingerprint).
        (out_dir / "ensemble.json").write_text(json.dumps(
            {"name": self.name, "members": list(self.members), "weights": self.weights, "metas": metas,
             "info": _without_timings(self.info)}, indent=2, default=float))

    @classmethod
    def load(cls, model_dir, cfg: CTRConfig, device: str = "cpu") -> "EnsembleModel":
        from components.ctr import families

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / "ensemble.json").read_text())
        members = {key: families.load(member_family(key), meta["metas"][key], model_dir / "members" / key, cfg, device)
                   for key in meta["members"]}
        return cls(members, meta["weights"], cfg, meta["info"], meta.get("name", "ensemble"))


def train_ensemble(ds: CTRDataset, cfg: CTRConfig, seed: int = 0, ckpt_dir: Path | None = None, log=None,
                   progress: bool = True) -> tuple[EnsembleModel, dict]:
    """Train every member (``families.train``), then choose the weights on the validation split."""
    from components.ctr import families

    t0 = time.perf_counter()
    members, infos = {}, {}
    first_cfg = cfg.model_copy(update={"refit": False, "seed_bag": 1})  # weights chosen on out-of-sample scores
    for name in cfg.ensemble_members:
        member_log = None if log is None else (lambda row, step, n=name: log({f"{n}.{k}": v for k, v in row.items()},
                                                                            step))
        members[name], infos[name] = families.train(name, ds, first_cfg, seed=seed,
                                                    ckpt_dir=None if ckpt_dir is None else Path(ckpt_dir) / name,
                                                    log=member_log, progress=progress)
    model = EnsembleModel(members, {}, cfg)
    valid = model.member_scores(ds.valid, ds)
    model.weights, best = fit_weights(valid, cfg.ensemble_weight_step, cfg.ensemble_confidence, seed=seed)
    alone = {name: {task: float(auc(s[label], s[task])) for task, label in TASKS.items()}
             for name, s in zip(members, valid)}
    if log is not None:
        log({f"weight.{task}.{name}": w for task, ws in model.weights.items() for name, w in zip(members, ws)}, 0)
    if cfg.refit:  # each member trained again on train + valid with its own schedule; the weights stay
        for name in members:
            members[name], infos[name] = families.refit(name, members[name], infos[name], ds, cfg, seed=seed,
                                                        progress=progress)  # ``model.members`` is this dict
    if cfg.seed_bag > 1:  # each member becomes a bag of seeds; its weight is shared out among them
        bags = {}
        for name in members:
            bags[name], infos[name] = families.bag(name, members[name], infos[name], ds, cfg, seed, progress)
        model.weights = {task: [w * bw for w, bag in zip(ws, bags.values()) for bw in bag.weights[task]]
                         for task, ws in model.weights.items()}
        members.clear()  # ``model.members``: every bag's networks, in the members' order
        for bag in bags.values():
            members.update(bag.members)
    # The neural member's curve is the ensemble's training curve (the trees have none).
    curve = next((infos[n] for n in members if infos[n]["history"]), infos[next(iter(members))])
    info = {"history": curve["history"], "best_epoch": curve["best_epoch"], "epochs_run": curve["epochs_run"],
            "best_valid_auc_ctr": best["ctr"], "best_valid_auc_ctcvr": best["ctcvr"],
            "weights": model.weights, "members_valid_auc": alone,
            "members": {n: {k: i[k] for k in ("best_epoch", "epochs_run", "best_valid_auc_ctr", "seconds",
                                              "parameters", "refit", "bag") if k in i} for n, i in infos.items()},
            "seconds": round(time.perf_counter() - t0, 2),
            "parameters": int(sum(i["parameters"] for i in infos.values()))}
    model.info = {k: info[k] for k in ("weights", "members_valid_auc", "members")}
    return model, info
