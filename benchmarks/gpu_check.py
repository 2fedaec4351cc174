"""GPU check, for a machine with a CUDA device: what the device is, bf16, memory, a bf16 matmul
ceiling, training tokens/s and MFU of a 100 M+ parameter Llama (the architecture the LLM stages
build, transformers' LlamaForCausalLM, at a larger size), and larr_cofars training / scoring rows/s
on batches of the default world's shapes, each against the same work on this machine's CPU in the
same run. Writes reports/benchmarks/gpu_check.json.

    python benchmarks/gpu_check.py [--out PATH] [--llm-steps 20] [--ctr-steps 30]

Runs under whatever Python holds a CUDA torch (a device image may lack the project's pinned set:
without pydantic, the CTR knobs are read from params.yaml's ``ctr:`` section as plain values).
Without CUDA it says so and exits 2.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

PEAK_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, vendor datasheet (MFU denominator)


def ctr_config():
    """CTRConfig from params.yaml; a plain namespace of the same values where pydantic is missing."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())["ctr"]
    try:
        from components.config import CTRConfig

        return CTRConfig(**raw), "components.config.CTRConfig"
    except ImportError:
        class Cfg(types.SimpleNamespace):
            pass

        stub = types.ModuleType("components.config")
        stub.CTRConfig = Cfg
        sys.modules["components.config"] = stub
        return Cfg(**raw), "params.yaml values (no pydantic on this machine)"


def timed(fn, steps: int, device: str) -> float:
    fn()  # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def matmul_tflops(n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    s = timed(lambda: a @ b, reps, "cuda")
    return 2 * n ** 3 * reps / s / 1e12


