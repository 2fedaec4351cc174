"""CTR models on hand-made batches: shapes and masking with histories of very different lengths,
CoFARS selection independent of the candidates, metrics and the promotion rule."""
import numpy as np
import pytest
import torch

from components.ctr.cofars import (ContextPrototypes, attach_prototypes, pairwise_symmetric_kl, phase1_score,
                                   select_prototypes, selected_contexts, subsequence_mask, temporal_graph)
from components.ctr.metrics import auc, gauc
from components.ctr.model import (MODEL_SPECS, CTRModel, ModelShapes, gather_selected, last_positions, page_others,
                                  weighted_cosine)
from components.registry import decide
from tests.factories import CTR_CFG as CFG, CTR_SHAPES as SHAPES, make_ctr_batch as make_batch


@pytest.mark.parametrize("name", sorted(MODEL_SPECS))
def test_every_model_scores_requests_of_very_different_history_lengths(name):
    torch.manual_seed(0)
    model = CTRModel(name, CFG, SHAPES)
    b = make_batch([0, 1, 7, 60], k=4)
    out = model(b)
    for key in ("ctr", "cvr", "ctcvr"):
        assert out[key].shape == (4, 4)
        assert torch.isfinite(out[key]).all() and (out[key] > 0).all() and (out[key] < 1).all()
    assert torch.allclose(out["ctcvr"], out["ctr"] * out["cvr"])
    loss = model.loss(out, b)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_cross_layers_sit_in_front_of_the_mlp_and_train():
    """``ctr.cross_layers``: DCN-v2 layers over the MLP's input (``cross_rank``: of that rank); 0 = none."""
    assert CTRModel("larr_cofars", CFG.model_copy(update={"cross_layers": 0}), SHAPES).cross is None
    torch.manual_seed(0)
    model = CTRModel("larr_cofars", CFG.model_copy(update={"cross_layers": 2, "cross_rank": 0}), SHAPES)
    assert len(model.cross.layers) == 2
    assert model.cross.layers[0].in_features == model.bottom[0].net[0].in_features
    thin = CTRModel("larr_cofars", CFG.model_copy(update={"cross_layers": 1, "cross_rank": 4}), SHAPES)
    assert thin.cross.layers[0][0].out_features == 4
    b = make_batch([0, 5, 30], k=3)
    out = model(b)
    model.loss(out, b)["loss"].backward()
    assert all(lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 for lin in model.cross.layers)


