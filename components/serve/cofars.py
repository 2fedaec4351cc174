"""CoFARS served as the paper serves it (METHODS.md §2: "O(|C|·|O|) offline, O(r + |O|) online").

Offline, per user (``build_state``, from the behaviours the model reads: the newest
``ctr.max_history``): the model's own ``CoFARS.offline`` (context nodes, D(C) per node, the true JS,
the context–context edges, the newest behaviour's node), per context node its newest
``max_subsequence`` behaviours, the newest ``short_term`` behaviours, and the history-profile
aggregates per scope (whole window, per time slot, per context node). A push refreshes it.

Online, per request (``served_forward``): the model's own ``CoFARS.forward`` (the GRU over the last
r behaviours, the temporal graph over the |C| context nodes, target and |O| prototypes, the GAT,
the prototype selection), then the target attention
over the selected sub-sequence (at most ``max_subsequence`` keys) and the profile looked up from the
aggregates: nothing reads the history, so the cost does not grow with its length n. None of the
selection depends on the candidates, so it is kept on the state per (user, context): a user's later
requests in the same context (the next page, a refresh) run only the candidate-side part, and a
push (a new state) drops it. The candidates' item embeddings are gathered from ``item_table``. The scores are
those of ``CTRModel.forward`` on the same window (tests/unit/serve/test_cofars.py).

Built on the model's own functions and submodules (``model.cofars.offline`` / ``model.cofars``,
``model.attention``, ``model.context_parts`` and ``model.top``: cross layers, MLP and heads), so it follows any retraining.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from components.ctr.cofars import ContextGraph

# Per-behaviour arrays a state is built from (one user, oldest first).
HIST_KEYS = ("hist_poi", "hist_row", "hist_category", "hist_price", "hist_rating", "hist_delivery",
             "hist_behavior", "hist_context", "hist_slot", "hist_logp", "hist_text")


@dataclass
class Scope:
    """Aggregates of a weighted set of behaviours: what ``history_profile`` needs of it."""

    rows: np.ndarray  # sorted distinct PoI rows
    row_w: np.ndarray
    cats: np.ndarray  # sorted distinct categories
    cat_w: np.ndarray
    total: float
    w_logp: float
    w_text: np.ndarray | None  # Σ w · normalize(text)
    w_log: np.ndarray | None = None  # Σ w · normalize(the log's PoI vector) (ctr.log_poi_profile)

    @classmethod
    def of(cls, w: np.ndarray, h: dict, log: np.ndarray | None = None) -> "Scope":
        """``log``: (n, D) the behaviours' PoI vectors from the log (None: the model compares none)."""
        keep = w != 0
        rows, inv = np.unique(h["hist_row"][keep], return_inverse=True)
        cats, cinv = np.unique(h["hist_category"][keep], return_inverse=True)
        wk = w[keep].astype(np.float64)
        def unit_sum(vecs):  # Σ w · normalize(vector) over the scope, None without vectors
            if vecs is None:
                return None
            return (F.normalize(torch.as_tensor(vecs[keep]), dim=-1).double().numpy() * wk[:, None]).sum(0)

        w_text, w_log = unit_sum(h.get("hist_text")), unit_sum(log)
        logp = h.get("hist_logp")
        return cls(rows, np.bincount(inv, wk, len(rows)), cats, np.bincount(cinv, wk, len(cats)), float(wk.sum()),
                   float((wk * logp[keep]).sum()) if logp is not None else 0.0, w_text, w_log)

    def lookup(self, keys: np.ndarray, which: str) -> np.ndarray:
        """Summed weight on each key (PoI rows or categories), 0 where the scope has none."""
        ids, w = (self.rows, self.row_w) if which == "row" else (self.cats, self.cat_w)
        if not len(ids):
            return np.zeros(keys.shape)
        at = np.searchsorted(ids, keys).clip(max=len(ids) - 1)
        return np.where(ids[at] == keys, w[at], 0.0)


