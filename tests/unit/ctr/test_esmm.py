"""ESMM (components/ctr/esmm.py): CTCVR = CTR x CVR, a loss stable at extreme logits."""
from __future__ import annotations

import pytest
import torch

from components.ctr.esmm import ESMMHeads, esmm_loss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_esmm_ctcvr_is_ctr_times_cvr_and_loss_stable():
    heads = ESMMHeads(6, hidden=(8,))
    out = heads(torch.randn(7, 6))
    assert torch.allclose(out["ctcvr"], out["ctr"] * out["cvr"])
    assert out["ctcvr"].shape == (7,)
    # Extreme logits, both labels: finite loss and finite gradients.
    ctr_logit = torch.tensor([200.0, -200.0, 200.0, -200.0, 0.0, 50.0], requires_grad=True)
    cvr_logit = torch.tensor([200.0, 200.0, -200.0, -200.0, 0.0, 50.0], requires_grad=True)
    click = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    order = torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 0.0])
    parts = esmm_loss(ctr_logit, cvr_logit, click, order)
    assert all(torch.isfinite(v) for v in parts.values())
    parts["loss"].backward()
    assert torch.isfinite(ctr_logit.grad).all() and torch.isfinite(cvr_logit.grad).all()
    # Moderate logits: matches the naive formula.
    a, b = torch.randn(32), torch.randn(32)
    y, z = (torch.rand(32) < 0.5).float(), (torch.rand(32) < 0.3).float()
    p = torch.sigmoid(a) * torch.sigmoid(b)
    naive = torch.nn.functional.binary_cross_entropy(p, z)
    assert torch.allclose(esmm_loss(a, b, y, z)["ctcvr"], naive, atol=1e-5)
