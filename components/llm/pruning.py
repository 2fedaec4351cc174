"""Structured pruning of a HF ``LlamaForCausalLM`` or ``BertForMaskedLM``: masks while training, a
smaller model at the end.

Three kinds of structure (METHODS.md §5, HomoDistil), for a Llama:

    ffn     one FFN neuron j of a layer: row j of gate_proj and up_proj, column j of down_proj
    heads   one attention KV group of a layer: the rows of its k/v head, the rows of its n_rep query
            heads and the matching columns of o_proj. Without GQA (num_key_value_heads ==
            num_attention_heads) a group is one head; with GQA, pruning whole groups keeps every
            remaining query head attached to its own key/value head.
    hidden  one channel c of the residual stream, shared by every layer: column c of the embedding,
            of q/k/v/gate/up and of lm_head, row c of o_proj and down_proj, entry c of every RMSNorm.

A Llama config has one ``intermediate_size`` and one head count for all layers, so every layer keeps
the same *number* of FFN neurons and heads (each layer chooses its own which ones); hidden channels
are ranked globally. ``head_dim`` never changes (it is written into the smaller config explicitly).

For a BERT (HomoBERT, the paper's own case) the same three kinds, along BERT's modules:

    ffn     row j (and bias j) of ``intermediate.dense``, column j of ``output.dense``
    heads   one head: its rows (and biases) of query/key/value, its columns of ``attention.output.dense``
    hidden  column c of the word/position/token-type embeddings, of query/key/value, of
            ``intermediate.dense``, of the MLM head's transform and (tied) decoder; row and bias c of
            ``attention.output.dense``, ``output.dense`` and the transform; weight *and bias* c of
            every LayerNorm (embeddings, the two per layer, the MLM head's).

BERT is post-norm: every residual sum goes through a LayerNorm with a bias, so a masked LayerNorm
takes its mean and variance over the kept channels only and writes zeros on the pruned ones (a
pruned channel then carries nothing into the next layer, as in the sliced model). BERT derives the
head size as ``hidden_size / num_attention_heads``, so a stock ``BertConfig`` can only describe a
student whose hidden width is its head count times the teacher's head size: masks may take any
shape while training, :func:`slice_bert` refuses any other final shape.

While training, :class:`Pruner` applies the masks with forward hooks (the weights and the
state dict keep the teacher's shapes, so ``accelerate`` checkpoints and DDP work unchanged);
:meth:`Pruner.materialise` then slices the weights into a genuinely smaller model that computes the same
function. The norms are the subtle part: a masked norm must average over the kept channels only,
as the sliced norm will, so the hook recomputes it.

Importance is PLATON's (Zhang et al., ICML 2022, eq. 4-6): sensitivity ``I = |θ·∇L|`` per weight,
``Ī ← β1·Ī + (1−β1)·I``, ``Ū ← β2·Ū + (1−β2)·|I − Ī|`` and score ``Ī·Ū``, summed per structure.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

KINDS = ("ffn", "heads", "hidden")


SUPPORTED = ("llama", "bert")


def _is_bert(config) -> bool:
    return config.model_type == "bert"


def check_supported(model, where: str = "HomoDistil") -> None:
    """Refuse a model this module cannot prune, saying which ones it can."""
    kind = model.config.model_type
    if kind not in SUPPORTED or (_is_bert(model.config) and not hasattr(model, "cls")):
        raise ValueError(
            f"{where} prunes LlamaForCausalLM and BertForMaskedLM models only, got {type(model).__name__} "
            f"(model_type={kind!r}); use a Llama or BERT-family base whose LM head is saved with it")


@dataclass(frozen=True)
class Shape:
    """Widths of a Llama or BERT: FFN neurons and KV groups (BERT: heads) per layer, hidden channels."""

    ffn: int
    heads: int  # KV groups (= attention heads when there is no GQA)
    hidden: int

    def as_dict(self) -> dict[str, int]:
        return {"ffn": self.ffn, "heads": self.heads, "hidden": self.hidden}


def shape_of(config) -> Shape:
    """The widths of a Llama or BERT config."""
    if _is_bert(config):
        return Shape(config.intermediate_size, config.num_attention_heads, config.hidden_size)
    return Shape(config.intermediate_size, config.num_key_value_heads, config.hidden_size)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def resized_config(config, shape: Shape):
    """A copy of ``config`` with the given widths (``head_dim`` and the GQA ratio unchanged)."""
    if _is_bert(config):
        new = copy.deepcopy(config)
        new.head_dim = _head_dim(config)  # read by count_params; slice_bert drops it (BERT derives it)
        new.hidden_size, new.intermediate_size, new.num_attention_heads = shape.hidden, shape.ffn, shape.heads
        return new
    n_rep = config.num_attention_heads // config.num_key_value_heads
    new = copy.deepcopy(config)
    new.head_dim = _head_dim(config)
    new.hidden_size = shape.hidden
    new.intermediate_size = shape.ffn
    new.num_key_value_heads = shape.heads
    new.num_attention_heads = shape.heads * n_rep
    return new


def student_config(config, shape: Shape):
    """The config of a model of ``config``'s family with the given widths (what a student saves)."""
    new = resized_config(config, shape)
    if _is_bert(config):
        del new.head_dim  # BERT derives it; slice_bert checks the widths agree with the teacher's
    return new


