"""Training and scoring loop of the CTR models: `accelerate` for device, precision and DDP (the
rules of components/llm/training.py), epochs over request batches bucketed by history length,
early stopping on validation CTR AUC, a checkpoint per epoch to resume from.

Under ``torchrun`` / ``accelerate launch`` each process takes every world-size-th batch; every
process scores the (small) validation split itself, so the early-stopping decision agrees.
"""
from __future__ import annotations

import copy
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


def build_model(name: str, cfg: CTRConfig, ds: CTRDataset, seed: int) -> CTRModel:
    """A fresh model sized for the dataset's encoder (seeded)."""
    torch.manual_seed(seed)
    text = ds.pois.text_emb
    has_text = text is not None and ds.scene_table is not None
    shapes = ModelShapes.from_sizes(ds.encoder.sizes(), text.shape[1] if has_text else 0)
    return CTRModel(name, cfg, shapes)


@torch.no_grad()
def predict(model: CTRModel, data: RequestData, ds: CTRDataset, cfg: CTRConfig, device=None,
            max_history: int | None = None) -> dict[str, np.ndarray]:
    """Scores of every real candidate, flat in (request, slot) order: ctr, ctcvr and the labels."""
    model.eval()
    device = device or next(model.parameters()).device
    out = {k: [] for k in ("ctr", "ctcvr", "click", "order", "user", "row", "slot")}
    for idx in batch_order(data.history_lengths(), cfg.eval_batch_requests, None):
        b = make_batch(data, idx, ds.history, ds.pois, max_history or cfg.max_history,
                       scene_table=ds.scene_table if model.use_text else None)
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
    return {k: np.concatenate(v) if v else np.array([]) for k, v in out.items()}


_NOT_TRAINING = {"cpu_threads", "eval_batch_requests", "calibration_bins", "registered_name", "promotion_metric",
                 "promotion_margin", "promotion_floor_margin", "mixed_precision"}


def _fingerprint(name: str, cfg: CTRConfig, seed: int, ds: CTRDataset) -> str:
    h = hashlib.sha256(json.dumps([name, cfg.model_dump(mode="json", exclude=_NOT_TRAINING), seed,
                                   len(ds.train), int(ds.train.click.sum()), ds.test_start_ns], sort_keys=True).encode())
    return h.hexdigest()[:16]


def train_model(name: str, ds: CTRDataset, cfg: CTRConfig, seed: int = 0, ckpt_dir: Path | None = None,
                log=None, progress: bool = True) -> tuple[CTRModel, dict]:
    """Train ``name`` on ``ds.train`` with early stopping on ``ds.valid``; returns the best model
    (unwrapped, on its device) and the training history. ``log(metrics, step)`` receives per-epoch
    metrics on the main process. With ``ckpt_dir``, a run resumes from its last finished epoch."""
    from tqdm.auto import tqdm

    from components.llm.training import cpu_threads, make_accelerator, reset_stale_checkpoints

    t0 = time.perf_counter()
    acc = make_accelerator(cfg.mixed_precision, seed=seed)
    model = build_model(name, cfg, ds, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, opt = acc.prepare(model, opt)
    net = acc.unwrap_model(model)
    history: list[dict] = []
    best = {"auc": -1.0, "epoch": 0, "state": None}
    start_epoch = 0
    if ckpt_dir is not None:
        ckpt_dir = Path(ckpt_dir)
        reset_stale_checkpoints(ckpt_dir, _fingerprint(name, cfg, seed, ds), acc.is_main_process)
        acc.wait_for_everyone()
        state_file = ckpt_dir / "state" / "trainer.json"
        if state_file.exists():
            acc.load_state(str(ckpt_dir / "state"))
            saved = json.loads(state_file.read_text())
            start_epoch, history = saved["epoch"], saved["history"]
            best = {"auc": saved["best_auc"], "epoch": saved["best_epoch"],
                    "state": torch.load(ckpt_dir / "best.pt", map_location=acc.device)}

    rng = np.random.default_rng(seed)
    for _ in range(start_epoch):  # the batch order of epoch e must not depend on resuming
        batch_order(ds.train.history_lengths(), cfg.batch_requests, rng)
        rng.integers(1 << 31)  # the id-dropout seed drawn in the loop
    bad_epochs = sum(1 for h in history if h["epoch"] > best["epoch"])
    with cpu_threads(cfg.cpu_threads):
        for epoch in range(start_epoch, cfg.epochs):
            if bad_epochs >= cfg.patience:
                break
            batches = batch_order(ds.train.history_lengths(), cfg.batch_requests, rng)
            drop_rng = np.random.default_rng(rng.integers(1 << 31))
            mine = batches[acc.process_index::acc.num_processes]
            model.train()
            sums: dict[str, float] = {}
            bar = tqdm(mine, desc=f"ctr {name} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not (progress and acc.is_local_main_process))
            for idx in bar:
                b = to_tensors(make_batch(ds.train, idx, ds.history, ds.pois, cfg.max_history, cfg.id_dropout,
                                          drop_rng, ds.scene_table if net.use_text else None), acc.device)
                with acc.autocast():
                    out = model(b)
                    losses = net.loss(out, b)
                opt.zero_grad(set_to_none=True)
                acc.backward(losses["loss"])
                if cfg.grad_clip > 0:
                    acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.set_postfix(loss=f"{losses['loss'].item():.4f}")
            scores = predict(net, ds.valid, ds, cfg, acc.device)
            row = {"epoch": epoch + 1, **{f"train_{k}": v / max(len(mine), 1) for k, v in sums.items()},
                   "valid_auc_ctr": auc(scores["click"], scores["ctr"]),
                   "valid_auc_ctcvr": auc(scores["order"], scores["ctcvr"])}
            history.append(row)
            if log is not None and acc.is_main_process:
                log(row, epoch + 1)
            if row["valid_auc_ctr"] > best["auc"] + 1e-5:
                best = {"auc": row["valid_auc_ctr"], "epoch": epoch + 1,
                        "state": copy.deepcopy({k: v.detach().clone() for k, v in net.state_dict().items()})}
                bad_epochs = 0
            else:
                bad_epochs += 1
            if ckpt_dir is not None:
                acc.wait_for_everyone()
                acc.save_state(str(ckpt_dir / "state"))
                if acc.is_main_process:
                    torch.save(best["state"], ckpt_dir / "best.pt")
                    (ckpt_dir / "state" / "trainer.json").write_text(json.dumps(
                        {"epoch": epoch + 1, "history": history, "best_auc": best["auc"], "best_epoch": best["epoch"]}))
    if best["state"] is not None:
        net.load_state_dict(best["state"])
    net.eval()
    info = {"history": history, "best_epoch": best["epoch"], "best_valid_auc_ctr": best["auc"],
            "epochs_run": len(history), "resumed_from_epoch": start_epoch,
            "seconds": round(time.perf_counter() - t0, 2), "device": str(acc.device),
            "mixed_precision": acc.mixed_precision, "parameters": sum(p.numel() for p in net.parameters())}
    return net, info
