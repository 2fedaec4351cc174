"""Contrastive fine-tuning (LARR stage 2): InfoNCE, a tiny training run, retrieval metrics, the
encoder's save/load and its MLflow pyfunc registration, on a tiny Llama and a BPE tokenizer built here."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from components.llm.contrastive import (
    batch_indices, checkpoint_dir, contrastive_step, cpu_threads, evaluate, false_negatives, finetune,
    TeacherTerm, mixed_loss, relation_kl, retrieval_metrics, strategy_loss,
)
from components.layers import info_nce
from components.llm.encoder import TextEncoder
from components.llm.pairs import STRATEGIES, by_strategy, load_pairs
from tests.factories import build_tiny_lm, make_tiny_params, tiny_root

pytestmark = pytest.mark.slow  # trains a tiny LM and writes MLflow runs

TRAINING = dict(steps=24, batch_size=8, max_length=96, lr=1e-3, head_lr=3e-3, warmup_steps=2,
                checkpoint_every=12, log_every=4, head_hidden=64, embed_dim=32, temperature=0.1, cpu_threads=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on shared cores torch's spinning workers cost a lot."""
    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, mined pairs, a tiny 'pretrained' LM and one fine-tuning run, shared by the tests."""
    root = tmp_path_factory.mktemp("contrastive")
    params = make_tiny_params(tiny_root(tmp_path_factory), **TRAINING)
    pairs = load_pairs(params)
    texts = sorted({t for df in pairs.values() for t in pd.concat([df["anchor_text"], df["positive_text"]])})
    model_dir = root / "pretrained"
    build_tiny_lm(texts, model_dir)
    train = by_strategy(pairs, "train")
    fit = finetune(params, model_dir, root / "encoder", pairs=train)
    return params, pairs, model_dir, root / "encoder", fit


def fixed_batch_loss(encoder: TextEncoder, params, train: dict) -> float:
    cfg = params.contrastive
    encoder.eval()
    with torch.no_grad():
        return sum(strategy_loss(encoder, encoder, df, batch_indices(len(df), cfg.batch_size, 0, 0, k),
                                 cfg.temperature).item() for k, df in enumerate(train.values()))


def test_info_nce_ignores_duplicate_entities_as_negatives():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), dim=-1)
    p = a.clone()
    # rows 0 and 1 share their positive PoI: without masking each is pushed from the other's copy
    ids_a, ids_p = np.array(["u1", "u2", "u3"]), np.array(["p1", "p1", "p2"])
    plain = info_nce(a, p, 0.1)
    masked = info_nce(a, p, 0.1, exclude=torch.as_tensor(false_negatives(ids_a, ids_p)))
    assert masked < 1e-3 < plain
    assert false_negatives(ids_a, ids_p).tolist() == [[False, True, False], [True, False, False],
                                                      [False, False, False]]


def test_batch_negatives_span_every_strategy(world):
    """contrastive.negatives: batch — one InfoNCE over all strategies' pairs of the step: the same as
    info_nce over the concatenated pairs, each pair's negatives drawn from every strategy; a weight of 0
    takes a strategy's pairs out of the loss (they still serve as negatives)."""
    params, pairs, model_dir, *_ = world
    train = {s: df.reset_index(drop=True) for s, df in by_strategy(pairs, "train").items()}
    enc = TextEncoder.from_backbone(model_dir, params.contrastive, seed=0).eval()
    idx = {s: batch_indices(len(df), 4, 0, 0, k) for k, (s, df) in enumerate(train.items())}
    with torch.no_grad():
        total, parts = mixed_loss(enc, enc, train, idx, 0.1, True, {s: 1.0 for s in train})
        rows = pd.concat([train[s].iloc[i] for s, i in idx.items()], ignore_index=True)
        a, p = enc.embed(rows["anchor_text"].tolist()), enc.embed(rows["positive_text"].tolist())
        excl = torch.as_tensor(false_negatives(rows["anchor_id"].to_numpy(), rows["positive_id"].to_numpy()))
        assert total.item() == pytest.approx(info_nce(a, p, 0.1, exclude=excl).item(), rel=1e-5)
        assert set(parts) == set(train) and all(np.isfinite(v) for v in parts.values())
        first = next(iter(train))
        dropped, _ = mixed_loss(enc, enc, train, idx, 0.1, True, {s: float(s != first) for s in train})
        assert dropped.item() != pytest.approx(total.item())


