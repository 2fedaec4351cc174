"""Contract validation's pure parts (components/data/validate.py): every contract rule has its
expectation in the suites, and a Failure reads as table.column: rule. Running GX on batches is in
tests/integration/data/test_validate.py."""
from __future__ import annotations

from components.data.contract import CONTRACT, TABLES
from components.data.validate import Failure, build_suites


def test_every_contract_rule_is_in_the_suites():
    """Each column rule of contract.py maps to an expectation carrying its rule name."""
    suites = build_suites({n: set(CONTRACT[n].column_names) for n in TABLES})
    for name, table in CONTRACT.items():
        rules = {(e.meta["column"], e.meta["rule"]) for e in suites[name].expectations}
        for col in table.columns:
            expected = {
                "not_null": not col.nullable, "unique": col.unique, "value_set": col.value_set is not None,
                "range": col.min_value is not None or col.max_value is not None, "regex": bool(col.regex),
                "not_future": col.not_future, "references": bool(col.references),
            }
            for rule, wanted in expected.items():
                assert ((col.name, rule) in rules) == wanted, (name, col.name, rule)
        for check in table.checks:
            assert any(r == check for _, r in rules), (name, check)


def test_failure_str_format():
    f = Failure("impressions", "click", "value_set", 3, [2, 7])
    assert str(f) == "impressions.click: value_set — 3 rows, e.g. [2, 7]"
