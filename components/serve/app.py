"""`scenerec serve`: the champion CTR model behind HTTP (FastAPI + uvicorn), on 127.0.0.1 by default.

- ``POST /score``: one request (user, ts, scene columns, up to ``serve.max_candidates`` PoIs) ->
  ``ctr``/``ctcvr`` per candidate, the model name and version, the age of the freshest feature.
  A bad request is a 422 (400 for a body that is not JSON) naming field, value and rule.
- ``POST /push``: behaviours for the online behaviour store (what ``scenerec push`` does).
- ``GET /health`` (the process answers), ``/ready`` (a model is loaded; the last failed swap, if
  any), ``/metrics`` (Prometheus text).

Request-time features: components/serve/online.py (PoI features held in process, re-read when Feast
materialises; checked every ``serve.feature_poll_seconds``); torch runs ``serve.torch_threads``.

Hot swap: a background thread polls the registry's ``champion`` alias every
``serve.champion_poll_seconds``; a new version is loaded beside the old one and swapped in with
one reference assignment, so a request in flight finishes on the model it started with; a failed
load leaves the old model serving and is reported by ``/ready`` and the log.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
import threading
import time
from contextlib import asynccontextmanager

from components.config import Params

log = logging.getLogger("scenerec.serve")
_METRICS_DIR_ENV = "SCENEREC_METRICS_DIR"  # the workers' shared prometheus folder (serve.workers > 1)


class Metrics:
    """Request counters and latency histogram (prometheus_client, in a registry of our own)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("scenerec_requests", "Scoring requests by HTTP status", ["status"],
                                registry=self.registry)
        self.latency = Histogram("scenerec_score_seconds", "Scoring latency", registry=self.registry,
                                 buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.cpu = Counter("scenerec_score_cpu_seconds", "CPU time of the scoring handlers (thread time)",
                           registry=self.registry)
        self.candidates = Counter("scenerec_candidates", "Candidates scored", registry=self.registry)
        self.cold = Counter("scenerec_cold_candidates", "Candidates scored on the cold-start path",
                            registry=self.registry)
        self.swaps = Counter("scenerec_model_swaps", "Champion versions swapped in", registry=self.registry)
        self.swap_failures = Counter("scenerec_model_swap_failures", "Champion versions that failed to load",
                                     registry=self.registry)
        self.version = Gauge("scenerec_model_version", "Registered version being served", registry=self.registry,
                             multiprocess_mode="livemax")
        self.pushed = Counter("scenerec_pushed_behaviors", "Behaviours pushed", registry=self.registry)

    def text(self) -> bytes:
        """The Prometheus exposition; with several workers (``serve`` sets ``SCENEREC_METRICS_DIR``
        and ``PROMETHEUS_MULTIPROC_DIR`` to one folder) the sum over all of them, as
        prometheus_client's multiprocess mode collects it."""
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        shared = os.environ.get(_METRICS_DIR_ENV)  # set by serve() only: Feast's import sets
        if shared:  # PROMETHEUS_MULTIPROC_DIR to a folder of its own, so that variable says nothing
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=shared)
            return generate_latest(registry)
        return generate_latest(self.registry)


def tune_malloc(threshold_mb: int) -> bool:
    """Set glibc's mmap threshold (and a trim threshold twice it) to ``threshold_mb`` MiB; True when
    set. By default glibc maps every block over its (dynamic) threshold afresh and unmaps it when
    freed, so a request's large temporaries (the target attention's candidate x key pairs: ~8 MB at
    500 x 64) page-fault in anew each time: measured in process, that doubled the attention's time
    (7.5 -> 3.7 ms). 0, or a C library other than glibc: left as it is."""
    if threshold_mb <= 0:
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        log.info("serve.malloc_mmap_threshold_mb: the C library has no mallopt; left as it is")
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    size = threshold_mb << 20
    return bool(mallopt(m_mmap_threshold, size)) and bool(mallopt(m_trim_threshold, 2 * size))


