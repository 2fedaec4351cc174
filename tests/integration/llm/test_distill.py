"""HomoDistil: PLATON importance, cubic schedule, structured pruning and the distillation loop, on a tiny Llama."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.config import DistillConfig, Params
from tests.factories import fake_grads, one_torch_thread  # noqa: F401 - one_torch_thread: an autouse fixture
from components.llm import distill
from components.training import checkpoint
from components.llm.pruning import (
    LlamaPruner, Shape, count_params, model_params, platon_update, resized_config, shape_of, structure_sums,
)

VOCAB = 300


def tiny_llama(tie: bool = True, kv_heads: int = 4, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_key_value_heads=kv_heads,
                      num_hidden_layers=2, vocab_size=VOCAB, tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def teacher_project(tmp_path_factory):
    """A project root with llm_dir/corpus/{train,heldout}.txt and a tiny teacher (model + tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("distill")
    words = [f"w{i}" for i in range(VOCAB - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "<s>", "</s>"] + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    teacher_dir = root / "data" / "llm" / "pretrained"
    tiny_llama().save_pretrained(teacher_dir)
    fast.save_pretrained(teacher_dir)
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, len(words) + 1)  # Zipfian: an LM can learn something
    p /= p.sum()
    corpus = root / "data" / "llm" / "corpus"
    corpus.mkdir(parents=True)
    for name, n in (("train.txt", 300), ("heldout.txt", 40)):
        lines = [" ".join(rng.choice(words, size=rng.integers(5, 20), p=p)) for _ in range(n)]
        (corpus / name).write_text("\n".join(lines) + "\n")
    return root, teacher_dir


def tiny_params(root, **distill_overrides) -> Params:
    kw = dict(steps=12, warmup_steps=2, recovery_steps=3, prune_every=2, seq_len=16, batch_size=4, lr=3e-3,
              lr_warmup_steps=1, checkpoint_every=4, log_every=1, eval_blocks=4, mixed_precision="no")
    return Params(root=root, distill=DistillConfig(**{**kw, **distill_overrides}))


# ---- importance ---------------------------------------------------------------------------------


def test_platon_update_follows_the_ema_formulas():
    ibar, ubar = torch.zeros(2), torch.zeros(2)
    w = torch.tensor([2.0, -1.0])
    platon_update(ibar, ubar, w, torch.tensor([0.5, 3.0]), beta1=0.5, beta2=0.75)  # I = [1, 3]
    assert torch.allclose(ibar, torch.tensor([0.5, 1.5]))
    assert torch.allclose(ubar, torch.tensor([0.125, 0.375]))  # 0.25 * |I - Ibar|
    platon_update(ibar, ubar, w, torch.tensor([1.0, 0.0]), beta1=0.5, beta2=0.75)  # I = [2, 0]
    assert torch.allclose(ibar, torch.tensor([1.25, 0.75]))
    assert torch.allclose(ubar, torch.tensor([0.28125, 0.46875]))


def test_structure_sums_count_every_weight_of_a_structure_once():
    model = tiny_llama(tie=True)
    c = model.config
    hd, ffn, heads, layers = c.head_dim, c.intermediate_size, c.num_attention_heads, c.num_hidden_layers
    sums = structure_sums(model, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    assert torch.all(sums["ffn"] == 3 * c.hidden_size)  # gate row, up row, down column
    assert torch.all(sums["heads"] == 4 * hd * c.hidden_size)  # q, k, v rows and o columns of one head
    per_layer = 2 * heads * hd + 2 * c.num_key_value_heads * hd + 3 * ffn + 2
    assert torch.all(sums["hidden"] == c.vocab_size + 1 + layers * per_layer)  # tied embedding once


def test_pruner_scores_are_ibar_times_ubar():
    model = tiny_llama()
    pruner = LlamaPruner(model, beta1=0.5, beta2=0.5)
    fake_grads(model)
    pruner.update_importance()
    w = model.model.layers[0].mlp.down_proj.weight
    sens = (w * w.grad).abs()
    ibar, ubar = 0.5 * sens, 0.5 * (sens - 0.5 * sens).abs()
    expected = (ibar * ubar).sum(0)  # down_proj's part of layer 0's FFN neuron scores
    g, u = model.model.layers[0].mlp.gate_proj.weight, model.model.layers[0].mlp.up_proj.weight
    for lin in (g, u):
        s = (lin * lin.grad).abs()
        expected = expected + (0.5 * s * 0.25 * s).sum(1)
    assert torch.allclose(pruner.scores()["ffn"][0], expected, rtol=1e-5)


# ---- schedule -----------------------------------------------------------------------------------


def test_cubic_schedule_values():
    f = lambda t: distill.cubic_schedule(t, warmup=10, end=50, final=0.6)  # noqa: E731
    assert f(0) == 0 and f(10) == 0
    assert f(50) == pytest.approx(0.6) and f(80) == pytest.approx(0.6)
    assert f(30) == pytest.approx(0.6 * (1 - 0.5**3))
    values = [f(t) for t in range(0, 60)]
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_scheduled_shape_shrinks_monotonically_to_the_target():
    cfg = DistillConfig(steps=100, warmup_steps=10, recovery_steps=20, prune_every=7)
    full, target = Shape(256, 4, 64), Shape(128, 2, 24)
    steps = [t for t in range(cfg.steps + 1) if distill.is_prune_step(t, cfg)]
    assert steps[0] == 17 and steps[-1] == 80  # every ΔT after warm-up, and T_end
    shapes = [distill.scheduled_shape(t, full, target, cfg) for t in steps]
    assert shapes[-1] == target
    for a, b in zip(shapes, shapes[1:]):
        assert b.ffn <= a.ffn and b.heads <= a.heads and b.hidden <= a.hidden


def test_target_shape_meets_the_parameter_ratio():
    config = tiny_llama().config
    cfg = DistillConfig(ffn_keep=0.5, heads_keep=0.5)
    shape = distill.target_shape(config, cfg)
    ratio = count_params(resized_config(config, shape))["total"] / count_params(config)["total"]
    assert ratio <= 0.3 and shape.hidden % 8 == 0 and (shape.ffn, shape.heads) == (128, 2)
    wider = resized_config(config, distill.target_shape(config, cfg.model_copy(update={"hidden_multiple": 1})))
    assert count_params(wider)["total"] / count_params(config)["total"] <= 0.3 and wider.hidden_size >= shape.hidden
    with pytest.raises(ValueError, match="target_ratio"):
        distill.target_shape(config, DistillConfig(hidden_keep=1.0))


# ---- pruning and materialisation ---------------------------------------------------------------


@pytest.mark.parametrize("tie,kv_heads", [(True, 4), (False, 2)])
def test_pruning_reaches_the_target_and_materialises_the_same_function(tmp_path, tie, kv_heads):
    from transformers import LlamaForCausalLM

    model = tiny_llama(tie=tie, kv_heads=kv_heads)
    pruner = LlamaPruner(model)
    fake_grads(model)
    pruner.update_importance()
    target = Shape(ffn=100, heads=1, hidden=40)
    assert pruner.prune_to(Shape(180, 2 if kv_heads == 4 else 1, 56)) == Shape(180, 2 if kv_heads == 4 else 1, 56)
    assert pruner.prune_to(target) == target
    x = torch.randint(0, VOCAB, (2, 11))
    with torch.no_grad():
        masked = model(input_ids=x).logits
    small = pruner.materialise().eval()
    c = small.config
    assert (c.intermediate_size, c.num_key_value_heads, c.hidden_size) == (100, 1, 40)
    assert c.num_attention_heads == 4 // kv_heads and c.head_dim == 16
    assert model_params(small) == count_params(c)["total"] < model_params(model)
    with torch.no_grad():
        assert torch.allclose(small(input_ids=x).logits, masked, atol=1e-5)
    small.save_pretrained(tmp_path / "student")
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path / "student").eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=x).logits, masked, atol=1e-5)


