"""CoFARS (METHODS.md §2; Meituan, WWW'24, arXiv 2403.12566): one context-selected sub-sequence per
request instead of a search of the history per candidate.

The paper's cost split is the structure of this file:

- **Offline** (history only, no model parameters): ``context_graph`` turns a user's behaviours into
  a ``ContextGraph`` — the user's context nodes (the most frequent contexts), their attribute
  distributions D(C) and true divergences JS(D(Ci), D(Cj)), the edges between contexts adjacent in
  time and the node of the newest behaviour. Training and evaluation compute it from each batch's
  history (point-in-time by construction); a server can compute it once per user and history update.
- **Online** (per request): ``CoFARS.forward`` — GRU over the last r behaviours, probability
  encoder on the nodes and the target context, prototype–context edges, the temporal graph and its
  GAT, the prototype selection and the selected context nodes. No input has the history's length.
  Then ``subsequence_mask`` marks the behaviours of the chosen contexts (on the full history in
  training; a server passes only each context's newest ``max_subsequence`` behaviours and gets the
  same sub-sequence), and CTRModel runs the target attention over it (phase 2).

Choices of ours (the paper leaves them open):
- A context's distribution D(C) is the concatenation of one distribution per attribute group
  (category, price band, …), each summing to 1; zeros are smoothed additively (``alpha``). The
  divergence of such vectors is the sum of the per-group divergences.
- The divergence is what the paper calls "JS": ½[KL(p‖q) + KL(q‖p)] = ½ Σ (p−q)(log p − log q);
  ``sim = 1 − JS`` as in the paper.
- Nodes per request: the ``max_contexts`` most frequent contexts of the history; context–context
  edges join contexts adjacent in time, the target context joins the newest behaviour's context;
  each context (and the target) attaches to one prototype by a Gumbel-softmax over sim(o, c).
- ``L_MSE`` averages over pairs of distinct real nodes; ``L_IND`` over prototype pairs i ≠ j.
- Selection runs once per **request**; candidates are no argument of it.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import CTRConfig
from components.layers import MLP


# ------------------------------------------------------------------------------------------------
# Distributions and their divergence (offline: D(C) from the logs)


def attribute_distribution(counts: torch.Tensor, group_sizes: list[int] | None = None,
                           alpha: float = 1.0) -> torch.Tensor:
    """D(C): counts (..., V) of attribute values -> distributions, normalised per attribute group
    (``group_sizes`` summing to V; default one group) after adding ``alpha`` to every count so no
    value has probability 0. Computed in float64, returned in the counts' float dtype."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 so that no probability is zero, got {alpha}")
    x = counts.double()
    if (x < 0).any():
        raise ValueError("counts must be non-negative")
    sizes = [x.shape[-1]] if group_sizes is None else list(group_sizes)
    if sum(sizes) != x.shape[-1]:
        raise ValueError(f"group_sizes {sizes} sum to {sum(sizes)}, but counts have {x.shape[-1]} values")
    x = x + alpha
    out = torch.cat([g / g.sum(-1, keepdim=True) for g in torch.split(x, sizes, dim=-1)], dim=-1)
    return out.to(counts.dtype) if counts.is_floating_point() else out.float()


