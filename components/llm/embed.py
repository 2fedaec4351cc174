"""Scene and PoI embeddings into Feast (LARR §1, stage 3 input).

Each distinct value of each scene feature is written as its own short text
(``text.scene_feature_text``) and embedded once; so is every PoI (``text.poi_text``). The tables
go to the feature store's offline folder and are materialised to the online store, so serving
reads per-feature embeddings by key instead of running the LLM on every request.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Params
from components.features.engineering import TIMESTAMP
from components.llm.text import SCENE_FEATURES, poi_text, scene_feature_text, scene_values

# Scene values are timeless: stamp them well before any data so point-in-time joins always find them.
STATIC_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
SCENE_TABLE = "scene_embeddings"
POI_TABLE = "poi_embeddings"


def encoder_dir(params: Params) -> Path:
    """The fine-tuned encoder chosen by ``embed.encoder`` (teacher or student)."""
    return params.path("llm_dir") / f"encoder_{params.embed.encoder}"


def distinct_scene_values(params: Params) -> pd.DataFrame:
    """(feature, value) pairs seen in the curated behaviours and impressions."""
    cols = ["ts", "geohash", "location_type", "weather", "temperature_c", "is_holiday"]
    cur = params.path("curated_dir")
    frames = [pd.read_parquet(cur / f"{t}.parquet", columns=cols) for t in ("behaviors", "impressions")]
    values = scene_values(pd.concat(frames, ignore_index=True), params.features)
    pairs = [(f, v) for f in SCENE_FEATURES for v in sorted(values[f].dropna().astype(str).unique())]
    return pd.DataFrame(pairs, columns=["feature", "value"])


def scene_value_id(feature: str, value: str) -> str:
    return f"{feature}={value}"


def build_embedding_tables(params: Params, enc_dir: Path | None = None) -> dict:
    """Embed every scene value and PoI with the chosen encoder; write both feature tables."""
    from components.llm.encoder import TextEncoder

    enc_dir = Path(enc_dir) if enc_dir else encoder_dir(params)
    if not (enc_dir.exists()):
        raise FileNotFoundError(f"{enc_dir}: encoder missing (run `scenerec contrastive` / `scenerec distill` first)")
    encoder = TextEncoder.load(enc_dir)
    out = params.path("embeddings_dir")
    out.mkdir(parents=True, exist_ok=True)

    scenes = distinct_scene_values(params)
    t0 = time.perf_counter()
    scene_emb = encoder.encode([scene_feature_text(f, v) for f, v in zip(scenes["feature"], scenes["value"])],
                               batch_size=params.embed.batch_size)
    scene_s = time.perf_counter() - t0
    scenes.insert(0, "scene_value_id", [scene_value_id(f, v) for f, v in zip(scenes["feature"], scenes["value"])])
    scenes[TIMESTAMP] = pd.Timestamp(STATIC_TIME)
    scenes["embedding"] = list(scene_emb.astype(np.float32))
    scenes.to_parquet(out / f"{SCENE_TABLE}.parquet", index=False)

    pois = pd.read_parquet(params.path("curated_dir") / "pois.parquet")
    t0 = time.perf_counter()
    poi_emb = encoder.encode([poi_text(r) for r in pois.to_dict("records")], batch_size=params.embed.batch_size)
    poi_s = time.perf_counter() - t0
    table = pd.DataFrame({"poi_id": pois["poi_id"].astype(str), TIMESTAMP: pois["opened_at"],
                          "embedding": list(poi_emb.astype(np.float32))})
    table.to_parquet(out / f"{POI_TABLE}.parquet", index=False)
    return {
        "scene_values": len(scenes), "pois": len(table), "dim": int(scene_emb.shape[1]),
        "scene_texts_per_s": round(len(scenes) / max(scene_s, 1e-9), 1),
        "poi_texts_per_s": round(len(table) / max(poi_s, 1e-9), 1),
    }


def embed_step(params: Params) -> dict:
    """Build the embedding tables, register them with Feast and materialise them online."""
    from components.features.store import apply_definitions, materialize

    metrics = build_embedding_tables(params)
    apply_definitions(params)
    # Re-computed embeddings keep their timestamps, so an incremental window would miss them.
    mat = materialize(params, views=[SCENE_TABLE, POI_TABLE], full=True)
    metrics.update({f"materialize.rows.{k}": v for k, v in mat["rows"].items()})
    return metrics


def online_scene_embeddings(params: Params, scene: dict) -> dict[str, np.ndarray]:
    """Per-feature embeddings of one request's scene, read from the online store."""
    from components.features.store import get_store

    row = pd.DataFrame([scene])
    values = scene_values(row, params.features).iloc[0]
    ids = [scene_value_id(f, str(values[f])) for f in SCENE_FEATURES]
    got = get_store(params).get_online_features(
        features=["scene_embeddings:embedding"], entity_rows=[{"scene_value_id": i} for i in ids]
    ).to_dict()
    return {f: (np.asarray(e, dtype=np.float32) if e is not None else None)
            for f, e in zip(SCENE_FEATURES, got["embedding"])}