def test_pruned_units_stay_pruned_and_importance_ranks_them():
    model = tiny_llama()
    pruner = LlamaPruner(model)
    fake_grads(model)
    # Make FFN neurons 0..9 of layer 0 the least important: zero their gradients.
    for lin in (model.model.layers[0].mlp.gate_proj, model.model.layers[0].mlp.up_proj):
        lin.weight.grad[:10] = 0
    model.model.layers[0].mlp.down_proj.weight.grad[:, :10] = 0
    pruner.update_importance()
    pruner.prune_to(Shape(246, 4, 64))
    assert pruner.masks["ffn"][0, :10].sum() == 0 and pruner.masks["ffn"][0].sum() == 246
    before = pruner.masks["ffn"].clone()
    fake_grads(model, seed=7)
    pruner.update_importance()
    pruner.prune_to(Shape(200, 4, 64))
    assert torch.all(pruner.masks["ffn"] <= before)


# ---- distillation -------------------------------------------------------------------------------


def test_student_starts_as_an_exact_copy(teacher_project):
    _, teacher_dir = teacher_project
    teacher, _ = distill.load_teacher(teacher_dir)
    student = distill.make_student(teacher, "copy", shape_of(teacher.config))
    LlamaPruner(student)  # hooks attached, nothing pruned yet
    x = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(student(input_ids=x).logits, teacher(input_ids=x).logits)


