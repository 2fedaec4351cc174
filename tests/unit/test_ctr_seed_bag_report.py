"""benchmarks/ctr_seed_bag.py: a bag's gain over its own networks alone, from ctr_quality reports."""
import json
import sys

import pytest

from tests.factories import REPO


@pytest.fixture(scope="module")
def ctr_seed_bag():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ctr_seed_bag

    return ctr_seed_bag


def _run(bag, first, second, ctcvr=(0.80, 0.79, 0.78)):
    return {"all.auc.ctr": bag, "all.auc.ctcvr": ctcvr[0],
            "members": {"larr_cofars": {"all.auc.ctr": first, "all.auc.ctcvr": ctcvr[1]},
                        "larr_cofars.seed1": {"all.auc.ctr": second, "all.auc.ctcvr": ctcvr[2]}}}


def _report(runs, peer=None):
    w = {"runs": {"larr_cofars": runs, **({"lightgbm": [{"all.auc.ctr": p, "all.auc.ctcvr": 0.7} for p in peer]}
                                          if peer else {})}}
    return {"seeds": list(range(len(runs))), "worlds": {"default": w}}


def test_the_gain_is_over_the_mean_of_the_networks_alone(ctr_seed_bag, tmp_path, capsys):
    report = _report([_run(0.770, 0.771, 0.767), _run(0.769, 0.768, 0.766)], peer=[0.760, 0.761])
    src = tmp_path / "bag.json"
    src.write_text(json.dumps(report))
    out = tmp_path / "summary.json"
    assert ctr_seed_bag.main([str(src), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    first = result["runs"]["default"][0]["ctr"]
    assert first["member_mean"] == pytest.approx(0.769)
    assert first["gain_over_member_mean"] == pytest.approx(0.001)
    assert first["gain_over_first_member"] == pytest.approx(-0.001)  # one seed's network can beat the bag
    assert first["best_peer"] == {"name": "lightgbm", "auc": 0.760}
    s = result["worlds"]["default"]["ctr"]
    assert s["gain_over_member_mean"] == pytest.approx((0.001 + 0.002) / 2)
    assert s["runs_with_a_gain"] == 2 and s["best_peer"] == pytest.approx(0.7605)
    assert result["average_over_worlds"]["ctr"]["bag"] == pytest.approx(0.7695)
    assert "+0.0010" in capsys.readouterr().out


def test_a_report_without_a_bag_is_refused(ctr_seed_bag, tmp_path):
    run = {"all.auc.ctr": 0.77, "all.auc.ctcvr": 0.79}  # ctr_quality of seed_bag: 1 (no members)
    src = tmp_path / "single.json"
    src.write_text(json.dumps(_report([run])))
    with pytest.raises(SystemExit, match="seed_bag"):
        ctr_seed_bag.main([str(src), "--out", str(tmp_path / "x.json")])