_EMPTY_SCOPE = Scope(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0), 0.0, 0.0, None)  # read only


def merge(scopes: list[Scope]) -> Scope:
    """The union of disjoint scopes (the selected context nodes)."""
    if len(scopes) == 1:
        return scopes[0]
    rows, inv = np.unique(np.concatenate([s.rows for s in scopes]), return_inverse=True)
    cats, cinv = np.unique(np.concatenate([s.cats for s in scopes]), return_inverse=True)
    def total(field):  # a vector sum over the scopes that have one, None if none does
        got = [getattr(s, field) for s in scopes if getattr(s, field) is not None]
        return sum(got) if got else None

    return Scope(rows, np.bincount(inv, np.concatenate([s.row_w for s in scopes]), len(rows)), cats,
                 np.bincount(cinv, np.concatenate([s.cat_w for s in scopes]), len(cats)),
                 sum(s.total for s in scopes), sum(s.w_logp for s in scopes), total("w_text"),
                 total("w_log"))


@dataclass
class CoFARSState:
    """The offline part of CoFARS for one user's window of n behaviours."""

    n: int
    graph: ContextGraph  # CoFARS.offline of the window, batch of one: nodes, edges, newest node, D(C), JS
    node_keys: list[np.ndarray]  # per node slot: positions of its newest max_subsequence behaviours
    short: np.ndarray  # positions of the newest short_term behaviours
    behaviours: dict  # the per-behaviour arrays at those positions only (position -> arrays)
    whole: Scope
    per_slot: dict  # time slot -> Scope
    per_node: list[Scope]
    short_scope: Scope
    # (user index, context index) -> the selection's keys, mask and scope: none of it depends on the
    # candidates, so a user's later requests in the same context reuse it (a push makes a new state).
    selected: dict = field(default_factory=dict)


def build_state(model, h: dict) -> CoFARSState:
    """The offline state of one user's window ``h`` (HIST_KEYS arrays, oldest first, all real)."""
    cfg = model.cfg
    n = len(h["hist_row"])
    ctx = torch.as_tensor(np.asarray(h["hist_context"], np.int64)).view(1, n)
    attributes = torch.stack([torch.as_tensor(np.asarray(h[k], np.int64)) for k in
                              ("hist_category", "hist_price", "hist_rating", "hist_delivery")], -1).view(1, n, 4)
    with torch.no_grad():  # the model's own offline function (D(C) and the true JS come with it)
        graph = model.cofars.offline(ctx, torch.ones(1, n, dtype=torch.bool), attributes) if n else None
    if graph is None or not bool(graph.node_ok.any()):  # no known context: one empty node slot
        graph = ContextGraph(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool),
                             torch.zeros(1, 1, 1, dtype=torch.bool), torch.full((1,), -1, dtype=torch.long))
    node_ctx, node_ok = graph.node_context[0].numpy(), graph.node_ok[0].numpy()
    m = len(node_ctx)
    slot_of = {int(c): i for i, (c, ok) in enumerate(zip(node_ctx, node_ok)) if ok}
    slot = np.array([slot_of.get(int(c), -1) for c in ctx[0].tolist()], np.int64)
    weight = model.behavior_weight.numpy()[np.clip(h["hist_behavior"], 0, 4)] if model.profile_scopes else np.ones(n)
    node_keys = [np.flatnonzero(slot == i)[-cfg.max_subsequence:] for i in range(m)]
    short = np.arange(max(n - cfg.short_term, 0), n)
    keep = np.unique(np.concatenate([short, *node_keys])) if n else np.zeros(0, np.int64)
    hslot = np.asarray(h["hist_slot"])
    log = None
    if getattr(model, "log_profile", False):  # the behaviours' PoI vectors from the log, for their cosine
        log = model.log_poi_vec[torch.as_tensor(np.asarray(h["hist_poi"], np.int64))].numpy()
    return CoFARSState(
        n=n, graph=graph, node_keys=node_keys,
        short=short, behaviours={k: np.asarray(v)[keep] for k, v in h.items() if v is not None} | {"_pos": keep},
        whole=Scope.of(weight, h, log),
        per_slot={int(s): Scope.of(weight * (hslot == s), h, log) for s in np.unique(hslot) if s > 0},
        per_node=[Scope.of(weight * (slot == i), h, log) for i in range(m)],
        short_scope=Scope.of(weight * np.isin(np.arange(n), short), h, log),
    )


