"""The Feast feature store: apply the definitions in ``feature_repo/``, materialise the online
store, and read features point-in-time (training) or latest (serving).

The store's configuration is ``feature_repo/feature_store.yaml`` with the local paths taken from
params.yaml: registry and SQLite online store under ``<paths.data_dir>/feast/``, offline store =
the Parquet feature tables under ``paths.features_dir`` (see feature_repo/data_sources.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from feast import Entity, FeatureService, FeatureStore, FeatureView, Project
from feast.data_source import DataSource
from feast.repo_config import RepoConfig
from feast.repo_contents import RepoContents
from feast.repo_operations import apply_total_with_repo_instance, get_repo_files

from components.atomic import crash_point, file_digest, write_parquet_atomic, write_text_atomic
from components.config import Params, load_params
from components.features.engineering import KEYS, TABLES, TIMESTAMP, scene_features

log = logging.getLogger(__name__)

SERVICE = "ctr_training"
TRAINING_SET = "training_set.parquet"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# The Params that apply_definitions is running with, for the definition modules to read.
_ACTIVE_PARAMS: ContextVar[Params | None] = ContextVar("scenerec_feature_params", default=None)


# ----------------------------------------------------------------------------------------------
# Configuration


def definition_params(repo_dir: Path) -> Params:
    """The Params the Feast definitions are built from: those of a running apply_definitions,
    else ``$SCENEREC_PARAMS``, else ``<repo_dir>/../params.yaml`` (the plain ``feast apply`` case)."""
    active = _ACTIVE_PARAMS.get()
    if active is not None:
        return active
    return load_params(os.environ.get("SCENEREC_PARAMS") or Path(repo_dir).resolve().parent / "params.yaml")


def features_dir_for_repo(params: Params, repo_dir: Path, path_name: str = "features_dir") -> str:
    """Folder of the feature tables (``paths.<path_name>``) as the FileSources should record it.

    ``$SCENEREC_FEATURES_DIR`` / ``$SCENEREC_EMBEDDINGS_DIR`` win (a relative value is relative to
    the feature repo, as Feast resolves it). A folder inside the project is written relative to the
    feature repo, so the registry stays valid when the project is moved or copied; one outside it
    stays absolute.
    """
    env = os.environ.get(f"SCENEREC_{path_name.removesuffix('_dir').upper()}_DIR")
    if env:
        return Path(env).as_posix()
    target = params.path(path_name).resolve()
    if target.is_relative_to(params.root.resolve()):
        return Path(os.path.relpath(target, Path(repo_dir).resolve())).as_posix()
    return target.as_posix()


def feast_dir(params: Params) -> Path:
    """Where the registry and the SQLite online store live."""
    return params.path("data_dir") / "feast"


def repo_config(params: Params) -> RepoConfig:
    """feature_store.yaml, with a local file registry / SQLite online store moved under
    ``<paths.data_dir>/feast`` (absolute), so params.yaml decides where the data lives."""
    repo = params.path("feature_repo")
    yaml_file = repo / "feature_store.yaml"
    if not yaml_file.exists():
        raise FileNotFoundError(f"{yaml_file}: Feast config not found (paths.feature_repo = {repo})")
    raw = yaml.safe_load(os.path.expandvars(yaml_file.read_text())) or {}
    where = feast_dir(params)
    registry = raw.get("registry", {})
    registry = {"path": registry} if isinstance(registry, str) else dict(registry)
    if registry.get("registry_type", "file") == "file" and "://" not in registry.get("path", ""):
        raw["registry"] = {**registry, "path": str(where / "registry.db")}
    online = dict(raw.get("online_store") or {"type": "sqlite"})
    if params.serve.online_store == "redis":  # the one switch (params.yaml serve.online_store)
        from components.serve.online import feast_redis_store

        online = raw["online_store"] = feast_redis_store(params)
    if online.get("type", "sqlite") == "sqlite":
        raw["online_store"] = {**online, "path": str(where / "online_store.db")}
    where.mkdir(parents=True, exist_ok=True)  # Feast's SQLite store creates one level only
    config = RepoConfig(**raw)
    config.repo_path = repo
    return config


def get_store(params: Params) -> FeatureStore:
    """A FeatureStore over feature_repo/ with the paths of ``params``."""
    return FeatureStore(repo_path=str(params.path("feature_repo")), config=repo_config(params))


# ----------------------------------------------------------------------------------------------
# Apply


def _load_repo_contents(repo: Path, project: str) -> RepoContents:
    """Import the definition modules of a flat feature repo and collect their Feast objects.

    Feast's own parser imports modules by their path relative to the *current directory* (and
    `feast apply` chdirs there); here the repo goes on sys.path instead, and the sibling module
    names (entities, data_sources, ...) are dropped from sys.modules before and after, so two
    repos (e.g. temp copies in tests) never see each other's cached modules.
    """
    files = get_repo_files(repo)
    names = [".".join(f.relative_to(repo.resolve()).with_suffix("").parts) for f in files]
    roots = {n.split(".")[0] for n in names}

    def forget():
        for mod in list(sys.modules):
            if mod.split(".")[0] in roots:
                del sys.modules[mod]

    forget()
    sys.path.insert(0, str(repo))
    try:
        modules = [importlib.import_module(n) for n in names]
    finally:
        sys.path.remove(str(repo))
        forget()
    found: dict[type, list] = {DataSource: [], Entity: [], FeatureView: [], FeatureService: [], Project: []}
    for module in modules:
        for attr in dir(module):
            obj = getattr(module, attr)
            for kind, objs in found.items():
                if isinstance(obj, kind) and not any(obj is o for o in objs):
                    objs.append(obj)
    views = found[FeatureView]
    sources = found[DataSource] + [v.batch_source for v in views
                                   if not any(v.batch_source is s for s in found[DataSource])]
    return RepoContents(
        projects=found[Project] or [Project(name=project)],
        data_sources=sources, entities=found[Entity], feature_views=views,
        on_demand_feature_views=[], stream_feature_views=[], label_views=[],
        feature_services=found[FeatureService], permissions=[],
    )


def apply_definitions(params: Params) -> None:
    """Programmatic ``feast apply``: register feature_repo/'s objects (removing stale ones) and
    create the online tables, with the definitions built from ``params``."""
    store = get_store(params)
    token = _ACTIVE_PARAMS.set(params)
    try:
        contents = _load_repo_contents(params.path("feature_repo"), store.project)
    finally:
        _ACTIVE_PARAMS.reset(token)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):  # Feast echoes its diff; keep it for the log instead
        apply_total_with_repo_instance(store, store.project, store.registry, contents,
                                       skip_source_validation=False)
    log.info("feast apply:\n%s", out.getvalue())


# ----------------------------------------------------------------------------------------------
# Materialise


def _source_path(params: Params, table: str) -> Path:
    folder = ("hkfr_dir" if table == "user_knowledge" else "embeddings_dir" if table.endswith("_embeddings")
              else "features_dir")
    return params.path(folder) / f"{table}.parquet"


def latest_feature_time(params: Params) -> datetime:
    """The latest event_timestamp over all feature tables."""
    latest = None
    for table in TABLES:
        path = _source_path(params, table)
        if not path.exists():
            raise FileNotFoundError(f"{path}: feature table missing (run build_feature_tables first)")
        col = pq.read_table(path, columns=[TIMESTAMP]).column(TIMESTAMP)
        if len(col):
            t = pd.Timestamp(pc.max(col).as_py())
            latest = t if latest is None else max(latest, t)
    if latest is None:
        raise ValueError(f"{params.path('features_dir')}: every feature table is empty; nothing to materialise")
    return (latest.tz_localize("UTC") if latest.tzinfo is None else latest).to_pydatetime()


def _window_rows(params: Params, table: str, start: datetime, end: datetime, key: str | None = None) -> tuple[int, int]:
    """(rows in [start, end], distinct entities among them) of a feature table: what Feast reads
    and what it writes (the latest row per entity) when materialising that window."""
    key = key or KEYS[table]
    t = pq.read_table(_source_path(params, table), columns=[key, TIMESTAMP])
    ts = t.column(TIMESTAMP)
    mask = pc.and_(pc.greater_equal(ts, pd.Timestamp(start)), pc.less_equal(ts, pd.Timestamp(end)))
    keys = t.column(key).filter(mask)
    return len(keys), len(pc.unique(keys))


def _fingerprint(fv: FeatureView) -> str:
    """What makes online rows of a view comparable across runs: its schema, source and ttl."""
    schema = sorted((f.name, str(f.dtype)) for f in fv.features)
    return json.dumps([schema, fv.batch_source.path if fv.batch_source else None, str(fv.ttl)])




def _reset_online_table(store: FeatureStore, fv: FeatureView) -> None:
    """Drop and recreate the online table of ``fv``: rows of entities a new batch no longer has
    must not be served (materialisation only upserts)."""
    online = store._get_provider().online_store
    online.update(store.config, tables_to_delete=[fv], tables_to_keep=[], entities_to_delete=[],
                  entities_to_keep=[], partial=True)  # drops first, so two calls: drop, then create
    online.update(store.config, tables_to_delete=[], tables_to_keep=[fv], entities_to_delete=[],
                  entities_to_keep=[], partial=True)


def recover_stuck_views(params: Params, store: FeatureStore | None = None) -> list[str]:
    """Views a killed materialisation left ``MATERIALIZING`` (Feast then refuses to serve them) go
    back to ``GENERATED`` and lose their materialisation state, so the next :func:`materialize`
    reloads them. Call it holding the features lock: then no live run is materialising them."""
    from feast.feature_view import FeatureViewState

    store = store or get_store(params)
    stuck = [fv.name for fv in store.list_feature_views()
             if getattr(fv, "state", None) == FeatureViewState.MATERIALIZING]
    if not stuck:
        return []
    for name in stuck:
        store.set_feature_view_state(name, FeatureViewState.GENERATED)
    state_file = feast_dir(params) / "materialized.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    write_text_atomic(state_file, json.dumps({k: v for k, v in state.items() if k not in stuck}, indent=1) + "\n")
    log.warning("feature views left MATERIALIZING by a killed run, reset for reloading: %s", stuck)
    return stuck


def materialize(params: Params, end: datetime | None = None, views: list[str] | None = None,
                full: bool = False) -> dict:
    """Make the online store hold exactly the latest row per entity of every view's offline table,
    up to ``end`` (default: latest feature time + 1 s).

    The feature tables are rebuilt whole from curated data on every run, so a replaced batch, an
    appended one or late data may change rows at *any* timestamp; a watermark (re-read from the
    last end minus an overlap) would keep stale rows and miss older ones. So a view whose table
    changed (md5), whose schema / source / ttl changed, or that was never loaded, is reloaded in
    full: its online table is emptied, then materialised from ``end - ttl`` (static views: the
    epoch), the same window the point-in-time join honours. An unchanged table only loads rows
    past the end it was loaded to. ``full`` reloads every view. The view's state entry is dropped
    before its reload and written after it, so a run killed half-way reloads that view next time.
    ``views`` restricts the run to those views; a view whose table does not exist yet (e.g. the LLM
    embeddings before the LLM stages ran) is skipped. Returns entity rows written, rows read,
    seconds per view, views reloaded and overall rows/s.
    """
    end = end or latest_feature_time(params) + timedelta(seconds=1)
    end = end if end.tzinfo else end.replace(tzinfo=timezone.utc)
    store = get_store(params)
    recovered = recover_stuck_views(params, store)
    state_file = feast_dir(params) / "materialized.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    only = views
    views = sorted(store.list_feature_views(), key=lambda v: v.name)
    views = [v for v in views if (only is None or v.name in only) and _source_path(params, v.name).exists()]
    if not views:
        raise RuntimeError(f"no feature views in the registry under {feast_dir(params)}: run apply_definitions first")
    written, read, seconds, reloaded = {}, {}, {}, []
    for fv in views:
        table = fv.name
        source = file_digest(_source_path(params, table), hashlib.md5())  # whether its rows may have changed since the last load
        entry = state.get(fv.name)
        entry = entry if isinstance(entry, dict) else {}  # an older state format: reload
        floor = end - fv.ttl if fv.ttl and fv.ttl.total_seconds() > 0 else _EPOCH
        same = not full and entry.get("view") == _fingerprint(fv) and entry.get("source") == source
        if same:
            start = max(datetime.fromisoformat(entry["end"]), floor)
        else:
            state.pop(fv.name, None)
            write_text_atomic(state_file, json.dumps(state, indent=1) + "\n")
            _reset_online_table(store, fv)
            crash_point("materialize.after_reset")
            reloaded.append(fv.name)
            start = floor
        t0 = time.perf_counter()
        if start < end:
            with contextlib.redirect_stdout(io.StringIO()):  # progress bars and banners
                store.materialize(start_date=start, end_date=end, feature_views=[fv.name])
            read[fv.name], written[fv.name] = _window_rows(params, table, start, end, fv.entity_columns[0].name)
        else:
            read[fv.name], written[fv.name] = 0, 0
        seconds[fv.name] = round(time.perf_counter() - t0, 3)
        loaded_to = max(end, datetime.fromisoformat(entry["end"])) if same else end
        state[fv.name] = {"view": _fingerprint(fv), "source": source, "end": loaded_to.isoformat()}
        write_text_atomic(state_file, json.dumps(state, indent=1) + "\n")
    total_s = sum(seconds.values())
    total = sum(written.values())
    return {
        "rows": written,
        "rows_read": read,
        "seconds": seconds,
        "reloaded": reloaded,
        "views_reloaded": len(reloaded),
        "views_recovered": len(recovered),
        "rows_total": total,
        "rows_per_s": round(total / total_s, 1) if total_s > 0 else 0.0,
        "end": end.isoformat(),
    }


# ----------------------------------------------------------------------------------------------
# Read


def entity_frame(params: Params, impressions: pd.DataFrame) -> pd.DataFrame:
    """Impressions as Feast's entity dataframe: keys, ``event_timestamp`` = impression time,
    the request-time scene columns and the labels."""
    df = scene_features(impressions, params.features)
    df = df.rename(columns={"ts": TIMESTAMP})
    df[TIMESTAMP] = pd.to_datetime(df[TIMESTAMP], utc=True)
    for key in ("user_id", "poi_id", "context_id"):
        df[key] = df[key].astype(str)
    return df


def _view_refs(store: FeatureStore, service: FeatureService) -> list[tuple[str, list[str], list[str]]]:
    """(view name, its join keys, its feature names) for every view of a feature service."""
    out = []
    for proj in service.feature_view_projections:
        fv = store.get_feature_view(proj.name)
        keys = [store.get_entity(e).join_key for e in fv.entities]
        out.append((proj.name, keys, [f.name for f in proj.features]))
    return out


def training_frame(params: Params, impressions: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time join of the ``ctr_training`` service onto impressions, one row per
    impression in the input order; features are named ``<view>__<feature>`` and are NaN where
    the entity has no snapshot yet (or only one older than the view's ttl).

    Feast's file (Dask) offline store in 0.67 loses entity rows in two ways: rows that share
    (join keys so far, timestamp), e.g. the impressions of one request, are collapsed
    (feast-dev/feast#6787), and rows whose entity has feature rows but none at or before the
    request time are dropped instead of given nulls. So each view is fetched through Feast for
    the *distinct* (its keys, timestamp) pairs, and joined back here; a pair Feast drops has no
    valid feature row, so NaN is its correct value.
    """
    entity = entity_frame(params, impressions).reset_index(drop=True)
    store = get_store(params)
    return join_views(store, entity, _view_refs(store, store.get_feature_service(SERVICE)))


