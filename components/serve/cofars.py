"""CoFARS served as the paper serves it (METHODS.md §2: "O(|C|·|O|) offline, O(r + |O|) online").

Offline, per user (``build_state``, from the behaviours the model reads: the newest
``ctr.max_history``): the context nodes (the ``max_contexts`` most frequent known contexts), the
context–context edges and the target edge's end, per context node its newest
``max_subsequence`` behaviours, the newest ``short_term`` behaviours, and the history-profile
aggregates per scope (whole window, per time slot, per context node). A push refreshes it.

Online, per request (``served_forward``): the GRU over the last r behaviours, the prototype graph
(contexts are nodes, so its size is |C| + 1 + |O|), the prototype selection, the target attention
over the selected sub-sequence (at most ``max_subsequence`` keys) and the profile looked up from the
aggregates: nothing reads the history, so the cost does not grow with its length n. The scores are
those of ``CTRModel.forward`` on the same window (tests/unit/test_serve_cofars.py).

Built on the model's own submodules (``model.cofars``: context embedding, probability encoder,
prototypes, GAT, GRU; ``model.attention``; ``model.bottom``/``heads``) so it follows any retraining.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from components.ctr.cofars import gumbel_binarize, pairwise_symmetric_kl
from components.ctr.model import MAX_POSITION

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

    @classmethod
    def of(cls, w: np.ndarray, h: dict) -> "Scope":
        keep = w != 0
        rows, inv = np.unique(h["hist_row"][keep], return_inverse=True)
        cats, cinv = np.unique(h["hist_category"][keep], return_inverse=True)
        wk = w[keep].astype(np.float64)
        text = h.get("hist_text")
        w_text = None
        if text is not None:
            t = torch.as_tensor(text[keep])
            w_text = (F.normalize(t, dim=-1).double().numpy() * wk[:, None]).sum(0)
        logp = h.get("hist_logp")
        return cls(rows, np.bincount(inv, wk, len(rows)), cats, np.bincount(cinv, wk, len(cats)), float(wk.sum()),
                   float((wk * logp[keep]).sum()) if logp is not None else 0.0, w_text)

    def lookup(self, keys: np.ndarray, which: str) -> np.ndarray:
        """Summed weight on each key (PoI rows or categories), 0 where the scope has none."""
        ids, w = (self.rows, self.row_w) if which == "row" else (self.cats, self.cat_w)
        if not len(ids):
            return np.zeros(keys.shape)
        at = np.searchsorted(ids, keys).clip(max=len(ids) - 1)
        return np.where(ids[at] == keys, w[at], 0.0)


def merge(scopes: list[Scope]) -> Scope:
    """The union of disjoint scopes (the selected context nodes)."""
    if len(scopes) == 1:
        return scopes[0]
    rows, inv = np.unique(np.concatenate([s.rows for s in scopes]), return_inverse=True)
    cats, cinv = np.unique(np.concatenate([s.cats for s in scopes]), return_inverse=True)
    texts = [s.w_text for s in scopes if s.w_text is not None]
    return Scope(rows, np.bincount(inv, np.concatenate([s.row_w for s in scopes]), len(rows)), cats,
                 np.bincount(cinv, np.concatenate([s.cat_w for s in scopes]), len(cats)),
                 sum(s.total for s in scopes), sum(s.w_logp for s in scopes), sum(texts) if texts else None)


@dataclass
class CoFARSState:
    """The offline part of CoFARS for one user's window of n behaviours."""

    n: int
    node_ctx: np.ndarray  # (M,) context ids of the nodes (known contexts with behaviours)
    adjacency: np.ndarray  # (M, M) bool: consecutive behaviours in two different nodes
    last_node: int  # node of the newest behaviour (-1: its context is no node)
    node_keys: list[np.ndarray]  # per node: positions of its newest max_subsequence behaviours
    short: np.ndarray  # positions of the newest short_term behaviours
    behaviours: dict  # the per-behaviour arrays at those positions only (position -> arrays)
    whole: Scope
    per_slot: dict  # time slot -> Scope
    per_node: list[Scope]
    short_scope: Scope


