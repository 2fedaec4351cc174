"""A trained CTR model as a self-contained artefact, and the MLflow pyfunc that serves it.

Folder layout (``save_model``): ``model.pt`` (weights; an ensemble or a seed bag: ``ensemble.json``
and ``members/<member>/``), ``model.json`` (model name, ``ctr`` and
``features`` sections, input shapes), ``encoder.json`` (vocabularies, normalisation) and
``serving/`` — the snapshot a request needs: the latest row of each feature view per key (what the
online store holds), the PoI catalogue and its text embeddings, the per-feature scene embeddings and
the users' latest behaviours. ``CTRScorer`` scores any impressions-like frame with current data
(used to compare champion and challenger on the same test rows); ``CTRPyfunc`` scores a request:
one row per candidate with ``request_id, user_id, poi_id`` and the scene columns.
"""
from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from components.config import CTRConfig, FeaturesConfig
from components.ctr import families
from components.ctr.data import (SCENE_COLUMNS, FeatureEncoder, History, PoiTable, RequestData, encode_requests,
                                 scene_embedding_table)
from components.ctr.model import CTRModel
from components.features.engineering import KEYS

FEATURE_VIEWS = KEYS  # every feature table the features stage writes -> its entity key
KNOWLEDGE_VIEW = "user_knowledge"  # HKFR's user knowledge embedding (ctr.user_knowledge)
SERVED_VIEWS = {**FEATURE_VIEWS, KNOWLEDGE_VIEW: "user_id"}
OUTPUT_COLUMNS = {"request_id": object, "poi_id": object, "ctr": np.float64, "ctcvr": np.float64,
                  "cold_poi": bool, "cold_user": bool}
REQUEST_COLUMNS = ["request_id", "user_id", "poi_id", "ts", "geohash", "location_type", "weather",
                   "temperature_c", "is_holiday"]


class CTRScorer:
    """A trained model with its encoder and config: encodes frames with its own vocabularies."""

    def __init__(self, model: CTRModel, encoder: FeatureEncoder, cfg: CTRConfig, features: FeaturesConfig):
        self.model, self.encoder, self.cfg, self.features = model.eval(), encoder, cfg, features
        self._cached_table = None  # the scene table the model's LARR serving cache was built from

    def save(self, out_dir: Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.model.name, "ctr": self.cfg.model_dump(mode="json"),
                "features": self.features.model_dump(mode="json")}
        meta.update(families.save(self.model, out_dir))  # components/ctr/families.py
        (out_dir / "model.json").write_text(json.dumps(meta, indent=2))
        self.encoder.save(out_dir / "encoder.json")
        return out_dir

    @classmethod
    def load(cls, model_dir: Path, device: str = "cpu") -> "CTRScorer":
        model_dir = Path(model_dir)
        if not (model_dir / "model.json").exists():
            raise FileNotFoundError(f"{model_dir}: no CTR model here (model.json missing; run `scenerec ctr` first)")
        meta = json.loads((model_dir / "model.json").read_text())
        cfg, features = CTRConfig(**meta["ctr"]), FeaturesConfig(**meta["features"])
        encoder = FeatureEncoder.load(model_dir / "encoder.json")
        return cls(families.load(meta["name"], meta, model_dir, cfg, device), encoder, cfg, features)

    def prepare(self, frame: pd.DataFrame, behaviors: pd.DataFrame, pois: pd.DataFrame,
                poi_embeddings: pd.DataFrame | None, scene_embeddings: pd.DataFrame | None,
                users: pd.DataFrame | None = None, truth: pd.DataFrame | None = None,
                cold_after_ns: int | None = None):
        """(RequestData, PoiTable, History, scene table) of ``frame`` under this model's encoder."""
        poi_table = PoiTable.build(pois, self.encoder, self.features, poi_embeddings)
        history = History.build(behaviors, poi_table, self.encoder, self.cfg, self.features)
        ids, table = scene_embedding_table(scene_embeddings)
        opened = dict(zip(pois["poi_id"].astype(str), pois["opened_at"]))
        frame = frame.assign(opened_at=frame["poi_id"].astype(str).map(opened))
        data = encode_requests(frame, self.encoder, poi_table, history, cold_after_ns, users, self.features,
                               truth, None, ids)
        return data, poi_table, history, table

    def score(self, data: RequestData, poi_table: PoiTable, history: History, scene_table,
              served: dict | None = None) -> dict:
        """``predict`` output (flat arrays) for encoded requests. ``served``: an ensemble's members
        already scored (id(member) -> scores), e.g. its CoFARS member from a served per-user state."""
        from components.ctr.data import CTRDataset

        ds = CTRDataset(self.encoder, poi_table, history, data, data, data, scene_table, 0, 0)
        if scene_table is not None and self._cached_table is not scene_table:  # rows index this table
            self.model.use_scene_table(scene_table)
            self._cached_table = scene_table
        if served:
            return self.model.predict(data, ds, served=served)
        return families.scores(self.model, data, ds, self.cfg)

    def evaluate(self, frame: pd.DataFrame, behaviors, pois, poi_embeddings, scene_embeddings, users=None,
                 truth=None, cold_after_ns: int | None = None) -> dict:
        """Test metrics of this model on ``frame`` (same rules as components/ctr/evaluate.py)."""
        from components.ctr.evaluate import score_metrics

        prepared = self.prepare(frame, behaviors, pois, poi_embeddings, scene_embeddings, users, truth, cold_after_ns)
        return score_metrics(self.score(*prepared), prepared[0])


