"""`scenerec serve` on a tiny project with the real Feast online store (SQLite), the MLflow registry
and the registered pyfunc: strict input (issue 15.5), bad requests as 4xx, the push path, served
CoFARS = evaluation, hot swap under a stream of requests."""
import os
import threading

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from components import registry, steps
from components.config import load_params
from components.serve.schema import InvalidRequest
from tests.factories import make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """generate -> ingest -> features -> a CoFARS CTR model, registered as champion."""
    root = make_project(tmp_path_factory.mktemp("serve") / "project", {"ctr": {"model": "cofars", "epochs": 1}})
    cwd = os.getcwd()
    os.chdir(root)
    params = load_params(root / "params.yaml")
    steps.generate_step(params)
    steps.ingest_step(params)
    steps.features_step(params)
    from components import tracking

    steps.ctr_step(params, run_id=tracking.start_run(params, "ctr"))
    result = steps.ctr_register_step(params, run_id=tracking.start_run(params, "register"))
    if not result["promoted"]:  # a one-epoch model may miss the promotion floor; serving is what is tested
        registry.promote(params, params.ctr.registered_name, result["version"], reason="serve tests", by="test")
    yield params
    os.chdir(cwd)


def _scene(params):
    imp = pd.read_parquet(params.path("curated_dir") / "impressions.parquet")
    row = imp.sort_values("ts").iloc[-1]
    return row, {"ts": (pd.Timestamp(row["ts"]) + pd.Timedelta(hours=1)).isoformat(), "geohash": row["geohash"],
                 "location_type": row["location_type"], "weather": row["weather"],
                 "temperature_c": float(row["temperature_c"]), "is_holiday": bool(row["is_holiday"])}


def _pois(params, n):
    return pd.read_parquet(params.path("curated_dir") / "pois.parquet")["poi_id"].astype(str).head(n).tolist()


def test_pyfunc_reads_ordinary_input_strictly(project):
    model = mlflow.pyfunc.load_model(f"models:/{project.ctr.registered_name}@champion")
    row, scene = _scene(project)
    pois = _pois(project, 5)
    base = pd.DataFrame({"request_id": "r1", "user_id": str(row["user_id"]), "poi_id": pois, **scene})
    as_bool = {v: model.predict(base.assign(is_holiday=v))["ctr"].to_numpy() for v in (False, "False", "false", True)}
    np.testing.assert_array_equal(as_bool["False"], as_bool[False])
    np.testing.assert_array_equal(as_bool["false"], as_bool[False])
    # "False" used to score exactly as True; an integer temperature used to be refused.
    out = model.predict(base.assign(temperature_c=int(round(scene["temperature_c"]))))
    assert len(out) == 5 and out["ctr"].between(0, 1).all()
    assert model.predict(base.iloc[:0]).empty  # used to raise IndexError
    # One unknown PoI: scored on the cold-start row and flagged, the others as before.
    mixed = model.predict(pd.concat([base, base.iloc[:1].assign(poi_id="p-never-seen")], ignore_index=True))
    assert mixed["cold_poi"].tolist() == [False] * 5 + [True]
    assert mixed["poi_id"].tolist() == pois + ["p-never-seen"] and mixed["ctr"].between(0, 1).all()
    np.testing.assert_allclose(mixed["ctr"].to_numpy()[:5], model.predict(base)["ctr"].to_numpy(), rtol=1e-6)
    for column, value, rule in [("temperature_c", float("nan"), "finite"), ("temperature_c", -300.0, "-40"),
                                ("location_type", "moon", "'home'"), ("ts", "not a time", "datetime")]:
        with pytest.raises(InvalidRequest) as e:
            model.predict(base.assign(**{column: value}))
        assert f"column {column!r}" in str(e.value) and rule in str(e.value)


@pytest.fixture(scope="module")
def client(project):
    from components.serve.app import create_app

    with TestClient(create_app(project, watch=False)) as c:
        yield c