def test_relation_kl_matches_geometry_not_coordinates():
    """The teacher term compares in-batch similarity distributions: zero for the same geometry (a
    rotated copy, or a wider teacher holding the same vectors padded with zeros), positive otherwise."""
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    rot, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    wide = torch.cat([z, torch.zeros(6, 12)], dim=-1)
    assert relation_kl(z, z @ rot, 0.1).item() == pytest.approx(0.0, abs=1e-5)
    assert relation_kl(z, wide, 0.1).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.nn.functional.normalize(torch.randn(6, 4, generator=g), dim=-1)
    assert relation_kl(z, other, 0.1).item() > 0.01
    z.requires_grad_(True)
    relation_kl(z, other, 0.1).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_student_learns_from_the_teacher_encoder(world, tmp_path):
    """contrastive.teacher_weight > 0 with a teacher encoder: the run logs the teacher term, which falls,
    and its encoder differs from the run without the teacher; weight 0 ignores the teacher."""
    params, pairs, model_dir, enc_dir, plain_fit = world
    train = by_strategy(pairs, "train")
    cfg = params.contrastive.model_copy(update={"teacher_weight": 1.0})
    taught = params.model_copy(update={"contrastive": cfg})
    fit = finetune(taught, model_dir, tmp_path / "taught", pairs=train, teacher_dir=enc_dir)
    assert fit["loss.teacher"] < fit["loss.teacher_first"]
    ids = TextEncoder.load(enc_dir).tokenize(["<user> a text </user>"])
    with torch.no_grad():
        a = TextEncoder.load(tmp_path / "taught")(**ids)
        b = TextEncoder.load(enc_dir)(**ids)
    assert not torch.allclose(a, b)
    # the term itself: weight x relation_kl of the student's and the teacher's embeddings of the texts
    texts = train[STRATEGIES[0]]["anchor_text"].head(5).tolist()
    term = TeacherTerm(TextEncoder.load(enc_dir), 2.0, 0.1)
    student = TextEncoder.load(tmp_path / "taught")
    with torch.no_grad():
        zs, zt = student.embed(texts), term.encoder.embed(texts)
        assert term(texts, zs).item() == pytest.approx(2.0 * relation_kl(zs, zt, 0.1).item(), rel=1e-5)
    # the frozen teacher embeds each text once; cached and fresh texts mixed give what a fresh forward gives
    assert list(term.cache) == list(dict.fromkeys(texts))
    mixed = texts[::-1][:3] + train[STRATEGIES[0]]["positive_text"].head(2).tolist()
    with torch.no_grad():
        np.testing.assert_allclose(term.embed(mixed).numpy(), term.encoder.embed(mixed).numpy(), atol=1e-5)
    assert set(term.cache) == set(texts) | set(mixed)
    # weight 0: no teacher term in the log, whatever teacher_dir says
    off = finetune(params, model_dir, tmp_path / "off", pairs=train, teacher_dir=enc_dir)
    assert "loss.teacher" not in off and off["loss"] == pytest.approx(plain_fit["loss"], rel=1e-6)


def test_retrieval_metrics_rank_and_ties():
    q = np.eye(3)
    assert retrieval_metrics(q, np.eye(3), np.arange(3), np.zeros((3, 3), bool), k=1) == (1.0, 1.0)
    # a constant embedding ties everything: scored like chance, not like a perfect model
    recall, mrr = retrieval_metrics(np.ones((3, 2)), np.ones((3, 2)), np.arange(3), np.zeros((3, 3), bool), k=1)
    assert recall == 0.0 and mrr == pytest.approx(0.5)


def test_infonce_loss_decreases(world):
    params, pairs, model_dir, enc_dir, fit = world
    train = by_strategy(pairs, "train")
    before = fixed_batch_loss(TextEncoder.from_backbone(model_dir, params.contrastive, seed=params.seed),
                              params, train)
    after = fixed_batch_loss(TextEncoder.load(enc_dir), params, train)
    assert after < before
    assert fit["loss"] < fit["loss_first"]
    assert set(STRATEGIES) <= {k.split(".")[1] for k in fit if k.startswith("loss.")}


def test_finetuned_encoder_beats_random_on_heldout_pairs(world):
    params, pairs, model_dir, enc_dir, _ = world
    untuned = TextEncoder.from_backbone(model_dir, params.contrastive, head=False)
    scores = evaluate(TextEncoder.load(enc_dir), by_strategy(pairs, "heldout"), untuned=untuned, k=10)
    for model in ("finetuned", "untuned", "random"):  # every strategy scored; "mean" is their mean
        for m in ("recall_at_10", "mrr"):
            per = [scores[f"{s}.{model}.{m}"] for s in STRATEGIES]
            assert scores[f"mean.{model}.{m}"] == pytest.approx(np.mean(per))
    assert scores["mean.finetuned.recall_at_10"] > scores["mean.random.recall_at_10"]
    assert scores["mean.finetuned.mrr"] > scores["mean.random.mrr"]
    # the shortcut-free subset is reported beside the overall figure, over fewer (or as many) queries
    for s in STRATEGIES:
        assert 0 < scores[f"{s}.clean_queries"] <= scores[f"{s}.queries"]
        if scores[f"{s}.clean_queries"] == scores[f"{s}.queries"]:  # the same queries: the same figure
            assert scores[f"{s}.clean.finetuned.mrr"] == pytest.approx(scores[f"{s}.finetuned.mrr"])
    # the tuned encoder also beats random vectors where no identifying span gives the pair away
    assert scores["mean.clean.finetuned.mrr"] > scores["mean.clean.random.mrr"]