@pytest.mark.parametrize("name", ["din_full", "avg_pool", "sim_hard", "cofars"])
def test_padding_never_changes_a_score(name):
    """The same request scores the same whether its batch pads history to 8 or to 60 positions."""
    torch.manual_seed(0)
    model = CTRModel(name, CFG, SHAPES).eval()
    short = make_batch([5, 8], seed=3)
    longer = make_batch([5, 8], seed=3)
    pad = 60 - longer["hist_mask"].shape[1]
    for key, v in longer.items():
        if key.startswith("hist_"):
            fill = torch.full_like(v[:, :1], 99 if v.dtype == torch.int64 else 0).expand(-1, pad, *v.shape[2:])
            if v.dtype == torch.bool:
                fill = torch.zeros_like(fill)
            elif v.dtype == torch.int64:
                fill = torch.ones_like(fill)  # garbage ids in padding must not leak
            longer[key] = torch.cat([v, fill], 1)
    with torch.no_grad():
        a, b = model(short)["ctr"], model(longer)["ctr"]
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["din_full", "cofars", "larr_cofars"])
@pytest.mark.parametrize("training", [False, True])
def test_request_constants_in_the_batch_give_the_same_scores_and_losses(name, training):
    """A trainer passes ``request_constants`` (computed once per request) in the batch instead of
    letting every step recompute them: the same scores, losses and gradients (training: the same draws)."""
    torch.manual_seed(0)
    model = CTRModel(name, CFG, SHAPES).train(training)
    b = make_batch([40, 12, 3, 0, 25], seed=11)
    const = model.request_constants(b)
    assert "profile_fixed" in const and ("graph_divergence" in const) == (name != "din_full")
    runs = []
    for batch in (b, {**b, **const}):
        model.zero_grad()
        torch.manual_seed(5)
        out = model(batch)
        loss = model.loss(out, batch)["loss"]
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        runs.append((out["ctr"].detach(), loss.detach(), grads))
    (ctr_a, loss_a, grads_a), (ctr_b, loss_b, grads_b) = runs
    torch.testing.assert_close(ctr_b, ctr_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    assert len(grads_a) == len(grads_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)
    with torch.no_grad():  # not vacuous: the model reads what the batch carries
        torch.manual_seed(5)
        moved = model({**b, **const, "profile_fixed": const["profile_fixed"] + 1.0})["ctr"]
    assert not torch.allclose(moved, ctr_a, atol=1e-4)


def test_cofars_selection_is_the_same_for_every_candidate_of_a_request():
    torch.manual_seed(0)
    model = CTRModel("cofars", CFG, SHAPES).eval()
    one = make_batch([40, 12, 3], seed=5, cand_seed=1)
    other = make_batch([40, 12, 3], seed=5, cand_seed=2)  # same requests, other candidates
    assert not torch.equal(one["cand_poi"], other["cand_poi"])
    with torch.no_grad():
        sel_a, sel_b = model.select(one)["mask"], model.select(other)["mask"]
    assert torch.equal(sel_a, sel_b)
    assert sel_a.shape == one["hist_mask"].shape
    assert not (sel_a & ~one["hist_mask"]).any(), "selection stays inside the real history"
    assert sel_a.any(-1).all(), "every request with a history keeps a sub-sequence (fallback: short term)"


def _composed_select(model, b):
    """CoFARS selection written out from the public functions of cofars.py, step by step."""
    cf, cfg = model.cofars, model.cfg
    hist, mask = model.history(b), b["hist_mask"]
    user = model.user_emb(b["user"])
    attrs = torch.stack([b["hist_category"], b["hist_price"], b["hist_rating"], b["hist_delivery"]], -1)
    g = cf.offline(b["hist_context"], mask, attrs)  # offline: nodes, D(C), JS, edges
    m = g.node_context.shape[1]
    wm, window = gather_selected(last_positions(mask, cfg.short_term), cfg.short_term, hist)
    short = cf.short_term(window, wm)  # l = GRU(last r)
    c = user.unsqueeze(1) + cf.context_emb(g.node_context)
    p_c = cf.prob(c)
    l_mse = cf.prob.mse_loss(p_c, g.divergence, g.node_ok)
    o = cf.prototypes(user)
    p_o = cf.prob(o)
    l_ind = ContextPrototypes.independence_loss(p_o)
    c_t = user + cf.context_emb(b["context"])
    p_t = cf.prob(c_t)
    sim = 1 - pairwise_symmetric_kl(p_o, torch.cat([p_c, p_t.unsqueeze(1)], 1))
    attach = attach_prototypes(sim, g.node_ok, cfg.attach_temperature, sample=cf.training)
    adj = temporal_graph(g.adjacency, g.last_node, attach)
    x = torch.cat([c, c_t.unsqueeze(1), o], 1)
    for i, layer in enumerate(cf.gat):  # the last layer refines only the nodes read after it
        rows = slice(m, None) if i == len(cf.gat) - 1 else None
        x = (x if rows is None else x[:, rows]) + torch.nn.functional.elu(layer(x, adj, rows))
    sim_t = 1 - pairwise_symmetric_kl(cf.prob(x[:, 1:]), cf.prob(x[:, 0]).unsqueeze(1)).squeeze(-1)
    z = select_prototypes(sim_t, short, x[:, 1:], cfg.select_temperature, noise=cf.training)
    chosen = selected_contexts(z, attach[:, :, :m])
    keep = subsequence_mask(b["hist_context"], g.node_context, chosen) & mask
    keep = torch.where(~keep.any(-1, keepdim=True), last_positions(mask, cfg.short_term), keep)
    return {"mask": keep, "chosen": chosen, "z": z, "prototypes": x[:, 1:], "l_mse": l_mse, "l_ind": l_ind}


@pytest.mark.parametrize("training", [False, True])
def test_cofars_forward_is_the_composition_of_the_public_functions(training):
    """The functions of cofars.py are what the model runs: recomposed by hand they give the same
    selection, prototypes and losses (training: the same Gumbel draws from the same seed)."""
    torch.manual_seed(0)
    model = CTRModel("cofars", CFG, SHAPES).train(training)
    b = make_batch([40, 12, 3, 0, 25], seed=11)
    with torch.no_grad():
        torch.manual_seed(5)
        got = model.select(b)
        torch.manual_seed(5)
        want = _composed_select(model, b)
        for key in ("mask", "chosen", "z", "prototypes", "l_mse", "l_ind"):
            assert torch.equal(got[key], want[key]), key
        assert got["z"].any(), "something is selected, so the comparison is not vacuous"
        torch.manual_seed(5)
        out = model(b)
        torch.manual_seed(5)
        want = _composed_select(model, b)
        cand = model.item(b["cand_poi"], None, b["cand_category"], b["cand_price"], b["cand_rating"],
                          b["cand_delivery"])
        assert torch.equal(out["phase1_logit"], phase1_score(want["z"], want["prototypes"], cand))


def test_cofars_sub_sequence_from_each_contexts_newest_behaviours_alone():
    """What a server stores per context suffices: the history cut to each node context's newest
    ``max_subsequence`` behaviours plus the last ``short_term`` ones gives the same attended keys as
    the full history (the graph computed offline from the full history)."""
    torch.manual_seed(0)
    model = CTRModel("cofars", CFG, SHAPES).eval()
    b = make_batch([60, 45, 2], seed=4)
    k, r = CFG.max_subsequence, CFG.short_term
    with torch.no_grad():
        hist = model.history(b)
        full = model.select(b)
        _, want = gather_selected(full["mask"], k, hist)
        attrs = torch.stack([b["hist_category"], b["hist_price"], b["hist_rating"], b["hist_delivery"]], -1)
        graph = model.cofars.offline(b["hist_context"], b["hist_mask"], attrs)
        for i in range(len(b["user"])):
            ctx, real = b["hist_context"][i], b["hist_mask"][i]
            keep = last_positions(real, r)
            for c in graph.node_context[i][graph.node_ok[i]]:
                keep |= last_positions(real & (ctx == c), k)
            pos = keep.nonzero().squeeze(-1)  # oldest first
            chosen = full["chosen"][i:i + 1]
            sub = subsequence_mask(ctx[pos][None], graph.node_context[i:i + 1], chosen) & real[pos][None]
            sub = torch.where(~sub.any(-1, keepdim=True), last_positions(real[pos][None], r), sub)
            _, got = gather_selected(sub, k, hist[i, pos][None])
            n_real = int(full["mask"][i].sum().clamp(max=k))
            assert torch.equal(got[0, -n_real:], want[i, -n_real:]), i
            if i < 2:
                assert len(pos) < int(real.sum()), "the cut history is shorter than the full one"
        assert full["chosen"].any(), "contexts are chosen, not only the short-term fallback"


def test_last_positions_and_gather_keep_the_newest_selected():
    mask = torch.tensor([[True, False, True, True, False, True], [False] * 6])
    kept = last_positions(mask, 2)
    assert kept.tolist()[0] == [False, False, False, True, False, True]
    vals = torch.arange(12).view(2, 6)
    m, g = gather_selected(mask, 3, vals)
    assert m.tolist() == [[True, True, True], [False, False, False]]
    assert g[0].tolist() == [2, 3, 5]


def test_pairwise_symmetric_kl_matches_the_broadcast_definition():
    torch.manual_seed(0)
    a, b = torch.softmax(torch.randn(2, 5, 7), -1), torch.softmax(torch.randn(2, 3, 7), -1)
    p, q = a.unsqueeze(-2), b.unsqueeze(-3)
    ref = 0.5 * ((p - q) * (p.log() - q.log())).sum(-1)  # ½[KL(p‖q) + KL(q‖p)], (2, 5, 3) by broadcasting
    assert torch.allclose(pairwise_symmetric_kl(a, b), ref, atol=1e-6)
    # hand-worked: p = (0.5, 0.5), q = (0.9, 0.1): ½[(−.4)(ln .5 − ln .9) + (.4)(ln .5 − ln .1)] = 0.4394449
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.9, 0.1]])
    assert pairwise_symmetric_kl(p, q).item() == pytest.approx(0.4394449, abs=1e-6)


