"""The one scoring-input schema, shared by the registered CTR pyfunc and `scenerec serve`.

Safe coercions only: ``"false"``/``"False"``/``0`` -> False for ``is_holiday``, an integer
``temperature_c`` -> float, an ISO string or a datetime for ``ts`` (naive times are UTC). Everything
else is refused with a message naming the field (or column and row), the value and the rule:
NaN or out-of-range temperatures, a ``location_type`` or ``weather`` outside the data contract, a
malformed geohash, an unparseable ``ts``, missing or unknown fields, wrong types, an empty or
too long candidate list.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Annotated, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError, field_validator

from components.data.contract import GEOHASH_REGEX, LOCATION_TYPES, WEATHERS

# The contract's bounds for temperature_c (DATA_CONTRACT.md: -40 to 50).
TEMPERATURE_MIN, TEMPERATURE_MAX = -40.0, 50.0
SCENE_FIELDS = ("ts", "geohash", "location_type", "weather", "temperature_c", "is_holiday")

Id = Annotated[str, Strict(), Field(min_length=1, max_length=128)]


class InvalidRequest(ValueError):
    """A scoring input that breaks the schema; ``errors`` lists one line per broken rule."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("invalid scoring input: " + "; ".join(errors))


# The range of int64 nanoseconds since the epoch (pandas Timestamp), a day inside each end.
TS_MIN = datetime(1677, 9, 23, tzinfo=timezone.utc)
TS_MAX = datetime(2262, 4, 10, tzinfo=timezone.utc)


class Scene(BaseModel):
    """The request-time scene: when and where the user is."""

    model_config = ConfigDict(extra="forbid")
    ts: datetime
    geohash: Annotated[str, Strict(), Field(pattern=GEOHASH_REGEX)]
    location_type: Literal[LOCATION_TYPES]
    weather: Literal[WEATHERS]
    # Strict float still takes an int (safe widening) but never a string; NaN/inf are refused.
    temperature_c: Annotated[float, Strict(), Field(ge=TEMPERATURE_MIN, le=TEMPERATURE_MAX, allow_inf_nan=False)]
    is_holiday: bool  # lax: true/false/"False"/"0"/0/1, nothing else

    @field_validator("ts", mode="after")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        v = v.replace(tzinfo=timezone.utc) if v.tzinfo is None else v.astimezone(timezone.utc)
        if not TS_MIN <= v <= TS_MAX:  # timestamps are int64 nanoseconds downstream (pandas, the stores)
            raise ValueError(f"must be between {TS_MIN:%Y-%m-%d} and {TS_MAX:%Y-%m-%d} (UTC), got {v.isoformat()}")
        return v


class ScoringRequest(Scene):
    """One request of the service: a user, the scene, the candidate PoIs."""

    user_id: Id
    candidates: Annotated[list[Id], Field(min_length=1)]
    request_id: Id | None = None


class CandidateRow(Scene):
    """One row of the pyfunc's input frame (one candidate of one request)."""

    request_id: Id
    user_id: Id
    poi_id: Id
    position: Annotated[int, Strict(), Field(ge=0)] = 0


_ROWS = TypeAdapter(list[CandidateRow])


def _describe(err: dict, where: str) -> str:
    value = err.get("input")
    if err["type"] == "missing":
        return f"{where}: missing (required)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (value {value!r}); allowed: " + ", ".join(
            list(ScoringRequest.model_fields))
    return f"{where}: value {value!r} rejected: {err['msg']}"


def request_errors(err: ValidationError) -> list[str]:
    """One line per broken rule of a ScoringRequest: field, value, rule."""
    return [_describe(e, ".".join(str(p) for p in e["loc"]) or "request") for e in err.errors()]


def parse_request(payload, max_candidates: int) -> ScoringRequest:
    """Validate a service request (dict or JSON-able), raising InvalidRequest with every broken rule."""
    try:
        req = ScoringRequest.model_validate(payload)
    except ValidationError as e:
        raise InvalidRequest(request_errors(e)) from None
    if len(req.candidates) > max_candidates:
        raise InvalidRequest([f"candidates: {len(req.candidates)} candidates exceed the configured maximum "
                              f"of {max_candidates} (serve.max_candidates)"])
    return req


