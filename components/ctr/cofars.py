"""CoFARS building blocks (METHODS.md §2): context distributions, their symmetrised KL, the
probability encoder, context prototypes, a GAT layer, Gumbel binarisation and the per-request
sub-sequence selection.

Choices of ours (the paper leaves them open):
- A context's distribution D(C) is the concatenation of one distribution per attribute group
  (category, price band, …), each summing to 1; zeros are smoothed additively (``alpha``).
  ``symmetric_kl`` on such a vector is the sum of the per-group divergences.
- ``symmetric_kl`` is what the paper calls "JS": ½[KL(p‖q) + KL(q‖p)] = ½ Σ (p−q)(log p − log q);
  ``sim = 1 − JS`` as in the paper.
- ``L_IND`` averages over prototype pairs i ≠ j (the diagonal is 0 by definition).
- Selection runs once per **request** (user, target context, short-term preference); candidates are
  no argument of it, and its mask is broadcast to the request's candidates with ``expand_to_candidates``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from components.layers import MLP


# ------------------------------------------------------------------------------------------------
# Distributions and their divergence


def attribute_distribution(counts, group_sizes: list[int] | None = None, alpha: float = 1.0):
    """Counts (..., V) of attribute values -> distributions, normalised per attribute group
    (``group_sizes`` summing to V; default one group) after adding ``alpha`` to every count so no
    value has probability 0. Works on numpy arrays and torch tensors alike."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0 so that no probability is zero, got {alpha}")
    is_torch = isinstance(counts, torch.Tensor)
    x = counts.double() if is_torch else np.asarray(counts, dtype=np.float64)
    if (x < 0).any():
        raise ValueError("counts must be non-negative")
    sizes = [x.shape[-1]] if group_sizes is None else list(group_sizes)
    if sum(sizes) != x.shape[-1]:
        raise ValueError(f"group_sizes {sizes} sum to {sum(sizes)}, but counts have {x.shape[-1]} values")
    x = x + alpha
    if is_torch:
        parts = [g / g.sum(-1, keepdim=True) for g in torch.split(x, sizes, dim=-1)]
        out = torch.cat(parts, dim=-1)
        return out.to(counts.dtype) if counts.is_floating_point() else out.float()
    parts = [g / g.sum(-1, keepdims=True) for g in np.split(x, np.cumsum(sizes)[:-1], axis=-1)]
    return np.concatenate(parts, axis=-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """½[KL(p‖q) + KL(q‖p)] over the last dim (batched, broadcasting); entries below ``eps`` are
    clamped to ``eps`` before the log."""
    p, q = p.clamp(min=eps), q.clamp(min=eps)
    return 0.5 * ((p - q) * (p.log() - q.log())).sum(-1)


def js_numpy(p, q, eps: float = 1e-8) -> np.ndarray:
    """numpy twin of ``symmetric_kl`` (offline: true divergences between logged contexts)."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, None)
    q = np.clip(np.asarray(q, dtype=np.float64), eps, None)
    return 0.5 * ((p - q) * (np.log(p) - np.log(q))).sum(-1)


def pairwise_symmetric_kl(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., n, V) and (..., m, V) -> (..., n, m) matrix of ``symmetric_kl``.

    Expanded as ½[Σ a log a + Σ b log b − a·log bᵀ − log a·bᵀ] so the n×m×V work runs as two matrix
    products instead of an (n, m, V) broadcast (7× faster on CPU; same value up to rounding)."""
    a, b = a.clamp(min=eps), b.clamp(min=eps)
    la, lb = a.log(), b.log()
    self_a = (a * la).sum(-1).unsqueeze(-1)  # (..., n, 1)
    self_b = (b * lb).sum(-1).unsqueeze(-2)  # (..., 1, m)
    cross = a @ lb.transpose(-1, -2) + la @ b.transpose(-1, -2)
    return (0.5 * (self_a + self_b - cross)).clamp(min=0)


# ------------------------------------------------------------------------------------------------
# Probability encoder and prototypes


class ProbabilityEncoder(nn.Module):
    """P(c) = sigmoid(MLP(c)) over all attribute values, normalised per attribute group into
    distributions; c = u + ĉ (user embedding plus shared context / prototype embedding)."""

    def __init__(self, embed_dim: int, group_sizes: list[int], hidden: list[int] | tuple[int, ...] = (64,),
                 dropout: float = 0.0, eps: float = 1e-8):
        super().__init__()
        self.group_sizes = list(group_sizes)
        self.mlp = MLP(embed_dim, hidden, sum(self.group_sizes), dropout=dropout)
        self.eps = eps

    def forward(self, user: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """user (..., d) broadcast onto context (..., d) -> distributions (..., V)."""
        s = torch.sigmoid(self.mlp(user + context)) + self.eps
        return torch.cat([g / g.sum(-1, keepdim=True) for g in torch.split(s, self.group_sizes, dim=-1)], dim=-1)

    def mse_loss(self, p_est: torch.Tensor, js_true: torch.Tensor) -> torch.Tensor:
        """L_MSE = mean_ij (JS_true − JS_est)² for (..., n, V) estimated distributions and the
        (..., n, n) true divergences of the same contexts."""
        return F.mse_loss(pairwise_symmetric_kl(p_est, p_est, self.eps), js_true.to(p_est.dtype))


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
# Temporal graph


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

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        h = self.proj(x).view(b, n, self.heads, self.out_dim)  # (B, N, H, D)
        # e_ij = LeakyReLU(a_dst·Wh_i + a_src·Wh_j): the split form of a^T [Wh_i || Wh_j].
        e = (h * self.att_dst).sum(-1).unsqueeze(2) + (h * self.att_src).sum(-1).unsqueeze(1)  # (B, N, N, H)
        e = self.leaky(e)
        adj = adj.bool().expand(b, n, n)
        if self.self_loops:
            adj = adj | torch.eye(n, dtype=torch.bool, device=x.device)
        mask = adj.unsqueeze(-1)
        has_any = mask.any(dim=2, keepdim=True)
        e = e.masked_fill(~mask, float("-inf")).masked_fill(~has_any, 0.0)
        alpha = self.dropout(torch.softmax(e, dim=2) * mask)  # normalised over neighbours j
        out = torch.einsum("bijh,bjhd->bihd", alpha, h)
        return out.reshape(b, n, -1) if self.concat else out.mean(dim=2)


# ------------------------------------------------------------------------------------------------
# Selection


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


def select_prototypes(sim: torch.Tensor, short_term: torch.Tensor, proto: torch.Tensor, tau: float = 1.0,
                      hard: bool = True, noise: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """z_i = GumbelBinarize(sim(õ_i, c̃_t) · (õ_i · l)): sim (B, K) between the (graph-refined)
    prototypes and the target context, short_term l (B, d), proto õ (B, K, d) -> z (B, K)."""
    return gumbel_binarize(sim * torch.einsum("bkd,bd->bk", proto, short_term), tau, hard, noise, generator)


def selected_contexts(z: torch.Tensor, attach: torch.Tensor) -> torch.Tensor:
    """Contexts attached to a chosen prototype: z (B, K) in {0, 1}, attach (B, K, C) bool
    (prototype–context edges of the temporal graph) -> (B, C) bool."""
    return ((z > 0.5).unsqueeze(-1) & attach.bool()).any(dim=1)


def subsequence_mask(history_context_ids: torch.Tensor, selected_context_ids: torch.Tensor,
                     selected: torch.Tensor | None = None, pad_id: int = -1) -> torch.Tensor:
    """(B, n) bool: behaviour j is kept when its context id is among the request's selected ones.
    history_context_ids (B, n), selected_context_ids (B, m); ``selected`` (B, m) bool marks which of
    them count (default all); ``pad_id`` entries on either side never match."""
    sel_ok = selected_context_ids != pad_id
    if selected is not None:
        sel_ok = sel_ok & selected.bool()
    match = (history_context_ids.unsqueeze(-1) == selected_context_ids.unsqueeze(-2)) & sel_ok.unsqueeze(-2)
    return match.any(-1) & (history_context_ids != pad_id)


def select_subsequence(sim: torch.Tensor, short_term: torch.Tensor, proto: torch.Tensor, attach: torch.Tensor,
                       context_ids: torch.Tensor, history_context_ids: torch.Tensor, tau: float = 1.0,
                       noise: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Phase 1 end to end for B **requests**: chosen prototypes -> their contexts -> (B, n) mask over
    the history. Candidates are deliberately no argument: one selection serves all of a request's
    candidates (O(r + |O|) instead of O(B·n))."""
    z = select_prototypes(sim, short_term, proto, tau, hard=True, noise=noise, generator=generator)
    return subsequence_mask(history_context_ids, context_ids, selected_contexts(z, attach))


def expand_to_candidates(per_request: torch.Tensor, request_index: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-request tensor (R, …) to candidate rows: request_index (N,) says which
    request each candidate row belongs to."""
    return per_request.index_select(0, request_index)
