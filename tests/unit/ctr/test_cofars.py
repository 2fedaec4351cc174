"""The pieces of CoFARS (components/ctr/cofars.py): offline context graph, online selection. ESMM and
LARR are in test_esmm.py / test_larr.py; the shared layers in tests/unit/test_layers.py."""
from __future__ import annotations

import inspect

import pytest
import torch

from components.config import CTRConfig
from components.ctr.cofars import (CoFARS, ContextPrototypes, GATLayer, ProbabilityEncoder, attach_prototypes,
                                   attribute_distribution, context_graph, gumbel_binarize, pairwise_symmetric_kl,
                                   select_prototypes, selected_contexts, subsequence_mask, temporal_graph)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------------
# CoFARS


def test_attribute_distribution_smooths_and_normalises_per_group():
    counts = torch.randint(0, 5, (6, 9)).float()
    p = attribute_distribution(counts, group_sizes=[4, 3, 2])
    for lo, hi in ((0, 4), (4, 7), (7, 9)):
        assert torch.allclose(p[:, lo:hi].sum(-1), torch.ones(6))
    assert (p > 0).all() and p.dtype == torch.float32
    # hand-worked: counts (3, 0, 0), alpha 1 -> (4, 1, 1) / 6
    assert attribute_distribution(torch.tensor([[3.0, 0.0, 0.0]]))[0].tolist() == pytest.approx([4 / 6, 1 / 6, 1 / 6])
    js = pairwise_symmetric_kl(p, p.flip(0))
    assert js.shape == (6, 6) and (js >= 0).all()
    assert torch.allclose(pairwise_symmetric_kl(p, p).diagonal(), torch.zeros(6), atol=1e-6)
    assert torch.allclose(js, pairwise_symmetric_kl(p.flip(0), p).T, atol=1e-6)
    with pytest.raises(ValueError, match="group_sizes"):
        attribute_distribution(counts, group_sizes=[4, 4])
    with pytest.raises(ValueError, match="alpha"):
        attribute_distribution(counts, alpha=0)


def test_probability_encoder_and_prototypes():
    enc = ProbabilityEncoder(8, group_sizes=[3, 2], hidden=(16,))
    protos = ContextPrototypes(8, n_prototypes=5)
    user = torch.randn(2, 8)
    o = protos(user)
    assert o.shape == (2, 5, 8)
    dist = enc(o)
    assert dist.shape == (2, 5, 5)
    assert torch.allclose(dist[..., :3].sum(-1), torch.ones(2, 5))
    assert torch.allclose(dist[..., 3:].sum(-1), torch.ones(2, 5))
    l_ind = ContextPrototypes.independence_loss(dist)
    assert l_ind.item() <= 0
    js_true = torch.rand(2, 5, 5)
    l_mse = enc.mse_loss(dist, js_true)
    js_est = pairwise_symmetric_kl(dist, dist)
    off = ~torch.eye(5, dtype=torch.bool)
    assert l_mse.item() == pytest.approx(((js_est - js_true)[:, off] ** 2).mean().item(), rel=1e-5)
    # empty node slots (node_ok False) leave the loss
    node_ok = torch.tensor([[True, True, True, False, False], [True] * 5])
    pairs = (node_ok.unsqueeze(-1) & node_ok.unsqueeze(-2)) & off
    want = ((js_est - js_true)[pairs] ** 2).mean()
    assert enc.mse_loss(dist, js_true, node_ok).item() == pytest.approx(want.item(), rel=1e-5)
    (l_ind + l_mse).backward()
    assert protos.prototypes.grad is not None and torch.isfinite(protos.prototypes.grad).all()


def test_gat_layer_shapes_and_isolated_nodes():
    gat = GATLayer(6, 4, heads=2, self_loops=False)
    x = torch.randn(3, 5, 6)
    adj = torch.zeros(5, 5, dtype=torch.bool)
    adj[0, 1] = adj[1, 0] = True
    out = gat(x, adj)
    assert out.shape == (3, 5, 8)
    assert torch.equal(out[:, 2:], torch.zeros(3, 3, 8))  # no neighbours -> zeros, not NaN
    assert GATLayer(6, 4, heads=2, concat=False)(x, adj).shape == (3, 5, 4)