def test_gauc_weights_users_by_rows_and_skips_single_class_users():
    y = np.array([1, 0, 0, 1, 0, 1, 1])
    s = np.array([.9, .1, .2, .3, .8, .5, .6])
    u = np.array(["a", "a", "a", "b", "b", "c", "c"])
    # user a: AUC 1 (3 rows); user b: AUC 0 (2 rows); user c: one class, skipped.
    assert gauc(y, s, u) == pytest.approx(3 / 5)
    assert np.isnan(auc(np.ones(3), np.arange(3)))


def test_a_worse_challenger_never_takes_champion():
    champ = {"all.auc.ctr": 0.74}
    assert not decide({"all.auc.ctr": 0.70}, champ, "all.auc.ctr", 0.002)["promote"]
    assert not decide({"all.auc.ctr": 0.741}, champ, "all.auc.ctr", 0.002)["promote"], "inside the margin"
    assert decide({"all.auc.ctr": 0.75}, champ, "all.auc.ctr", 0.002)["promote"]
    assert decide({"all.auc.ctr": 0.60}, None, "all.auc.ctr", 0.002)["promote"], "no champion yet"
    assert not decide({"all.auc.ctr": float("nan")}, None, "all.auc.ctr", 0.002)["promote"]


def test_served_larr_path_scores_exactly_like_training_eval():
    """With the scene table's keys and values precomputed (serving), a LARR model gives the scores
    it gives when the batch carries the gathered embeddings."""
    torch.manual_seed(0)
    model = CTRModel("larr_cofars", CFG, SHAPES).eval()
    b = make_batch([0, 3, 12], k=4)
    table = torch.randn(9, 12)
    b["scene_value"][1, 2] = -1
    b["scene_mask"] = b["scene_value"] >= 0
    b["scene_feats"] = table[b["scene_value"].clamp(min=0)] * b["scene_mask"][..., None]
    with torch.no_grad():
        want = model(b)["ctr"]
        assert model.use_scene_table(table)
        got = model(b)["ctr"]
    assert torch.allclose(got, want, atol=1e-5)
    assert not CTRModel("id_only", CFG, SHAPES).use_scene_table(table)