def join_views(store: FeatureStore, entity: pd.DataFrame, views: list[tuple[str, list[str], list[str]]]) -> pd.DataFrame:
    """``entity`` (join keys + ``event_timestamp``) with the point-in-time features of ``views``
    ((view, its join keys, its features), as ``_view_refs`` lists them) as ``<view>__<feature>``
    columns, one row per entity row in the input order (see ``training_frame`` for why Feast gets
    the distinct pairs only)."""
    entity = entity.reset_index(drop=True)
    entity[TIMESTAMP] = pd.to_datetime(entity[TIMESTAMP], utc=True).dt.as_unit("ns")
    out = entity
    for view, keys, features in views:
        pairs = entity[keys + [TIMESTAMP]].drop_duplicates(ignore_index=True)
        got = store.get_historical_features(
            entity_df=pairs, features=[f"{view}:{f}" for f in features], full_feature_names=True
        ).to_df()
        got[TIMESTAMP] = pd.to_datetime(got[TIMESTAMP], utc=True).dt.as_unit("ns")
        got = got[keys + [TIMESTAMP] + [f"{view}__{f}" for f in features]]
        out = out.merge(got, on=keys + [TIMESTAMP], how="left", validate="many_to_one")
    if len(out) != len(entity):
        raise RuntimeError(f"point-in-time join returned {len(out)} rows for {len(entity)} entity rows")
    return out


