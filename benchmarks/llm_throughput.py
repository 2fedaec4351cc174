"""How fast is our pretraining loop? Tokens/s of components/llm/pretrain.py against the plain HF Trainer.

    python benchmarks/llm_throughput.py [--params params.yaml] [--steps 40] [--repeat 3] [--student DIR]

Needs the project's corpus and tokenizer (``llm_dir/corpus``, ``llm_dir/tokenizer``: build_corpus; built
here from the curated data when missing). Works in a temporary copy, so the project's checkpoints and
pretrained model are left alone. Times, on the same model (same seed, so the same initial weights),
the same packed blocks and the same settings (global batch, seq_len, steps, AdamW betas and decay,
warm-up + cosine, clipping, precision, CPU threads):
  ours         pretrain(): train_seconds (the loop; held-out evaluation and checkpoints excluded)
  hf_trainer   transformers.Trainer.train() wall time, no evaluation, no saving, no reporting
Runs are interleaved and the best of ``--repeat`` is kept, so load on a shared machine hits both alike.
Prints tokens/s and the ratio; writes reports/benchmarks/llm_throughput.json.

The second table, encode throughput (texts/s of a forward pass to the last hidden state), compares the
pretrained teacher with the HomoDistil student: ``--student DIR`` (a distilled model), or else a
student of the distill target shape cut from the teacher (components/llm/distill.py) — speed depends
on the shape, not on the weights.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from components.config import ParamsError, load_params  # noqa: E402
from report import save_report  # noqa: E402  (benchmarks/report.py)


def bench_params(params, work: Path, steps: int):
    """The project's params pointed at ``work`` (a copy of corpus + tokenizer), evaluation and checkpoints
    pushed past the end (pretrain still evaluates and saves once at the last step, outside its timing)."""
    llm = params.path("llm_dir")
    for name in ("corpus", "tokenizer"):
        shutil.copytree(llm / name, work / name, dirs_exist_ok=True)
    warmup = min(params.llm.warmup_steps, steps - 1)
    return params.model_copy(update={
        "paths": params.paths.model_copy(update={"llm_dir": str(work)}),
        "llm": params.llm.model_copy(update={
            "steps": steps, "warmup_steps": warmup, "eval_every": 10**9, "checkpoint_every": 10**9,
        }),
    })


def run_ours(params) -> dict:
    from components.llm.pretrain import pretrain

    m = pretrain(params, fresh=True)
    return {"seconds": m["train_seconds"], "tokens": m["tokens_trained"], "mean_loss": m["loss_mean"]}


def run_trainer(params) -> dict:
    """The same training with the stock Trainer: its sampler, its optimizer and scheduler set up from
    the same hyper-parameters."""
    from accelerate.utils import set_seed
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from components.llm.corpus import encode_documents, read_lines
    from components.llm.model import build_model
    from components.llm.pretrain import pack

    cfg = params.llm
    llm = params.path("llm_dir")
    tok = AutoTokenizer.from_pretrained(str(llm / "tokenizer"))
    blocks = pack(encode_documents(tok, read_lines(llm / "corpus" / "train.txt")), cfg.seq_len)
    set_seed(params.seed)
    model = build_model(cfg, tok, root=params.root)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self):
            return len(blocks)

        def __getitem__(self, i):
            return {"input_ids": blocks[i], "labels": blocks[i]}

    cuda = torch.cuda.is_available()
    bf16 = cuda and cfg.mixed_precision in ("auto", "bf16") and torch.cuda.is_bf16_supported()
    args = TrainingArguments(
        output_dir=str(llm / "hf_trainer"), per_device_train_batch_size=cfg.batch_size, max_steps=cfg.steps,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
        adam_beta1=cfg.adam_betas[0], adam_beta2=cfg.adam_betas[1], max_grad_norm=cfg.grad_clip or 1e9,
        optim="adamw_torch_fused",  # what pretrain() uses (and the Trainer's default)
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        logging_steps=10**9, save_strategy="no", report_to="none", disable_tqdm=True, seed=params.seed,
        dataloader_num_workers=0, use_cpu=not cuda, bf16=bf16,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Blocks())
    t = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "tokens": cfg.steps * cfg.batch_size * cfg.seq_len, "mean_loss": out.training_loss}


# ---------------------------------------------------------------------------------------------
# Encode throughput: teacher vs student (the HomoDistil engineer's hook)
# ---------------------------------------------------------------------------------------------


def encode_throughput(model_dir_a: Path, model_dir_b: Path, texts: list[str], batch_size: int = 32,
                      repeat: int = 3, max_length: int = 256) -> dict:
    """Texts/s of a forward pass to the last hidden state for two saved models (best of ``repeat``,
    interleaved); also their parameter counts. Keys: ``a``, ``b``, ``ratio`` (b's speed / a's)."""
    from transformers import AutoModel, AutoTokenizer

    from components.llm.model import count_parameters

    out = {}
    models = {}
    for key, d in (("a", model_dir_a), ("b", model_dir_b)):
        tok = AutoTokenizer.from_pretrained(str(d))
        model = AutoModel.from_pretrained(str(d), dtype=torch.float32).eval()
        models[key] = (tok, model)
        out[key] = {"dir": str(d), "params": count_parameters(model)}
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]

    @torch.no_grad()
    def once(tok, model):
        for b in batches:
            enc = tok(b, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            model(**enc).last_hidden_state[:, -1]

    for tok, model in models.values():
        once(tok, model)  # warm-up
    best = {k: float("inf") for k in models}
    for _ in range(repeat):
        for k, (tok, model) in models.items():
            t = time.perf_counter()
            once(tok, model)
            best[k] = min(best[k], time.perf_counter() - t)
    for k in models:
        out[k]["texts_per_s"] = round(len(texts) / best[k], 1)
    out["ratio"] = round(out["b"]["texts_per_s"] / out["a"]["texts_per_s"], 2)
    out["param_ratio"] = round(out["b"]["params"] / out["a"]["params"], 3)
    return out


def student_dir(params, teacher_dir: Path, work: Path, given: Path | None) -> tuple[Path | None, str]:
    """A student to time: the one given, else one of the distill target shape cut from the teacher."""
    if given is not None:
        return given, "given"
    if not (ROOT / "components" / "llm" / "distill.py").exists():
        return None, "no components/llm/distill.py"
    from transformers import AutoTokenizer

    from components.llm import distill

    teacher, tok = distill.load_teacher(teacher_dir)
    shape = distill.target_shape(teacher.config, params.distill)
    student = distill.make_student(teacher, "truncate", shape, params.seed)
    out = work / "student_shape"
    student.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(teacher_dir)).save_pretrained(str(out))
    return out, f"distill target shape {shape} (truncated teacher)"


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", default=None, help="parameters file (default: ./params.yaml)")
    ap.add_argument("--steps", type=int, default=40, help="optimizer steps per timed run")
    ap.add_argument("--repeat", type=int, default=3, help="best of N interleaved runs per loop")
    ap.add_argument("--student", type=Path, default=None, help="a distilled student to time against the teacher")
    ap.add_argument("--encode-texts", type=int, default=256, help="held-out documents encoded per timing")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "llm_throughput.json")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as e:
        raise SystemExit(str(e))
    llm = params.path("llm_dir")
    if not (llm / "corpus" / "train.txt").exists() or not (llm / "tokenizer").is_dir():
        if not (params.path("curated_dir") / "pois.parquet").exists():
            raise SystemExit(f"no corpus in {llm} and no curated data in {params.path('curated_dir')}: "
                             "run `scenerec generate && scenerec ingest` first")
        from components.llm.corpus import build_corpus

        print("building the corpus and tokenizer ...")
        build_corpus(params)

    threads = torch.get_num_threads()
    if params.llm.cpu_threads:
        torch.set_num_threads(params.llm.cpu_threads)  # pretrain() does the same for itself
    with tempfile.TemporaryDirectory(prefix="scenerec-llm-bench-") as tmp:
        tmp = Path(tmp)
        bp = bench_params(params, tmp / "llm", args.steps)
        warm = bench_params(params, tmp / "warm", 3)
        run_ours(warm), run_trainer(warm)  # imports and first-call costs outside the timings
        runs = {"ours": [], "hf_trainer": []}
        for _ in range(args.repeat):
            runs["ours"].append(run_ours(bp))
            runs["hf_trainer"].append(run_trainer(bp))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}

        # Encode throughput needs a pretrained teacher: the project's, else the one just trained.
        teacher = llm / "pretrained" if (llm / "pretrained" / "config.json").exists() else tmp / "llm" / "pretrained"
        encode = None
        sdir, how = student_dir(params, teacher, tmp, args.student)
        if sdir is not None:
            from components.llm.corpus import read_lines

            texts = read_lines(llm / "corpus" / "heldout.txt")[: args.encode_texts]
            encode = {**encode_throughput(teacher, sdir, texts), "student": how}
    torch.set_num_threads(threads)

    cfg = bp.llm
    results = {
        k: {"seconds": round(r["seconds"], 2), "tokens_per_s": round(r["tokens"] / r["seconds"], 1),
            "mean_loss": round(float(r["mean_loss"]), 4)}
        for k, r in best.items()
    }
    ratio = round(results["ours"]["tokens_per_s"] / results["hf_trainer"]["tokens_per_s"], 2)
    report = {
        "settings": {"steps": cfg.steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
                     "hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "repeat": args.repeat,
                     "cpu_threads": cfg.cpu_threads, "mixed_precision": cfg.mixed_precision},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu, {os.cpu_count()} cores",
        "machine": f"{platform.machine()} {platform.python_version()} torch {torch.__version__}",
        "results": results,
        "ours_vs_hf_trainer": ratio,
        "encode": encode,
    }
    print(f"pretraining: {cfg.num_layers} layers x {cfg.hidden_size}, batch {cfg.batch_size} x {cfg.seq_len} tokens, "
          f"{cfg.steps} steps, best of {args.repeat} ({report['device']}, {cfg.cpu_threads or 'all'} threads)")
    print(f"{'loop':<12}{'seconds':>10}{'tokens/s':>12}{'mean loss':>12}{'x HF Trainer':>14}")
    for name, r in results.items():
        x = r["tokens_per_s"] / results["hf_trainer"]["tokens_per_s"]
        print(f"{name:<12}{r['seconds']:>10.2f}{r['tokens_per_s']:>12,.0f}{r['mean_loss']:>12.3f}{x:>14.2f}")
    print("x HF Trainer: tokens/s of the loop / tokens/s of the stock Trainer on the same work (1.00 = as fast);")
    print("mean loss: over all steps (the two loops draw batches in different orders, so close, not equal)")
    if encode:
        print(f"\nencode (forward to the last hidden state, {len(texts)} held-out documents)")
        print(f"student: {encode['student']}")
        print(f"{'model':<10}{'params':>12}{'texts/s':>10}")
        for k, name in (("a", "teacher"), ("b", "student")):
            print(f"{name:<10}{encode[k]['params']:>12,}{encode[k]['texts_per_s']:>10,.1f}")
        print(f"student / teacher: {encode['param_ratio']:.2f} x the parameters, {encode['ratio']:.2f} x the speed")
    save_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
