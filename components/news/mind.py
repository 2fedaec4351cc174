"""The MIND format: read and validate a folder (``news.tsv`` + ``behaviors.tsv``), quarantine a bad
one, and generate a synthetic MIND world whose users follow topics and named entities.

Validation has the two stages of ``components/data/validate.py``. Reading (plain Python) catches
what a DataFrame cannot show: a missing or non-UTF-8 file and lines with the wrong number of
tab-separated fields. Great Expectations 1.x then runs one suite per file in an ephemeral context:
ids present and unique, impression tokens ``Nid-0|1``, MIND times, entity JSON, and every history
and impression id present in the folder's ``news.tsv``. Any failure rejects the whole folder: it is
copied to the quarantine with ``report.json`` and :class:`MindRejected` names file, column, rule,
row count and example lines.
"""
from __future__ import annotations

import json
import logging
import math
import os
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.data.validate import BatchRejected, Failure, _distinct, _jsonable, _new_context, write_json_atomic
from components.config import NewsConfig

log = logging.getLogger(__name__)

NEWS_FILE, BEHAVIORS_FILE = "news.tsv", "behaviors.tsv"
TRUTH_FILE = "truth.tsv"  # synthetic worlds only: impression_id, space-separated true utilities
NEWS_COLUMNS = ("news_id", "category", "subcategory", "title", "abstract", "url", "title_entities",
                "abstract_entities")
BEHAVIOR_COLUMNS = ("impression_id", "user_id", "time", "history", "impressions")
TIME_FORMAT = "%m/%d/%Y %I:%M:%S %p"  # MIND: 11/15/2019 10:22:32 AM (month, day and hour unpadded)
ENTITY_KEYS = ("Label", "Type", "WikidataId", "Confidence", "OccurrenceOffsets", "SurfaceForms")
NEWS_ID = r"^N\w+$"
HISTORY = r"^(?:N\w+(?: N\w+)*)?$"
IMPRESSIONS = r"^N\w+-[01](?: N\w+-[01])*$"
REPORT_NAME = "report.json"
_EXAMPLE_CHARS = 80  # long impression strings are cut in messages


@dataclass
class MindData:
    """A validated MIND folder. ``behaviors`` holds parsed columns: ``time`` (datetime),
    ``history`` (list of news ids, oldest first), ``candidates`` (news ids) and ``labels`` (0/1)."""

    folder: Path
    news: pd.DataFrame
    behaviors: pd.DataFrame


@dataclass
class MindValidation:
    """Outcome of :func:`validate_mind`: the failures and per-file figures; never raises for bad data."""

    folder: Path
    success: bool
    failures: list[Failure]
    rows: dict[str, int]
    frames: dict[str, pd.DataFrame]
    expectations: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """report.json: every failure and every expectation's result."""
        return {"folder": str(self.folder), "success": self.success, "failed_rules": len(self.failures),
                "rows": self.rows, "expectations_evaluated": len(self.expectations),
                "expectations_passed": sum(e["success"] for e in self.expectations),
                "failures": [asdict(f) for f in self.failures], "expectations": self.expectations}


class MindRejected(BatchRejected):
    """A MIND folder broke the format; it was quarantined whole and nothing was read from it."""

    def __init__(self, failures: list[Failure], quarantine_path: Path | None, folder: Path):
        self.folder = folder
        super().__init__(failures, quarantine_path, folder)

    def __str__(self) -> str:
        lines = [f"MIND folder {self.folder} rejected: {len(self.failures)} rule(s) failed"]
        lines += [f"  {f}" for f in self.failures]  # "behaviors.tsv.time: time_format — 2 rows, e.g. [...]"
        where = (f"Quarantined to {self.quarantine_path} (the folder and {REPORT_NAME})"
                 if self.quarantine_path else "Not quarantined (no quarantine folder given)")
        lines.append(f"{where}; nothing was written downstream. Fix the lines named above and load it again.")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Parsing helpers (also used by the model)


def parse_entities(text: str) -> list[dict]:
    """The entity list of a ``title_entities`` / ``abstract_entities`` field ("" and "[]" are empty)."""
    return json.loads(text) if text and text.strip() else []


