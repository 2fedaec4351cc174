"""fit(): the one training loop of SceneRec (FuxiCTR's ``BaseModel.fit`` shape).

A method supplies only what is its own, as a :class:`Recipe`: its model, optimizer (and LR
schedule), batches, loss and evaluation, plus hooks where it must step in (HKFR's LoRA wrap,
HomoDistil's importance update and pruning schedule, state such as the pruning masks). fit()
owns the rest: `accelerate` (device, bf16 autocast on CUDA / fp32 on CPU, DDP from the launcher's
environment), gradient clipping, the progress bar, metrics through the caller's ``log`` callback on
the main process only, early stopping, learning-rate decay on a plateau, a time budget, and the atomic checkpoints of
components/training/checkpoint.py that a rerun resumes from.

Two ways to count: ``steps=N`` (``batches(step)`` returns the batch of a step, a pure function of
the step, so a checkpoint may fall on any step) or ``epochs=N`` (``batches(epoch)`` returns the
epoch's batches for this process as a sequence; a checkpoint after every epoch).
"""
from __future__ import annotations

import logging
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from components.training import checkpoint as ckpt

logger = logging.getLogger(__name__)


@dataclass
class Recipe:
    """What a method brings to fit(). ``loss(model, batch)`` returns the loss tensor, or (loss,
    {name: float}) with parts to log; ``evaluate(model)`` returns metrics (on the unwrapped model,
    every process, so an early-stopping decision agrees)."""

    model: torch.nn.Module
    optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer]
    batches: Callable[[int], Any]
    loss: Callable[[torch.nn.Module, Any], Any]
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None
    evaluate: Callable[[torch.nn.Module], Mapping[str, float]] | None = None
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None  # before the optimizer (HKFR: LoRA)
    after_backward: Callable[[int], None] | None = None  # (step) before clipping (HomoDistil: PLATON scores)
    after_step: Callable[[int], Mapping[str, float] | None] | None = None  # (steps done) HomoDistil: prune
    state: dict[str, Any] = field(default_factory=dict)  # more objects with state_dict(), checkpointed too


@dataclass
class FitResult:
    """The trained (unwrapped) model and what happened: ``history`` holds the evaluation / epoch rows
    of the whole run (kept in checkpoints), ``logged`` the step rows logged in this call, ``step_rows``
    every step of this call."""

    model: torch.nn.Module
    start_step: int
    start_epoch: int
    step: int
    epoch: int
    history: list[dict]
    logged: list[dict]
    step_rows: list[dict]
    train_seconds: float
    finished: bool
    best: dict | None
    stopped_early: bool
    lr_decays: int = 0  # plateau decays of the learning rate over the whole run (fit's lr_decay)


