"""LLM embeddings as features (LARR stage 3 input): every distinct value of each scene feature
and every PoI's text, embedded once offline by the scene encoder (components/llm/embed.py), so
the CTR model looks them up instead of running the LLM per request."""
from datetime import timedelta

from feast import FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Float32, String

from components.features.engineering import TIMESTAMP
from components.features.store import features_dir_for_repo
from data_sources import PARAMS, REPO
from entities import poi, scene_value

EMBEDDINGS_DIR = features_dir_for_repo(PARAMS, REPO, "embeddings_dir")

scene_embeddings_source = FileSource(
    name="scene_embeddings_source", path=f"{EMBEDDINGS_DIR}/scene_embeddings.parquet", timestamp_field=TIMESTAMP,
    description="One row per (scene feature, value): its text embedding.")
poi_embeddings_source = FileSource(
    name="poi_embeddings_source", path=f"{EMBEDDINGS_DIR}/poi_embeddings.parquet", timestamp_field=TIMESTAMP,
    description="One row per PoI: the embedding of its text, stamped at opened_at.")

# ttl 0: an embedding is a function of static text; it never expires.
scene_embeddings = FeatureView(
    name="scene_embeddings", entities=[scene_value], ttl=timedelta(0), online=True,
    schema=[Field(name="feature", dtype=String), Field(name="value", dtype=String),
            Field(name="embedding", dtype=Array(Float32))],
    source=scene_embeddings_source,
    description="Per-feature scene embeddings from the scene encoder (teacher or student, see params.embed).",
)
poi_embeddings = FeatureView(
    name="poi_embeddings", entities=[poi], ttl=timedelta(0), online=True,
    schema=[Field(name="embedding", dtype=Array(Float32))],
    source=poi_embeddings_source,
    description="PoI text embeddings from the scene encoder.",
)

scene_embedding_service = FeatureService(
    name="larr_scene_inputs", features=[scene_embeddings, poi_embeddings],
    description="What LARR's scene aggregation reads: cached per-feature scene and PoI embeddings.",
)
