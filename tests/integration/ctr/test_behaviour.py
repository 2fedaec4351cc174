"""Behaviour of a trained CTR model (Made-With-ML style), on hand-made requests against the model
trained once per session on a tiny generated world (``trained_ctr`` in conftest.py).

Invariance: a change that must not move a score (the name of a user the model has never seen).
Direction: a change that must move it one way (ten orders of a PoI in the request's own scene).
"""
import numpy as np
import pandas as pd
import pytest

from components.features.engineering import scene_features

pytestmark = pytest.mark.slow

SCENE = ["geohash", "location_type", "weather", "temperature_c", "is_holiday"]
N_USERS = 12  # warm users probed by the direction tests


def _score(world, frame: pd.DataFrame, behaviors: pd.DataFrame, users: pd.DataFrame | None = None) -> pd.Series:
    """CTR of every candidate of ``frame`` (training-set-like rows), indexed by (request_id, poi_id)."""
    sc, src = world.scorer, world.sources
    data, pois, history, table = sc.prepare(frame, behaviors, src.pois, None, None, users)
    out = sc.score(data, pois, history, table)
    index = [(data.request_id[r], pois.ids[data.poi_row[r, s]]) for r, s in zip(out["row"], out["slot"])]
    return pd.Series(out["ctr"], index=pd.MultiIndex.from_tuples(index, names=["request_id", "poi_id"]))


def _test_rows(world) -> pd.DataFrame:
    ts = world.sources.training_set
    return ts[ts["event_timestamp"] >= pd.Timestamp(world.dataset.test_start_ns, tz="UTC")]


def _is_known(world, user_id: str) -> bool:
    return int(world.dataset.encoder.users.encode([user_id])[0]) > 0


def _renamed(df: pd.DataFrame, names: dict) -> pd.DataFrame:
    return df.assign(user_id=df["user_id"].astype(str).replace(names))


def test_renaming_a_cold_user_changes_no_score(trained_ctr):
    """A user the model never saw in training is read from their history, profile and scene; the
    name in ``user_id`` carries nothing, so another name gives exactly the same scores."""
    w = trained_ctr
    test = _test_rows(w)
    cold = [u for u in test["user_id"].astype(str).unique() if not _is_known(w, u)][:5]
    assert cold, "the tiny world has cold users in the test period"
    frame = test[test["user_id"].isin(cold)]
    names = {u: f"renamed-{u}" for u in cold}
    beh, users = w.sources.behaviors, w.sources.users
    before = _score(w, frame, beh, users)
    after = _score(w, _renamed(frame, names), _renamed(beh, names), _renamed(users, names))
    assert len(before) == len(frame)
    np.testing.assert_allclose(after.to_numpy(), before.to_numpy(), rtol=0, atol=1e-7)
    data = w.scorer.prepare(frame, beh, w.sources.pois, None, None, users)[0]
    assert data.history_lengths().max() > 0, "a renamed user has a history, so the rename reaches the sequence too"

    # Not vacuous: for users the model knows, the name is an ID embedding and does move the scores.
    warm = [u for u in test["user_id"].astype(str).unique() if _is_known(w, u)][:2]
    frame = test[test["user_id"].isin(warm)]
    swap = {warm[0]: warm[1], warm[1]: warm[0]}
    moved = _score(w, _renamed(frame, swap), beh, users)  # another user's ID, this user's history
    assert not np.allclose(moved.to_numpy(), _score(w, frame, beh, users).to_numpy(), atol=1e-4)


def _candidates(world, head: pd.Series, poi_ids: list[str]) -> pd.DataFrame:
    """One request: ``head``'s user and scene features, each PoI's latest PoI features before it."""
    ts = world.sources.training_set
    poi_cols = [c for c in ts.columns if c.startswith(("poi_profile__", "poi_stats__"))]
    before = ts[ts["event_timestamp"] < head["event_timestamp"]].sort_values("event_timestamp", kind="stable")
    latest = before.drop_duplicates("poi_id", keep="last").set_index("poi_id")[poi_cols]
    rows = []
    for i, pid in enumerate(poi_ids):
        r = head.copy()
        r["poi_id"], r["position"], r["click"], r["order"] = pid, i, 0, 0
        r[poi_cols] = latest.loc[pid] if pid in latest.index else np.nan
        rows.append(r)
    return pd.DataFrame(rows).reset_index(drop=True)


