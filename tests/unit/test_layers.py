"""Shared layers (components/layers.py): MLP, target attention and the one InfoNCE."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from components.layers import MLP, CrossNetwork, TargetAttention, info_nce


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_mlp_shapes():
    assert MLP(6, [8, 4], 3, dropout=0.1)(torch.randn(5, 6)).shape == (5, 3)
    assert MLP(6, [], 2)(torch.randn(5, 6)).shape == (5, 2)
    assert MLP(6, [8], 2)(torch.randn(3, 4, 6)).shape == (3, 4, 2)
    with pytest.raises(ValueError, match="activation"):
        MLP(6, [8], 2, activation="swish")


def test_mlp_loads_a_state_dict_saved_from_a_bare_sequential():
    """Text-encoder heads and news models saved before the MLP was shared were nn.Sequential."""
    old = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))
    new = MLP(6, (8,), 3, activation="gelu")
    new.load_state_dict(old.state_dict())
    x = torch.randn(4, 6)
    assert torch.equal(new(x), old(x))
    outer = nn.Module()  # nested: the keys carry the parent's prefix
    outer.head = MLP(6, (8,), 3, activation="gelu")
    outer.load_state_dict({f"head.{k}": v for k, v in old.state_dict().items()})
    assert torch.equal(outer.head(x), old(x))
    assert set(outer.state_dict()) == {"head.net.0.weight", "head.net.0.bias", "head.net.2.weight", "head.net.2.bias"}


@pytest.mark.parametrize("normalize", [True, False])
def test_target_attention_masks_padding_and_empty_rows(normalize):
    d, n = 8, 50
    att = TargetAttention(d, hidden=(16,), normalize=normalize).eval()
    lengths = torch.tensor([1, 3, 50, 0])  # very different lengths, the last row all padding
    mask = torch.arange(n)[None, :] < lengths[:, None]
    q, keys = torch.randn(4, d), torch.randn(4, n, d)
    out, w = att(q, keys, mask, return_weights=True)
    assert out.shape == (4, d) and w.shape == (4, n)
    assert torch.equal(out[3], torch.zeros(d)) and not torch.isnan(out).any()
    assert (w[~mask] == 0).all()
    if normalize:
        assert torch.allclose(w[:3].sum(-1), torch.ones(3))
    # Anything in the padding (even huge values) leaves the output unchanged.
    garbage = keys.clone()
    garbage[~mask] = 1e6 * torch.randn(int((~mask).sum()), d)
    assert torch.allclose(att(q, garbage, mask), out)
    # The length-1 row under normalisation is its single behaviour.
    if normalize:
        assert torch.allclose(out[0], keys[0, 0], atol=1e-6)


def test_target_attention_scores_are_the_mlp_of_the_concatenation():
    """The split first layer is DIN's MLP([q, k, q-k, q*k]) computed without the concatenation."""
    att = TargetAttention(4, hidden=(8,)).eval()
    q, keys = torch.randn(2, 4), torch.randn(2, 5, 4)
    qe = q.unsqueeze(1).expand_as(keys)
    want = torch.softmax(att.score(torch.cat([qe, keys, qe - keys, qe * keys], -1)).squeeze(-1), -1)
    _, w = att(q, keys, torch.ones(2, 5, dtype=torch.bool), return_weights=True)
    assert torch.allclose(w, want, atol=1e-6)


def test_target_attention_candidates_share_one_sequence():
    att = TargetAttention(4, hidden=(8,)).eval()
    cand, keys = torch.randn(2, 3, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[True] * 6, [True, True, False, False, False, False]])
    shared = att(cand, keys, mask)
    assert shared.shape == (2, 3, 4)
    for k in range(3):
        assert torch.allclose(shared[:, k], att(cand[:, k], keys, mask), atol=1e-6)


def test_target_attention_gradients_finite_on_empty_row():
    att = TargetAttention(4, hidden=(8,))
    q = torch.randn(2, 4, requires_grad=True)
    out = att(q, torch.randn(2, 5, 4), torch.tensor([[True] * 5, [False] * 5]))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_info_nce_matches_the_cross_entropy_definition():
    q, k = torch.randn(5, 3), torch.randn(5, 3)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).T / 0.5
    # row i: -log softmax(logits_i)[i], averaged; the keys' side uses the columns
    rows = -(logits.diag() - logits.logsumexp(1)).mean()
    cols = -(logits.diag() - logits.logsumexp(0)).mean()
    assert info_nce(q, k, 0.5, normalize=True, symmetric=False).item() == pytest.approx(rows.item(), abs=1e-6)
    assert info_nce(q, k, 0.5, normalize=True).item() == pytest.approx((rows + cols).item() / 2, abs=1e-6)
    # without normalize the raw dot product is the similarity
    assert info_nce(q, k, 0.5, symmetric=False).item() == pytest.approx(
        F.cross_entropy(q @ k.T / 0.5, torch.arange(5)).item(), abs=1e-6)


def test_info_nce_exclude_removes_negatives_and_is_low_for_aligned_pairs():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    exclude = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    assert info_nce(a, a.clone(), 0.1, exclude=exclude) < 1e-3 < info_nce(a, a.clone(), 0.1)
    shuffled = a[[2, 0, 1]]
    assert info_nce(a, shuffled, 0.1, exclude=exclude) > 1.0, "misaligned pairs cost a lot"


def test_info_nce_weights_give_a_weighted_mean_over_pairs():
    q, k = torch.randn(4, 3), torch.randn(4, 3)
    per_row = F.cross_entropy(q @ k.T / 0.5, torch.arange(4), reduction="none")
    w = torch.tensor([1.0, 0.0, 2.0, 1.0])
    assert info_nce(q, k, 0.5, symmetric=False, weights=w).item() == pytest.approx(
        (per_row * w).sum().item() / 4, abs=1e-6)
    assert info_nce(q, k, 0.5, weights=torch.ones(4)).item() == pytest.approx(info_nce(q, k, 0.5).item(), abs=1e-6)


def test_cross_network_is_dcn_v2s_recurrence():
    """x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, layer by layer; no layers is the identity."""
    x = torch.randn(3, 2, 5)
    assert torch.equal(CrossNetwork(5, 0)(x), x)
    net = CrossNetwork(5, 2)
    with torch.no_grad():
        for lin in net.layers:
            lin.bias.normal_()
        x1 = x * (x @ net.layers[0].weight.T + net.layers[0].bias) + x
        x2 = x * (x1 @ net.layers[1].weight.T + net.layers[1].bias) + x1
        assert torch.allclose(net(x), x2, atol=1e-6)
    # a cross of two inputs: the output holds their product, which a sum of the inputs cannot
    net = CrossNetwork(2, 1)
    with torch.no_grad():
        net.layers[0].weight.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        net.layers[0].bias.zero_()
        out = net(torch.tensor([[2.0, 3.0]]))
    assert torch.allclose(out, torch.tensor([[2.0 * 3.0 + 2.0, 3.0]]))


def test_low_rank_cross_layer_is_the_same_recurrence_with_w_of_that_rank():
    x = torch.randn(4, 6)
    net = CrossNetwork(6, 1, rank=2)
    down, up = net.layers[0]
    with torch.no_grad():
        w = up.weight @ down.weight
        assert torch.linalg.matrix_rank(w) == 2
        assert torch.allclose(net(x), x * (x @ w.T + up.bias) + x, atol=1e-6)
    assert sum(p.numel() for p in net.parameters()) == 6 * 2 + 2 * 6 + 6