def count_params(config) -> dict[str, int]:
    """Parameters of a Llama config, counted as stored: ``total`` (tied embeddings once),
    ``embedding`` (input embedding + untied lm_head; BERT: + position and token-type tables) and
    ``non_embedding``."""
    if _is_bert(config):
        return _count_bert(config)
    d, f, L, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    hd = _head_dim(config)
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    attn = d * (q + 2 * kv) + q * d + (q + 2 * kv + d if config.attention_bias else 0)
    mlp = 3 * d * f + (2 * f + d if getattr(config, "mlp_bias", False) else 0)
    layers = L * (attn + mlp + 2 * d) + d  # + two norms per layer, + the final norm
    emb = v * d * (1 if config.tie_word_embeddings else 2)
    return {"total": layers + emb, "embedding": emb, "non_embedding": layers}


def _count_bert(config) -> dict[str, int]:
    d, f, L, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    a = config.num_attention_heads * _head_dim(config)
    attn = 3 * (d * a + a) + (a * d + d) + 2 * d  # q/k/v, output dense, its LayerNorm
    mlp = (d * f + f) + (f * d + d) + 2 * d
    head = (d * d + d) + 2 * d + v  # MLM transform, its LayerNorm, the decoder's bias
    layers = L * (attn + mlp) + 2 * d + head  # + the embeddings' LayerNorm
    emb = (v + config.max_position_embeddings + config.type_vocab_size) * d
    if not config.tie_word_embeddings:  # the decoder's own weight, and its bias is then its own too
        emb, layers = emb + v * d, layers + v
    return {"total": layers + emb, "embedding": emb, "non_embedding": layers}