def parse_time(text: str) -> datetime:
    """A MIND time (``11/15/2019 10:22:32 AM``) as a naive datetime."""
    return datetime.strptime(text, TIME_FORMAT)


def format_time(t: datetime) -> str:
    """A datetime written the MIND way: month, day and hour without leading zeros."""
    hour = t.hour % 12 or 12
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} {'AM' if t.hour < 12 else 'PM'}"


def _entities_ok(text: Any) -> bool:
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return True
    try:
        items = json.loads(text)
    except (TypeError, ValueError):
        return False
    if not isinstance(items, list):
        return False
    for e in items:
        if not isinstance(e, dict) or any(k not in e for k in ENTITY_KEYS):
            return False
        conf = e["Confidence"]
        if not (isinstance(e["Label"], str) and isinstance(e["WikidataId"], str) and e["WikidataId"]
                and isinstance(conf, (int, float)) and not isinstance(conf, bool) and 0 <= conf <= 1):
            return False
    return True


# --------------------------------------------------------------------------------------------
# Reading: file -> frame of text fields, or failures


def read_tsv(path: Path, columns: tuple[str, ...], max_examples: int = 5) -> tuple[pd.DataFrame | None, list[Failure]]:
    """Split a headerless MIND TSV into text columns plus ``line`` (1-based).

    Lines with another number of fields than ``columns`` become one ``field_count`` failure and are
    left out of the frame; quotes mean nothing in MIND (titles hold them), so no CSV parser is used.
    """
    name = path.name
    if not path.is_file():
        return None, [Failure(name, "*", "missing_file", 0, [], f"expected {path}")]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return None, [Failure(name, "*", "file_unreadable", 0, [], f"not UTF-8: {e}"[:300])]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return None, [Failure(name, "*", "empty_file", 0, [], f"{name} has no lines")]
    rows, bad = [], []
    for i, line in enumerate(lines, start=1):
        fields = line.rstrip("\r").split("\t")
        if len(fields) == len(columns):
            rows.append(fields)
            rows[-1].append(i)
        else:
            bad.append((i, len(fields)))
    frame = pd.DataFrame(rows, columns=[*columns, "line"])
    failures = []
    if bad:
        failures.append(Failure(name, "*", "field_count", len(bad),
                                [f"line {i}: {n} fields" for i, n in bad[:max_examples]],
                                f"every line needs {len(columns)} tab-separated fields ({', '.join(columns)})"))
    return frame, failures


# --------------------------------------------------------------------------------------------
# GX suites

# The news ids of the folder under validation, bound per run: an in-set expectation would carry
# (and GX copy and serialise) the whole id set in its configuration.
_NEWS_IDS: ContextVar[pd.Index] = ContextVar("scenerec_mind_news_ids")
_GX_CUSTOM: dict[str, type] = {}


def _custom_expectations() -> tuple[type, type]:
    """``expect_column_values_to_be_mind_entity_lists`` and ``..._to_reference_mind_news`` (defined once)."""
    if _GX_CUSTOM:
        return _GX_CUSTOM["entities"], _GX_CUSTOM["references"]
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import ColumnMapExpectation
    from great_expectations.expectations.metrics import ColumnMapMetricProvider, column_condition_partial

    class ColumnValuesMindEntityLists(ColumnMapMetricProvider):
        condition_metric_name = "column_values.mind_entity_lists"

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, **kwargs):
            return column.map(_entities_ok).astype(bool)

    class ColumnValuesReferenceMindNews(ColumnMapMetricProvider):
        condition_metric_name = "column_values.reference_mind_news"

        @column_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column, **kwargs):
            ids = _NEWS_IDS.get(None)
            if ids is None:
                raise LookupError("no news ids bound for this validation run")
            # A user's history repeats on each of their impressions: check every distinct string once.
            codes, distinct = pd.factorize(column.fillna(""))
            tokens = pd.Series(distinct, dtype=object).str.split().explode()
            # Impression tokens carry a label; a malformed label is the regex rule's to report.
            tokens = tokens.str.replace(r"-[^-]*$", "", regex=True)
            ok = (tokens.isin(ids) | tokens.isna()).groupby(level=0).all()  # an empty history explodes to NaN
            return pd.Series(ok.to_numpy()[codes], index=column.index)

    class ExpectColumnValuesToBeMindEntityLists(ColumnMapExpectation):
        """Expect JSON lists of objects with Label, Type, WikidataId, Confidence (0-1), OccurrenceOffsets,
        SurfaceForms (empty fields are nulls here, and pass)."""

        map_metric = "column_values.mind_entity_lists"
        success_keys = ("mostly",)

    class ExpectColumnValuesToReferenceMindNews(ColumnMapExpectation):
        """Expect every space-separated news id (a label suffix -0/-1 dropped) to exist in news.tsv."""

        map_metric = "column_values.reference_mind_news"
        success_keys = ("mostly",)

    _GX_CUSTOM.update(entities=ExpectColumnValuesToBeMindEntityLists, references=ExpectColumnValuesToReferenceMindNews)
    return ExpectColumnValuesToBeMindEntityLists, ExpectColumnValuesToReferenceMindNews


