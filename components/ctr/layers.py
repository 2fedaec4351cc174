"""Reusable CTR layers (FuxiCTR habit: layers apart from the models that compose them).

- ``MLP``: Linear -> activation -> dropout blocks and a final linear layer.
- ``TargetAttention``: DIN-style attention of a target over a padded behaviour sequence.
- ``ESMMHeads`` / ``esmm_loss``: ctr, cvr and ctcvr = ctr * cvr over the whole impression space.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}


class MLP(nn.Module):
    """``in_dim -> hidden[0] -> … -> out_dim``; each hidden layer is Linear, activation, dropout.
    The output layer is plain linear (logits / embeddings), no activation."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TargetAttention(nn.Module):
    """DIN target attention: score_j = MLP([q, k_j, q-k_j, q*k_j]), output = Σ_j w_j k_j.

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
        h = (query @ (w1 + w3).T) + (keys @ (w2 - w3).T) + ((query * keys) @ w4.T) + first.bias
        return self.score.net[1:](h).squeeze(-1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                values: torch.Tensor | None = None, return_weights: bool = False):
        """query (B, d) or (B, K, d) — K candidates sharing one sequence; keys (B, n, d) or
        (B, K, n, d); mask (B, n) or (B, K, n) bool with True = real behaviour; values default keys.
        Returns (B, d_v) or (B, K, d_v) (and the weights)."""
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


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate on both ends (Mächler 2012); x is clamped below 0 so
    neither branch of the where() can produce inf/NaN gradients."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near_zero = torch.log(-torch.expm1(x.clamp(min=-math.log(2))))
    far = torch.log1p(-torch.exp(x.clamp(max=-math.log(2))))
    return torch.where(x > -math.log(2), near_zero, far)


def esmm_loss(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor, click: torch.Tensor, order: torch.Tensor,
              ctcvr_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """ESMM loss BCE(ctr, click) + w·BCE(ctcvr, order), both from logits in log space so extreme logits
    stay finite. Returns ``{"loss", "ctr", "ctcvr"}`` (means over the batch)."""
    click, order = click.to(ctr_logit.dtype), order.to(ctr_logit.dtype)
    ctr_bce = F.binary_cross_entropy_with_logits(ctr_logit, click)
    log_ctcvr = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)  # log(ctr * cvr)
    ctcvr_bce = -(order * log_ctcvr + (1 - order) * _log1mexp(log_ctcvr)).mean()
    return {"loss": ctr_bce + ctcvr_weight * ctcvr_bce, "ctr": ctr_bce, "ctcvr": ctcvr_bce}


class ESMMHeads(nn.Module):
    """Two towers over a shared representation: ctr = σ(ctr_logit), cvr = σ(cvr_logit),
    ctcvr = ctr·cvr. The cvr tower is only supervised through ctcvr (ESMM), so it learns on all
    impressions rather than on clicks alone."""

    def __init__(self, in_dim: int, hidden: list[int] | tuple[int, ...] = (64,), dropout: float = 0.0,
                 activation: str = "relu", ctcvr_weight: float = 1.0):
        super().__init__()
        self.ctr_tower = MLP(in_dim, hidden, 1, dropout=dropout, activation=activation)
        self.cvr_tower = MLP(in_dim, hidden, 1, dropout=dropout, activation=activation)
        self.ctcvr_weight = ctcvr_weight

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, in_dim) -> dict of (B,) tensors: ctr_logit, cvr_logit, ctr, cvr, ctcvr."""
        ctr_logit = self.ctr_tower(x).squeeze(-1)
        cvr_logit = self.cvr_tower(x).squeeze(-1)
        ctr, cvr = torch.sigmoid(ctr_logit), torch.sigmoid(cvr_logit)
        return {"ctr_logit": ctr_logit, "cvr_logit": cvr_logit, "ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}

    def loss(self, out: dict[str, torch.Tensor], click: torch.Tensor, order: torch.Tensor) -> dict[str, torch.Tensor]:
        """``esmm_loss`` on the output of ``forward``."""
        return esmm_loss(out["ctr_logit"], out["cvr_logit"], click, order, self.ctcvr_weight)
