"""HKFR's semantic user feature (METHODS.md §3): each user's heterogeneous-knowledge text embedded
by the instruction-tuned LLM and reduced by PCA to ``hkfr.embedding_dim`` scalar features k00, k01, ...
(components/hkfr/stage.py), one row per knowledge snapshot, so a
point-in-time join gives every impression the knowledge of its user as of that moment."""
from datetime import timedelta

from feast import FeatureService, FeatureView, Field, FileSource
from feast.types import Float32, Int64

from components.features.engineering import TIMESTAMP
from components.features.store import features_dir_for_repo
from data_sources import PARAMS, REPO
from entities import user

HKFR_DIR = features_dir_for_repo(PARAMS, REPO, "hkfr_dir")

user_knowledge_source = FileSource(
    name="user_knowledge_source", path=f"{HKFR_DIR}/user_knowledge.parquet", timestamp_field=TIMESTAMP,
    description="One row per (user, knowledge snapshot): the tuned LLM's knowledge embedding.")

# ttl 0: a snapshot stays the user's knowledge until the next one.
user_knowledge = FeatureView(
    name="user_knowledge", entities=[user], ttl=timedelta(0), online=True,
    schema=[*(Field(name=f"k{i:02d}", dtype=Float32) for i in range(PARAMS.hkfr.embedding_dim)),
            Field(name="n_behaviors", dtype=Int64)],
    source=user_knowledge_source,
    description="HKFR user knowledge embedding (PCA of the instruction-tuned LLM's pooled states).",
)

hkfr_user_knowledge = FeatureService(
    name="hkfr_user_knowledge", features=[user_knowledge],
    description="HKFR's user feature for the CTR model (ctr.user_knowledge).",
)
