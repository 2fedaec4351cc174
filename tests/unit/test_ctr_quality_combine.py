"""benchmarks/ctr_quality.py --combine: reports of several runs (or only some models of one) become one."""
import json
import sys

import pytest

from tests.factories import REPO

SCREEN = REPO / "reports" / "benchmarks" / "ctr_cross_screen"
PEERS_REPORT = REPO / "reports" / "benchmarks" / "ctr_quality_no_cross.json"


@pytest.fixture(scope="module")
def ctr_quality():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ctr_quality

    return ctr_quality


def test_models_of_one_report_beside_another(ctr_quality, tmp_path, capsys):
    out = tmp_path / "combined.json"
    ours = sorted(str(p) for p in SCREEN.glob("*.json"))
    assert ctr_quality.combine([*ours, f"{PEERS_REPORT}:lightgbm"], out) == 0
    d = json.loads(out.read_text())
    assert set(d["worlds"]) == {w for p in ours for w in json.loads(open(p).read())["worlds"]}
    for w, v in d["worlds"].items():
        assert set(v["runs"]) == {"larr_cofars", "lightgbm"}, w  # DIN / ESMM of the peers' report left out
        assert all(len(rs) == 3 for rs in v["runs"].values()) and v["seeds"] == [0, 1, 2]
    # the settings are the first report's; sources name each report (repo-relative) and what it gave
    assert d["ctr"]["cross_layers"] == json.loads(open(ours[0]).read())["ctr"]["cross_layers"]
    assert d["sources"]["reports/benchmarks/ctr_quality_no_cross.json"]["models"] == ["lightgbm"]
    assert d["summary"]["best_peer_on_family_ctr"] == "lightgbm"
    assert "Family average" in capsys.readouterr().out


def test_overlapping_seeds_and_missing_models_are_refused(ctr_quality, tmp_path):
    ours = str(sorted(SCREEN.glob("*.json"))[0])
    with pytest.raises(ValueError, match="larr_cofars.*already in an earlier report"):
        ctr_quality.combine([ours, ours], tmp_path / "x.json")
    with pytest.raises(ValueError, match="no runs of \\['xgboost'\\]"):
        ctr_quality.combine([f"{PEERS_REPORT}:lightgbm,xgboost"], tmp_path / "y.json")


def test_worlds_can_be_left_out_of_a_combination(ctr_quality, tmp_path):
    ours = sorted(str(p) for p in SCREEN.glob("*.json"))
    every = {w for p in ours for w in json.loads(open(p).read())["worlds"]}
    gone = sorted(every)[0]
    out = tmp_path / "without.json"
    assert ctr_quality.combine(ours, out, leave_out=[gone]) == 0
    d = json.loads(out.read_text())
    assert set(d["worlds"]) == every - {gone}
    # the family average is over the worlds kept
    kept = [v["models"]["larr_cofars"]["all.auc.ctr"]["mean"] for v in d["worlds"].values()]
    assert d["family_average"]["larr_cofars"]["all.auc.ctr"]["mean"] == pytest.approx(sum(kept) / len(kept), abs=1e-4)
