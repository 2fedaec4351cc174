"""LARR stage 3 (METHODS.md §1): aggregate cached per-scene-feature LLM embeddings into one scene
vector and align it with the recommender's collaborative embedding.

Each scene feature value (location type, time of day, weather, …) is embedded once, offline, by
the frozen text encoder; online only this small bidirectional encoder runs over
``[<agg>; e_1 … e_F]``. Choices of ours: pre-norm Transformer layers; learned feature-position
embeddings (feature f always sits at position f, so the encoder knows which feature it reads);
missing features can be masked out, the <agg> token never is; the CTR model consumes
``projection(<agg>)``, the vector that is aligned with the collaborative space.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.ctr.layers import MLP


class SceneAggregator(nn.Module):
    """[<agg>; e_1..e_F] -> bidirectional Transformer encoder -> <agg> output (B, d_model);
    ``projection`` maps it to the collaborative embedding size ``collab_dim``."""

    def __init__(self, in_dim: int, n_features: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
                 dim_feedforward: int | None = None, dropout: float = 0.1, collab_dim: int = 32,
                 proj_hidden: list[int] | tuple[int, ...] = (64,)):
        super().__init__()
        self.n_features = n_features
        self.input_proj = nn.Linear(in_dim, d_model)  # the LLM's embedding size -> d_model
        self.feature_pos = nn.Embedding(n_features, d_model)
        self.agg_token = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, dim_feedforward or 4 * d_model, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested fast path is a no-op for pre-norm layers and only warns.
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.projection = MLP(d_model, proj_hidden, collab_dim, dropout=0.0)

    def forward(self, feature_emb: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """feature_emb (B, F, in_dim); feature_mask (B, F) bool, True = feature present.
        Returns the <agg> token's output (B, d_model)."""
        b, f, _ = feature_emb.shape
        if f != self.n_features:
            raise ValueError(f"expected {self.n_features} scene features, got {f} "
                             f"(dim 1 of feature_emb {tuple(feature_emb.shape)})")
        pos = self.feature_pos(torch.arange(f, device=feature_emb.device))
        x = torch.cat([self.agg_token.expand(b, -1, -1), self.input_proj(feature_emb) + pos], dim=1)
        pad = None
        if feature_mask is not None:
            agg_present = torch.ones(b, 1, dtype=torch.bool, device=x.device)
            pad = ~torch.cat([agg_present, feature_mask.bool()], dim=1)  # True = ignore
        return self.encoder(x, src_key_padding_mask=pad)[:, 0]

    def scene_vector(self, feature_emb: torch.Tensor, feature_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The vector the CTR model consumes: projection(<agg>) (B, collab_dim)."""
        return self.projection(self(feature_emb, feature_mask))

    # -- serving: a one-layer aggregator reads precomputed keys and values ------------------------
    @torch.no_grad()
    def serving_cache(self, table: torch.Tensor) -> dict | None:
        """What a one-layer aggregator computes from one feature value alone, for every row of the
        cached embedding table at every feature position: the attention keys and values of
        ``LayerNorm(input_proj(e) + pos_f)``; plus the <agg> token's own query, key and value.
        Online, only the <agg> query attends over the request's F gathered keys. None for deeper
        encoders (their later layers mix the features)."""
        if len(self.encoder.layers) != 1:
            return None
        layer = self.encoder.layers[0]
        attn = layer.self_attn
        d = attn.embed_dim
        w, b = attn.in_proj_weight, attn.in_proj_bias
        x = self.input_proj(table)[None] + self.feature_pos.weight[:, None]  # (F, S, d)
        h = layer.norm1(x)
        ha = layer.norm1(self.agg_token[0])  # (1, d)
        return {"k": F.linear(h, w[d:2 * d], b[d:2 * d]), "v": F.linear(h, w[2 * d:], b[2 * d:]),
                "q_agg": F.linear(ha, w[:d], b[:d]), "k_agg": F.linear(ha, w[d:2 * d], b[d:2 * d]),
                "v_agg": F.linear(ha, w[2 * d:], b[2 * d:])}

    @torch.no_grad()
    def cached_scene_vector(self, rows: torch.Tensor, cache: dict) -> torch.Tensor:
        """``scene_vector`` of eval mode from table rows (B, F) (-1 = missing), with ``serving_cache``:
        the same numbers, a fraction of the work (one query, F gathered keys and values)."""
        layer = self.encoder.layers[0]
        attn = layer.self_attn
        nh, d = attn.num_heads, attn.embed_dim
        dh = d // nh
        bsz, f = rows.shape
        pos = torch.arange(f, device=rows.device)
        r = rows.clamp(min=0)
        k = torch.cat([cache["k_agg"].expand(bsz, 1, d), cache["k"][pos, r]], 1)  # (B, 1+F, d)
        v = torch.cat([cache["v_agg"].expand(bsz, 1, d), cache["v"][pos, r]], 1)
        q = cache["q_agg"].view(1, nh, 1, dh)
        scores = (q * k.view(bsz, 1 + f, nh, dh).transpose(1, 2)).sum(-1) / dh ** 0.5  # (B, nh, 1+F)
        missing = torch.cat([torch.zeros(bsz, 1, dtype=torch.bool, device=rows.device), rows < 0], 1)
        scores = scores.masked_fill(missing[:, None], float("-inf"))
        o = (scores.softmax(-1).unsqueeze(-1) * v.view(bsz, 1 + f, nh, dh).transpose(1, 2)).sum(2)  # (B, nh, dh)
        x = self.agg_token[0] + attn.out_proj(o.reshape(bsz, d))
        x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        return self.projection(self.encoder.norm(x))


def alignment_loss(scene_vec: torch.Tensor, collab_vec: torch.Tensor, temperature: float = 0.1,
                   symmetric: bool = True) -> torch.Tensor:
    """InfoNCE with in-batch negatives on cosine similarity: row i's scene vector should pick row i's
    collaborative vector among the batch (and back, when ``symmetric``)."""
    s, c = F.normalize(scene_vec, dim=-1), F.normalize(collab_vec, dim=-1)
    logits = s @ c.T / temperature
    target = torch.arange(len(s), device=s.device)
    loss = F.cross_entropy(logits, target)
    return (loss + F.cross_entropy(logits.T, target)) / 2 if symmetric else loss
