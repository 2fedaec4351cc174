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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.special import erf

from components.layers import MLP


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

    # -- serving: a one-layer aggregator reads precomputed attention terms -----------------------
    @torch.no_grad()
    def served(self, table: torch.Tensor) -> "ServedAggregator | None":
        """This aggregator compiled for per-request serving over the cached embedding ``table``
        (S, in_dim); None for deeper encoders (their later layers mix the features, so nothing can be
        precomputed per feature value)."""
        return ServedAggregator(self, table) if len(self.encoder.layers) == 1 else None


class ServedAggregator:
    """A trained one-layer ``SceneAggregator`` in eval mode, compiled for serving (numpy, CPU).

    With one layer, everything the <agg> token's attention reads from a feature value depends on
    that value and its position alone, so it is computed once per row of the cached embedding table:
    for every position f, table row s and head h, the attention score ``q_agg·k / sqrt(d_h)`` and the
    value already passed through the output projection (``W_o[:, h] v``). The softmax is taken
    relative to the <agg> token's own score (``e = exp(score - score_agg)``, so the token's weight is
    exactly 1 and a denominator is never below 1), and each row stores ``[e · value, e]``: a request
    gathers F rows and sums them, and one division per head finishes the attention. Then the
    feed-forward block, the final norm and the projection MLP run on a single vector (LayerNorm
    scales folded into the next linear layer, the residual stream kept centred by folding the
    centring into what adds to it, as inference compilers do): the same numbers as ``scene_vector``
    (tests/unit/ctr/test_larr.py) in a handful of numpy calls, which is what a request pays for when
    other work has left the CPU's caches cold. Row -1 (a missing feature) reads a sentinel row of
    zeros (weight 0), as the padding mask would make it.
    """

    def __init__(self, agg: SceneAggregator, table: torch.Tensor):
        layer = agg.encoder.layers[0]
        attn = layer.self_attn
        nh, d = attn.num_heads, attn.embed_dim
        dh = d // nh
        w, b = attn.in_proj_weight, attn.in_proj_bias
        table = table.to(w.device, w.dtype)
        h = layer.norm1(agg.input_proj(table)[None] + agg.feature_pos.weight[:, None])  # (F, S, d)
        ha = layer.norm1(agg.agg_token[0])  # (1, d)
        q = F.linear(ha, w[:d], b[:d]).view(nh, dh)
        wo = attn.out_proj.weight.view(d, nh, dh)

        def terms(x):  # normed inputs (..., d) -> scores (..., nh), projected values (..., nh, d)
            k = F.linear(x, w[d:2 * d], b[d:2 * d]).unflatten(-1, (nh, dh))
            v = F.linear(x, w[2 * d:], b[2 * d:]).unflatten(-1, (nh, dh))
            return (k * q).sum(-1) / dh ** 0.5, torch.einsum("...ha,dha->...hd", v, wo)

        score, value = terms(h)  # (F, S, nh), (F, S, nh, d)
        agg_score, agg_value = terms(ha[0])  # (nh,), (nh, d)
        # The residual stream only ever reaches a LayerNorm, so it is kept centred: centring is
        # linear (x C, C = I - 1/d) and goes into every term that adds to the stream.
        center = torch.eye(d, device=w.device, dtype=torch.float64) - 1.0 / d
        rel = (score - agg_score).double()
        if rel.numel() and float(rel.max()) > 600:  # exp would overflow float64
            raise ValueError(f"served aggregator: attention scores {float(rel.max()):.0f} above the <agg> token's "
                             "cannot be precomputed as weights; serve with the torch encoder instead")
        e = rel.exp()
        n_f, n_s = score.shape[:2]
        rows = torch.cat([e.unsqueeze(-1) * (value.double() @ center), e.unsqueeze(-1)], -1)  # (F, S, nh, d+1)
        rows = torch.cat([rows, torch.zeros(n_f, 1, nh, d + 1, dtype=torch.float64, device=w.device)], 1)
        self.rows = rows.reshape(n_f * (n_s + 1), nh * (d + 1)).cpu().numpy()  # row f*(S+1)+s; zero sentinel at s = S
        first = torch.cat([agg_value.double() @ center, torch.ones(nh, 1, dtype=torch.float64, device=w.device)], -1)
        self.first = first.reshape(-1).cpu().numpy()  # the <agg> token's own term, weight exp(0) = 1
        self.offset = np.arange(n_f) * (n_s + 1)
        self.nh, self.d = nh, d
        self.base = ((agg.agg_token[0, 0] + attn.out_proj.bias).double() @ center).cpu().numpy()
        np_ = lambda t: t.detach().cpu().numpy()  # noqa: E731
        if layer.activation is not F.gelu:
            raise ValueError(f"served aggregator supports the GELU feed-forward only, got {layer.activation}")
        # Inference folding: each LayerNorm's scale and shift go into the linear layer after it
        # (LN(x) @ W + b = norm(x) @ (g * W) + (β @ W + b)), and GELU's 1/2 into linear2.
        g2, b2n = layer.norm2.weight, layer.norm2.bias
        w1, b1 = layer.linear1.weight.T, layer.linear1.bias
        c32 = center.float()
        self.ff = (np_(g2[:, None] * w1), np_(b2n @ w1 + b1), np_(0.5 * layer.linear2.weight.T @ c32),
                   np_(layer.linear2.bias @ c32))
        self.eps = (layer.norm2.eps, agg.encoder.norm.eps)
        self.mean_of = np.full((d, 1), 1.0 / d, np.float32)
        steps = [m for m in agg.projection.net if not isinstance(m, nn.Dropout)]
        if not steps or not isinstance(steps[0], nn.Linear) or any(not isinstance(m, (nn.Linear, nn.ReLU)) for m in steps):
            raise ValueError("served aggregator supports a Linear/ReLU projection that starts with a Linear, got "
                             f"{[type(m).__name__ for m in agg.projection.net]}")
        gn, bn = agg.encoder.norm.weight, agg.encoder.norm.bias
        self.projection = []
        for i, m in enumerate(steps):
            if isinstance(m, nn.ReLU):
                self.projection.append(("relu",))
            elif i == 0:  # the final LayerNorm folded in
                self.projection.append(("linear", np_(gn[:, None] * m.weight.T), np_(bn @ m.weight.T + m.bias)))
            else:
                self.projection.append(("linear", np_(m.weight.T), np_(m.bias)))

    def _normalize(self, c, eps):
        """LayerNorm of an already centred stream, without its scale and shift (folded into the next
        linear layer); the mean of squares by a matrix product, cheaper than numpy's reductions here."""
        return c / np.sqrt((c * c) @ self.mean_of + eps)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """Scene vectors (B, collab_dim) float32 from table rows (B, F) int (-1 = missing)."""
        rows = np.asarray(rows)
        # (B, F) rows of the table. Each position's block ends with its zero sentinel row, so -1 lands on
        # the previous block's sentinel (position 0: on the last row, the last block's): no branch.
        idx = rows + self.offset
        t = (self.rows[idx].sum(1) + self.first).reshape(len(rows), self.nh, self.d + 1)  # Σ [e·v, e] per head
        x = (self.base + (t[..., :-1] / t[..., -1:]).sum(1)).astype(np.float32)  # softmax-weighted values
        w1, b1, w2, b2 = self.ff
        h = self._normalize(x, self.eps[0]) @ w1 + b1
        x = x + (h * (1.0 + erf(h * np.float32(0.5 ** 0.5)))) @ w2 + b2  # exact GELU (its 1/2 is in w2); still centred
        x = self._normalize(x, self.eps[1])
        for step in self.projection:
            x = np.maximum(x, 0) if step[0] == "relu" else x @ step[1] + step[2]
        return x.astype(np.float32, copy=False)