def test_encoder_save_load_roundtrip_is_exact(world, tmp_path):
    params, pairs, _, enc_dir, _ = world
    texts = pairs["user_poi_heldout"]["anchor_text"].tolist()[:5] + pairs["poi_poi_heldout"]["anchor_text"].tolist()[:5]
    enc = TextEncoder.load(enc_dir)
    emb = enc.encode(texts, batch_size=4)
    assert emb.shape == (10, params.contrastive.embed_dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    enc.save(tmp_path / "copy")
    np.testing.assert_array_equal(TextEncoder.load(tmp_path / "copy").encode(texts, batch_size=4), emb)
    # batching by length must not change an embedding beyond float noise
    np.testing.assert_allclose(enc.encode(texts[::-1], batch_size=3)[::-1], emb, atol=1e-5)


def test_rerun_resumes_from_the_last_checkpoint(world):
    params, pairs, model_dir, enc_dir, _ = world
    again = finetune(params, model_dir, enc_dir, pairs=by_strategy(pairs, "train"))
    assert again["resumed_from"] == params.contrastive.steps
    newest = checkpoint_dir(enc_dir) / f"step_{params.contrastive.steps}"
    assert json.loads((newest / "manifest.json").read_text())["step"] == params.contrastive.steps


def test_step_registers_a_pyfunc_that_reproduces_the_embeddings(world, tmp_path, monkeypatch):
    import mlflow

    from components import tracking

    params, pairs, model_dir, _, _ = world
    # a tmp SQLite store; artifacts go beside the tmp project (tracking.configure: root/mlartifacts)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    previous = mlflow.get_tracking_uri()
    try:
        short = params.model_copy(update={"contrastive": params.contrastive.model_copy(update={"steps": 2})})
        run_id = tracking.start_run(short, "contrastive-test")
        metrics = contrastive_step(short, model_dir, tmp_path / "enc", run_id=run_id, register_as="scene-encoder-test")
        assert metrics["registered_version"] == 1
        assert "eval.mean.untuned.mrr" in metrics and (tmp_path / "enc" / "metrics.json").exists()
        client = mlflow.MlflowClient(tracking.tracking_uri(short))
        assert client.get_run(run_id).info.status == "RUNNING"  # the caller still owns its run
        # The one registration path: lineage tags and the floor (random vectors, the untuned backbone).
        version = client.get_model_version("scene-encoder-test", "1")
        assert version.tags["model_family"] == "encoder" and version.tags["params_hash"]
        floor = max(metrics["eval.mean.untuned.mrr"], metrics["eval.mean.random.mrr"]) + short.contrastive.promotion_floor_margin
        clears = metrics["eval.mean.finetuned.mrr"] > floor
        assert metrics["promoted"] == int(clears)
        assert version.aliases == (["champion"] if clears else ["challenger"])

        texts = pairs["user_poi_heldout"]["anchor_text"].tolist()[:4] + ["<scene> <weather> rainy </scene>"]
        served = mlflow.pyfunc.load_model("models:/scene-encoder-test/1")
        got = np.asarray(served.predict(pd.DataFrame({"text": texts})))
        np.testing.assert_allclose(got, TextEncoder.load(tmp_path / "enc").encode(texts), atol=1e-5)
    finally:
        mlflow.set_tracking_uri(previous)


def test_student_rate_and_steps_replace_the_teachers_only_when_set(world):
    from components.llm.contrastive import for_student

    params, *_ = world
    assert for_student(params) is params  # student_lr None: the teacher's rate
    tuned = params.model_copy(update={"contrastive": params.contrastive.model_copy(update={"student_lr": 5e-4})})
    student = for_student(tuned)
    assert student.contrastive.lr == 5e-4 and student.contrastive.head_lr == params.contrastive.head_lr
    assert tuned.contrastive.lr == params.contrastive.lr  # the original is untouched
    # student_steps: more (cheaper) steps for the student, its warm-up keeping the same share
    longer = params.model_copy(update={"contrastive": params.contrastive.model_copy(
        update={"steps": 40, "warmup_steps": 4, "student_steps": 120})})
    student = for_student(longer)
    assert (student.contrastive.steps, student.contrastive.warmup_steps, student.contrastive.lr) == (120, 12, longer.contrastive.lr)
    assert longer.contrastive.steps == 40
