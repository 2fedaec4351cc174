"""The CTR / CTCVR model and its baselines, in one code path so they differ only where they should.

Every model shares the same embeddings (user, PoI, category and bands, position, scene IDs), the
same numeric Feast features, distance, the same MLP and the same ESMM heads (ctcvr = ctr × cvr).
They differ in two switches (``MODEL_SPECS``):

- ``scene``: ``ids`` — scene features as ID embeddings only; ``larr`` — plus LARR's aggregated
  vector of the cached per-feature LLM embeddings (with the PoI text embedding in the item
  representation), aligned with the ID ("collaborative") scene embedding by InfoNCE.
- ``sequence``: ``none`` (ID-only), ``avg`` (average pooling), ``din`` (DIN over the whole history),
  ``sim_hard`` (DIN over the candidate's own-category behaviours: a search per candidate) or
  ``cofars`` (one context-selected sub-sequence per request, then DIN).

A batch is a set of requests with K candidates each (components/ctr/data.py): history, scene and
CoFARS selection are computed once per request.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.config import CTRConfig
from components.ctr.cofars import CoFARS, ContextGraph, phase1_score, subsequence_mask
from components.ctr.esmm import ESMMHeads
from components.ctr.larr import SceneAggregator
from components.layers import MLP, CrossNetwork, TargetAttention, info_nce

MODEL_SPECS = {
    "id_only": dict(scene="ids", sequence="none"),
    "avg_pool": dict(scene="ids", sequence="avg"),
    "din_full": dict(scene="ids", sequence="din"),
    "sim_hard": dict(scene="ids", sequence="sim_hard"),
    "cofars": dict(scene="ids", sequence="cofars"),
    "larr_din": dict(scene="larr", sequence="din"),
    "larr_cofars": dict(scene="larr", sequence="cofars"),
    # The slow path LARR avoids (benchmarks/scene_encoding.py): the LLM embeds the whole scene text
    # of every request; the batch carries that embedding as ``scene_full``.
    "fulltext_cofars": dict(scene="fulltext", sequence="cofars"),
}
MAX_POSITION = 64


@dataclass
class ModelShapes:
    """Vocabulary sizes and input widths the model is built for (from the fitted FeatureEncoder)."""

    n_users: int
    n_pois: int
    n_contexts: int
    scene: dict
    n_numeric: int
    n_categories: int
    n_bands: dict
    text_dim: int = 0  # width of the LLM embeddings (0 = none available)
    n_flags: int = 4  # missing flags after the numeric features: one per feature view (4 before HKFR's)
    user_dense: list = field(default_factory=list)  # numeric columns describing the user (data.USER_DENSE_PREFIXES)
    ple_edges: list = field(default_factory=list)  # FeatureEncoder.fit_ple: boundaries per numeric column, then distance

    @classmethod
    def from_sizes(cls, sizes: dict, text_dim: int) -> "ModelShapes":
        keep = {k: v for k, v in sizes.items() if k in cls.__dataclass_fields__}
        return cls(**keep, text_dim=text_dim)


def last_positions(mask: torch.Tensor, k: int) -> torch.Tensor:
    """(…, n) bool -> (…, n) bool keeping only the last ``k`` True entries of each row."""
    from_end = mask.flip(-1).cumsum(-1).flip(-1)  # 1 at the last True, counting up to the left
    return mask & (from_end <= k)


def gather_selected(mask: torch.Tensor, k: int, *tensors: torch.Tensor):
    """Compact the (up to) last ``k`` True positions of ``mask`` (…, n) into (…, k') tensors,
    k' = min(k, n), oldest first; returns the new mask and each tensor (…, n, …) gathered."""
    n = mask.shape[-1]
    k = min(k, n)
    pos = torch.arange(n, device=mask.device).expand_as(mask)
    score = torch.where(mask, pos + 1, torch.zeros_like(pos))  # later = larger, unselected = 0
    top, idx = score.topk(k, dim=-1, sorted=True)
    idx = idx.flip(-1)
    new_mask = top.flip(-1) > 0
    out = []
    for t in tensors:
        if t.dim() == mask.dim():
            out.append(t.gather(-1, idx))
        else:
            out.append(t.gather(mask.dim() - 1, idx.unsqueeze(-1).expand(*idx.shape, t.shape[-1])))
    return (new_mask, *out)


def page_others(cand: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(R, K, d): for each candidate, the mean embedding of the other real candidates of its page
    (``mask`` (R, K): True = real). A logged page is what an upstream ranker chose for this user and
    scene, so what else it shows may say something about the user that no column does. A page of one
    reads zeros; a padded slot reads the mean of all real candidates (its score is never used)."""
    m = mask.unsqueeze(-1).to(cand.dtype)
    real = cand * m
    return (real.sum(1, keepdim=True) - real) / (m.sum(1, keepdim=True) - m).clamp(min=1)


PROFILE_STATS = 6  # per scope: log1p same-PoI weight, PoI share, category share, price gap, |gap|, log1p total


def weight_on(hist_key: torch.Tensor, w: torch.Tensor, cand_key: torch.Tensor) -> torch.Tensor:
    """(R, K): for each request and candidate, the summed weight ``w`` (R, n) of the history entries
    whose key (R, n) equals the candidate's (R, K). Sums per distinct (request, key) first and then
    looks the candidates up, so the cost is O((n + K) log) per request, not O(n K)."""
    r, n = hist_key.shape
    k = cand_key.shape[1]
    if n == 0:
        return w.new_zeros(r, k)
    span = int(torch.maximum(hist_key.max(), cand_key.max()).item()) + 1
    base = torch.arange(r, device=hist_key.device).unsqueeze(1) * span
    hk, ck = (hist_key + base).reshape(-1), (cand_key + base).reshape(-1)
    uniq, inverse = torch.unique(hk, return_inverse=True)  # sorted
    sums = w.new_zeros(len(uniq)).scatter_add(0, inverse, w.reshape(-1))
    at = torch.searchsorted(uniq, ck).clamp(max=len(uniq) - 1)
    return torch.where(uniq[at] == ck, sums[at], w.new_zeros(())).view(r, k)


def weighted_cosine(w: torch.Tensor, hist_vec: torch.Tensor, cand_vec: torch.Tensor,
                    hist_item: torch.Tensor | None = None) -> torch.Tensor:
    """(R, K): cosine of each candidate's vector (R, K, D) and the ``w``-weighted (R, n) mean of the
    history's unit vectors: ``hist_vec`` (R, n, D), or with ``hist_item`` (R, n) one row (U, D) per
    distinct PoI that it indexes. Zero where the scope is empty."""
    if hist_item is None:
        u = torch.einsum("rn,rnd->rd", w, F.normalize(hist_vec, dim=-1))
    else:  # each request's weight per distinct PoI, then one product with their unit vectors
        per_item = w.new_zeros(w.shape[0], hist_vec.shape[0]).scatter_add_(1, hist_item, w)
        u = per_item @ F.normalize(hist_vec, dim=-1)
    has = (w.sum(-1, keepdim=True) > 0).to(w.dtype)
    return torch.einsum("rkd,rd->rk", F.normalize(cand_vec, dim=-1), F.normalize(u, dim=-1)) * has


def history_profile(w: torch.Tensor, hist_row: torch.Tensor, cand_row: torch.Tensor, hist_cat: torch.Tensor,
                    cand_cat: torch.Tensor, hist_logp: torch.Tensor | None, cand_logp: torch.Tensor | None,
                    hist_text: torch.Tensor | None = None, cand_text: torch.Tensor | None = None,
                    hist_item: torch.Tensor | None = None, vectors: tuple = ()) -> torch.Tensor:
    """Candidate-relative statistics of a weighted history: w (R, n) behaviour weights (0 = not in
    the scope), rows/categories (R, n) against the candidates' (R, K). Returns (R, K, F): log1p of
    the weight on the candidate PoI, its share and its category's share (both smoothed by one
    pseudo-behaviour), the candidate's log price minus the history's weighted mean log price (and
    its absolute value), log1p total weight; with text, the cosine of the candidate's text embedding
    and the weighted mean history text embedding (``weighted_cosine``), then the same for each
    (history, candidates) pair of ``vectors``. Empty scopes give zeros. With ``hist_item`` (R, n),
    ``hist_text`` and the history vectors hold one row per distinct PoI that it indexes (make_batch's
    ``item_text``)."""
    tot = w.sum(-1, keepdim=True)  # (R, 1)
    poi_w = weight_on(hist_row, w, cand_row)
    cat_w = weight_on(hist_cat, w, cand_cat)
    has = (tot > 0).to(w.dtype)
    feats = [torch.log1p(poi_w), poi_w / (tot + 1), cat_w / (tot + 1)]
    if hist_logp is not None and cand_logp is not None:
        mean_lp = (w * hist_logp).sum(-1, keepdim=True) / tot.clamp(min=1e-6)
        gap = (cand_logp - mean_lp) * has
        feats += [gap, gap.abs()]
    else:
        feats += [torch.zeros_like(poi_w), torch.zeros_like(poi_w)]
    feats.append(torch.log1p(tot).expand_as(poi_w))
    if hist_text is not None and cand_text is not None:
        feats.append(weighted_cosine(w, hist_text, cand_text, hist_item))
    for hist_vec, cand_vec in vectors:
        feats.append(weighted_cosine(w, hist_vec, cand_vec, hist_item))
    return torch.stack(feats, -1)


class PiecewiseLinear(nn.Module):
    """Piecewise-linear encoding of numeric inputs (Gorishniy et al., 2022, "On Embeddings for
    Numerical Features in Tabular Deep Learning"), then one linear map: each column's value x, with
    boundaries b_0 < ... < b_T learnt as training-split quantiles, becomes T components
    clamp((x - b_{t-1}) / (b_t - b_{t-1}), 0, 1), so the model reads every feature through a learnt
    piecewise-linear function, as a tree model reads it through thresholds, with no edge given by hand.
    ``edges``: per column its boundaries (a column with fewer than 2 reads as zeros)."""

    def __init__(self, edges: list[list[float]], out_dim: int):
        super().__init__()
        t = max(max(len(e) - 1 for e in edges), 1)
        lo = torch.zeros(len(edges), t)
        width = torch.ones(len(edges), t)
        valid = torch.zeros(len(edges), t)
        for j, e in enumerate(edges):
            e = torch.tensor(e, dtype=torch.float32)
            if len(e) >= 2:
                lo[j, :len(e) - 1] = e[:-1]
                width[j, :len(e) - 1] = (e[1:] - e[:-1]).clamp(min=1e-6)
                valid[j, :len(e) - 1] = 1.0
        self.register_buffer("lo", lo, persistent=False)
        self.register_buffer("width", width, persistent=False)
        self.register_buffer("valid", valid, persistent=False)
        self.proj = nn.Linear(len(edges) * t, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(…, C) values -> (…, out_dim)."""
        z = ((x.unsqueeze(-1) - self.lo) / self.width).clamp(0.0, 1.0) * self.valid
        return self.proj(z.flatten(-2))


class CTRModel(nn.Module):
    """Embedding & MLP CTR model with ESMM heads; scene and sequence modules per ``MODEL_SPECS``."""

    def __init__(self, name: str, cfg: CTRConfig, shapes: ModelShapes):
        super().__init__()
        if name not in MODEL_SPECS:
            raise ValueError(f"unknown CTR model {name!r}; choose one of {sorted(MODEL_SPECS)}")
        spec = MODEL_SPECS[name]
        self.name, self.cfg, self.shapes = name, cfg, shapes
        self.scene_mode, self.sequence = spec["scene"], spec["sequence"]
        d = cfg.embed_dim
        self.user_emb = nn.Embedding(shapes.n_users, d)
        self.register_buffer("user_dense_idx", torch.tensor(list(shapes.user_dense), dtype=torch.long), persistent=False)
        self.user_dense = nn.Linear(len(shapes.user_dense), d, bias=False) if len(shapes.user_dense) else None
        self.poi_emb = nn.Embedding(shapes.n_pois, d)
        self.cat_emb = nn.Embedding(shapes.n_categories + 1, d)
        nb = shapes.n_bands
        self.price_emb = nn.Embedding(nb.get("price_band", 8), d)
        self.rating_emb = nn.Embedding(nb.get("rating_band", 8), d)
        self.delivery_emb = nn.Embedding(nb.get("delivery_band", 8), d)
        self.behavior_emb = nn.Embedding(6, d)
        self.position_emb = nn.Embedding(MAX_POSITION, d)
        self.scene_emb = nn.ModuleDict({f: nn.Embedding(n, d) for f, n in shapes.scene.items()})
        n_scene = len(shapes.scene)
        self.scene_collab = nn.Linear(n_scene * d, cfg.collab_dim)
        self.numeric_proj = nn.Linear(shapes.n_numeric + shapes.n_flags, 2 * d)  # + missing flag per view
        self.ple = PiecewiseLinear(shapes.ple_edges, 2 * d) if shapes.ple_edges else None
        self.use_text = self.scene_mode in ("larr", "fulltext") and shapes.text_dim > 0
        if self.use_text:  # the LLM embeddings arrive in the batch (cand_text, hist_text, scene_feats)
            self.text_proj = nn.Linear(shapes.text_dim, d)
            if self.scene_mode == "larr":
                self.aggregator = SceneAggregator(shapes.text_dim, n_scene, cfg.larr_d_model, cfg.larr_heads,
                                                  cfg.larr_layers, dropout=cfg.larr_dropout, collab_dim=cfg.collab_dim)
            else:
                self.full_proj = MLP(shapes.text_dim, (cfg.larr_d_model,), cfg.collab_dim)
        self.scene_to_item = nn.Linear(cfg.collab_dim * (2 if self.use_text else 1), d)
        if self.sequence in ("din", "sim_hard", "cofars"):
            self.attention = TargetAttention(d, cfg.attention_hidden, dropout=0.0)
        if self.sequence == "cofars":
            self.group_sizes = [shapes.n_categories, nb.get("price_band", 8), nb.get("rating_band", 8),
                                nb.get("delivery_band", 8)]
            self.cofars = CoFARS(cfg, shapes.n_contexts, d, self.group_sizes)
        seq_dim = 0 if self.sequence == "none" else 2 * d
        # History profile (sequence models): scopes = whole history, same time slot as the request and,
        # for CoFARS, its context-selected sub-sequence.
        self.profile_scopes = 0
        if self.sequence != "none" and cfg.history_profile:
            self.profile_scopes = 3 if self.sequence == "cofars" else 2
            self.register_buffer("behavior_weight", torch.tensor([0.0, *cfg.profile_behavior_weights]), persistent=False)
        self.log_profile = cfg.log_poi_profile and cfg.log_poi_dim > 0
        n_profile = self.profile_scopes * (PROFILE_STATS + (1 if self.use_text else 0) + (1 if self.log_profile else 0))
        seq_dim += n_profile
        in_dim = (d + d + d + cfg.collab_dim * (2 if self.use_text else 1) + d + 2 * d + d + 1 + seq_dim
                  + (2 * d if cfg.page_context else 0))
        # DCN-v2 cross layers in front of the MLP (the paper's stacked structure); none = the MLP alone.
        self.cross = CrossNetwork(in_dim, cfg.cross_layers, cfg.cross_rank) if cfg.cross_layers else None
        self.bottom = nn.Sequential(MLP(in_dim, cfg.mlp_hidden[:-1], cfg.mlp_hidden[-1], dropout=cfg.dropout),
                                    nn.ReLU(), nn.Dropout(cfg.dropout))
        self.heads = ESMMHeads(cfg.mlp_hidden[-1], cfg.tower_hidden, dropout=cfg.dropout,
                               ctcvr_weight=cfg.ctcvr_weight)
        # nn.Embedding starts at N(0, 1): five summed item embeddings and their products would start
        # far from the MLP's working range. Small embeddings (as FuxiCTR initialises them) train better.
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=cfg.embedding_init_std)
        # ctr.log_poi_dim: the behaviour log's PoI vectors (train.build_model fills them; saved with the
        # model, as the table the map reads), mapped into the item embedding by a map that starts small.
        # Made last, so as an input alone it leaves the other weights' start as it is without it (the
        # profile's comparison, ctr.log_poi_profile, widens the MLP's input).
        self.log_poi_proj = None
        if cfg.log_poi_dim > 0:
            self.register_buffer("log_poi_vec", torch.zeros(shapes.n_pois, cfg.log_poi_dim))
            self.log_poi_proj = nn.Linear(cfg.log_poi_dim, d, bias=False)
            nn.init.normal_(self.log_poi_proj.weight, std=cfg.embedding_init_std)

    # -- pieces ---------------------------------------------------------------------------------
    def item(self, vocab_id, text, cat, price, rating, delivery):
        e = (self.poi_emb(vocab_id) + self.cat_emb(cat) + self.price_emb(price) + self.rating_emb(rating)
             + self.delivery_emb(delivery))
        if self.use_text:
            t = self.text_proj(text)
            if self.training and self.cfg.text_dropout > 0:  # hide whole texts, as id_dropout hides IDs
                t = t * (torch.rand(t.shape[:-1] + (1,), device=t.device) >= self.cfg.text_dropout).to(t.dtype)
            e = e + t
        if self.log_poi_proj is not None:
            e = e + self.log_poi_proj(self.log_poi_vec[vocab_id])
        return e

    def scene(self, b):
        """(collaborative scene embedding from IDs, LARR scene vector or None)."""
        ids = torch.cat([self.scene_emb[f](b["scene"][:, i]) for i, f in enumerate(self.shapes.scene)], -1)
        collab = self.scene_collab(ids)
        if not self.use_text:
            return collab, None
        if self.scene_mode == "fulltext":
            return collab, self.full_proj(b["scene_full"])
        served = getattr(self, "_served_scene", None)
        if served is not None and not self.training and "scene_value" in b and b["scene_value"].device.type == "cpu":
            return collab, torch.from_numpy(served(b["scene_value"].numpy()))
        return collab, self.aggregator.scene_vector(b["scene_feats"], b["scene_mask"])

    def use_scene_table(self, table) -> bool:
        """Serving: compile the one-layer LARR aggregator over the cached scene-embedding table
        (``SceneAggregator.served``: per-value attention terms precomputed, numpy on the CPU), so a
        request only gathers them. Not part of the saved state; returns whether the fast path is on
        (off for deeper aggregators; on a GPU, batches run the encoder as in training)."""
        if getattr(self, "aggregator", None) is None or table is None:
            return False
        t = torch.as_tensor(table, dtype=torch.float32)
        self._served_scene = self.aggregator.served(t)
        return self._served_scene is not None

    def history(self, b):
        """(R, n, d) behaviour embeddings. With ``hist_item`` (make_batch) the batch's distinct PoIs
        (``item_*``) are embedded once and gathered: a history repeats few PoIs many times."""
        if "hist_item" in b:
            items = self.item(b["item_poi"], b.get("item_text"), b["item_category"], b["item_price"],
                              b["item_rating"], b["item_delivery"])
            h = items[b["hist_item"]]
        else:
            h = self.item(b["hist_poi"], b.get("hist_text"), b["hist_category"], b["hist_price"], b["hist_rating"],
                          b["hist_delivery"])
        return h + self.behavior_emb(b["hist_behavior"])

    def sequence_vector(self, b, cand, hist, aux):
        """(R, K, 2d): attended/pooled history and its product with the candidate."""
        mask = b["hist_mask"]
        selection = None
        if self.sequence == "avg":
            pooled = (hist * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            s = pooled.unsqueeze(1).expand_as(cand)
        elif self.sequence == "din":
            s = self.attention(cand, hist, mask)
        elif self.sequence == "sim_hard":
            # SIM-hard: per candidate, the latest behaviours of its category (a search per candidate).
            same = (b["hist_category"].unsqueeze(1) == b["cand_category"].unsqueeze(-1)) & mask.unsqueeze(1)
            m, keys = gather_selected(same, self.cfg.sim_max, hist.unsqueeze(1).expand(-1, same.shape[1], -1, -1))
            s = self.attention(cand, keys, m)
        else:  # cofars
            sel = self.select(b, hist)
            aux.update({k: sel[k] for k in ("l_mse", "l_ind")})
            aux["phase1_logit"] = phase1_score(sel["z"], sel["prototypes"], cand)
            m, keys = gather_selected(sel["mask"], self.cfg.max_subsequence, hist)
            aux["subsequence_length"] = m.sum(-1).float().mean()
            s = self.attention(cand, keys, m)
            selection = sel["mask"]
        out = [s, s * cand]
        if self.profile_scopes:
            out.append(self.profile(b, selection))
        return torch.cat(out, -1)

    def profile(self, b, selection=None):
        """(R, K, F) history-profile statistics per scope (``history_profile``): the whole history,
        the behaviours in the request's time slot and (CoFARS) the selected sub-sequence. The first
        two depend on the request alone: read from ``b["profile_fixed"]`` when precomputed."""
        fixed = b["profile_fixed"] if "profile_fixed" in b else self._profile(b, self._fixed_scopes(b))
        if self.profile_scopes < 3:
            return fixed
        w = self._behaviour_weight(b)
        return torch.cat([fixed, self._profile(b, [w * (selection if selection is not None else b["hist_mask"])])], -1)

    def _behaviour_weight(self, b):
        return self.behavior_weight[b["hist_behavior"].clamp(0, 4)] * b["hist_mask"]

    def _fixed_scopes(self, b):
        """Weights (R, n) of the request-only scopes: the whole history and the request's time slot."""
        w = self._behaviour_weight(b)
        slot, hist_slot = b.get("slot"), b.get("hist_slot")
        same_slot = (hist_slot == slot.unsqueeze(1)) & (slot.unsqueeze(1) > 0) if slot is not None and \
            hist_slot is not None else torch.zeros_like(b["hist_mask"])
        return [w, w * same_slot]

    def _profile(self, b, scopes):
        text, item = (None, None), None
        if self.use_text and "hist_item" in b and "item_text" in b:
            text, item = (b["item_text"], b.get("cand_text")), b["hist_item"]
        elif self.use_text:
            text = (b.get("hist_text"), b.get("cand_text"))
        vectors = ()
        if self.log_profile:  # ctr.log_poi_profile: the log's PoI vectors, compared as the texts are
            if item is not None:  # one row per distinct PoI of the batch, as the texts
                hist_poi = b["item_poi"]
            else:
                hist_poi = b["item_poi"][b["hist_item"]] if "hist_item" in b else b["hist_poi"]
            vectors = ((self.log_poi_vec[hist_poi], self.log_poi_vec[b["cand_poi"]]),)
        return torch.cat([history_profile(sw, b["hist_row"], b["cand_row"], b["hist_category"], b["cand_category"],
                                          b.get("hist_logp"), b.get("cand_logp"), *text, item, vectors)
                          for sw in scopes], -1)

    @torch.no_grad()
    def request_constants(self, b) -> dict[str, torch.Tensor]:
        """What this model computes from a request's data alone, no parameter involved (the profile of
        the request-only scopes; CoFARS's offline graph): the same for every step, so a trainer computes
        it once per request and passes it in the batch under these keys (``graph_*``: ``ContextGraph``)."""
        out = {}
        if self.profile_scopes:
            out["profile_fixed"] = self._profile(b, self._fixed_scopes(b))
        if self.sequence == "cofars":
            g = self._offline_graph(b)
            out.update(graph_node_context=g.node_context, graph_node_ok=g.node_ok, graph_adjacency=g.adjacency,
                       graph_last_node=g.last_node, graph_divergence=g.divergence)
        return out

    def _offline_graph(self, b) -> ContextGraph:
        if "graph_node_context" in b:
            return ContextGraph(b["graph_node_context"], b["graph_node_ok"], b["graph_adjacency"],
                                b["graph_last_node"], None, b["graph_divergence"])
        attributes = torch.stack([b["hist_category"], b["hist_price"], b["hist_rating"], b["hist_delivery"]], -1)
        return self.cofars.offline(b["hist_context"], b["hist_mask"], attributes)

    def select(self, b, hist=None):
        """CoFARS for each request of the batch: the offline part from the batch's history
        (``CoFARS.offline``, or ``graph_*`` of ``request_constants``), the online pass (``CoFARS.forward``)
        and the (R, n) sub-sequence mask of the chosen contexts, falling back to the short-term window
        when none is chosen. Candidate-independent."""
        hist = self.history(b) if hist is None else hist
        mask = b["hist_mask"]
        user = self.user_emb(b["user"])
        graph = self._offline_graph(b)
        window_mask, window = gather_selected(last_positions(mask, self.cfg.short_term), self.cfg.short_term, hist)
        sel = self.cofars(user, b["context"], graph, window, window_mask)
        keep = subsequence_mask(b["hist_context"], graph.node_context, sel["chosen"]) & mask
        sel["mask"] = torch.where(~keep.any(-1, keepdim=True), last_positions(mask, self.cfg.short_term), keep)
        return sel

    # -- forward --------------------------------------------------------------------------------
    def forward(self, b: dict) -> dict:
        """Batch of requests -> dict with (R, K) ctr / cvr / ctcvr (+ logits) and auxiliary terms."""
        aux: dict = {}
        cand = self.item(b["cand_poi"], b.get("cand_text"), b["cand_category"], b["cand_price"], b["cand_rating"],
                         b["cand_delivery"])  # (R, K, d)
        parts = self.context_parts(b, cand, aux)
        if self.sequence != "none":
            hist = self.history(b)
            parts.append(self.sequence_vector(b, cand, hist, aux))
        out = self.top(torch.cat(parts, -1))
        out.update(aux)
        return out

    def context_parts(self, b: dict, cand: torch.Tensor, aux: dict | None = None) -> list[torch.Tensor]:
        """The MLP's inputs besides the sequence vector, each (R, K, ·): user, item, their product,
        scene, scene × item, numeric features, position, distance and, with ``page_context``, the
        page's other candidates and their product with the item; the one definition for training,
        evaluation and served CoFARS. ``aux`` receives LARR's scene and collaborative vectors."""
        r, k, d = cand.shape
        user = self.user_emb(b["user"]).unsqueeze(1).expand(r, k, d)
        if self.user_dense is not None:  # the user's profile / knowledge, in the same space as the ID embedding
            user = user + self.user_dense(b["numeric"].index_select(-1, self.user_dense_idx))
        collab, larr = self.scene(b)
        scene = collab if larr is None else torch.cat([collab, larr], -1)
        if larr is not None and aux is not None:
            aux["scene_vec"], aux["collab_vec"] = larr, collab
        scene_k = scene.unsqueeze(1).expand(r, k, scene.shape[-1])
        numeric = self._numeric(b)
        dense = self.numeric_proj(numeric)
        if self.ple is not None:
            n = self.shapes.n_numeric
            dense = dense + self.ple(torch.cat([numeric[..., :n], b["distance"].unsqueeze(-1)], -1))
        parts = [user, cand, user * cand, scene_k, self.scene_to_item(scene_k) * cand, dense,
                 self.position_emb(b["position"].clamp(max=MAX_POSITION - 1)), b["distance"].unsqueeze(-1)]
        if self.cfg.page_context:
            page = page_others(cand, b["mask"])
            parts += [page, page * cand]
        return parts

    def top(self, x: torch.Tensor) -> dict:
        """The concatenated inputs (..., in_dim) through the cross layers (if any), the shared MLP and
        the ESMM heads; the one path for training, evaluation and served CoFARS."""
        return self.heads(self.bottom(x if self.cross is None else self.cross(x)))

    def _numeric(self, b):
        x = b["numeric"]
        pad = self.numeric_proj.in_features - x.shape[-1]
        return F.pad(x, (0, pad)) if pad > 0 else x

    def loss(self, out: dict, b: dict) -> dict:
        """ESMM loss on real candidates + CoFARS (phase-1 BCE, γ L_MSE, λ L_IND) + LARR alignment."""
        m = b["mask"]
        losses = self.heads.loss({k: out[k][m] for k in ("ctr_logit", "cvr_logit")}, b["click"][m], b["order"][m])
        total = losses["loss"]
        if "phase1_logit" in out:
            losses["phase1"] = F.binary_cross_entropy_with_logits(out["phase1_logit"][m], b["click"][m])
            losses["l_mse"], losses["l_ind"] = out["l_mse"], out["l_ind"]
            total = total + losses["phase1"] + self.cfg.gamma_mse * out["l_mse"] + self.cfg.lambda_ind * out["l_ind"]
        if "scene_vec" in out and self.cfg.alignment_weight > 0 and len(out["scene_vec"]) > 1:
            losses["alignment"] = info_nce(out["scene_vec"], out["collab_vec"], self.cfg.alignment_temperature,
                                           normalize=True)
            total = total + self.cfg.alignment_weight * losses["alignment"]
        losses["loss"] = total
        return losses
