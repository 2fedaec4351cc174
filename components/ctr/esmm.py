"""ESMM heads of the CTR models: ctr, cvr and ctcvr = ctr * cvr over the whole impression space
(``ESMMHeads``) and their loss (``esmm_loss``). The shared MLP and target attention are in
components/layers.py."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.layers import MLP


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
