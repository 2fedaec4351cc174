"""News registration through ``registry.register_candidate`` with a tiny PerCoNet on the synthetic
MIND world and a real MLflow store: its own margin, the popularity floor, no temporary folder left
when scoring fails."""
import tempfile

import pytest

from components import steps, tracking
from components.config import load_params
from components.news import stage
from tests.factories import make_project

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny PerCoNet trained on the synthetic MIND world (news.promotion_margin differs from ctr's)."""
    root = make_project(tmp_path_factory.mktemp("news") / "project",
                        {"news": {"promotion_margin": 0.3}, "ctr": {"promotion_margin": 0.0},
                         "reliability": {"reuse_unchanged_models": False}})  # the same model registered twice
    params = load_params(root / "params.yaml")
    steps.news_data_step(params)
    steps.news_step(params)
    return params


def test_news_is_settled_by_its_own_margin(trained):
    # given a first news model: it clears the floor (chance and article popularity on the same dev impressions)
    first = steps.news_register_step(trained, run_id=tracking.start_run(trained, "news_register"))
    assert first["promoted"], first["reason"]
    assert first["challenger_metrics"]["dev.auc"] > first["baseline_metrics"]["dev.auc"] + trained.news.promotion_floor_margin
    # when the same model is registered again
    again = steps.news_register_step(trained, run_id=tracking.start_run(trained, "news_register"))
    # then it is compared by news.promotion_margin, not ctr's
    assert not again["promoted"] and again["margin"] == 0.3 and again["reason"].endswith("margin 0.3")
    assert again["champion_metrics"]["dev.auc"] == pytest.approx(again["challenger_metrics"]["dev.auc"])


def test_no_temporary_folder_is_left_when_scoring_raises(trained, tmp_path, monkeypatch):
    # given a private temp dir and dev scoring that fails
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def fail(params, model):
        raise RuntimeError("dev scoring failed")

    monkeypatch.setattr(stage, "evaluate_on_dev", fail)
    # when the news model is registered
    with pytest.raises(RuntimeError, match="dev scoring failed"):
        steps.news_register_step(trained, run_id=tracking.start_run(trained, "news_register"))
    # then the article table's temporary folder is gone
    assert not list(tmp.glob("scenerec-*"))
