"""benchmarks/ctr_knob.py: a knob's change per world and seed, from ctr_quality reports with and without it."""
import json
import sys

import pytest

from tests.factories import REPO


@pytest.fixture(scope="module")
def ctr_knob():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ctr_knob

    return ctr_knob


def _runs(values, ctcvr=0.8):
    return [{"all.auc.ctr": v, "all.auc.ctcvr": ctcvr} for v in values]


def _report(worlds: dict, seeds, peer: dict | None = None):
    out = {"seeds": seeds, "worlds": {}}
    for w, values in worlds.items():
        runs = {"larr_cofars": _runs(values)}
        if peer and w in peer:
            runs["lightgbm"] = _runs(peer[w], ctcvr=0.7)
        out["worlds"][w] = {"runs": runs}
    return out


def test_changes_are_taken_seed_by_seed_on_the_seeds_both_sides_ran(ctr_knob, tmp_path, capsys):
    without = _report({"default": [0.770, 0.772, 0.774], "taste_world": [0.778, 0.779, 0.780]}, [0, 1, 2],
                      peer={"default": [0.760, 0.761, 0.762], "taste_world": [0.777, 0.778, 0.779]})
    with_ = _report({"default": [0.771, 0.771], "taste_world": [0.784, 0.785]}, [0, 1])  # seed 2 not run
    paths = []
    for name, rep in (("without", without), ("with", with_)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(rep))
    out = tmp_path / "knob.json"
    assert ctr_knob.main(["--with", str(paths[1]), "--without", str(paths[0]), "--label", "x=1", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    d = got["worlds"]["default"]
    assert d["seeds"] == [0, 1] and d["ctr"]["without"] == [0.770, 0.772] and d["ctr"]["change"] == 0.0
    assert d["ctr"]["gains_in"] == 1 and d["ctcvr"]["change"] == 0.0
    # Beside the best peer of the reports without the knob: the margin with it, and whether it clears
    # the larger of the two seed spreads.
    peer = d["ctr"]["best_peer"]
    assert peer["name"] == "lightgbm" and peer["margin_with"] == pytest.approx(0.771 - 0.761, abs=1e-4)
    assert peer["beyond_spread"] and not peer["behind_beyond_spread"]
    t = got["worlds"]["taste_world"]
    assert t["ctr"]["change"] == pytest.approx(0.006, abs=1e-4) and t["ctr"]["gains_in"] == 2
    # The family (default) and the other generator (taste_world) are averaged apart.
    assert got["family_average"]["worlds"] == ["default"] and got["other_generator_average"]["worlds"] == ["taste_world"]
    assert got["other_generator_average"]["ctr"]["change"] == pytest.approx(0.006, abs=1e-4)
    assert "taste_world" in capsys.readouterr().out


def test_a_seed_in_two_reports_of_one_side_is_refused(ctr_knob, tmp_path):
    rep = _report({"default": [0.77]}, [0])
    p = tmp_path / "a.json"
    p.write_text(json.dumps(rep))
    with pytest.raises(ValueError, match="seed 0"):
        ctr_knob.main(["--with", str(p), str(p), "--without", str(p)])


def test_no_common_world_and_seed_is_an_error(ctr_knob, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report({"default": [0.77]}, [0])))
    b.write_text(json.dumps(_report({"default": [0.77]}, [1])))
    assert ctr_knob.main(["--with", str(a), "--without", str(b)]) == 2


def test_a_peer_ahead_by_more_than_the_spread_is_told_apart_from_a_tie(ctr_knob, tmp_path, capsys):
    without = _report({"hot_market": [0.780, 0.781]}, [0, 1], peer={"hot_market": [0.790, 0.791]})
    with_ = _report({"hot_market": [0.781, 0.782]}, [0, 1])
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(without))
    b.write_text(json.dumps(with_))
    out = tmp_path / "k.json"
    assert ctr_knob.main(["--with", str(b), "--without", str(a), "--out", str(out)]) == 0
    peer = json.loads(out.read_text())["worlds"]["hot_market"]["ctr"]["best_peer"]
    assert peer["margin_with"] == pytest.approx(-0.009, abs=1e-4)
    assert not peer["beyond_spread"] and peer["behind_beyond_spread"]
    assert "behind, beyond" in capsys.readouterr().out


def test_peers_can_come_from_other_reports_than_the_runs_without(ctr_knob, tmp_path):
    without = _report({"default": [0.770, 0.772]}, [0, 1])  # trained no peer
    with_ = _report({"default": [0.775, 0.777]}, [0, 1])
    peers = _report({"default": [0.700, 0.701]}, [0, 1], peer={"default": [0.760, 0.762]})
    paths = {}
    for name, rep in (("without", without), ("with", with_), ("peers", peers)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(rep))
    out = tmp_path / "k.json"
    args = ["--with", str(paths["with"]), "--without", str(paths["without"]), "--out", str(out)]
    assert ctr_knob.main(args) == 0
    assert "best_peer" not in json.loads(out.read_text())["worlds"]["default"]["ctr"]
    assert ctr_knob.main(args + ["--peers-from", str(paths["peers"])]) == 0
    d = json.loads(out.read_text())["worlds"]["default"]["ctr"]
    assert d["without"] == [0.770, 0.772]  # the peers' report's own larr_cofars runs are not read
    assert d["best_peer"]["name"] == "lightgbm" and d["best_peer"]["margin_with"] == pytest.approx(0.776 - 0.761, abs=1e-4)
