"""Bounded search over the CTR model's knobs (Optuna, TPE sampler seeded by ``seed``), judged on
the validation split only (the test split stays untouched for evaluation and promotion).

Every trial is one MLflow run nested under the tuning run (its knobs as params, its validation
AUCs and epochs as metrics). The search stops after ``trials`` trials or ``budget_seconds``,
whichever comes first; the best knobs are written as ``{ctr: {...}}`` to ``params.tuned.yaml``
beside params.yaml, which ``load_params`` merges over params.yaml (so ``scenerec ctr``,
``dvc repro`` and the flows train with them; dvc.yaml lists the file as a dependency of ``ctr``).
Optuna is an optional dependency (``pip install -e .[bench]``).
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from components.config import TUNED_PARAMS, Params

# The knobs searched and their ranges: the ones that move validation AUC most on a new dataset.
SPACE = {
    "lr": ("log", 3e-4, 1e-2),
    "weight_decay": ("log", 1e-7, 1e-3),
    "dropout": ("float", 0.0, 0.3),
    "id_dropout": ("float", 0.0, 0.3),
    "embed_dim": ("choice", [8, 16, 32]),
    "batch_requests": ("choice", [128, 256, 512]),
    "cross_layers": ("choice", [0, 1, 2]),
    # How far to trust the LLM's texts: trusting less cost 0.002-0.004 on the default world, whose PoI
    # texts are written from its latents, and gained 0.001-0.002 on factor_world, whose texts say little
    # (README, "A world from another generator").
    "alignment_weight": ("float", 0.0, 0.3),
    "text_dropout": ("float", 0.0, 0.5),
    # The other candidates of the page as an input: +0.0009 on factor_world, +0.0015 on sparse_clicks,
    # -0.0029 on the default world (README, "A world from another generator"): a per-dataset choice.
    "page_context": ("choice", [False, True]),
    # The BPR warm start of the ID rows from the behaviour log: +0.0055 where personal taste decides most
    # (taste_world), -0.0058 where logs are short and users new (young_platform): a per-dataset choice
    # (README, "Two more worlds from the other generator").
    "id_pretrain_epochs": ("choice", [0, 5]),
    # The same log's PoI vectors as an input and in the history profile (on by default; README, "The
    # behaviour log's PoI vectors"): family +0.0005, taste_world +0.0107, convenience_market -0.0011.
    "log_poi_dim": ("choice", [0, 16]),
}


def search_space(base) -> tuple[dict, dict]:
    """``SPACE`` widened to hold the configuration as it stands (``base``: a CTRConfig), and that
    configuration as the first trial's point: a range grows to its value, a choice list gains it (a
    log range cannot hold 0: such a knob keeps its range and is drawn in the first trial too)."""
    space, start = {}, {}
    for name, (kind, *args) in SPACE.items():
        v = getattr(base, name)
        if kind == "choice":
            space[name], start[name] = (kind, sorted(set(args[0]) | {v})), v
        elif kind == "log" and v <= 0:
            space[name] = (kind, *args)
        else:
            space[name], start[name] = (kind, min(args[0], v), max(args[1], v)), v
    return space, start


def suggest(trial, space: dict) -> dict:
    """One point of ``space`` (``search_space``) from an Optuna trial."""
    out = {}
    for name, (kind, *args) in space.items():
        if kind == "log":
            out[name] = trial.suggest_float(name, args[0], args[1], log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, args[0], args[1])
        else:
            out[name] = trial.suggest_categorical(name, args[0])
    return out


def tune_ctr(params: Params, trials: int, budget_seconds: float, parent_run_id: str | None = None,
             out: Path | None = None) -> dict:
    """Search, log every trial to MLflow, write the best knobs to ``params.tuned.yaml``; returns a
    summary (best validation CTR AUC, its knobs, trials run, the file written)."""
    import optuna

    from components import tracking
    from components.ctr.data import build_dataset
    from components.ctr.train import train_model

    base = params.ctr
    neural = [m for m in (base.ensemble_members if base.model == "ensemble" else [base.model]) if m != "lightgbm"]
    if not neural:
        raise ValueError(f"tune searches the neural CTR model's knobs; ctr.model is {base.model} with no neural model "
                         "(set it, or a member of ctr.ensemble_members, to one of the neural models, e.g. larr_cofars)")
    base = base.model_copy(update={"model": neural[0]})  # an ensemble's neural member is what is tuned
    space, start = search_space(base)
    t0 = time.perf_counter()
    ds = build_dataset(params)

    def objective(trial) -> float:
        knobs = suggest(trial, space)
        cfg = base.model_copy(update=knobs)
        with tracking.tracked_run(params, f"tune-trial-{trial.number}", parent_run_id,
                                  tags={"scenerec.step": "tune_trial"}) as run_id:
            tracking.log_params(params, run_id, {"ctr": knobs, "model": cfg.model})
            _, info = train_model(cfg.model, ds, cfg, seed=params.seed, progress=False)
            best = info["history"][info["best_epoch"] - 1] if info["best_epoch"] else {}
            tracking.log_metrics(params, run_id, {"valid.auc.ctr": info["best_valid_auc_ctr"],
                                                  "valid.auc.ctcvr": best.get("valid_auc_ctcvr", float("nan")),
                                                  "epochs_run": info["epochs_run"], "seconds": info["seconds"]})
        return info["best_valid_auc_ctr"]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=params.seed))
    # The first trial is the configuration as it stands, so the knobs written are never worse on
    # validation than not tuning (Optuna's enqueue_trial; TPE's own start is random).
    study.enqueue_trial(start)
    remaining = max(budget_seconds - (time.perf_counter() - t0), 1.0)
    study.optimize(objective, n_trials=trials, timeout=remaining)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise RuntimeError(f"tune: no trial finished within {budget_seconds:.0f} s; raise the budget")
    out = Path(out or params.root / TUNED_PARAMS)
    best = {k: (float(v) if isinstance(v, float) else v) for k, v in study.best_params.items()}
    out.write_text("# Written by `scenerec tune`: the best CTR knobs on the validation split, merged over\n"
                   "# params.yaml by load_params. Delete the ctr section (leave {}) to go back to params.yaml.\n"
                   + yaml.safe_dump({"ctr": best}, sort_keys=True))
    return {"best_valid_auc_ctr": round(study.best_value, 5), "best": best, "trials": len(done),
            "baseline_knobs": {k: getattr(base, k) for k in SPACE}, "written": str(out),
            "seconds": round(time.perf_counter() - t0, 1)}