def build_state(model, h: dict) -> CoFARSState:
    """The offline state of one user's window ``h`` (HIST_KEYS arrays, oldest first, all real)."""
    cfg = model.cfg
    n = len(h["hist_row"])
    ctx = np.asarray(h["hist_context"], np.int64)
    # Same node choice as CoFARS._nodes (torch.topk over the counts, unknown context 0 excluded).
    n_ctx = model.cofars.context_emb.num_embeddings
    counts = torch.zeros(n_ctx)
    counts.scatter_add_(0, torch.as_tensor(ctx), torch.ones(n))
    counts[0] = 0
    top, node_ctx = counts.topk(min(cfg.max_contexts, n_ctx))
    node_ctx = node_ctx[top > 0].numpy()
    slot_of = {int(c): i for i, c in enumerate(node_ctx)}
    slot = np.array([slot_of.get(int(c), -1) for c in ctx], np.int64)
    m = len(node_ctx)
    adj = np.zeros((m, m), bool)
    if n > 1:
        a, b = slot[:-1], slot[1:]
        ok = (a >= 0) & (b >= 0) & (a != b)
        adj[a[ok], b[ok]] = True
        adj[b[ok], a[ok]] = True
    weight = model.behavior_weight.numpy()[np.clip(h["hist_behavior"], 0, 4)] if model.profile_scopes else np.ones(n)
    node_keys = [np.flatnonzero(slot == i)[-cfg.max_subsequence:] for i in range(m)]
    short = np.arange(max(n - cfg.short_term, 0), n)
    keep = np.unique(np.concatenate([short, *node_keys])) if n else np.zeros(0, np.int64)
    hslot = np.asarray(h["hist_slot"])
    return CoFARSState(
        n=n, node_ctx=node_ctx, adjacency=adj, last_node=int(slot[-1]) if n else -1, node_keys=node_keys,
        short=short, behaviours={k: np.asarray(v)[keep] for k, v in h.items() if v is not None} | {"_pos": keep},
        whole=Scope.of(weight, h), per_slot={int(s): Scope.of(weight * (hslot == s), h) for s in np.unique(hslot) if s > 0},
        per_node=[Scope.of(weight * (slot == i), h) for i in range(m)],
        short_scope=Scope.of(weight * np.isin(np.arange(n), short), h),
    )


def _embed(model, state: CoFARSState, positions: np.ndarray) -> torch.Tensor:
    """Behaviour embeddings (len, d) of the stored behaviours at ``positions`` (as CTRModel.history)."""
    at = np.searchsorted(state.behaviours["_pos"], positions)
    g = {k: torch.as_tensor(v[at]) for k, v in state.behaviours.items() if k != "_pos"}
    e = model.item(g["hist_poi"], g.get("hist_text"), g["hist_category"], g["hist_price"], g["hist_rating"],
                   g["hist_delivery"])
    return e + model.behavior_emb(g["hist_behavior"])


def _profile(scope: Scope, b: dict, use_text: bool) -> torch.Tensor:
    """``history_profile`` of one scope for the request's K candidates, from its aggregates: (K, F)."""
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
    if use_text and "cand_text" in b and "hist_text" in b:
        if scope.w_text is None:  # an empty scope
            feats.append(np.zeros_like(poi_w))
        else:
            u = F.normalize(torch.as_tensor(scope.w_text).float(), dim=-1)
            feats.append((F.normalize(b["cand_text"][0], dim=-1) @ u).double().numpy() * has)
    return torch.as_tensor(np.stack(feats, -1), dtype=torch.float32)