@pytest.mark.parametrize("self_loops", [True, False])
def test_gat_layer_matches_the_per_edge_definition_and_query_rows(self_loops):
    """out_i = Σ_j softmax_j(LeakyReLU(a_dst·Wh_i + a_src·Wh_j)) Wh_j over i's neighbours, per head;
    ``queries`` computes the same rows alone."""
    torch.manual_seed(0)
    gat = GATLayer(6, 4, heads=2, self_loops=self_loops)
    x = torch.randn(2, 5, 6)
    adj = torch.rand(2, 5, 5) > 0.5
    adj[:, 3] = False  # node 3 has no neighbour (isolated without self loops)
    h = gat.proj(x).view(2, 5, 2, 4)
    want = torch.zeros(2, 5, 2, 4)
    for b in range(2):
        for i in range(5):
            nb = [j for j in range(5) if adj[b, i, j] or (self_loops and i == j)]
            for k in range(2):
                if nb:
                    e = torch.stack([gat.att_dst[k] @ h[b, i, k] + gat.att_src[k] @ h[b, j, k] for j in nb])
                    e = torch.nn.functional.leaky_relu(e, 0.2)
                    want[b, i, k] = (torch.softmax(e, 0).unsqueeze(-1) * h[b, nb, k]).sum(0)
    got = gat(x, adj)
    torch.testing.assert_close(got, want.reshape(2, 5, 8), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gat(x, adj, slice(2, None)), got[:, 2:], rtol=1e-5, atol=1e-6)


def test_gumbel_binarize_is_binary_with_gradients():
    logits = torch.randn(64, requires_grad=True)
    z = gumbel_binarize(logits, tau=0.5, hard=True, generator=torch.Generator().manual_seed(1))
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    (z * torch.arange(64.0)).sum().backward()
    assert logits.grad.abs().sum() > 0
    assert torch.equal(gumbel_binarize(logits, noise=False), (logits > 0).float())


def test_subsequence_mask_marks_selected_contexts():
    hist = torch.tensor([[3, 1, 3, 2, -1], [0, 0, 1, -1, -1]])
    sel = torch.tensor([[3, -1], [1, 2]])
    mask = subsequence_mask(hist, sel)
    assert mask.tolist() == [[True, False, True, False, False], [False, False, True, False, False]]
    assert not subsequence_mask(hist, sel, selected=torch.zeros(2, 2, dtype=torch.bool)).any()


def test_context_graph_offline_quantities_by_hand():
    # one history, oldest first: contexts 3 1 3 2 3 (+ padding); category / price band per behaviour
    ctx = torch.tensor([[3, 1, 3, 2, 3, 0]])
    mask = torch.tensor([[True] * 5 + [False]])
    attrs = torch.tensor([[[0, 1], [1, 0], [0, 0], [1, 1], [1, 1], [0, 0]]])  # groups of sizes 2 and 2
    g = context_graph(ctx, mask, attrs, n_contexts=5, max_contexts=4, group_sizes=[2, 2], alpha=1.0)
    assert g.node_context[0, :3].tolist() == [3, 1, 2] or g.node_context[0, :3].tolist() == [3, 2, 1]
    assert g.node_ok.tolist() == [[True, True, True, False]]
    node = {int(c): i for i, c in enumerate(g.node_context[0, :3])}
    # context 3 holds behaviours 0, 2, 4: categories (0, 0, 1), prices (1, 0, 1) -> +1 smoothing
    assert g.distribution[0, node[3]].tolist() == pytest.approx([3 / 5, 2 / 5, 2 / 5, 3 / 5])
    # edges: 3-1, 1-3, 3-2, 2-3 (consecutive, different contexts); 1 and 2 never adjacent
    adj = g.adjacency[0]
    assert adj[node[3], node[1]] and adj[node[1], node[3]] and adj[node[3], node[2]] and adj[node[2], node[3]]
    assert not adj[node[1], node[2]] and not adj.diagonal().any() and not adj[3].any()
    assert g.last_node.tolist() == [node[3]]  # the newest real behaviour is in context 3
    assert torch.allclose(g.divergence, pairwise_symmetric_kl(g.distribution, g.distribution))
    # no history: no node, no newest behaviour
    empty = context_graph(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.bool),
                          torch.zeros(1, 3, 2, dtype=torch.long), 5, 4, [2, 2])
    assert not empty.node_ok.any() and empty.last_node.tolist() == [-1]


