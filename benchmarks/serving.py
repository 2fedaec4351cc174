"""The HTTP scoring service under load: p50/p95/p99 latency and requests/s for B candidates, at
history lengths n, with 1 and 4 concurrent clients on loopback; SQLite vs Redis online store;
CoFARS (served from its per-user state) vs DIN over the newest ``ctr.max_history`` vs SIM-hard;
and, as the named alternative, the snapshot pyfunc (its frozen data, ``predict`` behind the same
HTTP front).

    python benchmarks/serving.py [--params params.yaml] [--lengths 1000 10000 100000] [--clients 1 4]
        [--requests 40] [--seconds 20] [--candidates 500] [--stores sqlite redis]
        [--models cofars din_full sim_hard] [--workers 1 2] [--epochs 1]

Needs the project's features (``scenerec features``). Each model is trained for ``--epochs`` by the
same loop (seed 0), registered as champion of its own name in a temporary MLflow store, and
served by ``scenerec serve`` in a process of its own, once per ``--workers`` setting (``serve.workers``:
uvicorn worker processes). For each n a known user gets n extra
behaviours (their real log tiled, one second apart, before the request time) in the online
behaviour store. Load: ``--clients`` asyncio/httpx clients send requests back to back until
``--requests`` are done or ``--seconds`` have passed (after three warm-up requests per client, on
the connections the measurement reuses: each worker process builds its own CoFARS states); every request
has the same user, scene and B distinct PoIs. Redis: a real ``redis-server`` on 127.0.0.1 in a
temporary folder. Per row: client-side p50/p95/p99 and requests/s, the service's own handler time
and its CPU time per request (from /metrics: what a request costs whatever else shares the
cores), and the 1-minute load average. The project's SQLite behaviour store is reloaded from the
curated behaviours at the end. Writes reports/benchmarks/serving.json.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from report import ctr_benchmark_setup, save_report  # noqa: E402  (benchmarks/report.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    exe = shutil.which("redis-server")
    if not exe:
        raise SystemExit("redis-server not installed (apt-get install redis-server), or pass --stores sqlite")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def train_and_register(params, names: list[str], epochs: int, folder: Path) -> dict[str, str]:
    """Train each model, register it as champion of ``bench-serving-<name>``; returns name -> registered name."""
    from components import registry, tracking
    from components.ctr.stage import registry_candidate, train_and_evaluate

    out = {}
    for name in names:
        cfg = params.ctr.model_copy(update={"epochs": epochs})
        p = params.model_copy(update={"ctr": cfg})
        model_dir = folder / name
        summary, _ = train_and_evaluate(p, None, model_name=name, out_dir=model_dir)
        reg = f"bench-serving-{name}"
        pr = p.model_copy(update={"ctr": cfg.model_copy(update={"registered_name": reg})})
        run_id = tracking.start_run(pr, f"bench-serving-{name}")
        result = registry.register_candidate(pr, run_id, registry_candidate(pr, model_dir / "model"), by="benchmark:serving")
        if not result["promoted"]:  # the benchmark serves each model it trained, whatever the floor says
            registry.set_champion(registry.client(pr), reg, result["version"], "benchmark:serving", result["reason"])
        print(f"{name}: test AUC {summary.get('test.all.auc.ctr')}, registered {reg} v{result['version']}")
        out[name] = reg
    return out


def add_heavy_histories(params, store, lengths: list[int], request_ts: pd.Timestamp) -> dict[int, str]:
    """For each n a distinct known user with n extra behaviours (their log tiled) before request_ts."""
    from components.serve.online import behavior_rows

    b = pd.read_parquet(params.path("curated_dir") / "behaviors.parquet")
    b = b[b["behavior"].isin(params.ctr.history_behaviors) & b["poi_id"].notna()]
    users = b["user_id"].astype(str).value_counts().index.tolist()
    out = {}
    for i, n in enumerate(lengths):
        user = users[i]
        log = b[b["user_id"].astype(str) == user].sort_values("ts")
        rows = log.iloc[np.resize(np.arange(len(log)), n)].copy()
        rows["ts"] = request_ts - pd.to_timedelta(np.arange(n, 0, -1), unit="s")
        t0 = time.perf_counter()
        store.append(behavior_rows(rows, params))
        print(f"  n={n}: {user} got {n} behaviours in {time.perf_counter() - t0:.1f} s")
        out[n] = user
    return out


def start_server(params_file: Path, overrides: dict, port: int, log: Path, snapshot: str | None = None):
    code = ("import json, sys; sys.path.insert(0, %r); from components.config import load_params; "
            "p = load_params(%r, overrides=json.loads(%r)); " % (str(ROOT), str(params_file), json.dumps(overrides)))
    if snapshot:
        code += "sys.path.insert(0, %r); import serving as s; s.serve_snapshot(p, %r, %d)" % (
            str(ROOT / "benchmarks"), snapshot, port)
    else:
        code += "from components.serve.app import serve; serve(p, '127.0.0.1', %d)" % port
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env,
                            cwd=str(params_file.parent))


def wait_ready(port: int, proc, timeout: float = 900) -> dict:
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited ({proc.returncode})")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"server on port {port} not ready after {timeout} s")


async def load(port: int, body: dict, clients: int, requests: int, seconds: float) -> dict:
    """``clients`` concurrent clients, back to back, until ``requests`` done or ``seconds`` passed."""
    import httpx

    url = f"http://127.0.0.1:{port}/score"
    lat, errors = [], []
    async with httpx.AsyncClient(timeout=60) as c:
        async def warm():
            for _ in range(3):
                await c.post(url, json=body)

        # Warm-up at the measured concurrency, on the connections the measurement reuses: the first
        # request a worker process gets for a user builds served CoFARS's state there.
        await asyncio.gather(*[warm() for _ in range(clients)])
        before = await handler_seconds(c, port)
        left, deadline = [requests], time.perf_counter() + seconds
        t_start = time.perf_counter()

        async def client():
            while left[0] > 0 and time.perf_counter() < deadline:
                left[0] -= 1
                t = time.perf_counter()
                r = await c.post(url, json=body)
                lat.append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append(r.status_code)

        await asyncio.gather(*[client() for _ in range(clients)])
        wall = time.perf_counter() - t_start
        after = await handler_seconds(c, port)
    # The service's own time per request, measured in its handler thread from validation to scores
    # (GIL waits included; HTTP, JSON and the wait for a worker thread not): the rest is the front.
    # And its thread's CPU time per request: what a request costs whatever else shares the cores.
    ok = before and after and after[1] > before[1]
    handler = round((after[0] - before[0]) / (after[1] - before[1]) * 1000, 2) if ok else None
    cpu = round((after[2] - before[2]) / (after[1] - before[1]) * 1000, 2) if ok else None
    ms = np.array(lat) * 1000
    return {"requests": len(lat), "errors": len(errors), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p95_ms": round(float(np.percentile(ms, 95)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "req_per_s": round(len(lat) / wall, 2), "handler_ms": handler, "handler_cpu_ms": cpu}


async def handler_seconds(c, port: int) -> tuple[float, float, float] | None:
    """(time sum, count, CPU sum) of the service's own scoring metrics (/metrics); None without them."""
    r = await c.get(f"http://127.0.0.1:{port}/metrics")
    if r.status_code != 200:
        return None
    got = {}
    keys = ("scenerec_score_seconds_sum", "scenerec_score_seconds_count", "scenerec_score_cpu_seconds_total")
    for line in r.text.splitlines():
        for k in keys:
            if line.startswith(k + " "):
                got[k] = float(line.split()[1])
    return tuple(got[k] for k in keys) if len(got) == len(keys) else None


