"""Training and scoring of the CTR models: what is CTR's own (the model, request batches bucketed
by history length, the loss, validation CTR AUC) handed to components/training's ``fit()``, which
early-stops on that AUC (with ``ctr.lr_decay`` < 1 it also decays the learning rate when the AUC
stalls) and writes a checkpoint per epoch in ``ckpt_dir`` that a rerun resumes from.

Under ``torchrun`` / ``accelerate launch`` each process takes every world-size-th batch; every
process scores the (small) validation split itself, so the early-stopping decision agrees.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from components.config import CTRConfig
from components.ctr.data import CTRDataset, RequestData, make_batch, to_tensors, batch_order
from components.ctr.metrics import auc
from components.ctr.model import CTRModel, ModelShapes
from components.training import Recipe, cpu_threads, fingerprint, fit, make_accelerator


def build_model(name: str, cfg: CTRConfig, ds: CTRDataset, seed: int, acc=None) -> CTRModel:
    """A fresh model sized for the dataset's encoder (seeded); ``acc``: the accelerator the behaviour
    log's BPR trains on (``ctr.id_pretrain_epochs``, ``ctr.log_poi_dim``)."""
    torch.manual_seed(seed)
    text = ds.pois.text_emb
    has_text = text is not None and ds.scene_table is not None
    shapes = ModelShapes.from_sizes(ds.encoder.sizes(), text.shape[1] if has_text else 0)
    model = CTRModel(name, cfg, shapes)
    if cfg.id_pretrain_epochs > 0:
        warm_start_ids(model, ds, cfg, seed, acc)
    if cfg.log_poi_dim > 0:
        _, p = log_bpr(model, ds, cfg, cfg.log_poi_dim, cfg.log_poi_epochs, seed, acc)
        from components.ctr.id_pretrain import rescale

        with torch.no_grad():
            model.log_poi_vec.copy_(rescale(p, 1.0))
    return model


def log_bpr(model: CTRModel, ds: CTRDataset, cfg: CTRConfig, dim: int, epochs: int, seed: int,
            acc=None) -> tuple[torch.Tensor, torch.Tensor]:
    """BPR user and PoI vectors (``dim`` wide, rows as the model's ID rows) from the behaviour log
    before the validation split starts (components/ctr/id_pretrain.py). The cut stays there after
    ``ctr.refit`` too: a behaviour in the validation period may be the click a refit trains on."""
    from components.ctr.id_pretrain import behaviour_pairs, pretrain_id_embeddings

    h = ds.history.without(training_feedback(ds, cfg.log_feedback_window_s))
    user_rows = {int(u): (h.user_start[k], h.user_end[k])
                 for k, u in zip(h.user_start, ds.encoder.users.encode(list(h.user_start)))}
    users, pois, w = behaviour_pairs(user_rows, h.ts, ds.pois.vocab_id[h.poi_row], h.behavior,
                                     cfg.profile_behavior_weights, ds.valid_start_ns)
    return pretrain_id_embeddings(users, pois, w, model.user_emb.num_embeddings, model.poi_emb.num_embeddings,
                                  dim, epochs, seed, acc, holdout=cfg.log_bpr_holdout, patience=cfg.log_bpr_patience)


def training_feedback(ds: CTRDataset, window_s: float) -> np.ndarray:
    """Bool mask over ``ds.history``: the entries that are (or may be) a training impression's own
    feedback, those of its user and PoI within ``window_s`` after it (id_pretrain.feedback_entries)."""
    from components.ctr.id_pretrain import feedback_entries

    h, tr = ds.history, ds.train
    owner = np.zeros(len(h.ts), np.int64)  # a user's code: their first entry's index + 1
    for uid, s in h.user_start.items():
        owner[s:h.user_end[uid]] = s + 1
    rr, kk = np.nonzero(tr.mask)
    imp_user = np.array([h.user_start.get(str(u), -1) + 1 for u in tr.user_id], np.int64)  # 0: no log, no match
    return feedback_entries(owner, h.poi_row, h.ts, imp_user[rr], tr.poi_row[rr, kk], tr.ts[rr], int(window_s * 1e9))


def warm_start_ids(model: CTRModel, ds: CTRDataset, cfg: CTRConfig, seed: int, acc=None) -> None:
    """The model's user and PoI ID rows from BPR on the training period's behaviour log
    (``log_bpr``); rows without behaviours keep their initialisation."""
    from components.ctr.id_pretrain import rescale

    u, p = log_bpr(model, ds, cfg, model.user_emb.embedding_dim, cfg.id_pretrain_epochs, seed, acc)
    with torch.no_grad():
        for emb, table in ((model.user_emb, u), (model.poi_emb, p)):
            rows = table.abs().sum(-1) > 0
            emb.weight[rows] = rescale(table, cfg.id_pretrain_rms)[rows].to(emb.weight.dtype)


