"""LARR scene aggregation (components/ctr/larr.py): shapes, masking, the served fast path, alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.ctr.larr import SceneAggregator
from components.layers import info_nce


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_scene_aggregator_shape_and_batch_permutation():
    agg = SceneAggregator(in_dim=12, n_features=5, d_model=16, n_heads=2, n_layers=1, collab_dim=8).eval()
    x = torch.randn(6, 5, 12)
    out = agg(x)
    assert out.shape == (6, 16) and agg.scene_vector(x).shape == (6, 8)
    perm = torch.randperm(6)
    assert torch.allclose(agg(x[perm]), out[perm], atol=1e-5)
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[:, 4] = False  # a masked feature does not matter
    x2 = x.clone()
    x2[:, 4] = 100.0
    assert torch.allclose(agg(x, mask), agg(x2, mask), atol=1e-5)
    with pytest.raises(ValueError, match="scene features"):
        agg(torch.randn(2, 4, 12))


def test_served_aggregator_reads_precomputed_terms_and_gives_the_same_vector():
    agg = SceneAggregator(in_dim=12, n_features=5, d_model=16, n_heads=2, n_layers=1, collab_dim=8)
    for p in agg.parameters():  # away from the initial values, so every term matters
        p.data.add_(0.3 * torch.randn_like(p))
    agg.eval()
    table = torch.randn(30, 12)
    rows = torch.randint(0, 30, (7, 5))
    rows[1, 2] = -1  # a missing feature
    rows[3] = -1  # a scene with no feature known
    served = agg.served(table)
    with torch.no_grad():
        want = agg.scene_vector(table[rows.clamp(min=0)], rows >= 0)
    got = served(rows.numpy())
    assert got.dtype == np.float32 and got.shape == (7, 8)
    assert np.allclose(got, want.numpy(), atol=1e-5)
    assert np.allclose(served(rows[:1].numpy()), want[:1].numpy(), atol=1e-5), "one request alone"
    deep = SceneAggregator(in_dim=12, n_features=5, d_model=16, n_heads=2, n_layers=2, collab_dim=8).eval()
    assert deep.served(table) is None, "later layers mix the features: nothing to precompute per value"


def test_scene_alignment_loss_decreases():
    agg = SceneAggregator(in_dim=8, n_features=3, d_model=16, n_heads=2, n_layers=1, dropout=0.0, collab_dim=8)
    x, collab = torch.randn(8, 3, 8), torch.randn(8, 8)
    losses = []
    for _ in range(20):
        loss = info_nce(agg.scene_vector(x), collab, temperature=0.1, normalize=True)
        agg.zero_grad()
        loss.backward()
        # Plain gradient descent: torch.optim's first step imports dynamo, seconds on a busy CPU.
        with torch.no_grad():
            for p in agg.parameters():
                p -= 0.3 * p.grad
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
