"""Continual pretraining (components/llm/pretrain.py, model.py) on a 2-layer, hidden-32 Llama."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from components.config import LLMConfig, ParamsError, load_params
from components.llm.corpus import build_corpus
from components.llm.model import build_model, count_parameters
from components.llm.pretrain import BlockOrder, WarmupCosine, pretrain
from components.llm.text import SPECIAL_TOKENS
from components.training.checkpoint import check
from tests.factories import make_llm_project

pytestmark = pytest.mark.slow  # trains a tiny LM and writes MLflow runs


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _twin(root: Path, name: str) -> Path:
    """A copy of ``root``'s project sharing its corpus and tokenizer, with its own checkpoints and model."""
    twin = root.parent / name
    skip = shutil.ignore_patterns("pretrain_ckpt", "pretrained", "mlflow.db", "mlartifacts")
    shutil.copytree(root, twin, ignore=skip)
    return twin


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_llm_project(tmp_path_factory.mktemp("pretrain") / "project")
    build_corpus(load_params(root / "params.yaml"))
    return root


@pytest.fixture(scope="module")
def full_run(project):
    """One uninterrupted run, logged to MLflow; (params, metrics, run_id)."""
    from components import tracking

    params = load_params(project / "params.yaml")
    with tracking.tracked_run(params, "pretrain-test") as run_id:
        metrics = pretrain(params, run_id=run_id)
    return params, metrics, run_id


def test_loss_goes_down_and_perplexity_drops(full_run):
    params, m, _ = full_run
    assert m["steps"] == params.llm.steps and m["resumed_from"] == 0
    assert m["loss_last10"] < m["loss_first"] - 1.0  # nats: from uniform over ~400 tokens to well below
    assert m["heldout_ppl_after"] < 0.5 * m["heldout_ppl_before"]
    assert m["tokens_per_s"] > 0 and m["params"] > 0
    out = params.path("llm_dir") / "pretrained"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_special_token_embeddings_are_trained(full_run):
    """The markers that occur in the corpus moved far more than weight decay alone would move them."""
    from accelerate.utils import set_seed
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params, _, _ = full_run
    out = params.path("llm_dir") / "pretrained"
    tok = AutoTokenizer.from_pretrained(str(out))
    set_seed(params.seed)  # what pretrain does before building: the same initial weights
    init = build_model(params.llm, tok).get_input_embeddings().weight.detach()
    trained = AutoModelForCausalLM.from_pretrained(str(out)).get_input_embeddings().weight.detach()
    corpus = (params.path("llm_dir") / "corpus" / "train.txt").read_text()
    used = [t for t in SPECIAL_TOKENS if t in corpus]
    assert len(used) >= len(SPECIAL_TOKENS) - 1  # all but <agg> (stage 3's token)
    ids = tok.convert_tokens_to_ids(used)
    change = (trained[ids] - init[ids]).norm(dim=1) / init[ids].norm(dim=1)
    assert bool((change > 0.2).all()), dict(zip(used, change.tolist()))


def test_mlflow_gets_losses_perplexity_and_model(full_run):
    import mlflow

    from components import tracking

    params, m, run_id = full_run
    client = mlflow.MlflowClient(tracking.tracking_uri(params))
    losses = client.get_metric_history(run_id, "pretrain.loss")
    assert [x.step for x in sorted(losses, key=lambda x: x.step)] == list(range(1, params.llm.steps + 1))
    ppl = client.get_metric_history(run_id, "pretrain.heldout_ppl")
    assert {x.step for x in ppl} == {0, 10, 20, 30}
    assert client.get_metric_history(run_id, "pretrain.tokens_per_s")
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "pretrained")}
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= names


