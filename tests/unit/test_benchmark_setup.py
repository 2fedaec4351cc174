"""benchmarks/report.py ctr_benchmark_setup: ``--set`` reaches the model's settings and the dataset's."""
import argparse
import sys

import pytest

from tests.factories import REPO


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import report

    return report


def test_set_reaches_the_params_the_dataset_is_built_from(report, tmp_path):
    out = report.ctr_benchmark_setup(argparse.ArgumentParser(), [
        "--params", str(REPO / "params.yaml"), "--set", "user_min_requests=3", "cross_layers=0",
        "--out", str(tmp_path / "r.json")], "x")
    args, params, cfg = out
    assert cfg.user_min_requests == 3 and cfg.cross_layers == 0
    # build_dataset reads params.ctr (split, user vocabulary, bins): the override must be there too
    assert params.ctr == cfg
    assert args.ctr_update == {"user_min_requests": 3, "cross_layers": 0}


def test_a_bad_override_is_refused_with_its_name(report, capsys):
    assert report.ctr_benchmark_setup(argparse.ArgumentParser(), [
        "--params", str(REPO / "params.yaml"), "--set", "user_min_requests=-1"], "x") is None
    assert "user_min_requests" in capsys.readouterr().err