def _by_length(data: RequestData, size: int) -> list[np.ndarray]:
    """Request indices in batches of ``size`` sorted by history length: a batch pads its histories
    to its longest one, so requests of similar length are scored together (results are put back
    in request order)."""
    order = np.argsort(data.history_lengths(), kind="stable")
    return [order[i:i + size] for i in range(0, len(order), size)]


@torch.no_grad()
def request_constants(model: CTRModel, data: RequestData, ds: CTRDataset, cfg: CTRConfig,
                      device=None) -> dict[str, np.ndarray]:
    """``model.request_constants`` of every request of ``data`` (row i = request i), computed once so
    that no training step or evaluation recomputes what depends on the data alone."""
    device = device or next(model.parameters()).device
    parts: dict[str, list] = {}
    batches = _by_length(data, cfg.eval_batch_requests)
    for idx in batches:
        b = to_tensors(make_batch(data, idx, ds.history, ds.pois, cfg.max_history,
                                  scene_table=ds.scene_table if model.use_text else None), device)
        for k, v in model.request_constants(b).items():
            parts.setdefault(k, []).append(v.cpu().numpy())
    if not parts:
        return {}
    where = np.argsort(np.concatenate(batches), kind="stable")  # back to request order
    return {k: np.concatenate(v)[where] for k, v in parts.items()}


