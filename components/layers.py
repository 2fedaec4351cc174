"""Layers shared by llm/, ctr/ and news/ (FuxiCTR habit: layers apart from the models that compose them).

- ``MLP``: Linear -> activation -> dropout blocks and a final linear layer (LARR's text-encoder
  head and scene projection, CoFARS's probability encoder, the CTR towers, PerCoNet's contrast head).
- ``TargetAttention``: DIN-style attention of a target over a padded behaviour sequence (the CTR
  models' DIN, SIM-hard and CoFARS phase 2).
- ``CrossNetwork``: DCN-v2's cross layers (explicit feature crosses in front of the CTR models' MLP).
- ``info_nce``: InfoNCE with in-batch negatives (LARR's contrastive fine-tuning and scene alignment,
  PerCoNet's cross-view loss).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

_ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> … -> out_dim``; each hidden layer is Linear, activation, dropout.
    The output layer is plain linear (logits / embeddings), no activation. x (..., in_dim) -> (..., out_dim).

    The layers sit in ``self.net``; state dicts saved from a bare ``nn.Sequential`` of the same layers
    (keys ``0.weight`` … instead of ``net.0.weight`` …: text-encoder heads and news models written
    before this class was shared) load unchanged."""

    def __init__(self, in_dim: int, hidden: list[int] | tuple[int, ...] = (), out_dim: int = 1,
                 dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden]
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), _ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(dims[-1], out_dim))
        self.net = nn.Sequential(*layers)
        self._register_load_state_dict_pre_hook(_legacy_sequential_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _legacy_sequential_keys(state_dict, prefix, *_):
    """``{prefix}0.weight`` -> ``{prefix}net.0.weight`` (a bare ``nn.Sequential``'s keys), in place."""
    for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].split(".", 1)[0].isdigit()]:
        state_dict[f"{prefix}net.{key[len(prefix):]}"] = state_dict.pop(key)


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers (Wang et al. 2021): ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``. Each layer
    adds one degree of explicit, bounded feature crossing (products of the input's coordinates) that
    an MLP only approximates; the residual keeps the input, so zero layers is the identity. With
    ``0 < rank < dim``, ``W_l = U_l V_l`` of that rank (the paper's low-rank cross: fewer weights to
    fit); otherwise full rank.
    x (..., dim) -> (..., dim)."""

    def __init__(self, dim: int, layers: int, rank: int = 0):
        super().__init__()
        if rank and rank < dim:
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(dim, rank, bias=False), nn.Linear(rank, dim))
                                        for _ in range(layers))
        else:
            self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x
        for lin in self.layers:
            x = x0 * lin(x) + x
        return x


class TargetAttention(nn.Module):
    """DIN target attention: score_j = MLP([q, k_j, q-k_j, q*k_j]), output = Σ_j w_j v_j.

    query (B, d) or (B, K, d) — K candidates sharing one sequence; keys (B, n, d) or (B, K, n, d);
    mask (B, n) or (B, K, n) bool, True = real behaviour; values (same leading shape as keys, last
    dim d_v) default to the keys. Output (B, d_v) or (B, K, d_v) (and the weights (B[, K], n)).

    ``normalize=True`` (our default): w = softmax over the unmasked positions, so the output is a
    weighted mean and its scale does not grow with history length. ``normalize=False``: DIN's
    original unnormalised sum, w_j = score_j on unmasked positions (keeps intensity of interest).
    Either way padding positions get weight exactly 0 and a fully padded row returns zeros.
    """

    def __init__(self, embed_dim: int, hidden: list[int] | tuple[int, ...] = (64, 32), dropout: float = 0.0,
                 activation: str = "relu", normalize: bool = True):
        super().__init__()
        self.score = MLP(4 * embed_dim, hidden, 1, dropout=dropout, activation=activation)
        self.normalize = normalize

    def _scores(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """MLP([q, k, q-k, q*k]) without materialising the concatenation: the first linear layer
        is W·[q, k, q−k, q·k] = (W₁+W₃)q + (W₂−W₃)k + W₄(q·k), so only q·k has the (…, n, d) shape
        of every (query, key) pair. query (…, 1, d) broadcasts against keys (…, n, d)."""
        first = self.score.net[0]
        w1, w2, w3, w4 = first.weight.split(query.shape[-1], dim=1)
        # The pair term first, then the two broadcast terms added in place: one expression summing
        # them allocated pair-shaped temporaries and took ~4x as long (500 candidates x 64 keys).
        h = (query * keys) @ w4.T
        h += keys @ (w2 - w3).T + first.bias
        h += query @ (w1 + w3).T
        return self.score.net[1:](h).squeeze(-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                values: torch.Tensor | None = None, return_weights: bool = False):
        values = keys if values is None else values
        many = query.dim() == 3
        q = query.unsqueeze(-2)  # (B, 1, d) or (B, K, 1, d)
        k, v, m = keys, values, mask.bool()
        if many and keys.dim() == 3:  # one sequence shared by the K candidates
            k, v = keys.unsqueeze(1), values.unsqueeze(1)
        if many and m.dim() == 2:
            m = m.unsqueeze(1)
        scores = self._scores(q, k)  # (B, n) or (B, K, n)
        m = m.expand_as(scores)
        if self.normalize:
            # Fully masked rows would be softmax(-inf, …) = NaN: give them finite scores, then zero them.
            has_any = m.any(dim=-1, keepdim=True)
            scores = scores.masked_fill(~m, float("-inf")).masked_fill(~has_any, 0.0)
            weights = torch.softmax(scores, dim=-1) * m
        else:
            weights = scores.masked_fill(~m, 0.0)
        # where(), not multiply: garbage (even inf/NaN) in padded values must not leak into the sum.
        if v.dim() == weights.dim() + 1 and v.shape[-2] == weights.shape[-1] and v.shape[:-2] == weights.shape[:-1]:
            out = torch.einsum("...n,...nd->...d", weights, v.masked_fill(~m.unsqueeze(-1), 0.0))
        else:  # values shared by the K candidates: (B, 1, n, d_v)
            used = m.any(dim=1)  # (B, n): positions any candidate may attend to
            out = torch.einsum("bkn,bnd->bkd", weights, v.squeeze(1).masked_fill(~used.unsqueeze(-1), 0.0))
        return (out, weights) if return_weights else out


def info_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float, normalize: bool = False,
             symmetric: bool = True, exclude: torch.Tensor | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE with in-batch negatives: row i of queries (B, d) should pick row i of keys (B, d)
    among all B keys, cross-entropy of ``q_i·k_j / τ`` over j (and, when ``symmetric``, the same from
    the keys' side, the two averaged). ``normalize``: L2-normalise both first (cosine similarity; for
    inputs that are not unit vectors already). ``exclude`` (B, B) bool, False on the diagonal: pairs
    (i, j) left out of each other's negatives (its transpose applies to the keys' side). ``weights`` (B,):
    each pair's weight in the (weighted) mean over pairs. Returns a scalar."""
    if normalize:
        queries, keys = F.normalize(queries, dim=-1), F.normalize(keys, dim=-1)
    logits = queries @ keys.T / temperature
    target = torch.arange(len(queries), device=queries.device)
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    if weights is None:
        loss = F.cross_entropy(logits, target)
        if not symmetric:
            return loss
        return (loss + F.cross_entropy(logits.T, target)) / 2
    w = weights.to(logits.dtype) / weights.sum().clamp(min=1e-12)
    loss = (F.cross_entropy(logits, target, reduction="none") * w).sum()
    if not symmetric:
        return loss
    return (loss + (F.cross_entropy(logits.T, target, reduction="none") * w).sum()) / 2