def test_text_dropout_hides_whole_poi_texts_in_training_only():
    cfg = CFG.model_copy(update={"text_dropout": 0.5})
    torch.manual_seed(0)
    model = CTRModel("larr_cofars", cfg, SHAPES)
    b = make_batch([2, 5], k=4)
    args = (b["cand_poi"], b["cand_text"], b["cand_category"], b["cand_price"], b["cand_rating"], b["cand_delivery"])
    no_text = (b["cand_poi"], torch.zeros_like(b["cand_text"]), *args[2:])
    with torch.no_grad():
        model.eval()  # evaluation reads every text
        full = model.item(*args)
        bare = model.item(*no_text) - model.text_proj.bias  # the items without their text term
        model.train()
        hidden = model.item(*args)
    dropped = torch.isclose(hidden, bare, atol=1e-6).all(-1)
    kept = torch.isclose(hidden, full, atol=1e-6).all(-1)
    assert (dropped | kept).all() and dropped.any() and kept.any()  # each text wholly kept or wholly hidden


def test_weight_on_matches_the_pairwise_definition():
    from components.ctr.model import weight_on

    g = torch.Generator().manual_seed(0)
    hist = torch.randint(0, 7, (3, 11), generator=g)
    cand = torch.randint(0, 9, (3, 5), generator=g)
    w = torch.rand(3, 11, generator=g, requires_grad=True)
    want = torch.einsum("rkn,rn->rk", (hist.unsqueeze(1) == cand.unsqueeze(-1)).float(), w)
    got = weight_on(hist, w, cand)
    assert torch.allclose(got, want, atol=1e-6)
    got.sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0
    assert weight_on(hist[:, :0], w[:, :0], cand).shape == (3, 5)