@torch.no_grad()
def select_nodes(model, user: torch.Tensor, context: torch.Tensor, state: CoFARSState,
                 short_term: torch.Tensor) -> np.ndarray:
    """CoFARS phase 1 online on the precomputed nodes: (M,) bool, the context nodes chosen for this
    request (CoFARS.forward's prototype graph, attachment and selection, without the history)."""
    co, cfg = model.cofars, model.cfg
    m = len(state.node_ctx)
    c = user.unsqueeze(0) + co.context_emb(torch.as_tensor(state.node_ctx))  # (M, d)
    p_c = co.prob(torch.zeros_like(c), c)
    o = co.prototypes(user.unsqueeze(0))[0]  # (P, d)
    p_o = co.prob(torch.zeros_like(o), o)
    c_t = user + co.context_emb(context)
    p_t = co.prob(torch.zeros_like(c_t), c_t)
    sim_oc = 1 - pairwise_symmetric_kl(p_o, torch.cat([p_c, p_t.unsqueeze(0)], 0))  # (P, M+1)
    attach = F.one_hot(sim_oc.T.argmax(-1), sim_oc.shape[0]).T > 0  # (P, M+1)
    n_p = o.shape[0]
    adj = torch.zeros(m + 1 + n_p, m + 1 + n_p, dtype=torch.bool)
    adj[:m, :m] = torch.as_tensor(state.adjacency)
    if state.last_node >= 0:
        adj[m, state.last_node] = adj[state.last_node, m] = True
    adj[m + 1:, : m + 1] = attach
    adj[: m + 1, m + 1:] = attach.T
    x = torch.cat([c, c_t.unsqueeze(0), o], 0).unsqueeze(0)
    for layer in co.gat:
        x = x + F.elu(layer(x, adj.unsqueeze(0)))
    t_ref, o_ref = x[0, m], x[0, m + 1:]
    p_oref = co.prob(torch.zeros_like(o_ref), o_ref)
    p_tref = co.prob(torch.zeros_like(t_ref), t_ref)
    sim_t = 1 - pairwise_symmetric_kl(p_oref, p_tref.unsqueeze(0)).squeeze(-1)  # (P,)
    z = gumbel_binarize(sim_t * (o_ref @ short_term), cfg.select_temperature, hard=True, noise=False)
    return ((z > 0.5).unsqueeze(-1) & attach[:, :m]).any(0).numpy()


@torch.no_grad()
def served_sequence_vector(model, b: dict, cand: torch.Tensor, state: CoFARSState) -> torch.Tensor:
    """(1, K, F): what ``CTRModel.sequence_vector`` returns for a CoFARS model, from the state."""
    cfg = model.cfg
    user = model.user_emb(b["user"])[0]
    d = cand.shape[-1]
    # GRU over the last r behaviours (a window shorter than r runs as many steps; none: one zero step).
    seq = _embed(model, state, state.short) if state.n else torch.zeros(1, d)
    _, h_n = model.cofars.gru(seq.unsqueeze(0))
    chosen = select_nodes(model, user, b["context"][0], state, h_n[-1][0])
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
    s = model.attention(cand, keys, mask)
    out = [s, s * cand]
    if model.profile_scopes:
        slot = int(b["slot"][0]) if "slot" in b else 0
        empty = Scope(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64), np.zeros(0), 0.0, 0.0, None)
        scopes = [state.whole, state.per_slot.get(slot, empty) if slot > 0 else empty, sel_scope]
        out.append(torch.cat([_profile(sc, b, model.use_text) for sc in scopes], -1).unsqueeze(0))
    return torch.cat(out, -1)


@torch.no_grad()
def served_forward(model, b: dict, state: CoFARSState) -> dict:
    """``CTRModel.forward`` for one request of a CoFARS model with the history replaced by ``state``:
    {ctr, cvr, ctcvr} of shape (1, K). ``b`` is a one-request batch; its hist_* keys are not read."""
    assert model.sequence == "cofars" and b["user"].shape[0] == 1, "served CoFARS scores one request at a time"
    cand = model.item(b["cand_poi"], b.get("cand_text"), b["cand_category"], b["cand_price"], b["cand_rating"],
                      b["cand_delivery"])
    r, k, d = cand.shape
    user = model.user_emb(b["user"]).unsqueeze(1).expand(r, k, d)
    if model.user_dense is not None:
        user = user + model.user_dense(b["numeric"].index_select(-1, model.user_dense_idx))
    collab, larr = model.scene(b)
    scene = collab if larr is None else torch.cat([collab, larr], -1)
    scene_k = scene.unsqueeze(1).expand(r, k, scene.shape[-1])
    parts = [user, cand, user * cand, scene_k, model.scene_to_item(scene_k) * cand, model.numeric_proj(model._numeric(b)),
             model.position_emb(b["position"].clamp(max=MAX_POSITION - 1)), b["distance"].unsqueeze(-1),
             served_sequence_vector(model, b, cand, state)]
    return model.heads(model.bottom(torch.cat(parts, -1)))
