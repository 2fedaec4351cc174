"""Typed view of ``params.yaml``: one pydantic model per section, validated with clear errors.

Every component takes the section it needs (e.g. ``GenerateConfig``) plus paths, so the same
function serves the CLI, the DVC stage and the Prefect task.
"""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = "params.yaml"


class Section(BaseModel):
    # Unknown keys are typos more often than not: refuse them instead of silently ignoring.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    data_dir: str = "data"
    raw_batch: str = "data/raw/synthetic"
    curated_dir: str = "data/curated"
    quarantine_dir: str = "data/quarantine"
    features_dir: str = "data/features"
    feature_repo: str = "feature_repo"
    reports_dir: str = "reports"


class GenerateConfig(Section):
    n_users: int = Field(2000, ge=10)
    n_pois: int = Field(400, ge=10)
    n_requests: int = Field(10000, ge=10)
    impressions_per_request: int = Field(10, ge=1, le=100)
    mean_behaviors_per_user: float = Field(150, gt=0, le=20000)
    start: datetime = datetime.fromisoformat("2026-01-01T00:00:00+00:00")
    days: int = Field(60, ge=2, le=3650)
    cold_user_fraction: float = Field(0.1, ge=0, lt=1)
    cold_poi_fraction: float = Field(0.1, ge=0, lt=1)
    cold_start_after: float = Field(0.8, gt=0, lt=1)
    hidden_noise_std: float = Field(0.6, ge=0)
    position_bias: float = Field(0.12, ge=0)
    format: Literal["parquet", "csv"] = "parquet"

    @field_validator("start")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a timezone, e.g. 2026-01-01T00:00:00Z (timestamps are UTC)")
        return v

    @model_validator(mode="after")
    def _requests_fit(self):
        if self.impressions_per_request > self.n_pois:
            raise ValueError(
                f"impressions_per_request ({self.impressions_per_request}) exceeds n_pois ({self.n_pois})"
            )
        return self


class IngestConfig(Section):
    reference_time: datetime | None = None
    max_examples: int = Field(5, ge=1, le=100)
    mode: Literal["replace", "append"] = "replace"


def _increasing(v: list) -> list:
    if len(v) < 1 or any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError(f"must be a non-empty, strictly increasing list, got {v}")
    return v


class FeaturesConfig(Section):
    snapshot_hours: int = Field(24, ge=1, le=24 * 31)
    price_band_edges: list[float] = [25.0, 50.0, 90.0]
    rating_band_edges: list[float] = [3.5, 4.2, 4.7]
    delivery_band_edges: list[float] = [20, 35, 50]
    top_categories: int = Field(16, ge=1, le=256)
    ttl_days: int = Field(120, ge=1)
    popularity_prior: float = Field(20.0, ge=0)

    _check_edges = field_validator("price_band_edges", "rating_band_edges", "delivery_band_edges")(
        classmethod(lambda cls, v: _increasing(v))
    )


class TrackingConfig(Section):
    experiment: str = "scenerec"
    tracking_uri: str = "sqlite:///mlflow.db"


class Params(Section):
    seed: int = 42
    paths: PathsConfig = PathsConfig()
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    features: FeaturesConfig = FeaturesConfig()
    tracking: TrackingConfig = TrackingConfig()

    # Directory that relative paths are resolved against (the folder holding params.yaml).
    root: Path = Field(default_factory=Path.cwd, exclude=True)

    def path(self, name: str) -> Path:
        """Absolute path of ``paths.<name>``, resolved against the project root."""
        p = Path(getattr(self.paths, name))
        return p if p.is_absolute() else (self.root / p)


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message says where and why."""


def load_params(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Params:
    """Load and validate params.yaml (default: ./params.yaml or $SCENEREC_PARAMS).

    ``overrides`` is a nested dict merged over the file (used by flows and tests).
    """
    path = Path(path or os.environ.get("SCENEREC_PARAMS", DEFAULT_PARAMS)).resolve()
    if not path.exists():
        raise ParamsError(f"{path}: parameters file not found (run from the project root or pass --params)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    raw = _merge(raw, overrides or {})
    try:
        return Params(**raw, root=path.parent)
    except ValidationError as e:
        lines = [f"{path}: invalid parameters:"]
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
        raise ParamsError("\n".join(lines)) from None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