def test_user_profile_columns_enter_the_user_embedding():
    """Two unknown users (ID row 0) who differ only in their profile columns score differently, and
    only through those columns: other numeric columns are left as they are."""
    shapes = ModelShapes(**{**SHAPES.__dict__, "user_dense": [1, 2]})
    torch.manual_seed(0)
    model = CTRModel("din_full", CFG, shapes).eval()
    b = make_batch([3, 3], seed=2)
    b["user"] = torch.zeros(2, dtype=torch.long)
    for key, v in b.items():  # the same request twice
        b[key] = v[:1].expand(2, *v.shape[1:]).clone()
    b["numeric"][1, :, 1:3] += 1.0  # another age group / gender
    with torch.no_grad():
        out = model(b)["ctr"]
        assert not torch.allclose(out[0], out[1])
        model.user_dense.weight.zero_()
        model.numeric_proj.weight[:, 1:3] = 0
        t = model.ple.lo.shape[1]  # and their piecewise-linear pieces
        model.ple.proj.weight[:, 1 * t:3 * t] = 0
        out = model(b)["ctr"]
    assert torch.allclose(out[0], out[1])
    assert CTRModel("din_full", CFG, SHAPES).user_dense is None  # no such columns: no extra layer


def test_encoder_marks_profile_and_knowledge_columns_as_user_dense():
    import pandas as pd

    from components.ctr.data import FeatureEncoder, Vocab

    cols = ["user_stats__n_click", "user_profile__age_18_24", "poi_stats__n_view", "user_knowledge__k00",
            "user_knowledge__n_behaviors"]
    enc = FeatureEncoder(Vocab(["u"]), Vocab(["p"]), Vocab(["c"]), {}, cols, np.zeros(5, np.float32),
                         np.ones(5, np.float32), 1, {})
    assert enc.sizes()["user_dense"] == [1, 3]
    assert enc.numeric_matrix(pd.DataFrame({c: [1.0] for c in cols})).shape == (1, 5 + 4)


def test_quantile_edges_follow_the_data_not_a_fixed_scale():
    from functools import partial

    from components.features.engineering import quantile_edges as edges_of

    quantile_edges = partial(edges_of, keep_count=False)  # the CTR encoder's bins

    rng = np.random.default_rng(0)
    prices = rng.lognormal(3.5, 0.5, 4000)
    edges = quantile_edges(prices, 4)
    assert len(edges) == 3
    np.testing.assert_allclose(quantile_edges(prices * 7.0, 4), np.array(edges) * 7.0, rtol=1e-9)
    counts = np.bincount(np.searchsorted(edges, prices, side="right"), minlength=4)
    assert counts.min() > 900  # equal-count bins
    assert quantile_edges([np.nan, None], 4) == []