@torch.no_grad()
def predict(model: CTRModel, data: RequestData, ds: CTRDataset, cfg: CTRConfig, device=None,
            max_history: int | None = None, constants: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Scores of every real candidate, flat in (request, slot) order: ctr, ctcvr and the labels.
    ``constants``: ``request_constants`` of ``data`` (computed with the same ``max_history``)."""
    model.eval()
    device = device or next(model.parameters()).device
    out = {k: [] for k in ("ctr", "ctcvr", "click", "order", "user", "row", "slot")}
    for idx in _by_length(data, cfg.eval_batch_requests):
        b = make_batch(data, idx, ds.history, ds.pois, max_history or cfg.max_history,
                       scene_table=ds.scene_table if model.use_text else None, constants=constants)
        t = to_tensors(b, device)
        pred = model(t)
        m = b["mask"]
        out["ctr"].append(pred["ctr"].float().cpu().numpy()[m])
        out["ctcvr"].append(pred["ctcvr"].float().cpu().numpy()[m])
        out["click"].append(b["click"][m])
        out["order"].append(b["order"][m])
        out["user"].append(np.broadcast_to(data.user_id[idx][:, None], m.shape)[m])
        out["row"].append(np.broadcast_to(idx[:, None], m.shape)[m])
        out["slot"].append(np.broadcast_to(np.arange(m.shape[1])[None, :], m.shape)[m])
    flat = {k: np.concatenate(v) if v else np.array([]) for k, v in out.items()}
    order = np.lexsort((flat["slot"], flat["row"]))
    return {k: v[order] for k, v in flat.items()}


_NOT_TRAINING = {"cpu_threads", "eval_batch_requests", "calibration_bins", "registered_name", "promotion_metric",
                 "promotion_margin", "promotion_floor_margin", "mixed_precision"}


def _fingerprint(name: str, cfg: CTRConfig, seed: int, ds: CTRDataset) -> str:
    """What a checkpoint is only valid for: the training knobs, the seed and the encoded data itself
    (the training and validation arrays, the PoI table's text embeddings, the scene table)."""
    arrays = [getattr(split, f) for split in (ds.train, ds.valid)
              for f in ("user", "scene", "scene_value", "poi_row", "numeric", "click", "order", "mask")]
    arrays += [a for a in (ds.pois.text_emb, ds.scene_table, ds.history.poi_row, ds.history.context) if a is not None]
    data = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
    return fingerprint({"model": name, "ctr": cfg.model_dump(mode="json", exclude=_NOT_TRAINING), "seed": seed},
                       json.dumps([ds.valid_start_ns, ds.test_start_ns]), hashlib.sha256(data).digest())


class _EpochBatches:
    """The request batches of each epoch for this process, drawn as one seeded stream: epoch e's order
    and id-dropout seed come after epoch e-1's draws, so a resumed run replays the draws it skips."""

    def __init__(self, ds: CTRDataset, cfg: CTRConfig, seed: int, use_text: bool, acc,
                 constants: dict[str, np.ndarray] | None = None):
        self.ds, self.cfg, self.use_text, self.acc, self.constants = ds, cfg, use_text, acc, constants
        self.rng, self.drawn = np.random.default_rng(seed), 0

    def __call__(self, epoch: int) -> "_Epoch":
        while True:
            batches = batch_order(self.ds.train.history_lengths(), self.cfg.batch_requests, self.rng)
            drop_rng = np.random.default_rng(self.rng.integers(1 << 31))
            self.drawn += 1
            if self.drawn > epoch:
                return _Epoch(self, batches[self.acc.process_index::self.acc.num_processes], drop_rng)


class _Epoch:
    """One epoch's batches as tensors, built in order (id dropout draws from one generator)."""

    def __init__(self, parent: _EpochBatches, batches: list, drop_rng):
        self.p, self.batches, self.drop_rng = parent, batches, drop_rng

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        p = self.p
        return to_tensors(make_batch(p.ds.train, self.batches[i], p.ds.history, p.ds.pois, p.cfg.max_history,
                                     p.cfg.id_dropout, self.drop_rng, p.ds.scene_table if p.use_text else None,
                                     p.constants), p.acc.device)


def train_model(name: str, ds: CTRDataset, cfg: CTRConfig, seed: int = 0, ckpt_dir: Path | None = None,
                log=None, progress: bool = True, replay: dict | None = None) -> tuple[CTRModel, dict]:
    """Train ``name`` on ``ds.train`` with early stopping on ``ds.valid``; returns the best model
    (unwrapped, on its device) and the training history. ``log(metrics, step)`` receives per-epoch
    metrics on the main process. With ``ckpt_dir``, a run resumes from its last finished epoch.

    ``replay``: the info of an earlier fit; its validation figures stand in for evaluating, so that
    this fit repeats its learning-rate decays and stops at its best epoch (``ctr.refit``)."""
    t0 = time.perf_counter()
    acc = make_accelerator(cfg.mixed_precision, seed=seed)
    net = build_model(name, cfg, ds, seed, acc)

    def loss(model, b):
        losses = net.loss(model(b), b)
        return losses["loss"], {k: float(v.detach()) for k, v in losses.items() if k != "loss"}

    # Computed once: what depends on the requests alone (history profile, CoFARS's offline graph).
    train_constants = request_constants(net, ds.train, ds, cfg, acc.device)
    valid_constants = request_constants(net, ds.valid, ds, cfg, acc.device) if replay is None else None
    replayed = iter([{k: v for k, v in row.items() if k.startswith("valid_")} for row in (replay or {}).get("history", [])])

    def evaluate(model) -> dict:
        if replay is not None:
            return next(replayed)
        scores = predict(model, ds.valid, ds, cfg, acc.device, constants=valid_constants)
        return {"valid_auc_ctr": auc(scores["click"], scores["ctr"]),
                "valid_auc_ctcvr": auc(scores["order"], scores["ctcvr"])}

    recipe = Recipe(model=net, batches=_EpochBatches(ds, cfg, seed, net.use_text, acc, train_constants), loss=loss,
                    evaluate=evaluate, optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay))
    with cpu_threads(cfg.cpu_threads):
        out = fit(acc, recipe, epochs=cfg.epochs if replay is None else max(1, int(replay["best_epoch"])),
                  ckpt_dir=ckpt_dir,
                  fingerprint=_fingerprint(name, cfg, seed, ds) if ckpt_dir is not None else "",
                  grad_clip=cfg.grad_clip, monitor="valid_auc_ctr", patience=cfg.patience, min_delta=1e-5,
                  restore_best=True, lr_decay=cfg.lr_decay, decay_restores_best=cfg.lr_decay_restores_best,
                  ema_decay=cfg.ema_decay,
                  log=log, progress=progress, desc=f"ctr {name}")
    net = out.model
    net.eval()
    best = out.best or {"value": -1.0, "epoch": 0}
    info = {"history": out.history, "best_epoch": best["epoch"], "best_valid_auc_ctr": best["value"],
            "epochs_run": len(out.history), "resumed_from_epoch": out.start_epoch, "lr_decays": out.lr_decays,
            "seconds": round(time.perf_counter() - t0, 2), "device": str(acc.device),
            "mixed_precision": acc.mixed_precision, "parameters": sum(p.numel() for p in net.parameters())}
    return net, info