def pairwise_symmetric_kl(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., n, V) and (..., m, V) -> (..., n, m) matrix of ``symmetric_kl``.

    Expanded as ½[Σ a log a + Σ b log b − a·log bᵀ − log a·bᵀ] so the n×m×V work runs as two matrix
    products instead of an (n, m, V) broadcast (7× faster on CPU; same value up to rounding)."""
    same = b is a
    a = a.clamp(min=eps)
    la = a.log()
    self_a = (a * la).sum(-1)  # (..., n)
    if same:  # one set against itself (L_MSE, L_IND): a·log aᵀ + log a·aᵀ = C + Cᵀ
        c = a @ la.transpose(-1, -2)
        return (0.5 * (self_a.unsqueeze(-1) + self_a.unsqueeze(-2) - (c + c.transpose(-1, -2)))).clamp(min=0)
    b = b.clamp(min=eps)
    lb = b.log()
    self_b = (b * lb).sum(-1).unsqueeze(-2)  # (..., 1, m)
    cross = a @ lb.transpose(-1, -2) + la @ b.transpose(-1, -2)
    return (0.5 * (self_a.unsqueeze(-1) + self_b - cross)).clamp(min=0)


# ------------------------------------------------------------------------------------------------
# Probability encoder and prototypes


class ProbabilityEncoder(nn.Module):
    """Probability encoder: P(c) = sigmoid(MLP(c)) over all attribute values, normalised per attribute
    group into distributions; c (..., d) is a context or prototype representation (u + ĉ, u + ô)."""

    def __init__(self, embed_dim: int, group_sizes: list[int], hidden: list[int] | tuple[int, ...] = (64,),
                 dropout: float = 0.0, eps: float = 1e-8):
        super().__init__()
        self.group_sizes = list(group_sizes)
        self.mlp = MLP(embed_dim, hidden, sum(self.group_sizes), dropout=dropout)
        self.eps = eps

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        """c (..., d) -> distributions (..., V)."""
        s = torch.sigmoid(self.mlp(c)) + self.eps
        return torch.cat([g / g.sum(-1, keepdim=True) for g in torch.split(s, self.group_sizes, dim=-1)], dim=-1)

    def mse_loss(self, p_est: torch.Tensor, js_true: torch.Tensor, node_ok: torch.Tensor | None = None) -> torch.Tensor:
        """L_MSE = mean_ij (JS_true − JS_est)² over pairs i ≠ j of real nodes: p_est (R, M, V) estimated
        distributions, js_true (R, M, M) the true divergences of the same contexts, node_ok (R, M)
        bool (default all real)."""
        js_est = pairwise_symmetric_kl(p_est, p_est, self.eps)
        m = js_est.shape[-1]
        ok = torch.ones(js_est.shape[:-1], dtype=torch.bool, device=js_est.device) if node_ok is None else node_ok
        pair_ok = ok.unsqueeze(-1) & ok.unsqueeze(-2) & ~torch.eye(m, dtype=torch.bool, device=js_est.device)
        return ((js_est - js_true) ** 2 * pair_ok).sum() / pair_ok.sum().clamp(min=1)


class ContextPrototypes(nn.Module):
    """K learnable prototypes personalised by the user: o_i = ô_i + u."""

    def __init__(self, embed_dim: int, n_prototypes: int = 40, init_std: float = 0.1):
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(n_prototypes, embed_dim) * init_std)

    def forward(self, user: torch.Tensor) -> torch.Tensor:
        """user (B, d) -> (B, K, d)."""
        return self.prototypes.unsqueeze(0) + user.unsqueeze(1)

    @staticmethod
    def independence_loss(proto_dist: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """L_IND = −mean_{i≠j} JS(P(o_i), P(o_j)) for (..., K, V) prototype distributions."""
        js = pairwise_symmetric_kl(proto_dist, proto_dist, eps)
        k = js.shape[-1]
        off = ~torch.eye(k, dtype=torch.bool, device=js.device)
        return -js[..., off].mean() if k > 1 else js.sum() * 0


# ------------------------------------------------------------------------------------------------
# Building blocks of the temporal graph and the selection


class GATLayer(nn.Module):
    """Graph attention (Veličković et al. 2018) over a dense adjacency. x (B, N, in_dim),
    adj (B, N, N) or (N, N) bool with adj[i, j] = j is a neighbour of i. Self loops are added
    (``self_loops``) so every node keeps its own features; a node with no neighbour gets zeros.
    Output (B, N, heads·out_dim) if ``concat`` else the heads' mean (B, N, out_dim); no activation."""

    def __init__(self, in_dim: int, out_dim: int, heads: int = 1, concat: bool = True, dropout: float = 0.0,
                 negative_slope: float = 0.2, self_loops: bool = True):
        super().__init__()
        self.heads, self.out_dim, self.concat, self.self_loops = heads, out_dim, concat, self_loops
        self.proj = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(heads, out_dim))
        nn.init.xavier_uniform_(self.att_src)
        nn.init.xavier_uniform_(self.att_dst)
        self.leaky = nn.LeakyReLU(negative_slope)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, queries: slice | None = None) -> torch.Tensor:
        """``queries``: compute only these nodes' outputs (all nodes still serve as neighbours):
        the last layer of a stack needs only the nodes read after it."""
        b, n, _ = x.shape
        h = self.proj(x).view(b, n, self.heads, self.out_dim).transpose(1, 2)  # (B, H, N, D)
        rows = slice(None) if queries is None else queries
        # e_ij = LeakyReLU(a_dst·Wh_i + a_src·Wh_j): the split form of a^T [Wh_i || Wh_j]; laid out
        # (B, H, N_q, N) so the softmax over neighbours j runs along contiguous memory.
        dst = (h[:, :, rows] * self.att_dst.unsqueeze(1)).sum(-1)  # (B, H, N_q)
        src = (h * self.att_src.unsqueeze(1)).sum(-1)  # (B, H, N)
        e = self.leaky(dst.unsqueeze(-1) + src.unsqueeze(-2))
        adj = adj.bool().expand(b, n, n)
        if self.self_loops:
            adj = adj | torch.eye(n, dtype=torch.bool, device=x.device)
        mask = adj[:, rows].unsqueeze(1)  # (B, 1, N_q, N)
        e = e.masked_fill(~mask, float("-inf"))
        if self.self_loops:  # every node is its own neighbour: no row is all -inf, masked weights are exactly 0
            alpha = torch.softmax(e, dim=-1)
        else:
            has_any = mask.any(dim=-1, keepdim=True)
            alpha = torch.softmax(e.masked_fill(~has_any, 0.0), dim=-1) * mask
        out = (self.dropout(alpha) @ h).transpose(1, 2)  # (B, N_q, H, D)
        return out.reshape(b, out.shape[1], -1) if self.concat else out.mean(dim=2)


