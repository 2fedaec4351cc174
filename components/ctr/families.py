"""Every CTR model family behind one interface, so that training, evaluation, saving, registration
and serving have one path each whatever ``ctr.model`` names:

- the neural models (components/ctr/model.py): trained by the one training loop
  (components/ctr/train.py → components/training/loop.py), scored by ``train.predict``;
- ``lightgbm`` (components/ctr/tabular.py): two boosters, variant chosen on validation;
- ``ensemble`` (components/ctr/ensemble.py): members of the two kinds above, their logits averaged
  with weights chosen on validation.

With ``ctr.seed_bag`` > 1 any family is served as a seed bag: the model trained as usual and
``seed_bag - 1`` more replaying its schedule from the next seeds, logits averaged with equal
weights (``bag``; an ``EnsembleModel`` that keeps the family's name).

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
    if name == "ensemble":  # its members are refit and bagged inside train_ensemble
        return model, info
    if cfg.refit:
        model, info = refit(name, model, info, ds, cfg, seed, progress)
    return bag(name, model, info, ds, cfg, seed, progress)


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
    new, steps = replay(name, model, info, both, cfg, seed, progress)
    seconds = time.perf_counter() - t0
    info = {**info, "refit": {"rows": int(both.train.mask.sum()), "seconds": round(seconds, 2), **steps},
            "seconds": round(info["seconds"] + seconds, 2)}
    return new, info


def replay(name: str, model, info: dict, ds: CTRDataset, cfg: CTRConfig, seed: int,
           progress: bool = True) -> tuple[object, dict]:
    """``name`` trained from ``seed`` on ``ds.train`` with the schedule of the fit ``info`` records
    (neural: its learning-rate decays, stopping at its best epoch; LightGBM: ``model``'s variant and
    boosting rounds); returns (model, what was replayed)."""
    if name == "lightgbm":
        from components.ctr.tabular import gbdt_config, refit_gbdt

        new = refit_gbdt(model, info, ds, gbdt_config(cfg), seed=seed, max_history=cfg.max_history)
        return new, {"rounds_ctr": int(info["variants"][model.variant]["rounds_ctr"]),
                     "rounds_ctcvr": int(info["variants"][model.variant]["rounds_ctcvr"])}
    from components.ctr.train import train_model

    new, again = train_model(name, ds, cfg, seed=seed, progress=progress, replay=info)
    return new, {"epochs": again["epochs_run"], "lr_per_epoch": [h.get("train_lr") for h in again["history"]]}


def bag(name: str, model, info: dict, ds: CTRDataset, cfg: CTRConfig, seed: int = 0,
        progress: bool = True) -> tuple[object, dict]:
    """With ``ctr.seed_bag`` = n > 1: ``model`` (trained from ``seed``) and n - 1 more of ``name``
    replaying its schedule from seeds ``seed + 1 ..`` on the data it was trained on (train + valid
    after ``ctr.refit``), scored as the mean of their logits (an ``EnsembleModel`` with equal weights
    named ``name``; members ``name``, ``name.seed1`` ..). The networks of one family from different seeds
    err differently (seed to seed, test AUC moves by up to 0.003 here), so their mean ranks better
    than any one of them; it costs n - 1 more replays and n times the scoring. ``info`` gains ``bag``
    (members, seconds); n = 1 returns ``model`` as it is."""
    n = cfg.seed_bag
    if n <= 1:
        return model, info
    from components.ctr.data import with_valid_in_train
    from components.ctr.ensemble import TASKS, EnsembleModel

    t0 = time.perf_counter()
    data = with_valid_in_train(ds) if "refit" in info else ds
    members = {name: model}
    for i in range(1, n):
        members[f"{name}.seed{i}"], _ = replay(name, model, info, data, cfg, seed + i, progress)
    seconds = time.perf_counter() - t0
    info = {**info, "bag": {"members": n, "seconds": round(seconds, 2)}, "seconds": round(info["seconds"] + seconds, 2)}
    weights = {task: [round(1 / n, 6)] * n for task in TASKS}
    return EnsembleModel(members, weights, cfg, info={"bag": info["bag"]}, name=name), info


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
    if name == "ensemble" or (Path(model_dir) / "ensemble.json").exists():  # an ensemble, or a seed bag
        from components.ctr.ensemble import EnsembleModel

        return EnsembleModel.load(model_dir, cfg, device)
    if name == "lightgbm":
        from components.ctr.tabular import GBDTModel

        return GBDTModel.load(model_dir)
    from components.ctr.model import CTRModel, ModelShapes

    model = CTRModel(name, cfg, ModelShapes(**meta["shapes"]))
    model.load_state_dict(torch.load(Path(model_dir) / "model.pt", map_location=device, weights_only=True))
    return model.to(device)

