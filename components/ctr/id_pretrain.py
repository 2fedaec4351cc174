"""User and PoI ID embeddings pretrained on the behaviour log before CTR training starts.

A user sees a few dozen impressions in the training period but leaves a hundred or more behaviours
(views, clicks, favourites, orders) in the log; an ID embedding learnt from the impressions alone
reads a handful of clicks. Pretraining both tables on the log with BPR (Rendle et al., 2009: a
behaviour's PoI should score above a random PoI, ``u·p_pos + b_pos > u·p_neg + b_neg``) starts the
CTR model from the user-PoI affinities the log shows (the word2vec / matrix-factorisation warm
start of industrial CTR models), and training refines them.

Point in time: only behaviours before the validation split starts are read (the log holds every
impression's click seconds after it, so a later behaviour would leak the labels). For the same reason
the log entries that are a training impression's own feedback are left out too (``feedback_entries``):
a real log records the click on an impression as a click behaviour, and a vector fitted on it would
tell the model, on its training rows only, which impressions were clicked. Measured on factor_world
(LightGBM with the BPR user-PoI score as one more column): with those entries the score cost 0.023 test
CTR AUC (it learnt the training labels); without them it added 0.0006 to 0.0013. Rows that
``FeatureEncoder`` maps to the unknown ID (0) are left as initialised. The tables are rescaled to a
fixed RMS (``ctr.id_pretrain_rms``) so that the CTR model's learning rate and weight decay see the
same magnitudes in every world.

The same BPR also gives the PoI vectors ``ctr.log_poi_dim`` feeds the model as a frozen input (read
through a learnt map, as the PoI text embedding is) instead of as a starting point its ID rows leave.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def behaviour_pairs(user_rows: dict[int, tuple[int, int]], history_ts: np.ndarray, poi_vocab: np.ndarray,
                    behavior: np.ndarray, weights: list[float], before_ns: int) -> tuple[np.ndarray, ...]:
    """(user index, PoI index, weight) of every logged behaviour before ``before_ns`` of a user and a
    PoI that have their own embedding rows. ``user_rows``: user index -> [start, end) in the history
    arrays; ``behavior`` 1.. (view, click, favourite, order) weighted by ``weights``."""
    users, pois, w = [], [], []
    wt = np.asarray([0.0, *weights], np.float32)
    for u, (s, e) in user_rows.items():
        if u <= 0 or e <= s:
            continue
        n = s + int(np.searchsorted(history_ts[s:e], before_ns, side="left"))
        p = poi_vocab[s:n]
        keep = p > 0
        users.append(np.full(int(keep.sum()), u, np.int64))
        pois.append(p[keep])
        w.append(wt[behavior[s:n][keep]])
    if not users:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(users), np.concatenate(pois), np.concatenate(w)


def feedback_entries(entry_user: np.ndarray, entry_poi: np.ndarray, entry_ts: np.ndarray, imp_user: np.ndarray,
                     imp_poi: np.ndarray, imp_ts: np.ndarray, window_ns: int) -> np.ndarray:
    """Bool mask over log entries: those of a (user, PoI) pair logged within ``window_ns`` at or after an
    impression of that pair, whatever its label (a rule that reads labels would itself tell them).
    Users and PoIs are any integer codes shared by both sides."""
    out = np.zeros(len(entry_ts), bool)
    if not len(entry_ts) or not len(imp_ts) or window_ns <= 0:
        return out
    n_poi = int(max(entry_poi.max(initial=0), imp_poi.max(initial=0))) + 1
    log = pd.DataFrame({"pair": entry_user.astype(np.int64) * n_poi + entry_poi, "t": entry_ts.astype(np.int64),
                        "i": np.arange(len(entry_ts))}).sort_values("t", kind="stable")
    imp = pd.DataFrame({"pair": imp_user.astype(np.int64) * n_poi + imp_poi,
                        "t_imp": imp_ts.astype(np.int64)}).sort_values("t_imp", kind="stable")
    hit = pd.merge_asof(log, imp, left_on="t", right_on="t_imp", by="pair", direction="backward",
                        tolerance=int(window_ns))
    out[hit["i"].to_numpy()[hit["t_imp"].notna().to_numpy()]] = True
    return out


class BPR(torch.nn.Module):
    """User and PoI factors with a PoI bias: score(u, p) = u·p + b_p."""

    def __init__(self, n_users: int, n_pois: int, dim: int, generator: torch.Generator):
        super().__init__()
        self.user = torch.nn.Parameter(torch.randn(n_users, dim, generator=generator) * 0.1)
        self.poi = torch.nn.Parameter(torch.randn(n_pois, dim, generator=generator) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(n_pois))


def pretrain_id_embeddings(users: np.ndarray, pois: np.ndarray, weights: np.ndarray, n_users: int, n_pois: int,
                           dim: int, epochs: int, seed: int, acc=None, lr: float = 0.05, l2: float = 1e-4,
                           batch: int = 4096, holdout: float = 0.0, patience: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """BPR over (user, PoI, weight) pairs with one uniform negative PoI each (rows 1..n_pois-1),
    trained by the project's one loop (components/training ``fit``) on accelerator ``acc`` (default:
    the CPU, fp32). Draws come from a generator of its own seeded by ``seed`` (the caller's global
    random state is left as it was). Returns (n_users, dim) and (n_pois, dim) float tensors; row 0 and
    rows without pairs are zero.

    ``holdout`` > 0: that share of the pairs (drawn from the same generator) is held out, and training
    stops once their BPR AUC (each against one fixed uniform negative) has not improved for
    ``patience`` epochs, keeping the best epoch's factors; ``epochs`` is then the cap. How long a log
    supports fitting differs between worlds (a young platform's short logs are overfitted in epochs a
    long log still gains from), so it is read from the log itself, not fixed."""
    from components.training import Recipe, cpu_threads, fit

    g = torch.Generator().manual_seed(seed)
    model = BPR(n_users, n_pois, dim, g)
    u_t, p_t = torch.as_tensor(users), torch.as_tensor(pois)
    w_t = torch.as_tensor(weights, dtype=torch.float32)
    evaluate, stop = None, {}
    n_held = int(round(holdout * len(u_t))) if len(u_t) > 1 else 0
    if n_held > 0:
        perm = torch.randperm(len(u_t), generator=g)
        held, kept = perm[:n_held], perm[n_held:]
        hu, hp, hw = u_t[held], p_t[held], w_t[held]
        hn = torch.randint(1, max(n_pois, 2), (n_held,), generator=g)
        u_t, p_t, w_t = u_t[kept], p_t[kept], w_t[kept]

        @torch.no_grad()
        def evaluate(m: BPR) -> dict[str, float]:  # weighted share of held-out pairs ranked above their negative
            ue = m.user[hu]
            diff = (ue * (m.poi[hp] - m.poi[hn])).sum(-1) + m.bias[hp] - m.bias[hn]
            return {"holdout_auc": float((hw * ((diff > 0).float() + 0.5 * (diff == 0).float())).sum() / hw.sum())}

        stop = {"monitor": "holdout_auc", "mode": "max", "patience": patience, "restore_best": True}
    # Rows the fit trains: a user or PoI whose pairs were all held out reads zeros, as an unlogged one does.
    seen_u = torch.zeros(n_users, dtype=torch.bool)
    seen_p = torch.zeros(n_pois, dtype=torch.bool)
    seen_u[u_t] = True
    seen_p[p_t] = True
    seen_u[0] = seen_p[0] = False
    n = len(u_t)

    def batches(epoch: int) -> list[tuple[torch.Tensor, ...]]:  # each epoch's draws, in order, from g
        order = torch.randperm(n, generator=g)
        out = []
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            out.append((u_t[idx], p_t[idx], torch.randint(1, n_pois, (len(idx),), generator=g), w_t[idx]))
        return out

    def loss(m: BPR, b) -> torch.Tensor:
        u, p, neg, w = b
        ue = m.user[u]
        diff = (ue * (m.poi[p] - m.poi[neg])).sum(-1) + m.bias[p] - m.bias[neg]
        fit_loss = (w * F.softplus(-diff)).sum() / w.sum()
        return fit_loss + l2 * (ue.pow(2).sum(-1) + m.poi[p].pow(2).sum(-1) + m.poi[neg].pow(2).sum(-1)).mean()

    if epochs and n and n_pois > 2:
        if acc is None:
            from accelerate import Accelerator

            acc = Accelerator(cpu=True)
        # One CPU thread: the embedding gradients' sums then run in one order, so the same seed gives the
        # same vectors bit for bit (a retrained model is the same model: the registry reuses its version);
        # with several threads they differed in the fifth digit. A few seconds either way.
        with cpu_threads(1):
            model = fit(acc, Recipe(model=model, optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=lr),
                                    batches=batches, loss=loss, evaluate=evaluate), epochs=epochs, progress=False,
                        desc="id pretrain", **stop).model
    return model.user.detach() * seen_u[:, None], model.poi.detach() * seen_p[:, None]


def rescale(table: torch.Tensor, rms: float) -> torch.Tensor:
    """``table`` with its nonzero rows scaled together to root-mean-square entry ``rms``."""
    rows = table.abs().sum(-1) > 0
    if not rows.any():
        return table
    cur = table[rows].pow(2).mean().sqrt()
    return table * (rms / cur.clamp_min(1e-12))