def build_suites(references: bool = True) -> dict:
    """One ExpectationSuite per MIND file; ``meta`` carries (column, rule, detail) for the report.
    ``references=False`` leaves out the id-exists-in-news.tsv rules (when news.tsv is unreadable)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    EntityLists, ReferenceNews = _custom_expectations()
    suites = {}
    for name, rules in (
        (NEWS_FILE, [
            ("news_id", "not_null", gxe.ExpectColumnValuesToNotBeNull(column="news_id"), ""),
            ("news_id", "unique", gxe.ExpectColumnValuesToBeUnique(column="news_id"), "repeated news ids"),
            ("news_id", "regex", gxe.ExpectColumnValuesToMatchRegex(column="news_id", regex=NEWS_ID),
             f"must match {NEWS_ID}"),
            ("category", "not_null", gxe.ExpectColumnValuesToNotBeNull(column="category"), ""),
            ("title_entities", "entity_json", EntityLists(column="title_entities"),
             f"'' or a JSON list of objects with {', '.join(ENTITY_KEYS)} (Confidence in 0-1)"),
            ("abstract_entities", "entity_json", EntityLists(column="abstract_entities"),
             f"'' or a JSON list of objects with {', '.join(ENTITY_KEYS)} (Confidence in 0-1)"),
        ]),
        (BEHAVIORS_FILE, [
            ("impression_id", "not_null", gxe.ExpectColumnValuesToNotBeNull(column="impression_id"), ""),
            ("impression_id", "unique", gxe.ExpectColumnValuesToBeUnique(column="impression_id"),
             "repeated impression ids"),
            ("user_id", "not_null", gxe.ExpectColumnValuesToNotBeNull(column="user_id"), ""),
            ("time", "not_null", gxe.ExpectColumnValuesToNotBeNull(column="time"), ""),
            ("time", "time_format", gxe.ExpectColumnValuesToMatchStrftimeFormat(
                column="time", strftime_format=TIME_FORMAT), "must look like 11/15/2019 10:22:32 AM"),
            ("history", "regex", gxe.ExpectColumnValuesToMatchRegex(column="history", regex=HISTORY),
             "space-separated news ids N..., or empty"),
            ("history", "references", ReferenceNews(column="history"), f"every id must exist in {NEWS_FILE}"),
            ("impressions", "not_null", gxe.ExpectColumnValuesToNotBeNull(column="impressions"), ""),
            ("impressions", "regex", gxe.ExpectColumnValuesToMatchRegex(column="impressions", regex=IMPRESSIONS),
             r"space-separated tokens, each matching ^N\w+-[01]$"),
            ("impressions", "references", ReferenceNews(column="impressions"), f"every id must exist in {NEWS_FILE}"),
        ]),
    ):
        expectations = []
        for column, rule, exp, detail in rules:
            if rule == "references" and not references:
                continue
            exp.meta = {"column": column, "rule": rule, "detail": detail}
            expectations.append(exp)
        suites[name] = gx.ExpectationSuite(name=f"scenerec.mind.{name}", expectations=expectations)
    return suites


def _gx_frame(frame: pd.DataFrame, required: tuple[str, ...], optional_json: tuple[str, ...] = ()) -> pd.DataFrame:
    """Empty required fields become nulls (so not-null rules see them); empty entity fields too (no JSON to check)."""
    out = frame.copy()
    for c in (*required, *optional_json):
        out[c] = out[c].where(out[c].str.strip() != "", None)
    return out


def _examples(res: dict, column: str, rule: str, max_examples: int) -> list:
    """`line N: value` for the first offending rows; for unknown ids, the ids themselves."""
    ids = _NEWS_IDS.get(None)
    out = []
    for item in res.get("partial_unexpected_index_list") or []:
        value = item.get(column)
        if rule == "references" and isinstance(value, str) and ids is not None:
            unknown = [t for t in value.split() if t.rsplit("-", 1)[0] not in ids]
            value = " ".join(unknown[:3]) + (" ..." if len(unknown) > 3 else "")
        elif isinstance(value, str) and len(value) > _EXAMPLE_CHARS:
            value = value[:_EXAMPLE_CHARS] + "..."
        out.append(f"line {int(item['line'])}: {value!r}")
    return _distinct(out, max_examples)


def validate_mind(folder: str | Path, max_examples: int = 5) -> MindValidation:
    """Check a MIND folder's ``news.tsv`` and ``behaviors.tsv``; never raises for bad data."""
    folder = Path(folder)
    frames, failures = {}, []
    for name, columns in ((NEWS_FILE, NEWS_COLUMNS), (BEHAVIORS_FILE, BEHAVIOR_COLUMNS)):
        frame, fails = read_tsv(folder / name, columns, max_examples)
        failures += fails
        if frame is not None:
            frames[name] = frame
    rows = {name: len(df) for name, df in frames.items()}
    records: list[dict] = []
    gx_frames = {}
    if NEWS_FILE in frames:
        gx_frames[NEWS_FILE] = _gx_frame(frames[NEWS_FILE], ("news_id", "category"),
                                         ("title_entities", "abstract_entities"))
    if BEHAVIORS_FILE in frames:
        gx_frames[BEHAVIORS_FILE] = _gx_frame(frames[BEHAVIORS_FILE],
                                              ("impression_id", "user_id", "time", "impressions"))
    news_ids = pd.Index(frames[NEWS_FILE]["news_id"].unique()) if NEWS_FILE in frames else pd.Index([])
    token = _NEWS_IDS.set(news_ids)
    try:
        context = _new_context()
        source = context.data_sources.add_pandas("mind")
        suites = build_suites(references=NEWS_FILE in frames)
        # SUMMARY adds the offending rows' `line`, which the error message quotes.
        fmt = {"result_format": "SUMMARY", "unexpected_index_column_names": ["line"],
               "partial_unexpected_count": max_examples * 4}
        for name, df in gx_frames.items():
            suite = suites[name]
            try:
                batch = (source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
                         .get_batch(batch_parameters={"dataframe": df}))
                result = batch.validate(suite, result_format=fmt)
            except Exception as e:  # noqa: BLE001 - GX failing as a whole still rejects the folder cleanly
                log.exception("GX could not validate %s", name)
                failures.append(Failure(name, "*", "validation_error", len(df), [], f"{type(e).__name__}: {e}"[:300]))
                continue
            for r in result.results:
                meta = r.expectation_config.meta or {}
                res = r.result or {}
                raised = (r.exception_info or {}).get("raised_exception")
                examples = _examples(res, meta["column"], meta["rule"], max_examples) if not raised else []
                records.append({"file": name, "column": meta["column"], "rule": meta["rule"],
                                "expectation": r.expectation_config.type, "success": bool(r.success),
                                "element_count": res.get("element_count"),
                                "unexpected_count": res.get("unexpected_count"), "examples": examples})
                if r.success:
                    continue
                if raised:
                    msg = (r.exception_info or {}).get("exception_message", "")
                    failures.append(Failure(name, meta["column"], meta["rule"], len(df), [],
                                            f"expectation could not run: {msg}"[:300]))
                else:
                    failures.append(Failure(name, meta["column"], meta["rule"], int(res.get("unexpected_count") or 0),
                                            examples, meta["detail"]))
    finally:
        _NEWS_IDS.reset(token)
    return MindValidation(folder, not failures, failures, rows, frames, records)


