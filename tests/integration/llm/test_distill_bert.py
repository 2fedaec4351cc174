"""HomoDistil on an encoder (HomoBERT): pruning a BertForMaskedLM, materialising it, and the three
distill.schedule choices, on a tiny BERT built here (nothing downloaded)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from components.config import DistillConfig, Params
from tests.factories import fake_grads, one_torch_thread  # noqa: F401 - one_torch_thread: an autouse fixture
from components.llm import distill
from components.llm.model import MASKED, lm_objective
from components.llm.pruning import (
    Pruner, Shape, count_params, model_params, resized_config, shape_of, slice_bert, structure_sums,
)

WORDS = [f"w{i}" for i in range(200)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert(tie: bool = True, seed: int = 0, vocab: int = len(SPECIALS) + len(WORDS)):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, tie_word_embeddings=tie)
    return BertForMaskedLM(cfg).eval()


@pytest.fixture(scope="module")
def bert_project(tmp_path_factory):
    """A project root with llm_dir/corpus/{train,heldout}.txt and a tiny BERT teacher with its MLM head
    and a tokenizer whose bos/eos are [CLS]/[SEP] (as pretraining saves an encoder's)."""
    from transformers import BertTokenizerFast

    root = tmp_path_factory.mktemp("distill_bert")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(SPECIALS + WORDS)}, bos_token="[CLS]",
                            eos_token="[SEP]")
    teacher_dir = root / "data" / "llm" / "pretrained"
    tiny_bert(vocab=len(tok)).save_pretrained(teacher_dir)
    tok.save_pretrained(teacher_dir)
    rng = np.random.default_rng(0)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()
    corpus = root / "data" / "llm" / "corpus"
    corpus.mkdir(parents=True)
    for name, n in (("train.txt", 200), ("heldout.txt", 30)):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(5, 20), p=p)) for _ in range(n)]
        (corpus / name).write_text("\n".join(lines) + "\n")
    return root, teacher_dir


def tiny_params(root, **overrides) -> Params:
    kw = dict(steps=8, warmup_steps=1, recovery_steps=2, prune_every=2, seq_len=16, batch_size=4, lr=3e-3,
              lr_warmup_steps=1, checkpoint_every=8, log_every=1, eval_blocks=4, mixed_precision="no",
              target_ratio=0.5)
    return Params(root=root, distill=DistillConfig(**{**kw, **overrides}))


# ---- structures and materialisation ------------------------------------------------------------


def test_bert_structure_sums_count_every_weight_of_a_structure_once():
    model = tiny_bert(tie=True)
    c = model.config
    d, f, hd = c.hidden_size, c.intermediate_size, c.hidden_size // c.num_attention_heads
    sums = structure_sums(model, {n: torch.ones_like(p) for n, p in model.named_parameters()})
    assert torch.all(sums["ffn"] == 2 * d + 1)  # intermediate row + bias, output column
    assert torch.all(sums["heads"] == 3 * hd * (d + 1) + hd * d)  # q/k/v rows + biases, output columns
    tables = c.vocab_size + c.max_position_embeddings + c.type_vocab_size  # decoder tied: counted once
    per_layer = 3 * d + (d + 1) + 2 + f + (f + 1) + 2
    head = (2 * d + 1) + 2  # transform row, column, bias; its LayerNorm
    assert torch.all(sums["hidden"] == tables + 2 + head + c.num_hidden_layers * per_layer)


@pytest.mark.parametrize("tie", [True, False])
def test_bert_pruning_materialises_the_same_function(tmp_path, tie):
    from transformers import AutoModelForMaskedLM

    model = tiny_bert(tie=tie)
    assert model_params(model) == count_params(model.config)["total"]
    pruner = Pruner(model)
    fake_grads(model)
    pruner.update_importance()
    pruner.prune_to(Shape(48, 3, 28))  # an intermediate shape need not be a BERT config
    assert pruner.prune_to(Shape(40, 2, 16)) == Shape(40, 2, 16)
    x = torch.randint(0, model.config.vocab_size, (2, 11))
    with torch.no_grad():
        masked = model(input_ids=x, output_hidden_states=True)
    small = pruner.materialise().eval()
    c = small.config
    assert (c.intermediate_size, c.num_attention_heads, c.hidden_size) == (40, 2, 16)
    assert model_params(small) == count_params(c)["total"] < model_params(model)
    kept = pruner.kept_indices()["hidden"]
    with torch.no_grad():
        out = small(input_ids=x, output_hidden_states=True)
    torch.testing.assert_close(out.logits, masked.logits, atol=1e-5, rtol=1e-5)
    for hs, hm in zip(out.hidden_states, masked.hidden_states):  # the pruned channels carry zeros
        torch.testing.assert_close(hs, hm[..., kept], atol=1e-5, rtol=1e-5)
        assert hm[..., pruner.masks["hidden"] == 0].abs().max() == 0
    small.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "student").eval()
    assert lm_objective(reloaded.config) == MASKED
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=x).logits, masked.logits, atol=1e-5, rtol=1e-5)


def test_bert_slice_refuses_a_width_its_config_cannot_describe():
    model = tiny_bert()
    with pytest.raises(ValueError, match="head size"):
        slice_bert(model, torch.arange(20), [torch.arange(2)] * 2, [torch.arange(10)] * 2)


def test_bert_target_shape_ties_hidden_to_heads():
    config = tiny_bert().config
    for ratio in (0.25, 0.5):
        shape = distill.target_shape(config, DistillConfig(target_ratio=ratio))
        assert shape.hidden == shape.heads * 8 and shape.ffn == 16
        assert count_params(resized_config(config, shape))["total"] / count_params(config)["total"] <= ratio
    assert distill.target_shape(config, DistillConfig(target_ratio=0.5, hidden_keep=0.25)).hidden == 8