def test_bad_requests_are_4xx_naming_field_and_rule_and_the_service_keeps_serving(project, client):
    row, scene = _scene(project)
    good = {"user_id": str(row["user_id"]), "candidates": _pois(project, 4), **scene}
    bad = [
        ({k: v for k, v in good.items() if k != "weather"}, "weather: missing"),
        ({**good, "colour": "red"}, "colour: unknown field"),
        ({**good, "temperature_c": "warm"}, "temperature_c"),
        ({**good, "temperature_c": -300}, "temperature_c"),
        ({**good, "location_type": "moon"}, "location_type"),
        ({**good, "candidates": []}, "candidates"),
        ({**good, "candidates": ["p"] * (project.serve.max_candidates + 1)}, "configured maximum"),
        ({**good, "ts": "the day after tomorrow"}, "ts"),
        ({**good, "user_id": 12}, "user_id"),
        (["not", "an", "object"], "JSON object"),
    ]
    for body, needle in bad:
        r = client.post("/score", json=body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert needle in " ".join(r.json()["detail"]), (needle, r.json())
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = client.post("/score", json={**good, "user_id": "u-nobody", "candidates": good["candidates"] + ["p-new"]})
    assert r.status_code == 200
    body = r.json()
    assert body["cold_user"] and [s["cold_poi"] for s in body["scores"]] == [False] * 4 + [True]
    r = client.post("/score", json=good)
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == {"name": project.ctr.registered_name, "version": client.app.state.holder.current.version}
    assert [s["poi_id"] for s in body["scores"]] == good["candidates"]
    assert all(0 < s["ctcvr"] <= s["ctr"] < 1 for s in body["scores"])
    assert body["feature_age_seconds"] is not None and body["feature_age_seconds"] > 0
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    metrics = client.get("/metrics").text
    assert 'scenerec_requests_total{status="422"}' in metrics and 'scenerec_requests_total{status="200"}' in metrics


def test_a_pushed_order_moves_that_pois_score_on_the_next_request(project, client):
    row, scene = _scene(project)
    pois = _pois(project, 6)
    req = {"user_id": str(row["user_id"]), "candidates": pois, **scene}
    before = {s["poi_id"]: s["ctr"] for s in client.post("/score", json=req).json()["scores"]}
    target = pois[3]
    push_ts = (pd.Timestamp(scene["ts"]) - pd.Timedelta(minutes=5)).isoformat()
    order = {"user_id": req["user_id"], "poi_id": target, "behavior": "order", **scene, "ts": push_ts}
    r = client.post("/push", json={"behaviors": [order, {**order, "behavior": "click"}]})
    assert r.status_code == 200 and r.json() == {"pushed": 2}
    after = {s["poi_id"]: s["ctr"] for s in client.post("/score", json=req).json()["scores"]}
    assert abs(after[target] - before[target]) > 1e-6, (before[target], after[target])
    bad = client.post("/push", json={"behaviors": [{**order, "behavior": "teleport"}]})
    assert bad.status_code == 422 and "behavior" in bad.json()["detail"][0]


def test_served_cofars_equals_the_evaluation_path_on_the_same_state(project, client):
    """The same request scored by served CoFARS (offline states, one per network of the seed bag) and
    by CTRScorer.score (the evaluation path, the model over the window of the user's history) gives
    the same scores."""
    from components.serve.schema import parse_request
    from components.serve.scoring import StateCache, score_request, served_nets

    app = client.app
    model = app.state.holder.current
    # params.yaml's seed bag: that many CoFARS networks, each served from its own state
    assert len(served_nets(model.scorer.model)) == project.ctr.seed_bag
    from components.serve.online import OnlineFeatures, behavior_store

    online, store = OnlineFeatures(project), behavior_store(project)
    b = pd.read_parquet(project.path("curated_dir") / "behaviors.parquet")
    states = StateCache()  # shared: a user's state (and its per-context selections) serve later requests
    _, scene = _scene(project)
    scenes = [scene, {**scene, "location_type": "office" if scene["location_type"] != "office" else "home",
                      "weather": "rainy" if scene["weather"] != "rainy" else "sunny"}]
    for user in b["user_id"].astype(str).value_counts().index[:3]:
        for sc in scenes + scenes:
            req = parse_request({"user_id": user, "candidates": _pois(project, 8), **sc}, 100)
            served = score_request(model, req, online, store, states)
            evaluated = score_request(model, req, online, store, None)
            np.testing.assert_allclose([s["ctr"] for s in served["scores"]],
                                       [s["ctr"] for s in evaluated["scores"]], rtol=1e-5, atol=1e-6)


def _frame_of(req, served_ids, features, online):
    """The evaluation-style encoding input of a request: one row per candidate with its scene and
    context, joined with Feast's SDK reads (get_online_features) of user, context and PoIs."""
    from components.features.engineering import scene_features
    from components.serve.schema import SCENE_FIELDS

    head = pd.DataFrame([{f: getattr(req, f) for f in SCENE_FIELDS}])
    head["ts"] = pd.to_datetime(head["ts"], utc=True)
    df = pd.DataFrame({"request_id": req.request_id or "request", "user_id": req.user_id, "poi_id": served_ids,
                       "position": np.arange(len(served_ids)),
                       "context_id": str(scene_features(head, features)["context_id"].iloc[0])})
    for f in SCENE_FIELDS:
        df[f] = head[f].iloc[0]
    for key, values in (("user_id", [req.user_id]), ("context_id", [df["context_id"].iloc[0]]),
                        ("poi_id", sorted(set(served_ids)))):
        df = df.merge(online.read(key, values)[0], on=key, how="left")
    return df


def test_the_served_request_is_what_evaluation_encodes_from_feasts_sdk_reads(project, client):
    """assemble_request (arrays: the store's online_read per view, the in-process PoI block) gives
    the RequestData that encode_requests makes of the request's frame joined with Feast's
    get_online_features, for a known and an unknown user, known and unknown PoIs, with a history; a
    materialisation is seen by the PoI block after refresh()."""
    from dataclasses import fields

    from components.ctr.data import RequestData, encode_requests
    from components.features.store import materialize
    from components.serve.cold import map_unknown
    from components.serve.online import OnlineFeatures, behavior_store
    from components.serve.schema import parse_request
    from components.serve.scoring import assemble_request, history_from_rows, request_layout, request_scene

    model = client.app.state.holder.current
    scorer = model.scorer
    online, store = OnlineFeatures(project), behavior_store(project)
    _, scene = _scene(project)
    b = pd.read_parquet(project.path("curated_dir") / "behaviors.parquet")
    for user in [*b["user_id"].astype(str).value_counts().index[:2], "u-nobody"]:
        req = parse_request({"user_id": user, "candidates": _pois(project, 30) + ["p-new"], **scene}, 100)
        served_ids, _ = map_unknown(req.candidates, model.poi_table)
        ts_ns = int(pd.Timestamp(req.ts).value)
        history = history_from_rows(store.recent(user, scorer.cfg.max_history, before_ns=ts_ns), user,
                                    model.poi_table, scorer)
        want = encode_requests(_frame_of(req, served_ids, scorer.features, online), scorer.encoder, model.poi_table,
                               history, None, None, scorer.features, None, None, model.scene_ids)
        rs = request_scene(req, scorer.features)
        block = online.poi_block((model.name, model.version), model.poi_table.ids)
        views = request_layout(model, block).views
        values = {**online.entity("user_id", user, views)[0], **online.entity("context_id", rs["context_id"], views)[0],
                  **rs["numeric"]}
        got = assemble_request(model, req, model.poi_table.rows(served_ids), rs, values, block, history)
        assert got.numeric.shape == want.numeric.shape and np.abs(want.numeric).sum() > 0
        for f in fields(RequestData):
            a, w = getattr(got, f.name), getattr(want, f.name)
            if w is None:
                assert a is None, f.name
            else:
                np.testing.assert_array_equal(a, w, err_msg=f.name)
    assert online.refresh() is False  # nothing materialised since
    old = online.poi_block((model.name, model.version), model.poi_table.ids)
    materialize(project, full=True)
    assert online.refresh() is True
    new = online.poi_block((model.name, model.version), model.poi_table.ids)
    assert new is not old and new.stamp != old.stamp
    np.testing.assert_array_equal(new.values, old.values)  # the same tables materialised again


def test_hot_swap_under_a_stream_of_requests_fails_none(project, client):
    from components.serve.app import ModelHolder

    holder: ModelHolder = client.app.state.holder
    name = project.ctr.registered_name
    old = holder.current.version
    # A second version of the model, then the champion moves to it while requests stream in.
    mv = mlflow.register_model(f"models:/{name}/{old}", name)
    new = str(mv.version)
    row, scene = _scene(project)
    req = {"user_id": str(row["user_id"]), "candidates": _pois(project, 20), **scene}
    seen, failures, stop = set(), [], threading.Event()

    def stream():
        while not stop.is_set():
            r = client.post("/score", json=req)
            if r.status_code != 200:
                failures.append(r.text)
            else:
                seen.add(r.json()["model"]["version"])

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    for _ in range(600):  # promote only once the old version has answered (else the race is unseen)
        if old in seen or failures:
            break
        threading.Event().wait(0.05)
    registry.promote(project, name, new, reason="hot swap test", by="test")
    assert holder.refresh() is True
    for _ in range(600):
        if new in seen:
            break
        threading.Event().wait(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and {old, new} <= seen and holder.current.version == new
    # A version that fails to load: the old one keeps serving, /ready and the log say so.
    broken = str(mlflow.register_model(f"models:/{name}/{old}", name).version)
    loader = holder.loader
    holder.loader = lambda v: (_ for _ in ()).throw(RuntimeError("artefact unreadable")) if v == broken else loader(v)
    registry.promote(project, name, broken, reason="broken version", by="test")
    assert holder.refresh() is False
    ready = client.get("/ready").json()
    assert ready["ready"] and ready["model"]["version"] == new and "artefact unreadable" in ready["last_error"]
    assert client.post("/score", json=req).status_code == 200
    holder.loader = loader


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free 127.0.0.1 port, in a temp dir, stopped afterwards."""
    import shutil
    import socket
    import subprocess
    import time

    exe = shutil.which("redis-server")
    assert exe, "redis-server not installed: apt-get install redis-server (.ci/run does)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.redis
def test_redis_online_store_materialises_pushes_and_serves(project, redis_url):
    """The same service with serve.online_store: redis: Feast materialises into a real redis-server,
    the behaviour store lives there, a push is seen by the next request."""
    import redis

    from components.features.store import apply_definitions, get_store, materialize
    from components.serve.app import create_app
    from components.serve.online import load_behaviors

    params = project.model_copy(update={"serve": project.serve.model_copy(
        update={"online_store": "redis", "redis_url": redis_url})})
    assert get_store(params).config.online_store.type == "redis"
    apply_definitions(params)
    mat = materialize(params, full=True)
    assert mat["rows_total"] > 0
    assert load_behaviors(params) > 0
    r = redis.Redis.from_url(redis_url)
    assert any(k.startswith(b"scenerec:behaviors:") for k in r.scan_iter()) and r.dbsize() > 10
    row, scene = _scene(params)
    pois = _pois(params, 5)
    req = {"user_id": str(row["user_id"]), "candidates": pois, **scene}
    with TestClient(create_app(params, watch=False)) as c:
        first = c.post("/score", json=req)
        assert first.status_code == 200, first.text
        assert first.json()["feature_age_seconds"] is not None
        order = {"user_id": req["user_id"], "poi_id": pois[1], "behavior": "order", **scene,
                 "ts": (pd.Timestamp(scene["ts"]) - pd.Timedelta(minutes=1)).isoformat()}
        assert c.post("/push", json={"behaviors": [order]}).json() == {"pushed": 1}
        second = c.post("/score", json=req).json()["scores"]
    assert abs(second[1]["ctr"] - first.json()["scores"][1]["ctr"]) > 1e-6
    # The same scores as through SQLite for a user the push did not touch.
    other = {**req, "user_id": str(pd.read_parquet(params.path("curated_dir") / "users.parquet")["user_id"].iloc[1])}
    with TestClient(create_app(params, watch=False)) as c:
        via_redis = c.post("/score", json=other).json()["scores"]
    with TestClient(create_app(project, watch=False)) as c:
        via_sqlite = c.post("/score", json=other).json()["scores"]
    np.testing.assert_allclose([s["ctr"] for s in via_redis], [s["ctr"] for s in via_sqlite], rtol=1e-5)


def test_two_worker_processes_serve_one_port_and_sum_their_metrics(project):
    """`scenerec serve --workers 2`: uvicorn's supervisor runs two processes on one port, each loads
    the champion, and /metrics is the sum over both (prometheus_client's multiprocess mode)."""
    import subprocess
    import time

    import httpx

    from tests.factories import free_port, stop_process_group

    port, log = free_port(), project.root / "serve-workers.log"
    proc = subprocess.Popen(["scenerec", "serve", "--port", str(port), "--workers", "2"], cwd=project.root,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and log.read_text().count("serving ") < 2:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        assert log.read_text().count("serving ") == 2, log.read_text()[-3000:]  # each worker loaded it
        while time.time() < deadline:  # the shared socket listens once a worker's start-up is complete
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                    break
            except httpx.ConnectError:
                time.sleep(0.2)
        row, scene = _scene(project)
        req = {"user_id": str(row["user_id"]), "candidates": _pois(project, 10), **scene}
        n = 12
        for _ in range(n):  # a new connection each time: the kernel spreads them over the workers
            r = httpx.post(f"http://127.0.0.1:{port}/score", json=req, timeout=60)
            assert r.status_code == 200, r.text
            assert len(r.json()["scores"]) == 10
        assert httpx.post(f"http://127.0.0.1:{port}/score", json={**req, "candidates": []}).status_code == 422
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        counts = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith("scenerec_requests_total{")}
        assert counts == {'scenerec_requests_total{status="200"}': n, 'scenerec_requests_total{status="422"}': 1}
    finally:
        stop_process_group(proc)