def llm_throughput(steps: int, batch: int, seq: int) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=seq,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).cuda()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    s = timed(step, steps, "cuda")
    tokens_per_s = batch * seq * steps / s
    # 6 N per token (forward + backward) plus attention's 12 L d seq per token
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq
    return {"params": n_params, "batch": batch, "seq_len": seq, "steps": steps, "seconds": round(s, 3),
            "tokens_per_s": round(tokens_per_s), "mfu_vs_datasheet": round(tokens_per_s * flops_per_token / 1e12 / PEAK_BF16_TFLOPS, 4),
            "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}


def ctr_batch(r: int, k: int, n: int, text_dim: int, device: str, seed: int = 0) -> dict:
    """A batch of the default world's shapes: r requests x k candidates, n-long histories. The keys of
    tests/factories.make_ctr_batch, at realistic sizes; not imported from there, because that module
    needs the pinned set (pydantic, pandas' fixtures) that a device image may lack."""
    g = np.random.default_rng(seed)
    lengths = g.integers(n // 4, n + 1, r)
    mask = np.arange(n)[None, :] < lengths[:, None]

    def hist(high):
        return np.where(mask, g.integers(1, high, (r, n)), 0)

    b = {"user": g.integers(0, 2000, r), "context": g.integers(1, 300, r), "scene": g.integers(0, 4, (r, 6)),
         "scene_value": g.integers(0, 40, (r, 6)), "scene_feats": g.normal(size=(r, 6, text_dim)).astype(np.float32),
         "scene_mask": np.ones((r, 6), bool), "cand_poi": g.integers(0, 400, (r, k)),
         "cand_row": g.integers(0, 400, (r, k)), "cand_category": g.integers(0, 12, (r, k)),
         "cand_price": g.integers(0, 6, (r, k)), "cand_rating": g.integers(0, 6, (r, k)),
         "cand_delivery": g.integers(0, 6, (r, k)), "cand_text": g.normal(size=(r, k, text_dim)).astype(np.float32),
         "position": np.tile(np.arange(k), (r, 1)), "numeric": g.normal(size=(r, k, 44)).astype(np.float32),
         "distance": g.random((r, k)).astype(np.float32), "click": (g.random((r, k)) < 0.08).astype(np.float32),
         "mask": np.ones((r, k), bool), "hist_poi": hist(400), "hist_row": hist(400), "hist_category": hist(12),
         "hist_price": hist(6), "hist_rating": hist(6), "hist_delivery": hist(6), "hist_behavior": hist(5),
         "hist_context": hist(300), "hist_text": g.normal(size=(r, n, text_dim)).astype(np.float32),
         "hist_mask": mask, "slot": g.integers(0, 6, r), "hist_slot": hist(6),
         "cand_logp": g.normal(3.5, 0.5, (r, k)).astype(np.float32),
         "hist_logp": np.where(mask, g.normal(3.5, 0.5, (r, n)), 0).astype(np.float32)}
    b["order"] = b["click"] * (g.random((r, k)) < 0.3)
    return {key: torch.from_numpy(np.ascontiguousarray(v)).to(device) for key, v in b.items()}


def ctr_throughput(cfg, device: str, steps: int, requests: int, amp: bool | None = None) -> dict:
    from components.ctr.model import CTRModel, ModelShapes

    k, n, text_dim = 10, int(cfg.max_history), 128
    shapes = ModelShapes(n_users=2000, n_pois=400, n_contexts=300, scene={f: 40 for f in (
        "location_type", "weather", "temperature_band", "time_slot", "day_type", "area")}, n_numeric=40,
        n_categories=12, n_bands={"price_band": 6, "rating_band": 6, "delivery_band": 6}, text_dim=text_dim,
        ple_edges=[list(np.linspace(-2, 2, 9)) for _ in range(41)])
    torch.manual_seed(0)
    model = CTRModel("larr_cofars", cfg, shapes).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg.lr))
    b = ctr_batch(requests, k, n, text_dim, device)
    amp = device == "cuda" if amp is None else amp

    def train_step():
        model.train()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = model(b)
            loss = model.loss(out, b)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def score_step():
        model.eval()
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            model(b)

    rows = int(b["mask"].sum())
    t_train = timed(train_step, steps, device)
    t_score = timed(score_step, steps, device)
    return {"device": device, "requests_per_batch": requests, "rows_per_batch": rows, "history": n,
            "train_rows_per_s": round(rows * steps / t_train), "score_rows_per_s": round(rows * steps / t_score),
            "bf16_autocast": amp}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "benchmarks" / "gpu_check.json")
    ap.add_argument("--llm-steps", type=int, default=20)
    ap.add_argument("--ctr-steps", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    free, total = torch.cuda.mem_get_info()
    props = torch.cuda.get_device_properties(0)
    report = {"benchmark": "gpu_check", "machine": platform.platform(), "torch": torch.__version__,
              "device": torch.cuda.get_device_name(0), "capability": list(torch.cuda.get_device_capability(0)),
              "multiprocessors": props.multi_processor_count, "bf16_supported": torch.cuda.is_bf16_supported(),
              "memory_total_gib": round(total / 2 ** 30, 1), "memory_free_gib": round(free / 2 ** 30, 1)}
    print(json.dumps(report, indent=1), flush=True)
    report["matmul_bf16_tflops"] = round(matmul_tflops(), 1)
    print(f"bf16 matmul 8192^3: {report['matmul_bf16_tflops']} TFLOP/s (datasheet {PEAK_BF16_TFLOPS})", flush=True)
    report["llm"] = llm_throughput(args.llm_steps, batch=32, seq=1024)
    report["llm"]["mfu_vs_measured_matmul"] = round(report["llm"]["mfu_vs_datasheet"] * PEAK_BF16_TFLOPS
                                                    / report["matmul_bf16_tflops"], 4)
    print("LLM:", json.dumps(report["llm"]), flush=True)
    cfg, cfg_source = ctr_config()
    report["ctr_config_source"] = cfg_source
    try:
        gpu = ctr_throughput(cfg, "cuda", args.ctr_steps, requests=1024)
    except Exception as e:  # noqa: BLE001 - a dtype the bf16 autocast breaks: say so, measure in fp32
        report["ctr_bf16_error"] = f"{type(e).__name__}: {e}"[:500]
        print("CTR under bf16 autocast failed:", report["ctr_bf16_error"], flush=True)
        gpu = ctr_throughput(cfg, "cuda", args.ctr_steps, requests=1024, amp=False)
    torch.set_num_threads(1)  # the CPU baseline as the project trains on CPU (ctr.cpu_threads: 1)
    cpu = ctr_throughput(cfg, "cpu", 3, requests=int(cfg.batch_requests))
    report["ctr"] = {"gpu": gpu, "cpu_1_thread": cpu,
                     "gpu_over_cpu_train_rows_per_s": round(gpu["train_rows_per_s"] / cpu["train_rows_per_s"], 1),
                     "gpu_over_cpu_score_rows_per_s": round(gpu["score_rows_per_s"] / cpu["score_rows_per_s"], 1)}
    print("CTR:", json.dumps(report["ctr"]), flush=True)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