def scoring_slots(max_concurrent: int) -> int:
    """Requests one process scores at once: ``serve.max_concurrent``, or (0) one per CPU it may run
    on. More threads than cores do not add throughput (the Python parts hold the GIL) but share it
    out: every request in flight slows down, and the switching costs CPU. Measured with 4 clients on
    2 cores (Redis, n = 10 000): p99 56 -> 45 ms with 1 worker, 41 -> 37 ms with 2."""
    if max_concurrent > 0:
        return max_concurrent
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def settle_heap() -> None:
    """Collect, then move every object alive now (the libraries, Feast's registry, the served model)
    into the collector's permanent generation (``gc.freeze``): they live as long as the process or
    the model, and a full collection no longer walks them. Without it one full collection walked
    ~0.5 M objects (~180 ms with the GIL held, measured in process): every request in flight
    stalled, the p99 of a load. Called at start-up and after a swap (one such pause per promotion,
    in the background thread)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHolder:
    """The model being served and the swap logic (see the module docstring)."""

    def __init__(self, params: Params, metrics: Metrics, loader=None, warm=None):
        from components.serve.scoring import ServedModel
        from components.tracking import tracking_uri

        self.params, self.metrics = params, metrics
        self.name = params.serve.model_name or params.ctr.registered_name
        self.uri = tracking_uri(params)
        self.loader = loader or (lambda version: ServedModel.load(self.name, version, self.uri))
        self.warm = warm  # called with a loaded model before it is swapped in (e.g. its PoI feature block)
        self.current = None  # a ServedModel; replaced whole, never mutated
        self.last_error: str | None = None
        self.failed_version: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one load at a time
        self._thread: threading.Thread | None = None

    def champion_version(self) -> str | None:
        from components import registry

        return registry.alias_version(registry.client(self.params), self.name, registry.CHAMPION)

    def refresh(self) -> bool:
        """Load and swap in the champion if it moved; True when a new version is now served."""
        with self._lock:
            try:
                version = self.champion_version()
            except Exception as e:  # registry unreachable: keep serving what we have
                self.last_error = f"registry lookup failed: {type(e).__name__}: {e}"
                log.warning(self.last_error)
                return False
            if version is None:
                if self.current is None:
                    self.last_error = f"no '{self.name}@champion' in the registry yet"
                return False
            if self.current is not None and self.current.version == str(version):
                return False
            if version == self.failed_version:
                return False  # already tried; wait for the alias to move again
            t0 = time.perf_counter()
            try:
                model = self.loader(str(version))
                if self.warm is not None:
                    self.warm(model)
            except Exception as e:
                self.failed_version = str(version)
                self.last_error = (f"loading {self.name} version {version} failed ({type(e).__name__}: {e}); "
                                   f"still serving version {self.current.version if self.current else 'none'}")
                self.metrics.swap_failures.inc()
                log.error(self.last_error)
                return False
            old = self.current
            self.current = model  # the atomic switch: requests that already hold `old` finish on it
            self.failed_version, self.last_error = None, None
            self.metrics.swaps.inc()
            self.metrics.version.set(float(version))
            log.info("serving %s version %s (was %s), loaded in %.2f s", self.name, version,
                     old.version if old else "none", time.perf_counter() - t0)
            if old is not None:  # a swap (the first load is settled by the app's start-up)
                del old, model
                settle_heap()  # the old version's cycles freed, the new one's objects frozen
            return True

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.params.serve.champion_poll_seconds):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="champion-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def create_app(params: Params, holder: ModelHolder | None = None, watch: bool = True):
    """The FastAPI app: loads the champion at startup, then watches the alias (``watch``)."""
    import orjson
    import pandas as pd
    from fastapi import Body, FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    from components.serve.online import OnlineFeatures, behavior_store, push_behaviors
    from components.serve.schema import InvalidRequest, parse_request
    from components.serve.scoring import StateCache, score_request

    metrics = holder.metrics if holder is not None else Metrics()
    gate = threading.BoundedSemaphore(scoring_slots(params.serve.max_concurrent))
    holder = holder or ModelHolder(params, metrics)
    data = {}

    @asynccontextmanager
    async def lifespan(app):
        import torch

        torch.set_num_threads(params.serve.torch_threads)
        tune_malloc(params.serve.malloc_mmap_threshold_mb)
        data["online"] = online = OnlineFeatures(params)
        data["behaviors"] = behavior_store(params)
        data["states"] = StateCache()
        holder.warm = lambda model: online.poi_block((model.name, model.version), model.poi_table.ids)
        await run_in_threadpool(holder.refresh)
        settle_heap()
        stop = threading.Event()
        if watch:
            holder.start()

            def feature_watch():  # a materialisation rebuilds the PoI block beside the one in use
                while not stop.wait(params.serve.feature_poll_seconds):
                    try:
                        if online.refresh():
                            log.info("PoI features re-read after a materialisation: %s", online.stamp)
                    except Exception as e:  # the store unreachable: keep the block we have
                        log.warning("feature refresh failed: %s: %s", type(e).__name__, e)

            threading.Thread(target=feature_watch, name="feature-watch", daemon=True).start()
        yield
        stop.set()
        holder.stop()

    app = FastAPI(title="SceneRec CTR scoring", lifespan=lifespan)
    app.state.holder = holder

    def bad(status: int, errors: list[str]):
        metrics.requests.labels(str(status)).inc()
        return JSONResponse(status_code=status, content={"detail": errors})

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request, exc):  # e.g. a body that is not JSON
        return bad(400, [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()])

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        m = holder.current
        body = {"ready": m is not None, "model": None if m is None else {"name": m.name, "version": m.version},
                "last_error": holder.last_error}
        return JSONResponse(status_code=200 if m is not None else 503, content=body)

    @app.get("/metrics")
    def prometheus():
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.post("/score")
    def score(payload=Body(...)):
        t0, c0 = time.perf_counter(), time.thread_time()
        if not isinstance(payload, dict):
            return bad(422, [f"request: a JSON object expected, got {type(payload).__name__}"])
        try:
            req = parse_request(payload, params.serve.max_candidates)
        except InvalidRequest as e:
            return bad(422, e.errors)
        model = holder.current  # this request finishes on this model whatever a swap does meanwhile
        if model is None:
            return bad(503, [holder.last_error or "no model loaded yet"])
        with gate:  # at most serve.max_concurrent at once: the time waiting here counts in the latency
            out = score_request(model, req, data["online"], data["behaviors"], data["states"])
        metrics.requests.labels("200").inc()
        metrics.candidates.inc(len(req.candidates))
        metrics.cold.inc(sum(s["cold_poi"] for s in out["scores"]))
        metrics.latency.observe(time.perf_counter() - t0)
        metrics.cpu.inc(time.thread_time() - c0)  # this thread's CPU: what the request costs without the queue
        # Plain JSON types already, so no jsonable_encoder (it took ~30 ms on 500 scores); orjson
        # writes them ~10x faster than the json module (~2 ms of a 25 ms request).
        return Response(orjson.dumps(out), media_type="application/json")

    @app.post("/push")
    def push(payload=Body(...)):
        rows = payload.get("behaviors") if isinstance(payload, dict) else payload
        if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
            return bad(422, ["behaviors: a non-empty list of behaviour objects expected"])
        try:
            n = push_behaviors(params, pd.DataFrame(rows), data["behaviors"])
        except InvalidRequest as e:
            return bad(422, e.errors)
        metrics.pushed.inc(n)
        return {"pushed": n}

    return app


_PARAMS_ENV = "SCENEREC_SERVE_PARAMS"  # the parameters handed to worker processes (JSON)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def app_from_env():
    """The app of one worker process (``serve.workers`` > 1): parameters from ``SCENEREC_SERVE_PARAMS``."""
    _log_to_stderr()  # a worker is a fresh interpreter: the supervisor's logging set-up is not inherited
    got = json.loads(os.environ[_PARAMS_ENV])
    return create_app(Params(**got["params"], root=got["root"]))


def serve(params: Params, host: str | None = None, port: int | None = None) -> None:
    """Run the service with uvicorn (blocking); ``serve.workers`` > 1 runs that many processes on one
    socket (uvicorn's own supervisor), each loading and hot-swapping the champion itself."""
    import uvicorn

    _log_to_stderr()
    host, port = host or params.serve.host, port or params.serve.port
    if params.serve.workers == 1:
        uvicorn.run(create_app(params), host=host, port=port, log_level="info")
        return
    with tempfile.TemporaryDirectory(prefix="scenerec-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by prometheus_client in each worker
        os.environ[_METRICS_DIR_ENV] = metrics_dir  # and by Metrics.text: sum over the workers
        os.environ[_PARAMS_ENV] = json.dumps({"params": params.model_dump(mode="json"), "root": str(params.root)})
        uvicorn.run("components.serve.app:app_from_env", factory=True, workers=params.serve.workers, host=host,
                    port=port, log_level="info")