def test_piecewise_linear_encoding_reads_each_value_against_its_learnt_boundaries():
    from components.ctr.data import FeatureEncoder, RequestData, Vocab
    from components.ctr.model import PiecewiseLinear

    ple = PiecewiseLinear([[0.0, 1.0, 3.0], [], [5.0, 6.0]], out_dim=2)
    x = torch.tensor([[-1.0, 9.0, 5.5], [2.0, 9.0, 7.0], [0.5, 9.0, 4.0]])
    z = ((x.unsqueeze(-1) - ple.lo) / ple.width).clamp(0, 1) * ple.valid
    np.testing.assert_allclose(z[:, 0].numpy(), [[0, 0], [1, 0.5], [0.5, 0]])  # two pieces: [0, 1], [1, 3]
    assert z[:, 1].abs().sum() == 0  # a column without boundaries reads as nothing
    np.testing.assert_allclose(z[:, 2].numpy(), [[0.5, 0], [1, 0], [0, 0]])  # one piece, padding stays 0
    assert ple(x).shape == (3, 2)
    # the boundaries are the training split's quantiles, learnt per column (a constant one gets none)
    rng = np.random.default_rng(0)
    m = 2000
    numeric = np.stack([rng.normal(0, 1, m), np.full(m, 0.5), np.zeros(m), np.zeros(m), np.zeros(m)], 1)
    data = RequestData.__new__(RequestData)
    data.numeric = numeric.reshape(m, 1, 5).astype(np.float32)  # 2 columns + 3 view flags
    data.distance = rng.exponential(1.0, (m, 1)).astype(np.float32)
    data.mask = np.ones((m, 1), bool)
    enc = FeatureEncoder(Vocab(["u"]), Vocab(["p"]), Vocab(["c"]), {}, ["poi_stats__a", "poi_stats__b"],
                         np.zeros(2, np.float32), np.ones(2, np.float32), 1, {})
    enc.fit_ple(data, 4)
    assert [len(e) for e in enc.ple_edges] == [5, 0, 5]  # two numeric columns, then distance
    np.testing.assert_allclose(enc.ple_edges[0][2], np.median(numeric[:, 0]), atol=1e-4)
    assert enc.ple_edges[2][0] >= 0 and enc.sizes()["ple_edges"] == enc.ple_edges
    assert FeatureEncoder.from_json(enc.to_json()).ple_edges == enc.ple_edges
    enc.fit_ple(data, 0)
    assert enc.ple_edges == []  # off: raw values only


def test_poi_texts_are_centred_on_the_training_pois_mean():
    import pandas as pd

    from components.config import FeaturesConfig
    from components.ctr.data import FeatureEncoder, PoiTable, Vocab

    rng = np.random.default_rng(0)
    common = rng.normal(size=8)
    vecs = common + 0.1 * rng.normal(size=(4, 8))  # one shared direction, small differences
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    pois = pd.DataFrame({"poi_id": ["a", "b", "c", "d", "e"], "geohash": ["wx4g0"] * 5, "rating": [4.0] * 5,
                         "price": [30.0] * 5, "delivery_minutes": [25.0] * 5, "category": ["x"] * 5})
    emb = pd.DataFrame({"poi_id": ["a", "b", "c", "d"], "embedding": list(vecs)})  # e has no text
    enc = FeatureEncoder(Vocab(["a", "b", "c"]), Vocab(["a", "b", "c"]), Vocab(["c"]), {}, [], np.zeros(0, np.float32),
                         np.ones(0, np.float32), 1, {})
    enc.pois = Vocab(["a", "b", "c"])  # d opened after the training period: not in the mean
    features = FeaturesConfig(price_band_edges=[50.0], rating_band_edges=[4.5], delivery_band_edges=[30.0])
    raw = PoiTable.build(pois, enc, features, emb).text_emb
    np.testing.assert_allclose(raw[:4], vecs, atol=1e-6)  # no mean fitted: as they are
    enc.fit_text_mean(emb)
    np.testing.assert_allclose(enc.text_mean, vecs[:3].mean(0), atol=1e-6)
    t = PoiTable.build(pois, enc, features, emb).text_emb
    want = vecs - vecs[:3].mean(0)
    np.testing.assert_allclose(t[:4], want / np.linalg.norm(want, axis=1, keepdims=True), atol=1e-5)
    assert not t[4].any()  # a PoI without a text stays without one
    cos = lambda x: (x[:3] @ x[:3].T)[np.triu_indices(3, 1)].mean()  # noqa: E731
    assert cos(raw) > 0.9 > 0.5 > cos(t)  # the shared direction is gone
    assert FeatureEncoder.from_json(enc.to_json()).text_mean == enc.text_mean


