"""The one scoring-input schema (issue 15 item 5): safe coercions, every other odd input refused
with the column / field, the value and the rule."""
import math

import pandas as pd
import pytest

from components.serve.schema import InvalidRequest, parse_request, validate_frame


def good_request(**over):
    req = {"user_id": "u1", "ts": "2024-05-01T12:30:00Z", "geohash": "wx4g0b", "location_type": "office",
           "weather": "sunny", "temperature_c": 21.5, "is_holiday": False, "candidates": ["p1", "p2"]}
    req.update(over)
    return req


def good_frame(n=3, **over):
    df = pd.DataFrame({"request_id": "r1", "user_id": "u1", "poi_id": [f"p{i}" for i in range(n)],
                       "ts": "2024-05-01T12:30:00Z", "geohash": "wx4g0b", "location_type": "office",
                       "weather": "sunny", "temperature_c": 21.5, "is_holiday": False})
    for k, v in over.items():
        df[k] = v
    return df


@pytest.mark.parametrize("value, expected", [("False", False), ("false", False), ("0", False), (0, False),
                                             ("True", True), ("true", True), (1, True), (True, True)])
def test_is_holiday_strings_coerce_to_the_right_bool(value, expected):
    assert parse_request(good_request(is_holiday=value), 10).is_holiday is expected
    assert validate_frame(good_frame(is_holiday=value))["is_holiday"].tolist() == [expected] * 3


def test_an_integer_temperature_is_taken_as_float():
    req = parse_request(good_request(temperature_c=21), 10)
    assert isinstance(req.temperature_c, float) and req.temperature_c == 21.0
    out = validate_frame(good_frame(temperature_c=21))
    assert out["temperature_c"].dtype == float and (out["temperature_c"] == 21.0).all()


@pytest.mark.parametrize("field, value, rule", [
    ("temperature_c", float("nan"), "finite"),
    ("temperature_c", -300, "greater than or equal to -40"),
    ("temperature_c", "warm", "valid number"),
    ("location_type", "moon", "'home'"),
    ("weather", "lava", "'sunny'"),
    ("geohash", "AAAA!", "pattern"),
    ("ts", "yesterday-ish", "datetime"),
    ("ts", "0001-01-01T00:00:00Z", "must be between 1677-09-23 and 2262-04-10"),  # pandas' nanosecond range
    ("ts", "2300-01-01T00:00:00Z", "must be between 1677-09-23 and 2262-04-10"),
    ("is_holiday", "maybe", "boolean"),
    ("user_id", 17, "valid string"),
])
def test_bad_values_are_refused_naming_field_value_and_rule(field, value, rule):
    with pytest.raises(InvalidRequest) as e:
        parse_request(good_request(**{field: value}), 10)
    msg = str(e.value)
    assert field in msg and rule in msg and (repr(value) in msg or (isinstance(value, float) and "nan" in msg))
    with pytest.raises(InvalidRequest) as e:
        validate_frame(good_frame(**{field: value}))
    msg = str(e.value)
    assert f"column {field!r}" in msg and "row 0" in msg and rule in msg


def test_missing_and_unknown_fields_are_named():
    req = good_request(colour="red")
    del req["weather"]
    with pytest.raises(InvalidRequest) as e:
        parse_request(req, 10)
    assert "weather: missing" in str(e.value) and "colour: unknown field" in str(e.value)
    with pytest.raises(InvalidRequest) as e:
        validate_frame(good_frame(colour="red").drop(columns=["weather"]))
    assert "'weather': missing" in str(e.value) and "'colour': unknown column" in str(e.value)


def test_candidate_list_empty_or_over_the_maximum_is_refused():
    with pytest.raises(InvalidRequest, match="candidates: .*at least 1"):
        parse_request(good_request(candidates=[]), 10)
    with pytest.raises(InvalidRequest, match="3 candidates exceed the configured maximum of 2"):
        parse_request(good_request(candidates=["a", "b", "c"]), 2)
    with pytest.raises(InvalidRequest, match="3 candidates exceed the configured maximum of 2"):
        validate_frame(good_frame(3), max_candidates=2)


def test_an_empty_frame_is_valid_and_stays_empty():
    assert validate_frame(good_frame(0)).empty


def test_naive_timestamps_are_utc_and_the_frame_comes_back_typed():
    out = validate_frame(good_frame(ts=pd.Timestamp("2024-05-01 12:30")))
    assert str(out["ts"].dt.tz) == "UTC" and out["ts"].iloc[0].hour == 12
    assert parse_request(good_request(ts="2024-05-01T14:30:00+02:00"), 10).ts.hour == 12


def test_one_request_has_one_scene():
    df = good_frame()
    df.loc[1, "weather"] = "rainy"
    with pytest.raises(InvalidRequest, match="'weather': differs between the rows of one request_id"):
        validate_frame(df)


def test_a_missing_cell_is_reported_as_missing_not_as_a_type_error():
    df = good_frame()
    df.loc[2, "location_type"] = None
    with pytest.raises(InvalidRequest) as e:
        validate_frame(df)
    assert "column 'location_type', row 2" in str(e.value)
    assert not math.isnan(validate_frame(good_frame())["temperature_c"].iloc[0])