# ---- distillation -------------------------------------------------------------------------------


def test_bert_student_starts_as_an_exact_copy(bert_project):
    _, teacher_dir = bert_project
    teacher, tok = distill.load_teacher(teacher_dir)
    assert type(teacher).__name__ == "BertForMaskedLM"
    student = distill.make_student(teacher, "copy", shape_of(teacher.config)).eval()
    Pruner(student)
    x = torch.randint(0, len(tok), (2, 9))
    with torch.no_grad():
        assert torch.equal(student(input_ids=x).logits, teacher(input_ids=x).logits)


def test_homodistil_on_bert_reaches_the_target_shape(bert_project, tmp_path):
    from transformers import AutoModelForMaskedLM

    root, teacher_dir = bert_project
    params = tiny_params(root)
    out = distill.homodistil(params, teacher_dir, tmp_path / "student")
    teacher_cfg = AutoModelForMaskedLM.from_pretrained(teacher_dir).config
    target = distill.target_shape(teacher_cfg, params.distill)
    assert out["shape"] == target.as_dict() and out["param_ratio"] <= 0.5
    assert out["materialise_max_abs_diff"] < 1e-4
    sizes = [(h["ffn"], h["heads"], h["hidden"]) for h in out["history"]]
    assert sizes[0] == (64, 4, 32) and sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
    assert all(math.isfinite(h[k]) for h in out["history"] for k in ("loss", "lm", "kl", "hid"))
    assert math.isfinite(out["heldout_ppl"]) and math.isfinite(out["teacher_heldout_ppl"])
    student = AutoModelForMaskedLM.from_pretrained(tmp_path / "student")
    assert model_params(student) == out["student_params"]["total"]


def test_three_schedules_give_students_of_one_size(bert_project, tmp_path):
    root, teacher_dir = bert_project
    outs = {s: distill.homodistil(tiny_params(root, schedule=s, steps=5), teacher_dir, tmp_path / s)
            for s in ("homotopic", "oneshot", "none")}
    assert [o["method"] for o in outs.values()] == ["homodistil", "oneshot", "plain_truncate"]
    assert len({tuple(sorted(o["shape"].items())) for o in outs.values()}) == 1
    assert len({o["student_params"]["total"] for o in outs.values()}) == 1
    for o in outs.values():
        assert all(math.isfinite(h["loss"]) for h in o["history"]) and math.isfinite(o["heldout_ppl"])
    # Non-homotopic students are the final shape from step 0; HomoDistil's starts full.
    assert outs["oneshot"]["history"][0]["hidden"] == outs["oneshot"]["shape"]["hidden"]
    assert outs["homotopic"]["history"][0]["hidden"] == 32


def test_oneshot_keeps_the_teachers_highest_scoring_units(bert_project):
    import copy

    _, teacher_dir = bert_project
    teacher, _ = distill.load_teacher(teacher_dir)
    x = torch.randint(5, 200, (4, 16))
    labels = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.3, x, -100)
    cfg = DistillConfig(beta1=0.5, beta2=0.5)
    target = Shape(16, 2, 16)
    student, kept = distill.oneshot_student(teacher, target, lambda step: (x, labels), 1, cfg)
    assert shape_of(student.config) == target and student.training
    # The same PLATON score computed apart: the kept channels are its top 16, not the first 16.
    probe_model = copy.deepcopy(teacher).requires_grad_(True)
    probe = Pruner(probe_model, 0.5, 0.5)
    probe_model(input_ids=x, labels=labels).loss.backward()
    probe.update_importance()
    top = probe.scores()["hidden"].topk(16).indices.sort().values
    assert torch.equal(kept, top) and not torch.equal(kept, torch.arange(16))


def test_encoder_teacher_swaps_in_the_fine_tuned_body(bert_project, tmp_path):
    """distill.teacher: encoder — the teacher is the pretrained MLM model with the contrastive encoder's
    body (its MLM head kept); the student is distilled from it; a body of another shape is refused."""
    from transformers import AutoModel, BertConfig, BertModel

    root, teacher_dir = bert_project
    body = AutoModel.from_pretrained(teacher_dir)  # as TextEncoder saves backbone/: a BertModel, pooler included
    with torch.no_grad():
        for p in body.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))  # "fine-tuned"
    body.save_pretrained(tmp_path / "encoder" / "backbone")
    plain, _ = distill.load_teacher(teacher_dir)
    swapped, _ = distill.load_teacher(teacher_dir, tmp_path / "encoder" / "backbone")
    for name, value in body.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(swapped.base_model.state_dict()[name], value), name
    assert torch.equal(swapped.cls.predictions.decoder.bias, plain.cls.predictions.decoder.bias)
    x = torch.randint(5, 200, (2, 9))
    with torch.no_grad():
        assert not torch.allclose(swapped(input_ids=x).logits, plain(input_ids=x).logits)
    out = distill.homodistil(tiny_params(root, steps=4, teacher="encoder"), teacher_dir, tmp_path / "student",
                             encoder_dir=tmp_path / "encoder")
    assert out["teacher"] == "encoder" and math.isfinite(out["heldout_ppl"])
    # teacher: pretrained ignores the encoder; encoder without one is a clear error
    assert distill.body_dir_for(DistillConfig(), tmp_path / "encoder") is None
    with pytest.raises(ValueError, match="no teacher encoder"):
        distill.body_dir_for(DistillConfig(teacher="encoder"), None)
    # another architecture's body: a clear error naming the folder, not a silent partial load
    BertModel(BertConfig(vocab_size=205, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="other.*does not fit"):
        distill.load_teacher(teacher_dir, tmp_path / "other")