def test_scene_columns_reach_the_model_as_numbers():
    import pandas as pd

    from components.config import FeaturesConfig
    from components.ctr.data import SCENE_NUMERIC, with_scene_numeric

    df = pd.DataFrame({"ts": pd.to_datetime(["2026-01-01T12:30:00Z", "2026-01-03T20:00:00Z"]),
                       "geohash": ["wx4g0", "wx4g0"], "location_type": ["home", "office"],
                       "weather": ["sunny", "rainy"], "temperature_c": [3.5, -2.0], "is_holiday": [True, None]})
    out = with_scene_numeric(df, FeaturesConfig())
    assert [f"scene__{c}" for c in SCENE_NUMERIC] == [c for c in out.columns if c.startswith("scene__")]
    assert out["scene__temperature_c"].tolist() == [3.5, -2.0]
    assert out["scene__hour"].tolist() == [12.0, 20.0]
    assert out["scene__is_weekend"].tolist() == [0.0, 1.0]  # 2026-01-03 is a Saturday
    assert out["scene__is_holiday"].iloc[0] == 1.0 and np.isnan(out["scene__is_holiday"].iloc[1])


def test_distinct_history_items_give_the_same_behaviour_embeddings():
    """make_batch lists the batch's distinct history PoIs (``item_*``, ``hist_item``); the model
    embeds each once and gathers: the same (R, n, d) as embedding every position, text included."""
    from components.ctr.data import History, PoiTable, RequestData, make_batch, to_tensors

    g = np.random.default_rng(0)
    n_poi, r, k = 20, 3, 4
    pois = PoiTable([f"p{i}" for i in range(n_poi)], {f"p{i}": i for i in range(n_poi)}, g.integers(0, 20, n_poi),
                    g.integers(0, 6, n_poi), g.integers(0, 5, n_poi), g.integers(0, 5, n_poi), g.integers(0, 5, n_poi),
                    np.zeros(n_poi), np.zeros(n_poi), g.normal(size=(n_poi, 12)).astype(np.float32),
                    g.normal(3.5, 0.5, n_poi).astype(np.float32))
    n_hist = 30
    history = History(np.arange(n_hist), g.integers(0, n_poi, n_hist), g.integers(1, 5, n_hist),
                      g.integers(1, 7, n_hist), {}, {}, g.integers(1, 6, n_hist))
    data = RequestData(
        request_id=np.arange(r).astype(object), user_id=np.array(["a", "b", "c"], object), user=np.arange(r),
        context=np.ones(r, np.int64), scene=np.zeros((r, 6), np.int64), scene_value=g.integers(0, 9, (r, 6)),
        hist_start=np.array([0, 10, 25]), hist_end=np.array([10, 25, 25]), poi_row=g.integers(0, n_poi, (r, k)),
        position=np.tile(np.arange(k), (r, 1)), numeric=g.normal(size=(r, k, 9)).astype(np.float32),
        distance=np.zeros((r, k), np.float32), click=np.zeros((r, k), np.float32),
        order=np.zeros((r, k), np.float32), mask=np.ones((r, k), bool), cold_user=np.zeros(r, bool),
        cold_poi=np.zeros((r, k), bool), slot=np.ones(r, np.int64))
    batch = make_batch(data, np.arange(r), history, pois, 8, scene_table=g.normal(size=(9, 12)).astype(np.float32))
    for attr in ("poi", "category", "price", "rating", "delivery", "text"):
        np.testing.assert_array_equal(batch[f"item_{attr}"][batch["hist_item"]], batch[f"hist_{attr}"])
    assert len(batch["item_poi"]) < batch["hist_item"].size, "distinct PoIs are fewer than positions"
    b = to_tensors(batch)
    torch.manual_seed(0)
    model = CTRModel("larr_cofars", CFG, SHAPES)
    per_position = {key: v for key, v in b.items() if key != "hist_item"}
    torch.testing.assert_close(model.history(b), model.history(per_position), rtol=1e-6, atol=1e-6)
    # ... and the same history profile (its text cosine reads the distinct PoIs' texts)
    scopes = model._fixed_scopes(b)
    torch.testing.assert_close(model._profile(b, scopes), model._profile(per_position, scopes), rtol=1e-5, atol=1e-6)