def _orders_in_scene(world, head: pd.Series, poi_id: str, n: int = 10) -> pd.DataFrame:
    """``n`` click → order pairs of ``poi_id`` by ``head``'s user in the minutes before the request,
    in its exact scene (the same context id: location, weather, time slot, day type)."""
    rows = []
    for k in range(1, n + 1):
        t = head["event_timestamp"] - pd.Timedelta(minutes=2 * k)
        for behavior, dt in (("click", 0), ("order", 30)):
            rows.append({"ts": t + pd.Timedelta(seconds=dt), "user_id": head["user_id"], "poi_id": poi_id,
                         "behavior": behavior, "query": None, **{c: head[c] for c in SCENE}})
    out = pd.DataFrame(rows)
    cfg = world.params.features
    request = pd.DataFrame([head]).rename(columns={"event_timestamp": "ts"})[["ts"] + SCENE]
    assert set(scene_features(out[["ts"] + SCENE], cfg)["context_id"]) == set(scene_features(request, cfg)["context_id"])
    return out


def _direction_probes(world):
    """Per warm test user: their first test request, P (a PoI they never touched, of a category they
    do touch) and the Qs (every open PoI of a category they never touch)."""
    src, test = world.sources, _test_rows(world)
    cat = src.pois.set_index("poi_id")["category"]
    opened_at = src.pois.set_index("poi_id")["opened_at"]
    beh = src.behaviors[src.behaviors["poi_id"].notna()]
    probes = []
    for u in test.sort_values("event_timestamp", kind="stable")["user_id"].astype(str).unique():
        if not _is_known(world, u):
            continue
        head = test[test["user_id"] == u].sort_values("event_timestamp", kind="stable").iloc[0]
        mine = beh[beh["user_id"] == u]
        touched, seen = set(cat.reindex(mine["poi_id"]).dropna()), set(mine["poi_id"])
        unseen = [p for p in src.pois["poi_id"] if p not in seen and opened_at[p] < head["event_timestamp"]]
        ps = [p for p in unseen if cat[p] in touched]
        qs = [p for p in unseen if cat[p] not in touched]
        if ps and qs:
            probes.append((head, ps[0], qs))
        if len(probes) == N_USERS:
            break
    assert len(probes) == N_USERS
    return probes


@pytest.fixture(scope="module")
def direction(trained_ctr):
    """Scores of each probe's P and Qs without and with ten orders of P in the request's scene."""
    w, out = trained_ctr, []
    for head, p, qs in _direction_probes(w):
        frame = _candidates(w, head, [p] + qs)
        base = _score(w, frame, w.sources.behaviors).droplevel(0)
        more = _score(w, frame, pd.concat([w.sources.behaviors, _orders_in_scene(w, head, p)], ignore_index=True))
        out.append({"user": head["user_id"], "p": p, "base": base, "more": more.droplevel(0), "qs": qs})
    return out


def test_ten_orders_in_this_scene_raise_the_pois_score(direction):
    """The same request, the same candidate: after ten orders of it in this scene it scores higher."""
    ups = [(d["user"], round(float(d["base"][d["p"]]), 4), round(float(d["more"][d["p"]]), 4)) for d in direction]
    assert all(after > before for _, before, after in ups), ups


@pytest.mark.xfail(strict=True, reason=(
    "measured 2026-12-02 (CTR_WORLD, cofars, 4 epochs, seed 42): P lost 23 of 262 (P, Q) pairs over 12 "
    "users, e.g. u000057: P 0.0359 < Q p000015 0.0577, u000113: P 0.0665 < Q p000033 0.0669"))
def test_a_poi_ordered_ten_times_here_outscores_unseen_pois_of_untouched_categories(direction):
    """The issue's direction test: P, ordered ten times in this exact scene, above every unseen PoI of
    a category the user never touches."""
    pairs = [(d["user"], q, float(d["more"][d["p"]]), float(d["more"][q])) for d in direction for q in d["qs"]]
    lost = [(u, q, round(p, 4), round(s, 4)) for u, q, p, s in pairs if p <= s]
    assert not lost, f"P lost {len(lost)} of {len(pairs)} pairs, e.g. {lost[:5]}"