def _embed(model, state: CoFARSState, positions: np.ndarray) -> torch.Tensor:
    """Behaviour embeddings (len, d) of the stored behaviours at ``positions`` (as CTRModel.history)."""
    at = np.searchsorted(state.behaviours["_pos"], positions)
    g = {k: torch.as_tensor(v[at]) for k, v in state.behaviours.items() if k != "_pos"}
    e = model.item(g["hist_poi"], g.get("hist_text"), g["hist_category"], g["hist_price"], g["hist_rating"],
                   g["hist_delivery"])
    return e + model.behavior_emb(g["hist_behavior"])


def _profile(scope: Scope, b: dict, cand_unit: torch.Tensor | None, cand_log: torch.Tensor | None = None) -> torch.Tensor:
    """``history_profile`` of one scope for the request's K candidates, from its aggregates: (K, F).
    ``cand_unit``: the candidates' unit-length text vectors (None: the model reads no text);
    ``cand_log``: their unit-length log PoI vectors (None: the model compares none)."""
    rows, cats = b["cand_row"][0].numpy(), b["cand_category"][0].numpy()
    tot = scope.total
    poi_w, cat_w = scope.lookup(rows, "row"), scope.lookup(cats, "cat")
    has = 1.0 if tot > 0 else 0.0
    feats = [np.log1p(poi_w), poi_w / (tot + 1), cat_w / (tot + 1)]
    if "cand_logp" in b and "hist_logp" in b:
        gap = (b["cand_logp"][0].double().numpy() - scope.w_logp / max(tot, 1e-6)) * has
        feats += [gap, np.abs(gap)]
    else:
        feats += [np.zeros_like(poi_w), np.zeros_like(poi_w)]
    feats.append(np.full_like(poi_w, np.log1p(tot)))
    for cand, w_sum in ((cand_unit, scope.w_text), (cand_log, scope.w_log)):
        if cand is None:  # the model compares no such vectors
            continue
        if w_sum is None:  # an empty scope
            feats.append(np.zeros_like(poi_w))
        else:
            feats.append((cand @ F.normalize(torch.as_tensor(w_sum).float(), dim=-1)).double().numpy() * has)
    return torch.as_tensor(np.stack(feats, -1), dtype=torch.float32)


@torch.inference_mode()
def select_nodes(model, user: torch.Tensor, context: torch.Tensor, state: CoFARSState, window: torch.Tensor) -> np.ndarray:
    """CoFARS's online pass (``CoFARS.forward``: short-term GRU, temporal graph over the precomputed
    context nodes and the prototypes, GAT, selection) for one request: (M,) bool chosen node slots.
    window (k, d): the embeddings of the last r behaviours, oldest first."""
    g = state.graph
    graph = ContextGraph(g.node_context, g.node_ok, g.adjacency, g.last_node)  # no L_MSE target online
    sel = model.cofars(user.unsqueeze(0), context.view(1), graph, window.unsqueeze(0),
                       torch.ones(1, window.shape[0], dtype=torch.bool) if state.n else
                       torch.zeros(1, window.shape[0], dtype=torch.bool))
    return sel["chosen"][0].numpy()