# ------------------------------------------------------------------------------------------------
# Serving snapshot


def latest_rows(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """The newest row per key (what materialisation puts in the online store)."""
    return df.sort_values("event_timestamp", kind="stable").drop_duplicates(key, keep="last")


def write_snapshot(out_dir: Path, features_dir: Path, curated_dir: Path, embeddings_dir: Path,
                   behaviors_per_user: int, knowledge_table: Path | None = None) -> Path:
    """The data a served request needs, next to the model (``serving/``); ``knowledge_table``: HKFR's
    user knowledge table, for a model trained with ``ctr.user_knowledge``."""
    snap = Path(out_dir) / "serving"
    snap.mkdir(parents=True, exist_ok=True)
    tables = {view: Path(features_dir) / f"{view}.parquet" for view in FEATURE_VIEWS}
    if knowledge_table is not None:
        tables[KNOWLEDGE_VIEW] = Path(knowledge_table)
    for view, path in tables.items():
        key = SERVED_VIEWS[view]
        df = latest_rows(pd.read_parquet(path), key)
        df = df.drop(columns=["event_timestamp"]).rename(columns={c: f"{view}__{c}" for c in df.columns if c != key})
        df.to_parquet(snap / f"{view}.parquet", index=False)
    pd.read_parquet(Path(curated_dir) / "pois.parquet").to_parquet(snap / "pois.parquet", index=False)
    pd.read_parquet(Path(curated_dir) / "users.parquet").to_parquet(snap / "users.parquet", index=False)
    b = pd.read_parquet(Path(curated_dir) / "behaviors.parquet", columns=["user_id", "poi_id", "behavior"] + SCENE_COLUMNS)
    b = b.sort_values(["user_id", "ts"], kind="stable").groupby("user_id", sort=False).tail(behaviors_per_user)
    b.to_parquet(snap / "behaviors.parquet", index=False)
    for name in ("poi_embeddings", "scene_embeddings"):
        src = Path(embeddings_dir) / f"{name}.parquet"
        if src.exists():
            pd.read_parquet(src).to_parquet(snap / f"{name}.parquet", index=False)
    return snap


class CTRPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: candidates of one or more requests in, ``ctr`` and ``ctcvr`` per candidate out.

    Input columns: request_id, user_id, poi_id, ts (ISO time of the request), geohash, location_type,
    weather, temperature_c, is_holiday; ``position`` is optional (default 0 for every candidate)."""

    def load_context(self, context):
        model_dir = Path(context.artifacts["model"])
        self.scorer = CTRScorer.load(model_dir)
        snap = model_dir / "serving"

        def opt(name):
            p = snap / f"{name}.parquet"
            return pd.read_parquet(p) if p.exists() else None

        self.views = {v: opt(v) for v in SERVED_VIEWS}
        self.pois, self.users, self.behaviors = opt("pois"), opt("users"), opt("behaviors")
        self.poi_embeddings, self.scene_embeddings = opt("poi_embeddings"), opt("scene_embeddings")
        self._tables = None

    max_candidates: int | None = None  # per request; None = no limit (the service sets serve.max_candidates)

    def _tables_once(self):
        """Catalogue (with the cold-start row), history and scene table, built once per loaded model."""
        if self._tables is None:
            from components.serve.cold import with_cold_row

            poi_table = PoiTable.build(self.pois, self.scorer.encoder, self.scorer.features, self.poi_embeddings)
            history = History.build(self.behaviors, poi_table, self.scorer.encoder, self.scorer.cfg, self.scorer.features)
            poi_table = with_cold_row(poi_table, self.scorer.encoder.n_categories)
            self._tables = (poi_table, history, scene_embedding_table(self.scene_embeddings))
        return self._tables

    def _frame(self, df: pd.DataFrame) -> pd.DataFrame:
        from components.features.engineering import scene_features

        df = df.copy()
        df["context_id"] = scene_features(df[SCENE_COLUMNS], self.scorer.features)["context_id"].values
        for view, key in SERVED_VIEWS.items():
            if self.views[view] is not None:
                df = df.merge(self.views[view], on=key, how="left")
        return df

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Validated (components/serve/schema.py) candidates in, ``ctr``/``ctcvr`` per candidate out,
        in the input's order; unknown PoIs and users are scored on the cold-start path and flagged."""
        from components.serve.cold import map_unknown
        from components.serve.schema import validate_frame

        clean = validate_frame(pd.DataFrame(model_input), self.max_candidates)
        if clean.empty:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in OUTPUT_COLUMNS.items()})
        poi_table, history, (ids, table) = self._tables_once()
        served_ids, cold_poi = map_unknown(clean["poi_id"].tolist(), poi_table)
        df = self._frame(clean.assign(poi_id=served_ids))
        data = encode_requests(df, self.scorer.encoder, poi_table, history, None, None, self.scorer.features,
                               None, None, ids)
        scores = self.scorer.score(data, poi_table, history, table)
        req = data.request_id[scores["row"]]
        out = pd.DataFrame({"request_id": req, "slot": scores["slot"],
                            "ctr": scores["ctr"].astype(np.float64), "ctcvr": scores["ctcvr"].astype(np.float64),
                            "cold_user": data.user[scores["row"]] == 0})
        # encode_requests orders candidates within a request by (ts, request_id, position), stably:
        # the same order the clean frame's rows take when sorted that way.
        order = clean.assign(_i=np.arange(len(clean))).sort_values(["ts", "request_id", "position"], kind="stable")
        order["slot"] = order.groupby("request_id", sort=False).cumcount().to_numpy()
        merged = order[["request_id", "slot", "_i"]].merge(out, on=["request_id", "slot"], how="left")
        merged = merged.sort_values("_i")
        return pd.DataFrame({"request_id": clean["request_id"].to_numpy(), "poi_id": clean["poi_id"].to_numpy(),
                             "ctr": merged["ctr"].to_numpy(), "ctcvr": merged["ctcvr"].to_numpy(),
                             "cold_poi": cold_poi, "cold_user": merged["cold_user"].to_numpy(bool)})


def example_request(snapshot_dir: Path, n: int = 5) -> pd.DataFrame:
    """A real-looking request for the signature: a user, the scene of their latest behaviour, n PoIs."""
    b = pd.read_parquet(Path(snapshot_dir) / "behaviors.parquet")
    pois = pd.read_parquet(Path(snapshot_dir) / "pois.parquet")
    row = b.iloc[-1]
    cand = pois["poi_id"].astype(str).head(n).tolist()
    return pd.DataFrame({"request_id": "example", "user_id": str(row["user_id"]), "poi_id": cand,
                         "ts": pd.Timestamp(row["ts"]).isoformat(), "geohash": str(row["geohash"]),
                         "location_type": str(row["location_type"]), "weather": str(row["weather"]),
                         "temperature_c": float(row["temperature_c"]), "is_holiday": bool(row["is_holiday"])})