def quarantine_mind(result: MindValidation, quarantine_dir: str | Path, keep: int | None = None) -> Path:
    """Copy the whole folder to ``quarantine_dir/<name>-<UTC time>/`` with report.json (atomically);
    with ``keep``, the newest ``keep`` copies stay (``ingest.quarantine_keep``) and older ones are pruned."""
    from components.data.ingest import quarantine_copy

    return quarantine_copy(result.folder, quarantine_dir,
                           lambda folder: write_json_atomic(folder / REPORT_NAME, _jsonable(result.to_dict())), "mind",
                           keep=keep)


def load_mind(folder: str | Path, quarantine_dir: str | Path | None = None, max_examples: int = 5,
              quarantine_keep: int | None = None) -> MindData:
    """Validate and parse a MIND folder; on any failure quarantine it (when ``quarantine_dir``, keeping
    the newest ``quarantine_keep`` copies) and raise :class:`MindRejected`. Extra files are ignored."""
    result = validate_mind(folder, max_examples)
    if not result.success:
        where = quarantine_mind(result, quarantine_dir, quarantine_keep) if quarantine_dir is not None else None
        raise MindRejected(result.failures, where, result.folder)
    news = result.frames[NEWS_FILE].drop(columns="line").reset_index(drop=True)
    raw = result.frames[BEHAVIORS_FILE]
    pairs = raw["impressions"].str.split()
    behaviors = pd.DataFrame({
        "impression_id": raw["impression_id"].to_numpy(),
        "user_id": raw["user_id"].to_numpy(),
        "time": pd.to_datetime(raw["time"], format=TIME_FORMAT),
        "history": raw["history"].str.split().tolist(),
        "candidates": [[t[:-2] for t in p] for p in pairs],
        "labels": [[int(t[-1]) for t in p] for p in pairs],
    })
    log.info("loaded MIND folder %s: %d news, %d impressions", folder, len(news), len(behaviors))
    return MindData(Path(folder), news, behaviors)