def serve_snapshot(params, registered: str, port: int) -> None:
    """The named alternative: the registered pyfunc's ``predict`` (its frozen snapshot) behind HTTP."""
    import mlflow
    import uvicorn
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse

    from components.serve.schema import SCENE_FIELDS, parse_request
    from components.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(params))
    model = mlflow.pyfunc.load_model(f"models:/{registered}@champion")
    app = FastAPI()

    @app.get("/ready")
    def ready():
        return {"ready": True, "model": registered}

    @app.post("/score")
    def score(payload=Body(...)):
        req = parse_request(payload, params.serve.max_candidates)
        frame = pd.DataFrame({"request_id": "r", "user_id": req.user_id, "poi_id": req.candidates,
                              **{f: getattr(req, f) for f in SCENE_FIELDS}})
        out = model.predict(frame)
        return JSONResponse({"scores": out[["poi_id", "ctr", "ctcvr"]].to_dict("records")})  # as the service answers

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--candidates", type=int, default=500)
    ap.add_argument("--stores", nargs="+", choices=["sqlite", "redis"], default=["sqlite", "redis"])
    ap.add_argument("--models", nargs="+", default=["cofars", "din_full", "sim_hard"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="serve.workers settings to compare")
    setup = ctr_benchmark_setup(ap, argv, "serving", seeds=False)
    if setup is None:
        return 2
    args, params, _ = setup
    from components.features.store import apply_definitions, materialize
    from components.serve.online import behavior_store, load_behaviors

    params_file = Path(args.params).resolve()
    load_start = os.getloadavg()  # the cores are shared (CI, other jobs): the figures depend on it
    print("load average at start (1, 5, 15 min):", load_start)
    tmp = Path(tempfile.mkdtemp(prefix="scenerec-serving-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    registered = train_and_register(params, args.models, args.epochs or 1, tmp)

    pois = pd.read_parquet(params.path("curated_dir") / "pois.parquet")["poi_id"].astype(str).tolist()
    if len(pois) < args.candidates:
        print(f"note: the catalogue has {len(pois)} PoIs; candidates repeat to reach {args.candidates}")
    candidates = [pois[i % len(pois)] for i in range(args.candidates)]
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet").sort_values("ts").iloc[-1]
    request_ts = pd.Timestamp(imp["ts"]) + pd.Timedelta(days=1)
    scene = {"ts": request_ts.isoformat(), "geohash": imp["geohash"], "location_type": imp["location_type"],
             "weather": imp["weather"], "temperature_c": float(imp["temperature_c"]),
             "is_holiday": bool(imp["is_holiday"])}

    rows, redis_proc = [], None
    try:
        for store_kind in args.stores:
            overrides = {"serve": {"online_store": store_kind}}
            if store_kind == "redis":
                redis_proc, url = start_redis(tmp)
                overrides["serve"]["redis_url"] = url
            p = params.model_copy(update={"serve": params.serve.model_copy(update=overrides["serve"])})
            if store_kind == "redis":
                apply_definitions(p)
                materialize(p, full=True)
            print(f"{store_kind}: loading behaviours and the heavy users ...")
            store = behavior_store(p)
            load_behaviors(p, store)
            heavy = add_heavy_histories(p, store, args.lengths, request_ts)
            runs = [(name, reg, w) for name, reg in registered.items() for w in args.workers]
            if store_kind == args.stores[0]:  # its data is frozen in the artefact: no online store to compare
                runs.append(("snapshot_pyfunc", registered[args.models[0]], 1))
            for name, reg, workers in runs:
                port = free_port()
                o = {**overrides, "serve": {**overrides["serve"], "model_name": reg, "workers": workers}}
                proc = start_server(params_file, o, port, tmp / f"{store_kind}-{name}-{workers}.log",
                                    snapshot=reg if name == "snapshot_pyfunc" else None)
                try:
                    wait_ready(port, proc)
                    for n in args.lengths:
                        body = {"user_id": heavy[n], "candidates": candidates, **scene}
                        for k in args.clients:
                            r = asyncio.run(load(port, body, k, args.requests, args.seconds))
                            row = {"store": store_kind if name != "snapshot_pyfunc" else "snapshot", "model": name,
                                   "workers": workers, "n": n, "clients": k, **r,
                                   "load1": round(os.getloadavg()[0], 2)}
                            rows.append(row)
                            print("  ", row)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
        load_behaviors(params)  # the project's behaviour store back to its curated state

    df = pd.DataFrame(rows)
    base = df[df["model"] == "snapshot_pyfunc"].set_index(["n", "clients"])["p50_ms"]
    df["p50_vs_snapshot"] = [round(r.p50_ms / base.get((r.n, r.clients), np.nan), 2) for r in df.itertuples()]
    print(f"\nServing benchmark: {args.candidates} candidates, loopback, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs (alternative: the snapshot pyfunc behind the same HTTP front)")
    print(df.to_string(index=False))
    targets = {}
    for workers in args.workers:
        sel = df[(df["model"] == "cofars") & (df["store"] == "redis") & (df["n"] == 10000) & (df["clients"] == 4)
                 & (df["workers"] == workers)]
        if len(sel):
            targets[f"cofars_redis_n10000_4clients_{workers}workers_p99_ms"] = float(sel["p99_ms"].iloc[0])
            targets[f"p99_le_50ms_{workers}workers"] = bool(sel["p99_ms"].iloc[0] <= 50)
        for store_kind in args.stores:
            c = df[(df["model"] == "cofars") & (df["store"] == store_kind) & (df["clients"] == 1)
                   & (df["workers"] == workers)].set_index("n")["p50_ms"]
            if len(c) > 1:
                ratio = float(c.iloc[-1] / c.iloc[0])
                targets[f"cofars_{store_kind}_{workers}workers_p50_ratio_n{c.index[-1]}_vs_n{c.index[0]}"] = round(ratio, 2)
                targets[f"cofars_{store_kind}_{workers}workers_within_1.5x"] = bool(ratio <= 1.5)
    print("targets:", json.dumps(targets))
    world = {k: getattr(params.generate, k) for k in ("n_users", "n_pois", "n_requests")}
    model_size = {k: getattr(params.ctr, k) for k in ("embed_dim", "mlp_hidden", "max_history", "short_term",
                                                      "max_contexts", "max_subsequence", "n_prototypes")}
    print("world:", world, "model:", model_size, "load average (1, 5, 15 min):", os.getloadavg())
    save_report({"benchmark": "serving", "candidates": args.candidates, "lengths": args.lengths,
                 "clients": args.clients, "requests": args.requests, "seconds": args.seconds,
                 "cpus": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load_start],
                 "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                 "world": world, "model_size": model_size, "rows": rows, "targets": targets,
                 "alternative": "snapshot_pyfunc: the registered pyfunc's predict on its frozen snapshot"}, args.out)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