def model_params(model: nn.Module) -> int:
    """Parameters of a model as stored (shared tensors once)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# PLATON importance


def platon_update(ibar: torch.Tensor, ubar: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor,
                  beta1: float, beta2: float) -> None:
    """One PLATON step, in place: ``I = |θ·g|``, ``Ī ← β1Ī + (1−β1)I``, then ``Ū ← β2Ū + (1−β2)|I − Ī|``
    with the *updated* Ī (PLATON eq. 5-6)."""
    sens = (weight.detach() * grad.detach()).abs().float()
    ibar.mul_(beta1).add_(sens, alpha=1 - beta1)
    ubar.mul_(beta2).add_((sens - ibar).abs(), alpha=1 - beta2)


def _layer_modules(model):
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        yield layer, a, m


class Pruner:
    """Masks, PLATON importance and mask hooks for one ``LlamaForCausalLM`` or ``BertForMaskedLM``
    (pruned in place).

    Call :meth:`update_importance` after each backward (before the optimizer step), then
    :meth:`prune_to` to drop the lowest-scoring structures. ``state_dict`` / ``load_state_dict``
    carry masks and EMA state, so ``accelerator.register_for_checkpointing(pruner)`` resumes them.
    """

    def __init__(self, model, beta1: float = 0.85, beta2: float = 0.95):
        check_supported(model)
        self.model = model
        self.beta1, self.beta2 = beta1, beta2
        cfg = model.config
        full = shape_of(cfg)
        self.n_layers = cfg.num_hidden_layers
        self.n_rep = cfg.num_attention_heads // full.heads
        self.head_dim = _head_dim(cfg)
        dev = model.get_input_embeddings().weight.device
        self.masks = {
            "ffn": torch.ones(self.n_layers, full.ffn, device=dev),
            "heads": torch.ones(self.n_layers, full.heads, device=dev),
            "hidden": torch.ones(full.hidden, device=dev),
        }
        # Trainable tensors whose entries belong to some structure; name -> parameter.
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.ibar = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        self.ubar = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        self.updates = 0
        self._hooks: list = []
        self.attach()

    # ---- masks in the forward pass -------------------------------------------------------------

    def _refresh_flags(self) -> None:
        # Python flags, not mask.all() in the hooks: no device sync per forward, and an unpruned
        # model runs the library's own code path, bit for bit.
        self._is_pruned = {k: int(self.masks[k].sum().item()) < self.masks[k].numel() for k in KINDS}
        self._n_hidden = int(self.masks["hidden"].sum().item())

    def attach(self) -> None:
        """Register the mask hooks (idempotent)."""
        if self._hooks:
            return
        self._refresh_flags()
        model = self.model
        hid = lambda: self.masks["hidden"]  # noqa: E731  (read at call time: masks change)

        def mask_out(getter, flag):
            def hook(_m, _inp, out):
                if self._is_pruned[flag]:
                    return out * getter().to(out.dtype)
            return hook

        def mask_in(getter, flag):
            def hook(_m, args):
                if self._is_pruned[flag]:
                    return (args[0] * getter().to(args[0].dtype),) + tuple(args[1:])
            return hook

        def masked_norm(norm, args, out):
            # LlamaRMSNorm over the kept channels only, as the sliced norm of the small model computes it.
            if not self._is_pruned["hidden"]:
                return None
            x, m = args[0], self.masks["hidden"]
            x32 = x.to(torch.float32)
            var = (x32.pow(2) * m).sum(-1, keepdim=True) / self._n_hidden
            y = x32 * torch.rsqrt(var + norm.variance_epsilon)
            return norm.weight * y.to(x.dtype) * m.to(x.dtype)

        h = self._hooks
        if _is_bert(model.config):
            self._attach_bert(mask_in)
            return
        h.append(model.model.embed_tokens.register_forward_hook(mask_out(hid, "hidden")))
        h.append(model.model.norm.register_forward_hook(masked_norm))
        for i, (layer, attn, mlp) in enumerate(_layer_modules(model)):
            head_getter = lambda i=i: self.masks["heads"][i].repeat_interleave(self.n_rep * self.head_dim)  # noqa: E731
            ffn_getter = lambda i=i: self.masks["ffn"][i]  # noqa: E731
            h.append(layer.input_layernorm.register_forward_hook(masked_norm))
            h.append(layer.post_attention_layernorm.register_forward_hook(masked_norm))
            h.append(attn.o_proj.register_forward_pre_hook(mask_in(head_getter, "heads")))
            h.append(attn.o_proj.register_forward_hook(mask_out(hid, "hidden")))
            h.append(mlp.down_proj.register_forward_pre_hook(mask_in(ffn_getter, "ffn")))
            h.append(mlp.down_proj.register_forward_hook(mask_out(hid, "hidden")))

    def _attach_bert(self, mask_in) -> None:
        model, h = self.model, self._hooks

        def masked_layernorm(norm, args, out):
            # nn.LayerNorm over the kept channels only (mean, variance, then weight and bias), zero on
            # the pruned ones: what the sliced LayerNorm of the small model computes.
            if not self._is_pruned["hidden"]:
                return None
            x, m = args[0].float(), self.masks["hidden"].float()  # fp32 like nn.LayerNorm under autocast
            mean = (x * m).sum(-1, keepdim=True) / self._n_hidden
            var = ((x - mean).pow(2) * m).sum(-1, keepdim=True) / self._n_hidden
            y = (x - mean) * torch.rsqrt(var + norm.eps)
            return ((y * norm.weight.float() + norm.bias.float()) * m).to(out.dtype)

        h.append(model.bert.embeddings.LayerNorm.register_forward_hook(masked_layernorm))
        h.append(model.cls.predictions.transform.LayerNorm.register_forward_hook(masked_layernorm))
        for i, layer in enumerate(model.bert.encoder.layer):
            head_getter = lambda i=i: self.masks["heads"][i].repeat_interleave(self.head_dim)  # noqa: E731
            ffn_getter = lambda i=i: self.masks["ffn"][i]  # noqa: E731
            h.append(layer.attention.output.dense.register_forward_pre_hook(mask_in(head_getter, "heads")))
            h.append(layer.attention.output.LayerNorm.register_forward_hook(masked_layernorm))
            h.append(layer.output.dense.register_forward_pre_hook(mask_in(ffn_getter, "ffn")))
            h.append(layer.output.LayerNorm.register_forward_hook(masked_layernorm))

    def detach(self) -> None:
        """Remove the hooks; the model then computes the unmasked function again."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ---- importance ----------------------------------------------------------------------------

    @torch.no_grad()
    def update_importance(self, grads: dict[str, torch.Tensor | None] | None = None) -> None:
        """Fold gradients into the PLATON EMAs: ``grads`` by parameter name, or (None) the ``.grad``
        the training loop's backward left (call after backward, before step)."""
        for n, p in self.params.items():
            g = p.grad if grads is None else grads.get(n)
            if g is not None:
                platon_update(self.ibar[n], self.ubar[n], p, g, self.beta1, self.beta2)
        self.updates += 1

    def score_loss(self, loss: torch.Tensor) -> None:
        """``update_importance`` with the gradients of ``loss`` (autograd, no ``.grad`` left behind):
        scoring without training, as the one-shot baseline prunes."""
        names = list(self.params)
        grads = torch.autograd.grad(loss, [self.params[n] for n in names], allow_unused=True)
        self.update_importance(dict(zip(names, grads)))

    @torch.no_grad()
    def scores(self) -> dict[str, torch.Tensor]:
        """Ī·Ū summed per structure: ``ffn`` (layers, neurons), ``heads`` (layers, groups), ``hidden`` (channels)."""
        s = {n: self.ibar[n] * self.ubar[n] for n in self.params}
        return structure_sums(self.model, s)

    # ---- pruning -------------------------------------------------------------------------------

    def shape(self) -> Shape:
        """Current widths (kept units per layer; every layer keeps the same count)."""
        m = self.masks
        return Shape(int(m["ffn"][0].sum()), int(m["heads"][0].sum()), int(m["hidden"].sum()))

    @torch.no_grad()
    def prune_to(self, target: Shape) -> Shape:
        """Drop the lowest-scoring live structures until each kind has at most ``target`` units
        (per layer for ffn/heads); pruned units stay pruned. Returns the new shape."""
        sc = self.scores()
        for kind, keep in target.as_dict().items():
            m = self.masks[kind]
            rows = m.view(-1, m.shape[-1])  # hidden: one row of D channels
            live = sc[kind].to(m.device).view_as(rows).float().masked_fill(rows == 0, float("-inf"))
            for r in range(rows.shape[0]):
                if int(rows[r].sum()) <= keep:
                    continue
                top = torch.topk(live[r], keep).indices  # ties: lower index wins (topk is stable on CPU)
                new = torch.zeros_like(rows[r])
                new[top] = 1
                rows[r].copy_(new)
        self._refresh_flags()
        return self.shape()

    def kept_indices(self) -> dict:
        """Kept units as sorted index tensors: ``hidden`` (D',), ``heads``/``ffn`` lists per layer."""
        return {
            "hidden": self.masks["hidden"].nonzero().flatten().cpu(),
            "heads": [r.nonzero().flatten().cpu() for r in self.masks["heads"]],
            "ffn": [r.nonzero().flatten().cpu() for r in self.masks["ffn"]],
        }

    def materialise(self):
        """A new, smaller model of the same class computing what the masked model computes."""
        return slice_model(self.model, **self.kept_indices())

    # ---- checkpointing -------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "masks": {k: v.cpu() for k, v in self.masks.items()},
            "ibar": {k: v.cpu() for k, v in self.ibar.items()},
            "ubar": {k: v.cpu() for k, v in self.ubar.items()},
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["masks"].items():
            self.masks[k].copy_(v)
        for k, v in state["ibar"].items():
            self.ibar[k].copy_(v)
        for k, v in state["ubar"].items():
            self.ubar[k].copy_(v)
        self.updates = int(state["updates"])
        self._refresh_flags()


