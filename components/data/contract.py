"""The raw data contract (docs/data_contract.md) as data: one place that the generator,
the Great Expectations suites and the plain-pandas benchmark baseline all read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

TABLES = ("pois", "users", "behaviors", "impressions")

AGE_GROUPS = ("<18", "18-24", "25-34", "35-44", "45-54", "55+")
GENDERS = ("f", "m", "u")
LOCATION_TYPES = ("home", "office", "school", "outdoor", "other")
WEATHERS = ("sunny", "cloudy", "rainy", "snowy", "windy", "foggy")
BEHAVIORS = ("view", "click", "favorite", "order", "search")
# Geohash base32 alphabet (no a, i, l, o); precision 5-8 characters.
GEOHASH_REGEX = r"^[0-9b-hjkmnp-z]{5,8}$"


@dataclass(frozen=True)
class Column:
    """One contract column: its logical type and the rules a value must satisfy."""

    name: str
    dtype: str  # "string" | "float" | "int" | "bool" | "timestamp"
    nullable: bool = False
    unique: bool = False
    min_value: float | None = None
    max_value: float | None = None
    strict_min: bool = False  # min is exclusive (price > 0)
    value_set: tuple | None = None
    regex: str | None = None
    not_future: bool = False
    references: str | None = None  # "table.column" that must contain every non-null value


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # unique together (one-column keys also have Column.unique)
    checks: tuple[str, ...] = field(default=())  # table-level rules, named in RULES below

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


SCENE_COLUMNS = (
    Column("geohash", "string", regex=GEOHASH_REGEX),
    Column("location_type", "string", value_set=LOCATION_TYPES),
    Column("weather", "string", value_set=WEATHERS),
    Column("temperature_c", "float", min_value=-40, max_value=50),
    Column("is_holiday", "bool"),
)
SCENE_COLUMN_NAMES = tuple(c.name for c in SCENE_COLUMNS)

POIS = Table(
    "pois",
    (
        Column("poi_id", "string", unique=True),
        Column("name", "string"),
        Column("category", "string"),
        Column("price", "float", min_value=0, strict_min=True),
        Column("rating", "float", nullable=True, min_value=0, max_value=5),
        Column("delivery_minutes", "int", min_value=5, max_value=180),
        Column("geohash", "string", regex=GEOHASH_REGEX),
        Column("description", "string", nullable=True),
        Column("opened_at", "timestamp", not_future=True),
    ),
    key=("poi_id",),
)

USERS = Table(
    "users",
    (
        Column("user_id", "string", unique=True),
        Column("age_group", "string", nullable=True, value_set=AGE_GROUPS),
        Column("gender", "string", nullable=True, value_set=GENDERS),
        Column("home_geohash", "string", nullable=True, regex=GEOHASH_REGEX),
        Column("registered_at", "timestamp", not_future=True),
    ),
    key=("user_id",),
)

BEHAVIORS_TABLE = Table(
    "behaviors",
    (
        Column("ts", "timestamp", not_future=True),
        Column("user_id", "string", references="users.user_id"),
        # Null only for `search` (table-level rule poi_null_only_for_search).
        Column("poi_id", "string", nullable=True, references="pois.poi_id"),
        Column("behavior", "string", value_set=BEHAVIORS),
        Column("query", "string", nullable=True),
        *SCENE_COLUMNS,
    ),
    key=(),
    checks=("poi_null_only_for_search", "query_only_for_search"),
)

IMPRESSIONS = Table(
    "impressions",
    (
        Column("request_id", "string"),
        Column("ts", "timestamp"),
        Column("user_id", "string", references="users.user_id"),
        Column("poi_id", "string", references="pois.poi_id"),
        Column("position", "int", min_value=0),
        *SCENE_COLUMNS,
        Column("click", "int", value_set=(0, 1)),
        Column("order", "int", value_set=(0, 1)),
    ),
    key=("request_id", "poi_id"),
    checks=("order_le_click",),
)

CONTRACT: dict[str, Table] = {t.name: t for t in (POIS, USERS, BEHAVIORS_TABLE, IMPRESSIONS)}

# Table-level rules, in words, for error messages and reports.
RULES = {
    "poi_null_only_for_search": "poi_id may be null only when behavior is 'search'",
    "query_only_for_search": "query must be null unless behavior is 'search'",
    "order_le_click": "order must be <= click (no order without a click)",
}

# Optional oracle file of synthetic batches (never used for training).
TRUTH_COLUMNS = ("request_id", "poi_id", "p_click", "p_order")
