"""Every CTR model family behind one interface, so that training, evaluation, saving, registration
and serving have one path each whatever ``ctr.model`` names:

- the neural models (components/ctr/model.py): trained by the one training loop
  (components/ctr/train.py → components/training/loop.py), scored by ``train.predict``;
- ``lightgbm`` (components/ctr/tabular.py): two boosters, variant chosen on validation;
- ``ensemble`` (components/ctr/ensemble.py): members of the two kinds above, their logits averaged
  with weights chosen on validation.

A non-neural model scores itself (``model.predict(data, ds)``) and saves itself; each returns the
flat dict of ``train.predict`` (ctr, ctcvr, labels, user, row, slot in (request, slot) order).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from components.config import CTRConfig
from components.ctr.data import CTRDataset, RequestData


def is_neural(model) -> bool:
    return isinstance(model, torch.nn.Module)


def train(name: str, ds: CTRDataset, cfg: CTRConfig, seed: int = 0, ckpt_dir: Path | None = None, log=None,
          progress: bool = True) -> tuple[object, dict]:
    """Train ``name`` with early stopping on ``ds.valid``; (model, info) with at least history,
    best_epoch, epochs_run, best_valid_auc_ctr, seconds and parameters. With ``ctr.refit`` the
    model returned is ``refit``'s (the ensemble refits each member after choosing its weights)."""
    model, info = _train(name, ds, cfg, seed, ckpt_dir, log, progress)
    if cfg.refit and name != "ensemble":
        model, info = refit(name, model, info, ds, cfg, seed, progress)
    return model, info


def refit(name: str, model, info: dict, ds: CTRDataset, cfg: CTRConfig, seed: int = 0,
          progress: bool = True) -> tuple[object, dict]:
    """``name`` trained again from its seed on train + valid with the schedule ``info`` records
    (the neural models replay its validation figures: the same learning-rate decays, stopping at its
    best epoch; LightGBM its boosting rounds). Real logs drift (shops rise and fade, new users
    arrive), and the validation period is the one next to what the model will serve; early stopping
    has already used it to choose the schedule, so the refit reads it as training data. ``info``
    gains ``refit`` (rows, seconds); its validation figures stay the first fit's (out of sample)."""
    from components.ctr.data import with_valid_in_train

    t0 = time.perf_counter()
    both = with_valid_in_train(ds)
    if name == "lightgbm":
        from components.ctr.tabular import gbdt_config, refit_gbdt

        new = refit_gbdt(model, info, both, gbdt_config(cfg), seed=seed, max_history=cfg.max_history)
        steps = {"rounds_ctr": int(info["variants"][model.variant]["rounds_ctr"]),
                 "rounds_ctcvr": int(info["variants"][model.variant]["rounds_ctcvr"])}
    else:
        from components.ctr.train import train_model

        new, again = train_model(name, both, cfg, seed=seed, progress=progress, replay=info)
        steps = {"epochs": again["epochs_run"], "lr_per_epoch": [h.get("train_lr") for h in again["history"]]}
    seconds = time.perf_counter() - t0
    info = {**info, "refit": {"rows": int(both.train.mask.sum()), "seconds": round(seconds, 2), **steps},
            "seconds": round(info["seconds"] + seconds, 2)}
    return new, info


def _train(name: str, ds: CTRDataset, cfg: CTRConfig, seed: int, ckpt_dir: Path | None, log,
           progress: bool) -> tuple[object, dict]:
    if name == "lightgbm":  # variant chosen on validation, no epochs to resume
        from components.ctr.tabular import gbdt_config, train_gbdt

        model, info = train_gbdt(ds, gbdt_config(cfg), seed=seed, max_history=cfg.max_history,
                                 log=None if log is None else (lambda row, _: log(row, 0)))
        info.update(history=[], best_epoch=0, parameters=sum(b.num_trees() for b in model.boosters.values()))
        return model, info
    if name == "ensemble":
        from components.ctr.ensemble import train_ensemble

        return train_ensemble(ds, cfg, seed=seed, ckpt_dir=ckpt_dir, log=log, progress=progress)
    from components.ctr.train import train_model

    return train_model(name, ds, cfg, seed=seed, ckpt_dir=ckpt_dir, log=log, progress=progress)


def scores(model, data: RequestData, ds: CTRDataset, cfg: CTRConfig) -> dict[str, np.ndarray]:
    """``train.predict``'s flat dict for any family."""
    if is_neural(model):
        from components.ctr.train import predict

        return predict(model, data, ds, cfg)
    return model.predict(data, ds)


def save(model, out_dir: Path) -> dict:
    """Write the model's own files into ``out_dir``; returns what ``load`` needs beside its name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not is_neural(model):
        model.save(out_dir)
        return {}
    torch.save(model.state_dict(), out_dir / "model.pt")
    return {"shapes": model.shapes.__dict__}


def load(name: str, meta: dict, model_dir: Path, cfg: CTRConfig, device: str = "cpu"):
    """The model ``save`` wrote into ``model_dir`` (``meta``: what it returned)."""
    if name == "lightgbm":
        from components.ctr.tabular import GBDTModel

        return GBDTModel.load(model_dir)
    if name == "ensemble":
        from components.ctr.ensemble import EnsembleModel

        return EnsembleModel.load(model_dir, cfg, device)
    from components.ctr.model import CTRModel, ModelShapes

    model = CTRModel(name, cfg, ModelShapes(**meta["shapes"]))
    model.load_state_dict(torch.load(Path(model_dir) / "model.pt", map_location=device, weights_only=True))
    return model.to(device)