def _selection(model, b: dict, d: int, state: CoFARSState) -> tuple:
    """(keys (1, L, d), mask (1, L), scope of the selected behaviours) for the request's user and
    context: the short-term window, CoFARS's node selection and the selected sub-sequence."""
    cfg = model.cfg
    user = model.user_emb(b["user"])[0]
    # The last r behaviours (a window shorter than r is as long as the history; none: one empty step),
    # as CTRModel.select gathers them for a request of its own.
    window = _embed(model, state, state.short) if state.n else torch.zeros(1, d)
    chosen = select_nodes(model, user, b["context"][0], state, window)
    picked = [state.node_keys[i] for i in np.flatnonzero(chosen)]
    if picked:
        keys_pos = np.sort(np.concatenate(picked))[-cfg.max_subsequence:]
        sel_scope = merge([state.per_node[i] for i in np.flatnonzero(chosen)])
    else:  # CTRModel.select's fallback: the short-term window
        keys_pos = state.short[-cfg.max_subsequence:]
        sel_scope = state.short_scope
    if len(keys_pos):
        keys, mask = _embed(model, state, keys_pos).unsqueeze(0), torch.ones(1, len(keys_pos), dtype=torch.bool)
    else:
        keys, mask = torch.zeros(1, 1, d), torch.zeros(1, 1, dtype=torch.bool)
    return keys, mask, sel_scope


@torch.inference_mode()
def served_sequence_vector(model, b: dict, cand: torch.Tensor, state: CoFARSState) -> torch.Tensor:
    """(1, K, F): what ``CTRModel.sequence_vector`` returns for a CoFARS model, from the state."""
    key = (int(b["user"][0]), int(b["context"][0]))
    got = state.selected.get(key)
    if got is None:
        got = state.selected[key] = _selection(model, b, cand.shape[-1], state)
    keys, mask, sel_scope = got
    s = model.attention(cand, keys, mask)
    out = [s, s * cand]
    if model.profile_scopes:
        slot = int(b["slot"][0]) if "slot" in b else 0
        scopes = [state.whole, state.per_slot.get(slot, _EMPTY_SCOPE) if slot > 0 else _EMPTY_SCOPE, sel_scope]
        text = model.use_text and "cand_text" in b and "hist_text" in b
        unit = F.normalize(b["cand_text"][0], dim=-1) if text else None  # once for the three scopes
        log = F.normalize(model.log_poi_vec[b["cand_poi"][0]], dim=-1) if model.log_profile else None
        out.append(torch.cat([_profile(sc, b, unit, log) for sc in scopes], -1).unsqueeze(0))
    return torch.cat(out, -1)


@torch.inference_mode()
def item_table(model, pois) -> torch.Tensor:
    """(P, d): ``CTRModel.item`` of every catalogue row (a PoI's embedding depends on its row only),
    computed once per served model so that a request gathers its candidates' rows."""
    t = torch.as_tensor
    text = t(pois.text_emb, dtype=torch.float32) if (pois.text_emb is not None and model.use_text) else None
    return model.item(t(pois.vocab_id), text, t(pois.category), t(pois.price_band), t(pois.rating_band),
                      t(pois.delivery_band))


@torch.inference_mode()
def served_forward(model, b: dict, state: CoFARSState, items: torch.Tensor | None = None) -> dict:
    """``CTRModel.forward`` for one request of a CoFARS model with the history replaced by ``state``:
    {ctr, cvr, ctcvr} of shape (1, K). ``b`` is a one-request batch; its hist_* keys are not read.
    ``items``: ``item_table`` of the catalogue (the candidates' embeddings are gathered from it)."""
    assert model.sequence == "cofars" and b["user"].shape[0] == 1, "served CoFARS scores one request at a time"
    if items is not None:
        cand = items[b["cand_row"]]
    else:
        cand = model.item(b["cand_poi"], b.get("cand_text"), b["cand_category"], b["cand_price"],
                          b["cand_rating"], b["cand_delivery"])
    parts = [*model.context_parts(b, cand), served_sequence_vector(model, b, cand, state)]
    return model.top(torch.cat(parts, -1))
