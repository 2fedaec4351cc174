"""Data sources: the timestamped feature tables written by components/features/engineering.py.

Where they are comes from params.yaml (``paths.features_dir``), so one setting moves them for the
pipeline and for Feast alike; ``$SCENEREC_FEATURES_DIR`` overrides it. Inside the project the path
is stored relative to this folder, which Feast resolves against the repo path: the registry stays
valid in any checkout or temp copy of the project.
"""
from pathlib import Path

from feast import FileSource

from components.features.engineering import TIMESTAMP
from components.features.store import definition_params, features_dir_for_repo

REPO = Path(__file__).resolve().parent
PARAMS = definition_params(REPO)
FEATURES_DIR = features_dir_for_repo(PARAMS, REPO)


def _table(name: str, description: str) -> FileSource:
    return FileSource(name=f"{name}_source", path=f"{FEATURES_DIR}/{name}.parquet",
                      timestamp_field=TIMESTAMP, description=description)


user_stats_source = _table("user_stats", "Cumulative user behaviour aggregates, one snapshot per active period.")
user_profile_source = _table("user_profile", "Stated age group and gender (one-hot), stamped at registered_at.")
poi_profile_source = _table("poi_profile", "Static PoI attributes, stamped at opened_at.")
poi_stats_source = _table("poi_stats", "Cumulative PoI popularity, one snapshot per active period.")
context_stats_source = _table("context_stats", "Cumulative context counts and D(C), one snapshot per active period.")