def test_homodistil_prunes_to_the_target_and_saves_a_smaller_model(teacher_project, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    root, teacher_dir = teacher_project
    params = tiny_params(root)
    out = distill.homodistil(params, teacher_dir, tmp_path / "student")
    teacher_cfg = LlamaForCausalLM.from_pretrained(teacher_dir).config
    assert out["shape"] == distill.target_shape(teacher_cfg, params.distill).as_dict()
    assert out["param_ratio"] <= 0.3
    assert out["history"][0]["kl"] == 0 and out["history"][0]["hid"] == 0  # step 0: the copy is exact
    assert out["materialise_max_abs_diff"] < 1e-4
    sizes = [(h["ffn"], h["heads"], h["hidden"]) for h in out["history"]]
    assert sizes[0] == (256, 4, 64) and sizes == sorted(sizes, reverse=True)
    student = LlamaForCausalLM.from_pretrained(tmp_path / "student")
    assert model_params(student) == out["student_params"]["total"]
    assert AutoTokenizer.from_pretrained(tmp_path / "student")("w1 w2")["input_ids"]


def test_plain_distillation_loss_decreases(teacher_project, tmp_path):
    root, teacher_dir = teacher_project
    out = distill.plain_distill(tiny_params(root, steps=30), teacher_dir, tmp_path / "plain", init="scratch")
    losses = [h["loss"] for h in out["history"]]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    assert out["method"] == "plain_scratch" and out["param_ratio"] <= 0.3


def test_resume_restores_masks_and_continues_identically(teacher_project, tmp_path, monkeypatch):
    root, teacher_dir = teacher_project
    params = tiny_params(root)
    reference = distill.homodistil(params, teacher_dir, tmp_path / "uninterrupted")

    class Interrupted(Exception):
        pass

    real_publish = checkpoint.publish

    def publish_then_crash(folder, ckpt_dir, step, *args, **kwargs):
        path = real_publish(folder, ckpt_dir, step, *args, **kwargs)
        if step == 8:
            raise Interrupted
        return path

    monkeypatch.setattr(checkpoint, "publish", publish_then_crash)
    with pytest.raises(Interrupted):
        distill.homodistil(params, teacher_dir, tmp_path / "student")
    monkeypatch.setattr(checkpoint, "publish", real_publish)
    saved = torch.load(tmp_path / "student_ckpt" / "step_8" / checkpoint.STATE, weights_only=True)["pruner"]
    assert saved["masks"]["ffn"].sum() < saved["masks"]["ffn"].numel()  # pruning had started

    loaded = {}
    real_load = LlamaPruner.load_state_dict

    def spy(self, state):
        real_load(self, state)
        loaded.update({k: v.clone() for k, v in self.masks.items()})

    monkeypatch.setattr(LlamaPruner, "load_state_dict", spy)
    resumed = distill.homodistil(params, teacher_dir, tmp_path / "student")
    assert resumed["resumed_from"] == 8
    for kind in ("ffn", "heads", "hidden"):
        assert torch.equal(loaded[kind], saved["masks"][kind])
    assert resumed["shape"] == reference["shape"]
    assert resumed["history"][-1]["loss"] == pytest.approx(reference["history"][-1]["loss"], rel=1e-5)