def test_interrupted_run_resumes_to_the_same_weights(full_run, project):
    params, full, _ = full_run
    twin = load_params(_twin(project, "interrupted") / "params.yaml")
    k = 7  # not a multiple of checkpoint_every: the stop itself must leave a checkpoint
    first = pretrain(twin, max_steps_this_run=k)
    assert first["steps"] == k and not (twin.path("llm_dir") / "pretrained").exists()
    saved = twin.path("llm_dir") / "pretrain_ckpt" / f"step_{k}"
    assert check(saved) is None and (saved / "model.safetensors").exists()  # the one format, intact
    second = pretrain(twin)
    assert second["resumed_from"] == k and second["steps_this_run"] == params.llm.steps - k
    assert second["heldout_ppl_before"] == pytest.approx(full["heldout_ppl_before"])
    assert second["loss"] == pytest.approx(full["loss"], rel=1e-5)
    a, b = _weights(params.path("llm_dir") / "pretrained"), _weights(twin.path("llm_dir") / "pretrained")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-5, atol=1e-6), name
    # Once finished, another call has nothing left to train: it re-evaluates and re-saves.
    third = pretrain(twin)
    assert third["resumed_from"] == params.llm.steps and third["steps_this_run"] == 0
    assert third["heldout_ppl_after"] == pytest.approx(full["heldout_ppl_after"], rel=1e-5)


def test_changed_config_starts_over(project):
    root = _twin(project, "changed")
    first = pretrain(load_params(root / "params.yaml"), max_steps_this_run=5)
    assert first["steps"] == 5
    again = pretrain(load_params(root / "params.yaml", overrides={"llm": {"steps": 8, "lr": 1e-3}}))
    assert again["resumed_from"] == 0 and again["steps"] == 8


def test_base_model_gets_special_tokens_and_resized_embeddings(project, tmp_path):
    """llm.base_model: the base's own tokenizer plus our markers; its embeddings grow to match."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    base = tmp_path / "base"
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(["noodles and rice on a rainy day"] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    base_tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>")
    base_tok.save_pretrained(str(base))
    LlamaForCausalLM(LlamaConfig(vocab_size=len(base_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                 tie_word_embeddings=False)).save_pretrained(str(base))

    root = _twin(project, "based")
    shutil.rmtree(root / "data" / "llm")
    params = load_params(root / "params.yaml", overrides={"llm": {"base_model": str(base), "steps": 4}})
    counts = build_corpus(params)
    assert counts["vocab"] == len(base_tok) + len(SPECIAL_TOKENS) + 1  # + a pad token
    m = pretrain(params)
    assert m["loss"] < m["loss_first"]
    out = params.path("llm_dir") / "pretrained"
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = PreTrainedTokenizerFast.from_pretrained(str(out))
    assert model.get_input_embeddings().num_embeddings == len(tok) == counts["vocab"]
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1  # the base's shape, not ours
    assert all(len(tok.encode(t, add_special_tokens=False)) == 1 for t in SPECIAL_TOKENS)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token is not None


def test_block_order_and_schedule():
    order = BlockOrder(n_blocks=10, batch_size=4, seed=0)
    stream = np.concatenate([order.batch(s) for s in range(5)])  # two whole epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert np.array_equal(BlockOrder(10, 4, 0).batch(3), order.batch(3))  # a pure function of the step
    sched = WarmupCosine(warmup=4, steps=20, min_ratio=0.1)
    lrs = [sched(s) for s in range(21)]
    assert lrs[0] == pytest.approx(0.2) and max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(lrs[:4], lrs[1:5])) and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_model_follows_config():
    tok = type("Tok", (), {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "__len__": lambda s: 500})()
    cfg = LLMConfig(hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=128)
    model = build_model(cfg, tok)
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (64, 3, 4, 2)
    assert c.vocab_size == 500 and c.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    # tied: the embedding matrix is counted once
    blocks = 3 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 2 * 64)
    assert count_parameters(model) == 500 * 64 + blocks + 64


@pytest.mark.parametrize("bad, msg", [
    ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
    ({"num_heads": 4, "num_kv_heads": 3}, "divisible by num_kv_heads"),
    ({"seq_len": 1024, "max_position": 512}, "exceeds max_position"),
    ({"warmup_steps": 200, "steps": 100}, "fewer than steps"),
    ({"adam_betas": [0.9, 1.5]}, "betas"),
    ({"heldout_fraction": 0.0}, "greater than 0"),
])
def test_config_validation(tmp_path, bad, msg):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"llm": bad}))
    with pytest.raises(ParamsError, match=msg):
        load_params(tmp_path / "params.yaml")