# --------------------------------------------------------------------------------------------
# Synthetic MIND world

_CATEGORIES = ("news", "sports", "finance", "lifestyle", "health", "travel", "foodanddrink", "autos",
               "weather", "entertainment", "music", "movies", "tv", "video", "kids", "northamerica")
_ENTITY_TYPES = ("P", "O", "G", "C", "E")  # person, organisation, place, ... (MIND's Type letters)
_ONSETS = ("b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "st", "tr", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
# Shape of the world below the NewsConfig knobs (the knobs set what the benchmark is about).
_TITLE_WORDS = (4, 3)            # topic words, common words in a title (plus its entities)
_ABSTRACT_WORDS = (8, 10)        # the same in an abstract
_ENTITY_IN_CATEGORY = 0.8        # an article's true entity comes from its own category
_RESTATED_IN_ABSTRACT = 0.5      # a title entity is named again in the abstract
_TRUE_CONFIDENCE = (0.6, 1.0)    # entity-linker confidence of true entities ...
_SPURIOUS_CONFIDENCE = (0.15, 0.45)  # ... and of spurious ones
_AFFINITY = (0.5, 1.5)           # how much a user likes each followed entity
_ENTITY_ZIPF = 0.6               # entity popularity ~ 1 / rank ** this
_CATEGORY_CONCENTRATION = 3.0    # Dirichlet concentration of category shares (higher: more even)


def _pseudo_words(rng: np.random.Generator, n: int, taken: set[str], syllables: tuple[int, int] = (2, 3)) -> list[str]:
    out = []
    while len(out) < n:
        w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(rng.integers(*syllables, endpoint=True)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


@dataclass
class _World:
    categories: list[str]
    subcategories: list[list[str]]
    category_p: np.ndarray
    topic_words: list[list[str]]
    common_words: list[str]
    entity_labels: list[str]
    entity_types: list[str]
    entity_category: np.ndarray
    entity_p: np.ndarray


def _world(cfg: NewsConfig, rng: np.random.Generator) -> _World:
    taken: set[str] = set()
    cats = [(_CATEGORIES[i] if i < len(_CATEGORIES) else f"topic{i}") for i in range(cfg.n_categories)]
    subs = [[c + w for w in _pseudo_words(rng, cfg.subcategories_per_category, taken, (1, 2))] for c in cats]
    topic = [_pseudo_words(rng, cfg.topic_words, taken) for _ in cats]
    common = _pseudo_words(rng, cfg.common_words, taken, (1, 2))
    labels = []
    for _ in range(cfg.n_entities):  # one or two capitalised words, like "Kalomir" or "Dessa Trounib"
        parts = _pseudo_words(rng, int(rng.integers(1, 3)), taken)
        labels.append(" ".join(p.capitalize() for p in parts))
    ent_cat = np.arange(cfg.n_entities) % cfg.n_categories
    rng.shuffle(ent_cat)
    ent_p = 1.0 / (1 + rng.permutation(cfg.n_entities)) ** _ENTITY_ZIPF  # a few entities are everywhere
    return _World(cats, subs, rng.dirichlet(np.full(cfg.n_categories, _CATEGORY_CONCENTRATION)), topic, common, labels,
                  [str(rng.choice(_ENTITY_TYPES)) for _ in labels], ent_cat, ent_p / ent_p.sum())


def _text(rng: np.random.Generator, chunks: list[str], capitalise: bool = True) -> tuple[str, dict[str, int]]:
    """Join shuffled word / entity chunks; return the text and the offset of each chunk."""
    order = rng.permutation(len(chunks))
    text, offsets = "", {}
    for k, i in enumerate(order):
        chunk = chunks[i]
        if k == 0 and capitalise:
            chunk = chunk[:1].upper() + chunk[1:]
        if text:
            text += " "
        offsets.setdefault(chunks[i], len(text))
        text += chunk
    return text, offsets


def _entity_json(items: list[tuple[int, float]], offsets: dict[str, int], world: _World) -> str:
    return json.dumps([{"Label": world.entity_labels[e], "Type": world.entity_types[e],
                        "WikidataId": f"Q{100000 + e}", "Confidence": round(float(c), 3),
                        "OccurrenceOffsets": [offsets[world.entity_labels[e]]],
                        "SurfaceForms": [world.entity_labels[e]]} for e, c in items])


def _news(cfg: NewsConfig, world: _World, rng: np.random.Generator, t0: datetime, t1: datetime):
    """Articles with publish times in [t0, t1]: rows for news.tsv plus the hidden truth (category,
    true entities as an (n_news, n_entities) matrix, popularity) that drives clicks."""
    n, E = cfg.n_news, cfg.n_entities
    published = np.sort(rng.uniform(0, (t1 - t0).total_seconds(), n))
    cat = rng.choice(cfg.n_categories, size=n, p=world.category_p)
    truth = np.zeros((n, E), dtype=np.float32)
    rows = []
    by_cat = [np.flatnonzero(world.entity_category == c) for c in range(cfg.n_categories)]
    for i in range(n):
        c = cat[i]
        ents: list[int] = []
        if rng.random() >= cfg.empty_entities_fraction:
            for _ in range(int(rng.integers(1, cfg.max_entities_per_news, endpoint=True))):
                pool = by_cat[c] if rng.random() < _ENTITY_IN_CATEGORY and len(by_cat[c]) else np.arange(E)
                p = world.entity_p[pool] / world.entity_p[pool].sum()
                e = int(rng.choice(pool, p=p))
                if e not in ents:
                    ents.append(e)
        truth[i, ents] = 1.0
        has_abstract = rng.random() >= cfg.empty_abstract_fraction
        in_title = [e for e in ents if not has_abstract or rng.random() < cfg.title_entity_prob]
        in_abstract = ([e for e in ents if e not in in_title or rng.random() < _RESTATED_IN_ABSTRACT]
                       if has_abstract else [])
        conf = {e: rng.uniform(*_TRUE_CONFIDENCE) for e in ents}
        spurious: list[int] = []
        if ents and rng.random() < cfg.spurious_entity_prob:
            s = int(rng.choice(E, p=world.entity_p))
            if s not in ents:
                spurious, conf[s] = [s], rng.uniform(*_SPURIOUS_CONFIDENCE)
        words = list(rng.choice(world.topic_words[c], _TITLE_WORDS[0])) + list(rng.choice(world.common_words,
                                                                                           _TITLE_WORDS[1]))
        named_in_title = in_title + (spurious if not has_abstract else [])
        title, t_off = _text(rng, words + [world.entity_labels[e] for e in named_in_title])
        abstract, a_off = "", {}
        if has_abstract:
            words = (list(rng.choice(world.topic_words[c], _ABSTRACT_WORDS[0]))
                     + list(rng.choice(world.common_words, _ABSTRACT_WORDS[1])))
            abstract, a_off = _text(rng, words + [world.entity_labels[e] for e in in_abstract + spurious])
        title_items = [(e, conf[e]) for e in named_in_title]
        abstract_items = [(e, conf[e]) for e in in_abstract + spurious] if has_abstract else []
        rows.append({
            "news_id": f"N{i + 1}", "category": world.categories[c],
            "subcategory": str(rng.choice(world.subcategories[c])), "title": title, "abstract": abstract,
            "url": f"https://assets.msn.com/labs/mind/AA{i + 1:06d}.html",
            "title_entities": _entity_json(title_items, t_off, world),
            # Both "" and "[]" occur for "no entities", as the contract allows.
            "abstract_entities": _entity_json(abstract_items, a_off, world) if has_abstract else "",
        })
    news = pd.DataFrame(rows)
    news["published"] = [t0 + timedelta(seconds=float(s)) for s in published]
    return news, cat, truth, rng.standard_normal(n).astype(np.float32)


def generate_mind(out_dir: str | Path, cfg: NewsConfig, seed: int) -> dict:
    """Write a synthetic MIND world to ``out_dir/{train,dev}/{news,behaviors}.tsv``; dev is the day after train.

    Users follow ``favourite_categories`` categories and ``favourite_entities`` entities (most from
    those categories) that drift (each swapped with probability ``entity_drift`` a day); a click is
    the Gumbel-max of topic + entity-overlap + popularity utility at that day, so the entities of a
    user's recent reading are a real persona. Returns figures of the world.
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    world = _world(cfg, rng)
    start = parse_time(cfg.start)
    t_dev = start + timedelta(days=cfg.train_days)
    t_end = t_dev + timedelta(days=1)
    t0 = start - timedelta(days=max(cfg.train_days, cfg.fresh_days))  # the history period before train
    news, cat, truth, popularity = _news(cfg, world, rng, t0, t_end)
    published = (news["published"] - t0).dt.total_seconds().to_numpy()
    n_days = math.ceil((t_end - t0).total_seconds() / 86400)
    truth_t = np.ascontiguousarray(truth.T)  # (entities, articles): a user's few entities are a row gather

    # Users: followed categories, and followed entities with affinities, day by day.
    U, E, F = cfg.n_users, cfg.n_entities, cfg.favourite_entities
    fav_cat = np.zeros((U, cfg.n_categories), dtype=np.float32)
    fav = np.zeros((U, n_days, F), dtype=np.int64)
    aff = np.zeros((U, n_days, F), dtype=np.float32)
    for u in range(U):
        cats = rng.choice(cfg.n_categories, size=cfg.favourite_categories, replace=False, p=world.category_p)
        fav_cat[u, cats] = 1.0
        in_cats = np.flatnonzero(np.isin(world.entity_category, cats))

        def draw(taken: set[int]) -> int:
            while True:
                pool = in_cats if rng.random() < cfg.favourite_entity_in_category and len(in_cats) else np.arange(E)
                e = int(rng.choice(pool, p=world.entity_p[pool] / world.entity_p[pool].sum()))
                if e not in taken:
                    return e

        ents: list[int] = []
        for _ in range(F):
            ents.append(draw(set(ents)))
        weights = rng.uniform(*_AFFINITY, size=F)
        for d in range(n_days):
            if d:  # interests drift: a followed entity is now and then replaced by a new one
                for k in np.flatnonzero(rng.random(F) < cfg.entity_drift):
                    ents[k], weights[k] = draw(set(ents)), rng.uniform(*_AFFINITY)
            fav[u, d], aff[u, d] = ents, weights

    def utility(u: int, seconds: float, pool: np.ndarray) -> np.ndarray:
        d = int(seconds // 86400)
        return (cfg.topic_weight * fav_cat[u, cat[pool]] + cfg.entity_weight * (aff[u, d] @ truth_t[fav[u, d]])[pool]
                + cfg.popularity_weight * popularity[pool])

    def fresh(seconds: float, exclude) -> np.ndarray:
        """Articles published in the ``fresh_days`` before ``seconds`` (publish times are sorted)."""
        lo, hi = np.searchsorted(published, [seconds - cfg.fresh_days * 86400, seconds], side="right")
        keep = np.ones(hi - lo, dtype=bool)
        ex = np.asarray(exclude, dtype=np.int64)
        keep[ex[(ex >= lo) & (ex < hi)] - lo] = False
        return np.arange(lo, hi)[keep]

    # Histories: clicks spread over the period before train, each on what was fresh then.
    history: list[list[int]] = []
    span = (start - t0).total_seconds()
    for u in range(U):
        n = 0 if rng.random() < cfg.empty_history_fraction else int(rng.integers(1, cfg.max_history, endpoint=True))
        picked: list[int] = []
        for sec in np.sort(rng.uniform(0, span, n)):
            pool = fresh(sec, picked)
            if len(pool):
                noisy = utility(u, sec, pool) + cfg.click_noise * rng.gumbel(size=len(pool))
                picked.append(int(pool[np.argmax(noisy)]))
        history.append(picked)  # oldest first, as in MIND

    def impressions(n: int, lo: datetime, hi: datetime, hist: list[list[int]], true: list[str]):
        rows, clicked = [], [[] for _ in range(U)]
        times = sorted(lo + timedelta(seconds=float(s)) for s in rng.uniform(0, (hi - lo).total_seconds(), n))
        for k, t in enumerate(times):
            u = int(rng.integers(U))
            now = (t - t0).total_seconds()
            pool = fresh(now, hist[u])
            shown = rng.choice(pool, size=min(cfg.impression_size, len(pool)), replace=False)
            util = utility(u, now, shown)
            # Gumbel top-n of the utility: a Plackett-Luce draw of one or two clicks.
            n_clicks = 2 if rng.random() < cfg.second_click_prob else 1
            pos = set(shown[np.argsort(-(util + cfg.click_noise * rng.gumbel(size=len(shown))))[:n_clicks]].tolist())
            clicked[u] += [int(i) for i in shown if i in pos]
            rows.append({"impression_id": str(k + 1), "user_id": f"U{u + 1}", "time": format_time(t),
                         "history": " ".join(f"N{i + 1}" for i in hist[u]),
                         "impressions": " ".join(f"N{i + 1}-{int(i in pos)}" for i in shown)})
            true.append(" ".join(f"{x:.4f}" for x in util))
        return rows, clicked

    true = {"train": [], "dev": []}
    train_rows, train_clicks = impressions(cfg.train_impressions, start, t_dev, history, true["train"])
    # Dev histories hold the train-period clicks too: the same users, a day later.
    dev_history = [h + [i for i in dict.fromkeys(c) if i not in h] for h, c in zip(history, train_clicks)]
    dev_rows, _ = impressions(cfg.dev_impressions, t_dev, t_end, dev_history, true["dev"])

    figures = {"news": len(news), "users": U, "entities": E, "seed": seed}
    for split, rows in (("train", train_rows), ("dev", dev_rows)):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        beh = pd.DataFrame(rows, columns=list(BEHAVIOR_COLUMNS))
        used = set()
        for col in ("history", "impressions"):
            used.update(t.split("-")[0] for s in beh[col] for t in s.split())
        # As in MIND, a split's news.tsv holds exactly the articles its behaviours mention.
        part = news[news["news_id"].isin(used)][list(NEWS_COLUMNS)]
        _write_tsv(part, folder / NEWS_FILE)
        _write_tsv(beh, folder / BEHAVIORS_FILE)
        # The generator's noise-free click utility of each candidate, in impression order: an oracle
        # ranking that bounds what any model can reach (not part of MIND; readers ignore it).
        _write_tsv(pd.DataFrame({"impression_id": beh["impression_id"], "utility": true[split]}),
                   folder / TRUTH_FILE)
        figures[f"{split}.impressions"] = len(beh)
        figures[f"{split}.news"] = len(part)
        figures[f"{split}.empty_histories"] = int((beh["history"] == "").sum())
    log.info("synthetic MIND world in %s: %s", out_dir, figures)
    return figures


def _write_tsv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in frame.itertuples(index=False):
            f.write("\t".join(row) + "\n")
    os.replace(tmp, path)