def test_page_context_reads_the_other_real_candidates_of_the_page():
    """``ctr.page_context``: each candidate reads the mean embedding of the other real candidates of
    its page (itself and padding left out); a page of one reads zeros; the model trains with it and
    padded candidates never change a real one's score."""
    cand = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [100.0, 100.0]],
                         [[7.0, 1.0], [9.0, 9.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    page = page_others(cand, mask)
    assert torch.allclose(page[0, 0], torch.tensor([4.0, 3.0]))  # (3 + 5) / 2, (2 + 4) / 2: not the padded slot
    assert torch.allclose(page[0, 2], torch.tensor([2.0, 1.0]))
    assert torch.allclose(page[1, 0], torch.zeros(2))  # alone on its page
    torch.manual_seed(0)
    off = CTRModel("larr_cofars", CFG, SHAPES)
    on = CTRModel("larr_cofars", CFG.model_copy(update={"page_context": True}), SHAPES)
    assert on.bottom[0].net[0].in_features == off.bottom[0].net[0].in_features + 2 * CFG.embed_dim
    b = make_batch([3, 9, 0], k=4)
    out = on(b)
    on.loss(out, b)["loss"].backward()
    grads = [p.grad for p in on.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    on.eval()
    # The same candidate beside other candidates scores differently with the knob, the same without.
    other = {**b, "cand_poi": b["cand_poi"].clone()}
    other["cand_poi"][0, 1:] = (other["cand_poi"][0, 1:] + 1) % SHAPES.n_pois
    # Two padded candidates holding other requests' values (a pyfunc batch pads pages to its longest).
    padded = {}
    for key, v in b.items():
        if key.startswith("cand_") or key in ("position", "numeric", "distance", "click", "mask"):
            fill = torch.zeros_like(v[:, :2]) if key == "mask" else v[:, :2].flip(0)
            v = torch.cat([v, fill], 1)
        padded[key] = v
    with torch.no_grad():
        assert not torch.allclose(on(other)["ctr"][0, 0], on(b)["ctr"][0, 0])
        assert torch.allclose(off.eval()(other)["ctr"][0, 0], off(b)["ctr"][0, 0])
        np.testing.assert_allclose(on(padded)["ctr"][:, :4].numpy(), on(b)["ctr"].numpy(), rtol=1e-5, atol=1e-6)


def test_weighted_cosine_compares_each_candidate_with_the_scope_mean_of_unit_vectors():
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(5, 4, generator=g)
    vecs[4] = 0  # a PoI without a vector
    hist_item = torch.tensor([[0, 1, 1, 4], [2, 3, 0, 0]])
    w = torch.tensor([[1.0, 2.0, 0.0, 3.0], [0.0, 0.0, 0.0, 0.0]])  # request 1: an empty scope
    cand = vecs[torch.tensor([[2, 4], [1, 0]])]
    got = weighted_cosine(w, vecs, cand, hist_item)
    unit = torch.nn.functional.normalize(vecs, dim=-1)
    mean = unit[0] * 1 + unit[1] * 2  # the zero vector adds nothing; weight 0 adds nothing
    want = torch.nn.functional.cosine_similarity(vecs[2], mean, dim=0)
    assert float(got[0, 0]) == pytest.approx(float(want), abs=1e-6)
    assert float(got[0, 1]) == 0.0 and torch.all(got[1] == 0)
    # The same from the per-behaviour vectors as from the per-PoI table.
    assert torch.allclose(weighted_cosine(w, vecs[hist_item], cand), got, atol=1e-6)