def gat_stack(layers, x: torch.Tensor, adj: torch.Tensor, first_read: int = 0) -> torch.Tensor:
    """x + ELU(GAT(x)) per layer (residual); returns nodes ``first_read:`` of the last layer only
    (CoFARS reads the target and the prototypes, not the refined contexts)."""
    if not len(layers):
        return x[:, first_read:]
    for i, layer in enumerate(layers):
        rows = slice(first_read, None) if i == len(layers) - 1 else None
        x = (x if rows is None else x[:, rows]) + F.elu(layer(x, adj, rows))
    return x


class _StraightThrough(torch.autograd.Function):
    """Forward 1[y > ½] exactly (``hard + y - y.detach()`` can round to 0.99999994), backward identity."""

    @staticmethod
    def forward(ctx, y):
        return (y > 0.5).to(y.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def gumbel_binarize(logits: torch.Tensor, tau: float = 1.0, hard: bool = True, noise: bool = True,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Binary Gumbel-softmax: y = σ((logits + g₁ − g₂)/τ), g ~ Gumbel(0, 1) (their difference is
    logistic noise). ``hard``: forward is 1[y > ½] in {0, 1}, backward is y's gradient (straight-through).
    ``noise=False`` (evaluation) drops the noise, so the decision is deterministic: 1[logits > 0]."""
    if noise:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        u = u.clamp(torch.finfo(logits.dtype).tiny, 1 - torch.finfo(logits.dtype).eps)
        logits = logits + torch.log(u) - torch.log1p(-u)  # logistic sample = g1 - g2
    y = torch.sigmoid(logits / tau)
    if not hard:
        return y
    return _StraightThrough.apply(y)


# ------------------------------------------------------------------------------------------------
# Offline: the user's contexts from the history


class ContextGraph(NamedTuple):
    """The history-only part of CoFARS for R requests with M node slots (offline). Scoring reads only
    the first four fields; D(C) and the true JS are the training target of L_MSE (None: no L_MSE)."""

    node_context: torch.Tensor  # (R, M) long: the context id of each node, most frequent first
    node_ok: torch.Tensor  # (R, M) bool: the slot holds a context of the history
    adjacency: torch.Tensor  # (R, M, M) bool: contexts of consecutive behaviours (symmetric)
    last_node: torch.Tensor  # (R,) long: node of the newest behaviour, -1 when it has none
    distribution: torch.Tensor | None = None  # (R, M, V) D(C) of each node
    divergence: torch.Tensor | None = None  # (R, M, M) true JS between the nodes' D(C)


def context_nodes(hist_context: torch.Tensor, hist_mask: torch.Tensor, n_contexts: int,
                  max_contexts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The user's contexts (paper: the contexts of the temporal graph): the ``max_contexts`` most
    frequent contexts of each history (R, n) (context 0, unknown, is never a node). Returns node
    context ids (R, M), node_ok (R, M) and each behaviour's node (R, n), -1 = none."""
    counts = torch.zeros(hist_context.shape[0], n_contexts, device=hist_context.device)
    counts.scatter_add_(1, hist_context, hist_mask.float())
    counts[:, 0] = 0
    top, node_ctx = counts.topk(min(max_contexts, n_contexts), dim=1)
    node_ok = top > 0
    eq = (hist_context.unsqueeze(-1) == node_ctx.unsqueeze(1)) & node_ok.unsqueeze(1) & hist_mask.unsqueeze(-1)
    slot = torch.where(eq.any(-1), eq.float().argmax(-1), torch.full_like(hist_context, -1))
    return node_ctx, node_ok, slot


def context_adjacency(slot: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Context–context edges of the temporal graph: nodes of consecutive behaviours in different
    contexts, both directions. slot (R, n) from ``context_nodes`` -> (R, M, M) bool."""
    r = slot.shape[0]
    a, b = slot[:, :-1], slot[:, 1:]
    ok = (a >= 0) & (b >= 0) & (a != b)
    adj = torch.zeros(r, n_nodes * n_nodes, device=slot.device)
    adj.scatter_add_(1, torch.where(ok, a * n_nodes + b, torch.zeros_like(a)), ok.float())
    adj.scatter_add_(1, torch.where(ok, b * n_nodes + a, torch.zeros_like(a)), ok.float())
    return adj.view(r, n_nodes, n_nodes) > 0


def context_graph(hist_context: torch.Tensor, hist_mask: torch.Tensor, hist_attributes: torch.Tensor,
                  n_contexts: int, max_contexts: int, group_sizes: list[int], alpha: float = 1.0) -> ContextGraph:
    """Offline part of CoFARS (O(n) per user, no parameters): context nodes, D(C) per node counted
    from the behaviours' attribute values, the true JS between nodes, the temporal context edges and
    the newest behaviour's node. hist_context (R, n) long, hist_mask (R, n) bool (left-aligned,
    oldest first), hist_attributes (R, n, G) long: one value per attribute group of ``group_sizes``
    (values past a group's size count as its last value)."""
    node_ctx, node_ok, slot = context_nodes(hist_context, hist_mask, n_contexts, max_contexts)
    m = node_ctx.shape[1]
    onehot = torch.cat([F.one_hot(hist_attributes[..., g].clamp(max=size - 1), size)
                        for g, size in enumerate(group_sizes)], -1).float() * hist_mask.unsqueeze(-1)
    eq = slot.unsqueeze(-1) == torch.arange(m, device=slot.device)  # (R, n, M): behaviour in node
    counts = torch.einsum("rlm,rlv->rmv", eq.float(), onehot)
    distribution = attribute_distribution(counts, group_sizes, alpha).float()
    last_node = slot.gather(1, (hist_mask.sum(1, keepdim=True) - 1).clamp(min=0)).squeeze(1)
    return ContextGraph(node_ctx, node_ok, context_adjacency(slot, m), last_node, distribution,
                        pairwise_symmetric_kl(distribution, distribution))


# ------------------------------------------------------------------------------------------------
# Online: the temporal graph, the GAT and the selection of one request


def attach_prototypes(sim: torch.Tensor, node_ok: torch.Tensor, tau: float = 1.0, sample: bool = True) -> torch.Tensor:
    """Prototype–context edges of the temporal graph: each context and the target (columns of
    sim (R, P, M+1), the target last) attaches to one prototype, drawn by a hard Gumbel-softmax of
    sim(o_i, c_j) at temperature τ_p when ``sample`` (training), else the most similar one.
    node_ok (R, M) drops empty node slots. Returns (R, P, M+1) bool."""
    if sample:
        attach = F.gumbel_softmax(sim.transpose(1, 2), tau=tau, hard=True, dim=-1)
    else:
        attach = F.one_hot(sim.transpose(1, 2).argmax(-1), sim.shape[1]).float()
    attach = attach.transpose(1, 2) > 0.5
    return attach & torch.cat([node_ok, torch.ones_like(node_ok[:, :1])], 1).unsqueeze(1)


def temporal_graph(adjacency: torch.Tensor, last_node: torch.Tensor, attach: torch.Tensor) -> torch.Tensor:
    """The temporal graph's adjacency (R, N, N) over [contexts (M), target (1), prototypes (P)]:
    context–context edges (R, M, M), the target joined to the newest behaviour's node last_node (R,)
    (-1 = none), prototype–context edges attach (R, P, M+1)."""
    r, m, _ = adjacency.shape
    n_nodes = m + 1 + attach.shape[1]
    adj = torch.zeros(r, n_nodes, n_nodes, dtype=torch.bool, device=adjacency.device)
    adj[:, :m, :m] = adjacency
    has_last = last_node >= 0
    rows = torch.arange(r, device=adjacency.device)
    adj[rows[has_last], m, last_node[has_last]] = True
    adj[rows[has_last], last_node[has_last], m] = True
    adj[:, m + 1:, : m + 1] = attach
    adj[:, : m + 1, m + 1:] = attach.transpose(1, 2)
    return adj


def select_prototypes(sim: torch.Tensor, short_term: torch.Tensor, proto: torch.Tensor, tau: float = 1.0,
                      hard: bool = True, noise: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Selection: z_i = GumbelBinarize(sim(õ_i, c̃_t) · (õ_i · l)): sim (R, P) between the
    (graph-refined) prototypes and the target context, short_term l (R, d), proto õ (R, P, d) -> z (R, P)."""
    return gumbel_binarize(sim * torch.einsum("bkd,bd->bk", proto, short_term), tau, hard, noise, generator)


def selected_contexts(z: torch.Tensor, attach: torch.Tensor) -> torch.Tensor:
    """Phase 2's contexts: those attached to a chosen prototype. z (R, P) in {0, 1}, attach (R, P, M)
    bool (prototype–context edges) -> (R, M) bool."""
    return ((z > 0.5).unsqueeze(-1) & attach.bool()).any(dim=1)


def subsequence_mask(history_context_ids: torch.Tensor, selected_context_ids: torch.Tensor,
                     selected: torch.Tensor | None = None, pad_id: int = -1) -> torch.Tensor:
    """Phase 2's sub-sequence: (R, n) bool, behaviour j is kept when its context id is among the
    request's selected ones. history_context_ids (R, n), selected_context_ids (R, M); ``selected``
    (R, M) bool marks which of them count (default all); ``pad_id`` entries on either side never match."""
    sel_ok = selected_context_ids != pad_id
    if selected is not None:
        sel_ok = sel_ok & selected.bool()
    match = (history_context_ids.unsqueeze(-1) == selected_context_ids.unsqueeze(-2)) & sel_ok.unsqueeze(-2)
    return match.any(-1) & (history_context_ids != pad_id)


def phase1_score(z: torch.Tensor, proto: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Phase 1's training score s = Σ_i z_i · (õ_i · v) (with BCE on the click): z (R, P), proto õ
    (R, P, d), candidates v (R, K, d) -> logits (R, K)."""
    return torch.einsum("rp,rpd,rkd->rk", z, proto, cand)


# ------------------------------------------------------------------------------------------------
# The module


class CoFARS(nn.Module):
    """CoFARS's parameters and its online pass for R requests (see the module docstring): context
    and prototype embeddings, the probability encoder, the GAT and the short-term GRU."""

    def __init__(self, cfg: CTRConfig, n_contexts: int, dim: int, group_sizes: list[int]):
        super().__init__()
        self.cfg = cfg
        self.group_sizes = group_sizes
        self.context_emb = nn.Embedding(n_contexts, dim)
        self.prob = ProbabilityEncoder(dim, group_sizes, hidden=(2 * dim,))
        self.prototypes = ContextPrototypes(dim, cfg.n_prototypes)
        heads = cfg.gat_heads if dim % cfg.gat_heads == 0 else 1
        self.gat = nn.ModuleList(GATLayer(dim, dim // heads, heads=heads) for _ in range(cfg.gat_layers))
        self.gru = nn.GRU(dim, dim, batch_first=True)

    def offline(self, hist_context: torch.Tensor, hist_mask: torch.Tensor,
                hist_attributes: torch.Tensor) -> ContextGraph:
        """``context_graph`` with this model's sizes and settings (a server calls it per user, offline)."""
        return context_graph(hist_context, hist_mask, hist_attributes, self.context_emb.num_embeddings,
                             self.cfg.max_contexts, self.group_sizes, self.cfg.distribution_alpha)

    def short_term(self, window: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
        """Short-term preference l = GRU(last r behaviours): window (R, r, d) left-aligned, oldest
        first, window_mask (R, r) -> (R, d). Right-aligned first, so the final state follows the
        newest behaviour (the leading padding steps still run on zeros)."""
        seq = window * window_mask.unsqueeze(-1)
        shift = (~window_mask).sum(-1)
        n = window_mask.shape[-1]
        idx = (torch.arange(n, device=window_mask.device).unsqueeze(0) - shift.unsqueeze(1)) % n
        _, h_n = self.gru(seq.gather(1, idx.unsqueeze(-1).expand_as(seq)))
        return h_n[-1]

    def forward(self, user: torch.Tensor, context: torch.Tensor, graph: ContextGraph, window: torch.Tensor,
                window_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Online pass: user (R, d) embedding, target context id (R,), the request's ``ContextGraph``
        and its last r behaviours (``short_term``). Returns ``chosen`` (R, M) bool context nodes, the
        selection ``z`` (R, P), the refined ``prototypes`` (R, P, d) and the losses ``l_mse`` (0 without
        the graph's divergences), ``l_ind``. Cost O(r + (M + P)²), independent of the history length
        and of the candidates."""
        cfg = self.cfg
        m = graph.node_context.shape[1]
        short = self.short_term(window, window_mask)
        c = user.unsqueeze(1) + self.context_emb(graph.node_context)  # c_i = u + ĉ_i
        p_c = self.prob(c)
        l_mse = self.prob.mse_loss(p_c, graph.divergence, graph.node_ok) if graph.divergence is not None \
            else p_c.new_zeros(())
        o = self.prototypes(user)  # o_i = ô_i + u
        p_o = self.prob(o)
        l_ind = ContextPrototypes.independence_loss(p_o)
        c_t = user + self.context_emb(context)
        p_t = self.prob(c_t)
        sim_oc = 1 - pairwise_symmetric_kl(p_o, torch.cat([p_c, p_t.unsqueeze(1)], 1))  # (R, P, M+1)
        attach = attach_prototypes(sim_oc, graph.node_ok, cfg.attach_temperature, sample=self.training)
        adj = temporal_graph(graph.adjacency, graph.last_node, attach)
        x = torch.cat([c, c_t.unsqueeze(1), o], 1)
        x = gat_stack(self.gat, x, adj, first_read=m)
        t_ref, o_ref = x[:, 0], x[:, 1:]  # refined target context and prototypes
        sim_t = 1 - pairwise_symmetric_kl(self.prob(o_ref), self.prob(t_ref).unsqueeze(1)).squeeze(-1)  # (R, P)
        z = select_prototypes(sim_t, short, o_ref, cfg.select_temperature, hard=True, noise=self.training)
        return {"chosen": selected_contexts(z, attach[:, :, :m]), "z": z, "prototypes": o_ref,
                "l_mse": l_mse, "l_ind": l_ind}