LlamaPruner = Pruner  # the name from before BERT was supported


def structure_sums(model, per_weight: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum a per-weight quantity (keyed by parameter name, shaped like it) over each structure."""
    if _is_bert(model.config):
        return _structure_sums_bert(model, per_weight)
    cfg = model.config
    L, n_kv = cfg.num_hidden_layers, cfg.num_key_value_heads
    hidden = torch.zeros(cfg.hidden_size)
    ffn = torch.zeros(L, cfg.intermediate_size)
    heads = torch.zeros(L, n_kv)
    names = {id(p): n for n, p in model.named_parameters()}

    def get(p):
        t = per_weight.get(names.get(id(p)))
        return None if t is None else t.float().cpu()

    def cols(p):  # per input channel of a Linear / embedding column
        t = get(p)
        return 0 if t is None else t.sum(0)

    seen = set()

    def once(p):  # tied embeddings: the shared tensor counts once
        if id(p) in seen:
            return False
        seen.add(id(p))
        return True

    emb = model.model.embed_tokens.weight
    if once(emb):
        hidden += cols(emb)
    if once(model.lm_head.weight):
        hidden += cols(model.lm_head.weight)
    if (t := get(model.model.norm.weight)) is not None:
        hidden += t
    for i, (layer, a, m) in enumerate(_layer_modules(model)):
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if (t := get(norm.weight)) is not None:
                hidden += t
        for lin, group_rows in ((a.q_proj, True), (a.k_proj, True), (a.v_proj, True)):
            t = get(lin.weight)
            if t is None:
                continue
            hidden += t.sum(0)
            heads[i] += t.sum(1).view(n_kv, -1).sum(1)  # a group's rows are contiguous (q: n_rep heads)
            if lin.bias is not None and (b := get(lin.bias)) is not None:
                heads[i] += b.view(n_kv, -1).sum(1)
        if (t := get(a.o_proj.weight)) is not None:
            hidden += t.sum(1)
            heads[i] += t.sum(0).view(n_kv, -1).sum(1)
        if a.o_proj.bias is not None and (b := get(a.o_proj.bias)) is not None:
            hidden += b
        for lin in (m.gate_proj, m.up_proj):
            if (t := get(lin.weight)) is not None:
                hidden += t.sum(0)
                ffn[i] += t.sum(1)
            if lin.bias is not None and (b := get(lin.bias)) is not None:
                ffn[i] += b
        if (t := get(m.down_proj.weight)) is not None:
            hidden += t.sum(1)
            ffn[i] += t.sum(0)
        if m.down_proj.bias is not None and (b := get(m.down_proj.bias)) is not None:
            hidden += b
    return {"ffn": ffn, "heads": heads, "hidden": hidden}


def _structure_sums_bert(model, per_weight: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    full = shape_of(model.config)
    L = model.config.num_hidden_layers
    hidden, ffn, heads = torch.zeros(full.hidden), torch.zeros(L, full.ffn), torch.zeros(L, full.heads)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()

    def get(p):  # the tensor of parameter p, each shared (tied) tensor once
        if p is None or id(p) in seen:
            return None
        seen.add(id(p))
        t = per_weight.get(names.get(id(p)))
        return None if t is None else t.float().cpu()

    def add(p, hidden_dim=None, unit=None, unit_dim=None, units=None):
        # hidden_dim: the axis of p along hidden channels (None: none); unit_dim: the axis along
        # heads/neurons of ``units`` (a row of heads or ffn), grouped in blocks of equal size.
        t = get(p)
        if t is None:
            return
        if hidden_dim is not None:
            hidden.add_(t.sum(tuple(d for d in range(t.dim()) if d != hidden_dim)) if t.dim() > 1 else t)
        if units is not None:
            per = t.sum(tuple(d for d in range(t.dim()) if d != unit_dim)) if t.dim() > 1 else t
            units += per.view(units.shape[0], -1).sum(1)

    emb, pred = model.bert.embeddings, model.cls.predictions
    for table in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings):
        add(table.weight, hidden_dim=1)
    for norm in (emb.LayerNorm, pred.transform.LayerNorm):
        add(norm.weight, 0)
        add(norm.bias, 0)
    t = get(pred.transform.dense.weight)
    if t is not None:
        hidden += t.sum(0) + t.sum(1)  # D x D: a channel owns its row and its column
    add(pred.transform.dense.bias, 0)
    add(pred.decoder.weight, hidden_dim=1)  # tied to the word embeddings: already counted then
    for i, layer in enumerate(model.bert.encoder.layer):
        a, o = layer.attention.self, layer.attention.output
        for lin in (a.query, a.key, a.value):
            add(lin.weight, hidden_dim=1, unit_dim=0, units=heads[i])
            add(lin.bias, unit_dim=0, units=heads[i])
        add(o.dense.weight, hidden_dim=0, unit_dim=1, units=heads[i])
        add(o.dense.bias, 0)
        add(layer.intermediate.dense.weight, hidden_dim=1, unit_dim=0, units=ffn[i])
        add(layer.intermediate.dense.bias, unit_dim=0, units=ffn[i])
        add(layer.output.dense.weight, hidden_dim=0, unit_dim=1, units=ffn[i])
        add(layer.output.dense.bias, 0)
        for norm in (o.LayerNorm, layer.output.LayerNorm):
            add(norm.weight, 0)
            add(norm.bias, 0)
    return {"ffn": ffn, "heads": heads, "hidden": hidden}


# --------------------------------------------------------------------------------------------------
# Slicing into a smaller model


def slice_model(model, hidden: torch.Tensor, heads: list[torch.Tensor], ffn: list[torch.Tensor]):
    """:func:`slice_llama` or :func:`slice_bert`, whichever fits ``model``."""
    check_supported(model, "slicing")
    return (slice_bert if _is_bert(model.config) else slice_llama)(model, hidden, heads, ffn)


def _put(dst: nn.Module, src: nn.Module, out_idx=None, in_idx=None) -> None:
    """Copy ``src``'s weight (and bias) into ``dst``, keeping output rows ``out_idx`` and input columns ``in_idx``."""
    w = src.weight
    if out_idx is not None:
        w = w[out_idx]
    if in_idx is not None:
        w = w[:, in_idx]
    dst.weight.copy_(w)
    if getattr(src, "bias", None) is not None:
        dst.bias.copy_(src.bias if out_idx is None else src.bias[out_idx])


@torch.no_grad()
def slice_llama(model, hidden: torch.Tensor, heads: list[torch.Tensor], ffn: list[torch.Tensor]):
    """A new ``LlamaForCausalLM`` keeping hidden channels ``hidden``, KV groups ``heads[l]`` and FFN
    neurons ``ffn[l]`` of each layer ``l`` (index tensors; equal lengths across layers)."""
    from transformers import LlamaForCausalLM

    cfg = model.config
    n_rep, hd = cfg.num_attention_heads // cfg.num_key_value_heads, _head_dim(cfg)
    if len({len(h) for h in heads}) != 1 or len({len(f) for f in ffn}) != 1:
        raise ValueError("every layer must keep the same number of heads and FFN neurons (one Llama config)")
    shape = Shape(len(ffn[0]), len(heads[0]), len(hidden))
    new_cfg = resized_config(cfg, shape)
    dtype = model.model.embed_tokens.weight.dtype
    small = LlamaForCausalLM(new_cfg).to(dtype)
    h = hidden.long()

    def rows_of(groups: torch.Tensor, width: int) -> torch.Tensor:
        # Row indices of whole groups of ``width`` contiguous rows.
        return (groups.long()[:, None] * width + torch.arange(width)[None, :]).flatten()

    small.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight[:, h])
    small.model.norm.weight.copy_(model.model.norm.weight[h])
    if not cfg.tie_word_embeddings:
        small.lm_head.weight.copy_(model.lm_head.weight[:, h])
    for i, ((sl, sa, sm), (tl, ta, tm)) in enumerate(zip(_layer_modules(small), _layer_modules(model))):
        q_rows, kv_rows = rows_of(heads[i], n_rep * hd), rows_of(heads[i], hd)
        f = ffn[i].long()
        sl.input_layernorm.weight.copy_(tl.input_layernorm.weight[h])
        sl.post_attention_layernorm.weight.copy_(tl.post_attention_layernorm.weight[h])
        _put(sa.q_proj, ta.q_proj, q_rows, h)
        _put(sa.k_proj, ta.k_proj, kv_rows, h)
        _put(sa.v_proj, ta.v_proj, kv_rows, h)
        _put(sa.o_proj, ta.o_proj, h, q_rows)
        _put(sm.gate_proj, tm.gate_proj, f, h)
        _put(sm.up_proj, tm.up_proj, f, h)
        _put(sm.down_proj, tm.down_proj, h, f)
    return small.to(model.model.embed_tokens.weight.device)