def _native(v):
    """numpy/pandas scalars -> plain Python (pydantic's strict types do not know numpy); NaN stays NaN
    for floats so the finite-number rule reports it, and a missing non-float cell becomes None."""
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    return v


def validate_frame(frame: pd.DataFrame, max_candidates: int | None = None) -> pd.DataFrame:
    """The pyfunc's input frame validated row by row (column, row, value and rule in every error)
    and returned with clean types: ``ts`` UTC, ``temperature_c`` float, ``is_holiday`` bool."""
    known = set(CandidateRow.model_fields)
    errors = [f"column {c!r}: unknown column; allowed: {sorted(known)}" for c in frame.columns if c not in known]
    missing = [c for c in known if c != "position" and c not in frame.columns]
    errors += [f"column {c!r}: missing (required)" for c in sorted(missing)]
    if errors:
        raise InvalidRequest(errors)
    records = [{k: _native(v) for k, v in row.items()} for row in frame.to_dict("records")]
    for r in records:  # a missing cell is None, whatever pandas made of it
        for k, v in r.items():
            if v is pd.NaT or (isinstance(v, float) and math.isnan(v) and k != "temperature_c"):
                r[k] = None
    try:
        rows = _ROWS.validate_python(records)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = err["loc"]
            where = f"column {loc[1]!r}, row {loc[0]}" if len(loc) > 1 else f"row {loc[0]}"
            lines.append(_describe(err, where))
        raise InvalidRequest(lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])) from None
    out = pd.DataFrame([r.model_dump() for r in rows], columns=list(CandidateRow.model_fields))
    if len(out):
        per_request = out.groupby("request_id").size()
        if max_candidates is not None and (per_request > max_candidates).any():
            big = per_request[per_request > max_candidates]
            raise InvalidRequest([f"request_id {k!r}: {v} candidates exceed the configured maximum of "
                                  f"{max_candidates}" for k, v in big.head(5).items()])
        scene = out.groupby("request_id")[list(SCENE_FIELDS) + ["user_id"]].nunique()
        mixed = scene.columns[(scene > 1).any()].tolist()
        if mixed:
            raise InvalidRequest([f"column {c!r}: differs between the rows of one request_id (one request has one "
                                  "user and one scene)" for c in mixed])
        out["ts"] = pd.to_datetime(out["ts"], utc=True)
    return out


class PushedBehavior(Scene):
    """One behaviour on the push path (the curated ``behaviors`` columns a request needs)."""

    user_id: Id
    poi_id: Id
    behavior: Literal["view", "click", "favorite", "order"]


_PUSHED = TypeAdapter(list[PushedBehavior])


def validate_behaviors(frame: pd.DataFrame) -> pd.DataFrame:
    """Pushed behaviours validated like scoring input (column, row, value, rule in every error)."""
    known = set(PushedBehavior.model_fields)
    frame = frame.drop(columns=["behavior_id"], errors="ignore")  # curated rows carry it; a push needs none
    errors = [f"column {c!r}: unknown column; allowed: {sorted(known)}" for c in frame.columns if c not in known]
    errors += [f"column {c!r}: missing (required)" for c in sorted(known - set(frame.columns))]
    if errors:
        raise InvalidRequest(errors)
    try:
        rows = _PUSHED.validate_python([{k: _native(v) for k, v in r.items()} for r in frame.to_dict("records")])
    except ValidationError as e:
        raise InvalidRequest([_describe(err, f"column {err['loc'][1]!r}, row {err['loc'][0]}" if len(err["loc"]) > 1
                                        else f"row {err['loc'][0]}") for err in e.errors()][:20]) from None
    out = pd.DataFrame([r.model_dump() for r in rows], columns=list(PushedBehavior.model_fields))
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    return out


def pyfunc_signature(output_example: pd.DataFrame):
    """The registered pyfunc's MLflow signature: every input column typed ``Any`` and optional, so
    MLflow's own type enforcement (which refuses an int temperature and passes "False" through as
    truthy) leaves the input to ``validate_frame``; the output typed from an example."""
    from mlflow.models import infer_signature
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = Schema([ColSpec(AnyType(), c, required=False) for c in CandidateRow.model_fields])
    return ModelSignature(inputs=inputs, outputs=infer_signature(None, output_example).outputs)