def service_frame(params: Params, entity: pd.DataFrame, service: str) -> pd.DataFrame:
    """``entity`` with the point-in-time features of the feature service ``service``."""
    store = get_store(params)
    return join_views(store, entity, _view_refs(store, store.get_feature_service(service)))


def build_training_set(params: Params) -> Path:
    """Write ``<features_dir>/training_set.parquet``: the curated impressions with their features."""
    path = params.path("curated_dir") / "impressions.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: curated impressions missing (run `scenerec ingest` first)")
    df = training_frame(params, pd.read_parquet(path))
    out = params.path("features_dir") / TRAINING_SET
    write_parquet_atomic(df, out)
    return out


def ensure_servable(params: Params, store: FeatureStore | None = None) -> list[str]:
    """Reload the views a killed materialisation left unservable (``MATERIALIZING``), unless a live
    run holds the features lock (then it is materialising them now); returns the views reloaded."""
    from feast.feature_view import FeatureViewState

    from components.locks import LockTimeout, hold

    store = store or get_store(params)
    stuck = [fv.name for fv in store.list_feature_views()
             if getattr(fv, "state", None) == FeatureViewState.MATERIALIZING and _source_path(params, fv.name).exists()]
    if not stuck:
        return []
    try:
        with hold(params, "features", "reload of feature views a killed run left MATERIALIZING", timeout_s=0):
            materialize(params, views=stuck)
    except LockTimeout:
        return []
    return stuck


def online_features(params: Params, user_id: str, poi_id: str, context_id: str | None = None) -> dict:
    """Latest materialised features for one request, ``{"<view>__<feature>": value}``.

    Without ``context_id`` the context features are left out.
    """
    store = get_store(params)
    if ensure_servable(params, store):
        store = get_store(params)
    row = {"user_id": str(user_id), "poi_id": str(poi_id)}
    if context_id is not None:
        row["context_id"] = str(context_id)
    refs = [f"{view}:{f}" for view, keys, features in _view_refs(store, store.get_feature_service(SERVICE))
            if set(keys) <= set(row) for f in features]
    values = store.get_online_features(features=refs, entity_rows=[row], full_feature_names=True).to_dict()
    ordered = list(row) + [r.replace(":", "__") for r in refs]  # Feast's dict order is arbitrary
    return {k: values[k][0] for k in ordered}