def test_attach_prototypes_and_temporal_graph():
    sim = torch.tensor([[[0.9, 0.1, 0.2], [0.1, 0.8, 0.7]]])  # (R=1, P=2, M+1=3): node 0, node 1, target
    node_ok = torch.tensor([[True, False]])
    attach = attach_prototypes(sim, node_ok, sample=False)
    # each column attaches to its most similar prototype; the empty node slot 1 to none
    assert attach.tolist() == [[[True, False, False], [False, False, True]]]
    drawn = attach_prototypes(sim, torch.ones(1, 2, dtype=torch.bool), tau=0.5, sample=True)
    assert (drawn.sum(1) == 1).all(), "a Gumbel-softmax draw still attaches every column to one prototype"
    adjacency = torch.tensor([[[False, True], [True, False]]])
    adj = temporal_graph(adjacency, torch.tensor([1]), attach)
    assert adj.shape == (1, 5, 5)  # [node 0, node 1, target, prototype 0, prototype 1]
    assert adj[0, 0, 1] and adj[0, 2, 1] and adj[0, 1, 2]  # target joins the newest behaviour's node
    assert adj[0, 3, 0] and adj[0, 0, 3] and adj[0, 4, 2] and adj[0, 2, 4]
    assert torch.equal(adj, adj.transpose(1, 2))
    assert not temporal_graph(adjacency, torch.tensor([-1]), attach)[0, 2, :2].any()


def test_selection_picks_contexts_of_chosen_prototypes():
    sim, short = torch.ones(1, 3), torch.tensor([[1.0, 0.0]])
    proto = torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [0.5, 0.0]]])
    z = select_prototypes(sim, short, proto, noise=False)
    assert z.tolist() == [[1.0, 0.0, 1.0]]  # logit sim·(õ·l) > 0
    attach = torch.tensor([[[True, False, False], [False, True, False], [False, False, False]]])
    assert selected_contexts(z, attach).tolist() == [[True, False, False]]


def test_cofars_online_pass_has_no_history_or_candidate_input():
    params = inspect.signature(CoFARS.forward).parameters
    assert not any("cand" in p or "hist" in p for p in params), list(params)
    cfg = CTRConfig(embed_dim=8, n_prototypes=3, max_contexts=4, short_term=2)
    model = CoFARS(cfg, n_contexts=6, dim=8, group_sizes=[2, 2]).eval()
    ctx = torch.tensor([[1, 2, 1, 3], [4, 4, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    graph = model.offline(ctx, mask, torch.zeros(2, 4, 2, dtype=torch.long))
    ones = torch.ones(2, 2, dtype=torch.bool)
    out = model(torch.randn(2, 8), torch.tensor([1, 5]), graph, torch.randn(2, 2, 8), ones)
    assert out["chosen"].shape == (2, 4) and out["z"].shape == (2, 3) and out["prototypes"].shape == (2, 3, 8)
    assert not (out["chosen"] & ~graph.node_ok).any(), "only real context nodes can be chosen"
    # A server keeps only what scoring reads: without D(C) and the true JS the selection is the same.
    user, window = torch.randn(2, 8), torch.randn(2, 2, 8)
    full = model(user, torch.tensor([1, 5]), graph, window, ones)
    lean = model(user, torch.tensor([1, 5]), graph._replace(distribution=None, divergence=None), window, ones)
    assert torch.equal(full["chosen"], lean["chosen"]) and torch.equal(full["z"], lean["z"])
    assert lean["l_mse"].item() == 0 and full["l_mse"].item() > 0