def fit(acc, recipe: Recipe, *, steps: int | None = None, epochs: int | None = None,
        ckpt_dir: Path | None = None, fingerprint: str = "", keep: int = 2, checkpoint_every: int | None = None,
        grad_clip: float = 0.0, eval_every: int | None = None, eval_at_start: bool = False,
        monitor: str | None = None, mode: str = "max", patience: int | None = None, min_delta: float = 0.0,
        restore_best: bool = False, lr_decay: float = 1.0, decay_restores_best: bool = False,
        ema_decay: float = 0.0, log: Callable[[dict, int], None] | None = None, log_every: int | None = None,
        max_steps: int | None = None, time_budget_s: float | None = None, fresh: bool = False,
        progress: bool = True, desc: str = "train") -> FitResult:
    """Train ``recipe`` with accelerator ``acc`` for ``steps`` or ``epochs``, resuming from the newest
    intact checkpoint of run ``fingerprint`` in ``ckpt_dir``; stop early after ``patience`` evaluations
    without ``monitor`` improving by ``min_delta``, after ``max_steps`` steps of this call, or once
    ``time_budget_s`` has passed (at a checkpoint; with ``epochs`` both are checked at epoch ends).
    ``lr_decay`` < 1: an evaluation that does not improve ``monitor`` (and does not stop the run)
    multiplies every parameter group's learning rate by it (Keras' / Lightning's ReduceLROnPlateau
    with no patience of its own; the early-stopping count goes on), after loading the best weights
    back first with ``decay_restores_best``. A per-step ``scheduler`` keeps the decay: its
    ``base_lrs`` (what LambdaLR and the other closed-form schedules start from) are scaled too.
    ``ema_decay`` > 0: an exponential moving average of the weights (floating-point state) is kept
    after every optimizer step; evaluations, the best weights and the returned model use the average
    (Polyak averaging, as timm's ModelEmaV2), training goes on with the raw weights.
    ``log(metrics, step)`` runs on the main process."""
    from tqdm.auto import tqdm

    if (steps is None) == (epochs is None):
        raise ValueError("fit: give either steps (batches(step) -> a batch) or epochs (batches(epoch) -> a sequence)")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"fit: lr_decay must be in (0, 1] (1 = no decay), got {lr_decay}")
    if lr_decay < 1 and monitor is None:
        raise ValueError("fit: lr_decay < 1 needs a monitor (the metric whose plateau decays the learning rate)")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"fit: ema_decay must be in [0, 1) (0 = off), got {ema_decay}")
    keep_best = restore_best or (lr_decay < 1 and decay_restores_best)
    by_step = steps is not None
    main = acc.is_main_process
    model = recipe.wrap(recipe.model) if recipe.wrap is not None else recipe.model
    optimizer = recipe.optimizer(model)
    scheduler = recipe.scheduler(optimizer) if recipe.scheduler is not None else None
    # The scheduler is not prepared: accelerate would step it once per process. It is checkpointed.
    prepared, opt = acc.prepare(model, optimizer)
    net = acc.unwrap_model(prepared)

    t: dict[str, Any] = {"step": 0, "epoch": 0, "in_epoch": 0, "history": [], "best": None, "bad": 0, "stopped": False}
    best_weights: dict | None = None
    ema = _WeightAverage(net, ema_decay) if ema_decay > 0 else None
    if ckpt_dir is not None:
        ckpt_dir = Path(ckpt_dir)
        if main:
            for p in ckpt.drop_stale(ckpt_dir, fingerprint, fresh):
                logger.warning("%s: %s; deleted", p, "asked to start fresh" if fresh else "a checkpoint of another run")
            ckpt_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        found = ckpt.newest_intact(ckpt_dir, fingerprint)
        if found is not None:
            saved = ckpt.read(found, net, acc.process_index, acc.device)
            optimizer.load_state_dict(saved["state"]["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["state"]["scheduler"])
            for name, obj in recipe.state.items():
                obj.load_state_dict(saved["state"][name])
            if ema is not None and "ema" in saved["state"]:
                ema.load_state_dict(saved["state"]["ema"])
            t, best_weights = saved["trainer"], saved["best"]
    start_step, start_epoch = t["step"], t["epoch"]
    stop_at = start_step + max_steps if max_steps is not None else None
    logged: list[dict] = []
    step_rows: list[dict] = []
    window: list[dict] = []
    side = 0.0  # evaluation, logging and checkpoints: not training time
    t0 = time.perf_counter()

    def emit(metrics: dict, step: int) -> None:
        if log is not None and main:
            log(metrics, step)

    def evaluate() -> dict:
        with ema.swapped_in() if ema is not None else nullcontext():
            ev = dict(recipe.evaluate(net))
        prepared.train()
        return ev

    def weights() -> dict:
        """The weights that count (for the best epoch): the average with ``ema_decay``, else the raw ones."""
        if ema is not None:
            return ema.full_state()
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    def consider(ev: Mapping[str, float]) -> None:
        nonlocal best_weights
        if monitor is None:
            return
        value, best = ev.get(monitor), t["best"]
        improved = value is not None and value == value and (
            best is None or (value > best["value"] + min_delta if mode == "max" else value < best["value"] - min_delta))
        if improved:
            t["best"], t["bad"] = {"value": float(value), "step": t["step"], "epoch": t["epoch"]}, 0
            if keep_best:
                best_weights = weights()
        else:
            t["bad"] += 1
            t["stopped"] = patience is not None and t["bad"] >= patience
            if lr_decay < 1 and not t["stopped"]:
                decay()

    def decay() -> None:
        """The plateau's learning-rate decay (the optimizer's and scheduler's state: checkpointed)."""
        if decay_restores_best and best_weights is not None:
            net.load_state_dict(best_weights)
            if ema is not None:
                ema.reset()
        for group in optimizer.param_groups:
            group["lr"] *= lr_decay
        if scheduler is not None and hasattr(scheduler, "base_lrs"):
            scheduler.base_lrs = [b * lr_decay for b in scheduler.base_lrs]
        t["lr_decays"] = t.get("lr_decays", 0) + 1

    def save() -> None:
        if ckpt_dir is None:
            return
        folder = ckpt.tmp_dir(ckpt_dir, t["step"])
        acc.wait_for_everyone()
        if main:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        acc.wait_for_everyone()
        ckpt.write_rng(folder, acc.process_index)
        acc.wait_for_everyone()
        if main:
            state = {"optimizer": optimizer.state_dict(), **{k: o.state_dict() for k, o in recipe.state.items()}}
            if ema is not None:
                state["ema"] = ema.state_dict()
            if scheduler is not None:
                state["scheduler"] = scheduler.state_dict()
            ckpt.publish(folder, ckpt_dir, t["step"], fingerprint, net, state, t, best_weights, keep)
            if hasattr(log, "flush"):
                log.flush()  # what a resumed run will not log again
        acc.wait_for_everyone()

    if eval_at_start and recipe.evaluate is not None and t["step"] == 0:
        ev = evaluate()
        t["history"].append({"step": 0, **ev})
        emit(ev, 0)

    halt = False
    for epoch in range(t["epoch"], 1 if by_step else epochs):
        if t["stopped"] or halt:
            break
        seq = _ByStep(recipe.batches, steps) if by_step else recipe.batches(epoch)
        sums: dict[str, list[float]] = {}
        prepared.train()
        bar = tqdm(total=len(seq), initial=t["in_epoch"], dynamic_ncols=True, leave=by_step or epochs == 1,
                   desc=desc if by_step else f"{desc} epoch {epoch + 1}/{epochs}",
                   disable=not (progress and acc.is_local_main_process))
        for i in range(t["in_epoch"], len(seq)):
            step = t["step"]
            batch = seq[i]
            with acc.autocast():
                out = recipe.loss(prepared, batch)
            loss, parts = out if isinstance(out, tuple) else (out, {})
            acc.backward(loss)
            if recipe.after_backward is not None:
                recipe.after_backward(step)
            if grad_clip and grad_clip > 0:
                acc.clip_grad_norm_(prepared.parameters(), grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            opt.step()
            if scheduler is not None:
                scheduler.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            done = t["step"] = step + 1
            t["in_epoch"] = i + 1
            extra = recipe.after_step(done) if recipe.after_step is not None else None
            value = float(acc.reduce(loss.detach(), reduction="mean")) if acc.num_processes > 1 else float(loss.detach())
            row = {"loss": value, **parts, "lr": lr, **(extra or {})}
            step_rows.append(row)
            window.append(row)
            for k, v in row.items():
                sums.setdefault(k, []).append(float(v))
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")

            ts = time.perf_counter()
            last = by_step and done == steps
            if log_every and (done % log_every == 0 or last):
                mean = {k: float(np.mean([r[k] for r in window if k in r])) for k in row}
                logged.append({"step": done, **mean})
                window = []
                emit(mean, done)
            if by_step and recipe.evaluate is not None and ((eval_every and done % eval_every == 0) or last):
                ev = evaluate()
                t["history"].append({"step": done, **ev})
                emit(ev, done)
                consider(ev)
            halt = _out_of_budget(done, stop_at, t0, time_budget_s) or t["stopped"]
            if by_step and ((checkpoint_every and done % checkpoint_every == 0) or last or halt):
                save()
            side += time.perf_counter() - ts
            if by_step and halt:
                break
        bar.close()
        if by_step:
            continue
        ts = time.perf_counter()
        t["epoch"], t["in_epoch"] = epoch + 1, 0
        row = {"epoch": epoch + 1, **{f"train_{k}": float(np.mean(v)) for k, v in sums.items()
                                      if k != "lr" or scheduler is not None or lr_decay < 1}}
        if recipe.evaluate is not None:
            ev = evaluate()
            row.update(ev)
            consider(ev)
        t["history"].append(row)
        emit(row, epoch + 1)
        save()
        side += time.perf_counter() - ts
        halt = _out_of_budget(t["step"], stop_at, t0, time_budget_s)

    train_seconds = time.perf_counter() - t0 - side
    if hasattr(log, "flush") and main:
        log.flush()
    if restore_best and best_weights is not None:
        net.load_state_dict(best_weights)
    elif ema is not None:
        net.load_state_dict(ema.full_state())
    acc.wait_for_everyone()
    finished = t["stopped"] or (t["step"] >= steps if by_step else t["epoch"] >= epochs)
    return FitResult(model=net, start_step=start_step, start_epoch=start_epoch, step=t["step"], epoch=t["epoch"],
                     history=t["history"], logged=logged, step_rows=step_rows, train_seconds=train_seconds,
                     finished=bool(finished), best=t["best"], stopped_early=bool(t["stopped"]),
                     lr_decays=int(t.get("lr_decays", 0)))


class _WeightAverage:
    """Exponential moving average of a module's floating-point state (parameters and float buffers);
    integer buffers (counters) are taken as they are. The average starts at the first weights and its
    decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates (TensorFlow's
    ExponentialMovingAverage with num_updates), so early epochs are not dominated by the start."""

    def __init__(self, net, decay: float):
        self.net, self.decay, self.n = net, decay, 0
        self.avg = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in self.net.state_dict().items():
            if k in self.avg:
                self.avg[k].mul_(d).add_(v.detach(), alpha=1 - d)

    def reset(self) -> None:
        self.avg = {k: v.detach().clone() for k, v in self.net.state_dict().items() if v.is_floating_point()}
        self.n = 0

    def full_state(self) -> dict:
        """The module's state dict with the averaged tensors (copies)."""
        return {k: (self.avg[k] if k in self.avg else v).detach().clone() for k, v in self.net.state_dict().items()}

    @contextmanager
    def swapped_in(self):
        raw = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        self.net.load_state_dict(self.full_state())
        try:
            yield
        finally:
            self.net.load_state_dict(raw)

    def state_dict(self) -> dict:
        return {"n": self.n, "avg": {k: v.detach().cpu() for k, v in self.avg.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.n = int(state["n"])
        for k, v in state["avg"].items():
            self.avg[k] = v.to(self.avg[k].device, self.avg[k].dtype)


def _out_of_budget(done: int, stop_at: int | None, t0: float, budget: float | None) -> bool:
    return (stop_at is not None and done >= stop_at) or (budget is not None and time.perf_counter() - t0 >= budget)


class _ByStep:
    """The batches of a step-counted run as a sequence: item ``i`` is ``batch(i)``."""

    def __init__(self, batch: Callable[[int], Any], n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.batch(i)


class MlflowLog:
    """A ``log`` callback for fit(): metrics of MLflow run ``run_id`` named ``prefix + key``, sent in
    batches at each checkpoint and at the end (one SQLite transaction per step would cost more than
    a step of a small model on 2 CPU cores). No run id: nothing is logged."""

    def __init__(self, params, run_id: str | None, prefix: str = ""):
        self.params, self.run_id, self.prefix, self.rows = params, run_id, prefix, []

    def __call__(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run_id:
            self.rows += [(self.prefix + k, float(v), step) for k, v in metrics.items()
                          if isinstance(v, (int, float, np.floating, np.integer))]

    def flush(self) -> None:
        """Send what is buffered."""
        if not self.rows:
            return
        import mlflow
        from mlflow.entities import Metric

        from components import tracking

        now = int(time.time() * 1000)
        client = mlflow.MlflowClient(tracking.tracking_uri(self.params))
        for i in range(0, len(self.rows), 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(self.run_id, metrics=[Metric(k, v, now, s) for k, v, s in self.rows[i:i + 1000]])
        self.rows = []