@torch.no_grad()
def slice_bert(model, hidden: torch.Tensor, heads: list[torch.Tensor], ffn: list[torch.Tensor]):
    """A new ``BertForMaskedLM`` keeping hidden channels ``hidden``, heads ``heads[l]`` and FFN neurons
    ``ffn[l]`` of each layer ``l``; the hidden width must be the kept head count times the head size
    (BERT derives its head size from the two)."""
    cfg = model.config
    hd = _head_dim(cfg)
    if len({len(x) for x in heads}) != 1 or len({len(f) for f in ffn}) != 1:
        raise ValueError("every layer must keep the same number of heads and FFN neurons (one BERT config)")
    shape = Shape(len(ffn[0]), len(heads[0]), len(hidden))
    if shape.hidden != shape.heads * hd:
        raise ValueError(
            f"a BERT config derives its head size as hidden_size / num_attention_heads, so a student keeping "
            f"{shape.heads} heads of size {hd} needs hidden width {shape.heads * hd}, not {shape.hidden}")
    new_cfg = student_config(cfg, shape)
    dtype = model.get_input_embeddings().weight.dtype
    small = type(model)(new_cfg).to(dtype)
    h = hidden.long()
    se, te = small.bert.embeddings, model.bert.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        getattr(se, name).weight.copy_(getattr(te, name).weight[:, h])
    _put(se.LayerNorm, te.LayerNorm, h)
    sp, tp = small.cls.predictions, model.cls.predictions
    _put(sp.transform.dense, tp.transform.dense, h, h)
    _put(sp.transform.LayerNorm, tp.transform.LayerNorm, h)
    if sp.decoder.weight is not se.word_embeddings.weight:  # untied: the decoder's own columns
        sp.decoder.weight.copy_(tp.decoder.weight[:, h])
    sp.bias.copy_(tp.bias)
    if sp.decoder.bias is not None and sp.decoder.bias is not sp.bias:
        sp.decoder.bias.copy_(tp.decoder.bias)
    for i, (sl, tl) in enumerate(zip(small.bert.encoder.layer, model.bert.encoder.layer)):
        rows = (heads[i].long()[:, None] * hd + torch.arange(hd)[None, :]).flatten()
        f = ffn[i].long()
        for name in ("query", "key", "value"):
            _put(getattr(sl.attention.self, name), getattr(tl.attention.self, name), rows, h)
        _put(sl.attention.output.dense, tl.attention.output.dense, h, rows)
        _put(sl.attention.output.LayerNorm, tl.attention.output.LayerNorm, h)
        _put(sl.intermediate.dense, tl.intermediate.dense, f, h)
        _put(sl.output.dense, tl.output.dense, h, f)
        _put(sl.output.LayerNorm, tl.output.LayerNorm, h)
    return small.to(model.get_input_embeddings().weight.device)


def truncate(model, shape: Shape):
    """The plain-distillation init: keep the *first* channels, KV groups and neurons of the teacher."""
    L = model.config.num_hidden_layers
    return slice_model(
        model, torch.arange(shape.hidden), [torch.arange(shape.heads)] * L, [torch.arange(shape.ffn)] * L
    )
