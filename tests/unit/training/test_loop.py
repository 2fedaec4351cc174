"""fit() and its checkpoints (components/training) on a tiny regression: resume, atomic writes,
corrupt checkpoints, early stopping."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.training import Recipe, fingerprint, fit, make_accelerator
from components.training import checkpoint as ckpt

N, D = 64, 4


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    return x, x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(N, generator=g)


def _recipe(valid=None, dropout: float = 0.2) -> Recipe:
    """A linear model with dropout (so the RNG state matters on resume), batches a pure function of the step."""
    x, y = _data()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Dropout(dropout), torch.nn.Linear(D, 1))

    def batch(step: int):
        idx = np.random.default_rng([0, step]).choice(N, 8, replace=False)
        return x[idx], y[idx]

    def loss(m, b):
        return torch.nn.functional.mse_loss(m(b[0]).squeeze(-1), b[1])

    return Recipe(model=model, optimizer=lambda m: torch.optim.AdamW(m.parameters(), lr=0.05), batches=batch,
                  loss=loss, scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 5, 0.5), evaluate=valid)


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(tmp_path=None, **kw):
    acc = make_accelerator("no", seed=0)
    return fit(acc, _recipe(), steps=12, ckpt_dir=tmp_path, fingerprint="run-a", checkpoint_every=4,
               progress=False, **kw)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path):
    straight = _weights(_run().model)
    first = _run(tmp_path, max_steps=6)  # stops between two checkpoint steps: the stop saves one itself
    assert not first.finished and first.step == 6 and (tmp_path / "step_6").is_dir()
    second = _run(tmp_path)
    assert second.start_step == 6 and second.finished and len(second.step_rows) == 6
    for k, v in _weights(second.model).items():
        assert torch.allclose(v, straight[k], atol=1e-6), k
    assert _run(tmp_path).start_step == 12  # finished: a rerun trains nothing


def test_a_crash_between_two_files_leaves_the_previous_checkpoint_the_newest_intact(tmp_path, monkeypatch):
    real_save = ckpt._save

    class Killed(Exception):
        pass

    def killed_at_step_8(obj, path):
        if path.parent.name.endswith("_8") and path.name == ckpt.STATE:  # model written, state not yet
            raise Killed
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "_save", killed_at_step_8)
    with pytest.raises(Killed):
        _run(tmp_path)
    monkeypatch.setattr(ckpt, "_save", real_save)
    assert not (tmp_path / "step_8").exists() and (tmp_path / ".tmp_step_8" / ckpt.MODEL).exists()
    assert ckpt.newest_intact(tmp_path, "run-a") == tmp_path / "step_4"
    resumed = _run(tmp_path)
    assert resumed.start_step == 4 and resumed.finished
    assert not (tmp_path / ".tmp_step_8").exists()
    straight = _weights(_run().model)
    for k, v in _weights(resumed.model).items():
        assert torch.allclose(v, straight[k], atol=1e-6), k


def test_corrupt_or_partial_newest_checkpoints_are_skipped(tmp_path, caplog):
    _run(tmp_path, max_steps=8)
    assert [s for s, _ in ckpt.checkpoints(tmp_path)] == [4, 8]
    weights = tmp_path / "step_8" / ckpt.MODEL
    weights.write_bytes(weights.read_bytes()[:-16])  # a torn write
    (tmp_path / "step_10").mkdir()  # a folder without manifest (a copy cut short)
    (tmp_path / "step_10" / ckpt.MODEL).write_bytes(b"\0")
    assert "SHA-256" in ckpt.check(tmp_path / "step_8", "run-a")
    assert "manifest" in ckpt.check(tmp_path / "step_10", "run-a")
    with caplog.at_level("WARNING"):
        resumed = _run(tmp_path)
    assert resumed.start_step == 4 and resumed.finished
    assert "step_8: skipped" in caplog.text and "step_10: skipped" in caplog.text


def test_checkpoints_of_another_run_are_dropped_not_resumed(tmp_path):
    _run(tmp_path, max_steps=4)
    acc = make_accelerator("no", seed=0)
    other = fit(acc, _recipe(), steps=12, ckpt_dir=tmp_path, fingerprint="run-b", checkpoint_every=4, progress=False)
    assert other.start_step == 0
    manifests = [json.loads((p / ckpt.MANIFEST).read_text()) for _, p in ckpt.checkpoints(tmp_path)]
    assert manifests and all(m["fingerprint"] == "run-b" for m in manifests)


def test_early_stopping_waits_patience_evaluations_and_restores_the_best(tmp_path):
    scores = iter([0.5, 0.7, 0.69, 0.7, 0.6, 0.9, 0.95])
    seen = {}

    def valid(model):
        seen[len(seen) + 1] = _weights(model)
        return {"auc": next(scores)}

    acc = make_accelerator("no", seed=0)
    out = fit(acc, _recipe(valid), steps=12, eval_every=2, monitor="auc", patience=3, min_delta=1e-3,
              restore_best=True, progress=False, ckpt_dir=tmp_path, fingerprint="es", checkpoint_every=4)
    # evaluations at steps 2, 4, 6, 8, 10: best 0.7 at step 4, then 3 without gain -> stop after step 10
    assert out.stopped_early and out.step == 10 and out.best == {"value": 0.7, "step": 4, "epoch": 0}
    for k, v in _weights(out.model).items():
        assert torch.equal(v, seen[2][k]), k
    again = fit(make_accelerator("no", seed=0), _recipe(valid), steps=12, eval_every=2, monitor="auc", patience=3,
                restore_best=True, progress=False, ckpt_dir=tmp_path, fingerprint="es", checkpoint_every=4)
    assert again.start_step == 10 and not again.step_rows  # a stopped run stays stopped
    for k, v in _weights(again.model).items():
        assert torch.equal(v, seen[2][k]), k


def test_epochs_log_train_means_and_evaluation_once_per_epoch(tmp_path):
    x, y = _data()
    rows = []

    @torch.no_grad()
    def valid(m):
        return {"mse": float(torch.nn.functional.mse_loss(m(x).squeeze(-1), y))}

    recipe = _recipe(valid, dropout=0.0)
    recipe.batches = lambda epoch: [(x[i:i + 16], y[i:i + 16]) for i in range(0, N, 16)]
    out = fit(make_accelerator("no", seed=0), recipe, epochs=3, log=lambda r, s: rows.append((s, r)), progress=False,
              ckpt_dir=tmp_path, fingerprint="ep")
    assert [s for s, _ in rows] == [1, 2, 3] and len(out.step_rows) == 12
    assert rows[0][1]["train_loss"] == pytest.approx(np.mean([r["loss"] for r in out.step_rows[:4]]))
    assert rows[-1][1]["mse"] < rows[0][1]["mse"]
    assert [s for s, _ in ckpt.checkpoints(tmp_path)] == [8, 12]  # one per epoch, the newest two kept


def test_time_budget_stops_at_a_checkpoint(tmp_path):
    out = _run(tmp_path, time_budget_s=0.0)
    assert out.step == 1 and not out.finished and (tmp_path / "step_1").is_dir()


def test_fingerprint_follows_knobs_and_data(tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("a b c\n")
    a = fingerprint({"lr": 0.1}, f)
    assert a == fingerprint({"lr": 0.1}, f) and a != fingerprint({"lr": 0.2}, f)
    f.write_text("a b d\n")
    assert a != fingerprint({"lr": 0.1}, f)



def _plateau_run(scores, tmp_path=None, first: int = 0, starts: dict | None = None, **kw):
    """An epoch-counted run (4 steps an epoch, no schedule, lr 0.05) whose validation metric of epoch
    e is ``scores[e - 1]`` (``first``: the epochs a resumed run skips); ``starts[e]``: the weights
    0-based epoch e starts from."""
    x, y = _data()
    recipe = _recipe(dropout=0.0)
    recipe.scheduler = None
    evaluated = []

    def batches(epoch):
        if starts is not None:
            starts[epoch] = _weights(recipe.model)
        return [(x[i:i + 16], y[i:i + 16]) for i in range(0, N, 16)]

    def valid(model):
        evaluated.append(1)
        return {"auc": scores[first + len(evaluated) - 1]}

    recipe.batches, recipe.evaluate = batches, valid
    return fit(make_accelerator("no", seed=0), recipe, epochs=6, monitor="auc", patience=3, min_delta=1e-3,
               restore_best=True, progress=False, ckpt_dir=tmp_path, fingerprint="plateau", **kw)


def test_lr_decays_after_each_epoch_without_improvement_and_resumes_decayed(tmp_path):
    scores = [0.5, 0.7, 0.6, 0.65, 0.8, 0.85]  # epochs 3 and 4 do not beat 0.7; 5 does
    out = _plateau_run(scores, lr_decay=0.5)
    # epoch e trains with the lr its predecessors' evaluations left: halved after epoch 3, again after 4
    assert [r["train_lr"] for r in out.history] == pytest.approx([0.05, 0.05, 0.05, 0.025, 0.0125, 0.0125])
    assert out.lr_decays == 2 and not out.stopped_early and out.best["epoch"] == 6
    plain = _plateau_run(scores)  # lr_decay 1: the lr stays put
    assert plain.lr_decays == 0 and {r["lr"] for r in plain.step_rows} == {0.05}
    # interrupted after epoch 4 (both decays done): the resumed run trains on with the decayed lr
    first = _plateau_run(scores, tmp_path, lr_decay=0.5, max_steps=16)
    assert first.epoch == 4 and first.lr_decays == 2
    rest = _plateau_run(scores, tmp_path, first=4, lr_decay=0.5)
    assert rest.start_epoch == 4 and rest.lr_decays == 2
    assert [r["lr"] for r in rest.step_rows] == pytest.approx([0.0125] * 8)
    for k, v in _weights(rest.model).items():
        assert torch.allclose(v, _weights(out.model)[k], atol=1e-6), k


def test_lr_decay_can_restore_the_best_weights_first_and_early_stopping_still_counts():
    scores = [0.5, 0.7, 0.6, 0.6, 0.6, 0.9]  # best after epoch 2, then three epochs without a gain
    starts: dict[int, dict] = {}
    out = _plateau_run(scores, lr_decay=0.5, decay_restores_best=True, starts=starts)
    # epochs 4 and 5 (0-based 3, 4) start again from the end of epoch 2 (= the start of 0-based epoch 2)
    for e in (3, 4):
        for k, v in starts[e].items():
            assert torch.equal(v, starts[2][k]), (e, k)
    # the third epoch without a gain stops the run (patience 3) and decays nothing
    assert out.stopped_early and out.epoch == 5 and out.lr_decays == 2
    assert [r["train_lr"] for r in out.history] == pytest.approx([0.05, 0.05, 0.05, 0.025, 0.0125])
    starts = {}
    _plateau_run(scores, lr_decay=0.5, starts=starts)  # without restoring: epoch 4 starts where 3 ended
    assert not all(torch.equal(v, starts[2][k]) for k, v in starts[3].items())


def test_lr_decay_survives_a_closed_form_per_step_schedule():
    calls = iter([0.5, 0.4, 0.3])
    recipe = _recipe(lambda m: {"auc": next(calls)})
    recipe.scheduler = lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda step: 1.0)  # sets the lr every step
    out = fit(make_accelerator("no", seed=0), recipe, steps=6, eval_every=2, monitor="auc", patience=5,
              lr_decay=0.5, progress=False)
    assert [r["lr"] for r in out.step_rows] == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.025, 0.025])


def test_lr_decay_out_of_range_or_without_a_monitor_is_refused():
    with pytest.raises(ValueError, match="lr_decay"):
        fit(make_accelerator("no", seed=0), _recipe(), steps=2, monitor="auc", lr_decay=1.5, progress=False)
    with pytest.raises(ValueError, match="monitor"):
        fit(make_accelerator("no", seed=0), _recipe(), steps=2, lr_decay=0.5, progress=False)


def test_weight_average_is_what_evaluations_see_and_what_the_run_returns(tmp_path):
    """ema_decay > 0: each evaluation scores the moving average of the weights (not the raw ones),
    the returned model holds the average, a resumed run ends where an uninterrupted one does, and
    ema_decay 0 leaves fit() as it was."""
    seen: list[dict] = []

    def valid(m):
        seen.append(_weights(m))
        return {"auc": float(len(seen))}  # always improving: the last evaluation is the best

    def run(ckpt_dir=None, **kw):
        recipe = _recipe(valid)
        raw: dict = {}
        recipe.after_step = lambda step: raw.update(_weights(recipe.model)) or None
        out = fit(make_accelerator("no", seed=0), recipe, steps=12, eval_every=4, monitor="auc", restore_best=True,
                  ckpt_dir=ckpt_dir, fingerprint="ema", checkpoint_every=4, progress=False, ema_decay=0.9, **kw)
        return out, raw

    out, raw = run()
    # an average of the path lags the raw weights: the last evaluation saw neither the raw end point...
    assert not torch.allclose(seen[-1]["1.weight"], raw["1.weight"])
    # ... and the run returns what that evaluation saw (the best, averaged weights)
    for k, v in _weights(out.model).items():
        assert torch.equal(v, seen[-1][k]), k
    seen.clear()
    first, _ = run(tmp_path, max_steps=6)
    rest, _ = run(tmp_path)
    assert rest.start_step == 6
    for k, v in _weights(rest.model).items():
        assert torch.allclose(v, _weights(out.model)[k], atol=1e-6), k
    plain = fit(make_accelerator("no", seed=0), _recipe(), steps=12, progress=False, ema_decay=0.0)
    for k, v in _weights(plain.model).items():
        assert torch.equal(v, _weights(_run().model)[k]), k
    with pytest.raises(ValueError, match="ema_decay"):
        fit(make_accelerator("no", seed=0), _recipe(), steps=2, ema_decay=1.0, progress=False)
