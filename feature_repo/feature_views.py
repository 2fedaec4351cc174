"""Feature views: one per feature table. Schemas come from engineering.feature_schema, so they
follow ``top_categories`` and the band edges in params.yaml."""
from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float32, Float64, Int64

from components.features.engineering import feature_schema
from data_sources import (PARAMS, context_stats_source, poi_profile_source, poi_stats_source,
                          user_profile_source, user_stats_source)
from entities import context, poi, user

_TYPES = {"int64": Int64, "float32": Float32, "float64": Float64}
_SCHEMA = feature_schema(PARAMS.features)
# Aggregates older than this are treated as missing (a user gone for months is a cold user again).
_TTL = timedelta(days=PARAMS.features.ttl_days)


def _fields(table: str) -> list[Field]:
    return [Field(name=name, dtype=_TYPES[kind]) for name, kind in _SCHEMA[table]]


user_stats = FeatureView(
    name="user_stats", entities=[user], ttl=_TTL, schema=_fields("user_stats"),
    source=user_stats_source, online=True,
    description="Behaviour counts, category / price-band mix of clicks+orders, recency, active days.",
)
user_profile = FeatureView(
    # ttl 0: what a user stated at registration stays theirs (a cold user's only personal signal).
    name="user_profile", entities=[user], ttl=timedelta(0), schema=_fields("user_profile"),
    source=user_profile_source, online=True,
    description="Age group and gender, one-hot (all zero when unknown).",
)
poi_profile = FeatureView(
    # ttl 0: static attributes never expire (Feast only bounds by event_timestamp <= request time).
    name="poi_profile", entities=[poi], ttl=timedelta(0), schema=_fields("poi_profile"),
    source=poi_profile_source, online=True,
    description="Category, price, rating (filled, with a missing flag), delivery time and their bands.",
)
poi_stats = FeatureView(
    name="poi_stats", entities=[poi], ttl=_TTL, schema=_fields("poi_stats"),
    source=poi_stats_source, online=True,
    description="Cumulative views / clicks / favourites / orders, smoothed CTR and CVR.",
)
context_stats = FeatureView(
    name="context_stats", entities=[context], ttl=_TTL, schema=_fields("context_stats"),
    source=context_stats_source, online=True,
    description="Behaviour / order counts and D(C): category, price, rating, delivery band shares (CoFARS).",
)
