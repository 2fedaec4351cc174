"""Gradient-boosted trees (LightGBM) as a CTR / CTCVR model family, on one flat row per impression.

This is the model a user would train first on their own logs, so the platform offers it beside
its neural models and the registry's champion rule decides which serves. The rows come from the
same encoded splits as the neural models (components/ctr/data.py), so both see the same requests:

- every numeric Feast feature (standardised on the training split; trees only need the order),
  the per-view missing flags, distance to the PoI, position on the page, the candidate's log price;
- the scene fields, the candidate's category and bands as categorical columns;
- optionally history aggregates (``history``): the user's behaviours before the request, on this
  PoI, on its category, and its orders there (the "3 history counts" a practitioner adds);
- optionally raw ids (``ids``): the user's and the PoI's vocabulary index as categorical columns.

Which of the four variants serves is chosen on the validation split (CTR AUC), never on test.
Two boosters: P(click) on every impression and P(click and order) on every impression (CTCVR
learned directly, the usual way a tree model is fed an ESMM-style target). LightGBM is imported
lazily: only a user who picks this family needs it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from components.ctr.data import CTRDataset, RequestData
from components.ctr.metrics import auc

VARIANTS = {"tabular": (False, False), "tabular+history": (True, False), "tabular+ids": (False, True),
            "tabular+history+ids": (True, True)}


def _history_counts(data: RequestData, ds: CTRDataset, max_history: int) -> np.ndarray:
    """(rows, 5) per real candidate: log1p history length, and counts of the newest ``max_history``
    behaviours on the candidate PoI, on its category, orders of the PoI, clicks or more of the PoI."""
    h = ds.history
    rows_out = []
    cat = ds.pois.category
    for r in range(len(data)):
        k = np.flatnonzero(data.mask[r])
        s, e = int(data.hist_start[r]), int(data.hist_end[r])
        s = max(s, e - max_history)
        cand = data.poi_row[r, k]
        out = np.zeros((len(k), 5), np.float32)
        out[:, 0] = np.log1p(e - s)
        if e > s:
            hp, hb = h.poi_row[s:e], h.behavior[s:e]
            same = hp[None, :] == cand[:, None]
            out[:, 1] = same.sum(1)
            out[:, 2] = (cat[hp][None, :] == cat[cand][:, None]).sum(1)
            out[:, 3] = (same & (hb == 4)[None, :]).sum(1)
            out[:, 4] = (same & (hb >= 2)[None, :]).sum(1)
        rows_out.append(out)
    return np.concatenate(rows_out) if rows_out else np.zeros((0, 5), np.float32)


def flat_rows(data: RequestData, ds: CTRDataset, history: bool, ids: bool, max_history: int = 256) -> pd.DataFrame:
    """One row per real candidate in (request, slot) order; categorical columns as pandas categories."""
    m = data.mask
    rr, kk = np.nonzero(m)
    poi = data.poi_row[rr, kk]
    cols: dict[str, np.ndarray] = {}
    num = data.numeric[rr, kk]
    for j in range(num.shape[1]):
        cols[f"num_{j}"] = num[:, j]
    cols["distance"] = data.distance[rr, kk]
    cols["position"] = data.position[rr, kk].astype(np.float32)
    if ds.pois.log_price is not None:
        cols["log_price"] = ds.pois.log_price[poi]
    cats = {f"scene_{j}": data.scene[rr, j] for j in range(data.scene.shape[1])}
    cats.update(category=ds.pois.category[poi], price_band=ds.pois.price_band[poi],
                rating_band=ds.pois.rating_band[poi], delivery_band=ds.pois.delivery_band[poi])
    if ids:
        cats.update(user_idx=data.user[rr], poi_idx=ds.pois.vocab_id[poi])
    if history:
        hc = _history_counts(data, ds, max_history)
        for j, name in enumerate(("hist_len", "hist_same_poi", "hist_same_cat", "hist_poi_orders", "hist_poi_clicks")):
            cols[name] = hc[:, j]
    frame = pd.DataFrame(cols)
    for name, v in cats.items():
        frame[name] = pd.Categorical(np.asarray(v, np.int64), categories=np.arange(int(_cat_size(ds, name, data)) + 1))
    return frame


def _cat_size(ds: CTRDataset, name: str, data: RequestData) -> int:
    """Largest code a categorical column can take (fixed categories keep train and test aligned)."""
    if name.startswith("scene_"):
        return max(ds.encoder.sizes()["scene"].values())
    return {"category": ds.encoder.n_categories, "user_idx": len(ds.encoder.users),
            "poi_idx": len(ds.encoder.pois)}.get(name, 16)


def flat_labels(data: RequestData) -> dict[str, np.ndarray]:
    """Labels, request row, slot and user of each flat row (the layout ``predict`` returns)."""
    rr, kk = np.nonzero(data.mask)
    return {"click": data.click[rr, kk], "order": data.order[rr, kk], "user": data.user[rr], "row": rr, "slot": kk}


@dataclass
class GBDTConfig:
    """LightGBM settings: the library's defaults (learning rate 0.1, 31 leaves, 20 rows a leaf) plus bagging
    (the benchmark's peer); the platform's model family reads params.yaml's ``ctr.gbdt_*`` (``gbdt_config``)."""

    learning_rate: float = 0.1
    num_leaves: int = 31
    min_child_samples: int = 20
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    max_rounds: int = 2000
    early_stopping_rounds: int = 50
    num_threads: int = 1
    variants: list = field(default_factory=lambda: list(VARIANTS))


class GBDTModel:
    """Two LightGBM boosters (click, click-and-order) on the chosen feature variant."""

    name = "lightgbm"
    # What the serving paths ask of every CTR model (components/serve/scoring.py): the trees read no
    # LLM embeddings and no served CoFARS state, so they score through ``CTRScorer.score``.
    use_text = False
    sequence = None

    def __init__(self, variant: str, boosters: dict, max_history: int, info: dict):
        self.variant, self.boosters, self.max_history, self.info = variant, boosters, max_history, info

    def eval(self) -> "GBDTModel":
        return self

    def use_scene_table(self, table) -> None:
        """Neural models cache their LARR scene vectors here; the trees have none to cache."""

    def save(self, out_dir) -> None:
        """``gbdt_ctr.txt`` / ``gbdt_ctcvr.txt`` (LightGBM's text format) and ``gbdt.json``."""
        import json
        from pathlib import Path

        out_dir = Path(out_dir)
        for task, b in self.boosters.items():
            b.save_model(str(out_dir / f"gbdt_{task}.txt"))
        (out_dir / "gbdt.json").write_text(json.dumps({"variant": self.variant, "max_history": self.max_history,
                                                       "info": self.info}, default=float))

    @classmethod
    def load(cls, model_dir) -> "GBDTModel":
        import json
        from pathlib import Path

        import lightgbm as lgb

        model_dir = Path(model_dir)
        meta = json.loads((model_dir / "gbdt.json").read_text())
        boosters = {t: lgb.Booster(model_file=str(model_dir / f"gbdt_{t}.txt")) for t in ("ctr", "ctcvr")}
        return cls(meta["variant"], boosters, int(meta["max_history"]), meta["info"])

    def rows(self, data: RequestData, ds: CTRDataset) -> pd.DataFrame:
        history, ids = VARIANTS[self.variant]
        return flat_rows(data, ds, history, ids, self.max_history)

    def predict(self, data: RequestData, ds: CTRDataset) -> dict[str, np.ndarray]:
        """The dict of ``components.ctr.train.predict``: ctr, ctcvr, labels, user, row, slot."""
        x = self.rows(data, ds)
        out = flat_labels(data)
        out["ctr"] = self.boosters["ctr"].predict(x, num_threads=self.info["num_threads"])
        # P(click and order) can never exceed P(click); two separate boosters do not know that.
        out["ctcvr"] = np.minimum(self.boosters["ctcvr"].predict(x, num_threads=self.info["num_threads"]), out["ctr"])
        return out


def gbdt_config(ctr) -> GBDTConfig:
    """The ``ctr.gbdt_<field>`` settings of params.yaml (``ctr.cpu_threads`` threads; 0 = LightGBM's default)."""
    from dataclasses import fields

    got = {f.name: getattr(ctr, f"gbdt_{f.name}") for f in fields(GBDTConfig) if f.name != "num_threads"}
    return GBDTConfig(**{**got, "variants": list(got["variants"])}, num_threads=ctr.cpu_threads)


def _params(cfg: GBDTConfig, seed: int) -> dict:
    return {"objective": "binary", "learning_rate": cfg.learning_rate, "num_leaves": cfg.num_leaves,
            "min_child_samples": cfg.min_child_samples, "feature_fraction": cfg.feature_fraction,
            "bagging_fraction": cfg.bagging_fraction, "bagging_freq": 1, "lambda_l2": cfg.lambda_l2, "num_threads": cfg.num_threads,
            "seed": seed, "deterministic": True, "verbose": -1, "max_cat_to_onehot": 8}


def train_gbdt(ds: CTRDataset, cfg: GBDTConfig | None = None, seed: int = 0, max_history: int = 256,
               log=None) -> tuple[GBDTModel, dict]:
    """Fit every variant with early stopping on the validation split and keep the one with the best
    validation CTR AUC. Returns the model and its info (per-variant validation AUCs, rows, seconds)."""
    import lightgbm as lgb

    cfg = cfg or GBDTConfig()
    t0 = time.perf_counter()
    ytr, yva = flat_labels(ds.train), flat_labels(ds.valid)

    def fit(xtr, xva, label):
        dtr = lgb.Dataset(xtr, ytr[label], free_raw_data=False)
        dva = lgb.Dataset(xva, yva[label], reference=dtr)
        b = lgb.train(_params(cfg, seed), dtr, cfg.max_rounds, valid_sets=[dva],
                      callbacks=[lgb.early_stopping(cfg.early_stopping_rounds, verbose=False)])
        return b, auc(yva[label], b.predict(xva, num_iteration=b.best_iteration))

    # The variant is chosen on validation CTR AUC; the CTCVR booster is then fitted for it alone.
    best, tried = None, {}
    for variant in cfg.variants:
        history, ids = VARIANTS[variant]
        tv = time.perf_counter()
        xtr = flat_rows(ds.train, ds, history, ids, max_history)
        xva = flat_rows(ds.valid, ds, history, ids, max_history)
        b, v = fit(xtr, xva, "click")
        row = {"valid_auc_ctr": v, "rounds_ctr": int(b.best_iteration), "seconds": time.perf_counter() - tv}
        tried[variant] = row
        if log is not None:
            log({f"{variant}.{k}": v for k, v in row.items()}, None)
        if best is None or v > tried[best[0]]["valid_auc_ctr"]:
            best = (variant, {"ctr": b}, xtr, xva)
    variant, boosters, xtr, xva = best
    tv = time.perf_counter()
    boosters["ctcvr"], v = fit(xtr, xva, "order")
    tried[variant].update(valid_auc_ctcvr=v, rounds_ctcvr=int(boosters["ctcvr"].best_iteration))
    tried[variant]["seconds"] += time.perf_counter() - tv  # features and both boosters of the chosen variant
    best = (variant, boosters)
    seconds = time.perf_counter() - t0
    info = {"variant": best[0], "variants": tried, "seconds": round(seconds, 2), "num_threads": cfg.num_threads,
            "train_rows": int(ds.train.mask.sum()), "best_valid_auc_ctr": tried[best[0]]["valid_auc_ctr"],
            "epochs_run": tried[best[0]]["rounds_ctr"]}
    for task in ("ctr", "ctcvr"):  # predict with the early-stopped number of rounds
        b = best[1][task]
        best[1][task] = lgb.Booster(model_str=b.model_to_string(num_iteration=b.best_iteration))
    return GBDTModel(best[0], best[1], max_history, info), info


def refit_gbdt(model: "GBDTModel", info: dict, ds: CTRDataset, cfg: GBDTConfig | None = None, seed: int = 0,
               max_history: int = 256) -> "GBDTModel":
    """``model``'s variant fitted again on ``ds.train`` (train + valid for ``ctr.refit``) with the
    boosting rounds early stopping chose for each task in ``info``."""
    import lightgbm as lgb

    cfg = cfg or GBDTConfig()
    history, ids = VARIANTS[model.variant]
    x, y = flat_rows(ds.train, ds, history, ids, max_history), flat_labels(ds.train)
    chosen = info["variants"][model.variant]
    boosters = {task: lgb.train(_params(cfg, seed), lgb.Dataset(x, y[label]), max(1, int(chosen[f"rounds_{task}"])))
                for task, label in (("ctr", "click"), ("ctcvr", "order"))}
    return GBDTModel(model.variant, boosters, max_history, model.info)
