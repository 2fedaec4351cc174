"""The registry's pure parts: the promotion rule with its floor, reading the audited aliases back,
the encoder's registered name, and the one rejection exception."""
import pickle
from pathlib import Path

from components import registry
from components.config import Params
from components.data.validate import BatchRejected, Failure
from components.news.mind import MindRejected
from components.steps import encoder_registered_name

FLOOR = {"chance": 0.5, "baseline": 0.6, "baseline_name": "popularity", "margin": 0.01}


def test_the_floor_guards_a_first_champion():
    # given no champion, when the challenger does not beat the baseline by the floor margin
    out = registry.decide({"auc": 0.605}, None, "auc", 0.002, FLOOR)
    # then it is not promoted and the reason names the bar
    assert not out["promote"] and "auc 0.6050 <= 0.6100" in out["reason"] and "popularity baseline 0.6000" in out["reason"]
    # when it does, it is
    assert registry.decide({"auc": 0.611}, None, "auc", 0.002, FLOOR)["promote"]
    # and without a baseline the bar is chance plus the margin
    assert not registry.decide({"auc": 0.505}, None, "auc", 0.0, {**FLOOR, "baseline": None})["promote"]


def test_the_floor_also_applies_against_a_champion():
    # a challenger better than an (old, weak) champion by the margin is still held to the floor
    out = registry.decide({"auc": 0.55}, {"auc": 0.40}, "auc", 0.002, FLOOR)
    assert not out["promote"] and out["reason"].startswith("below the promotion floor")


def test_the_audited_aliases_are_those_of_the_last_entry_that_records_them():
    rows = [{"at": "1", "version": "1", "entry": "action=promote aliases=champion:1,challenger:- by=a reason=x y"},
            {"at": "2", "version": "2", "entry": "action=challenger aliases=champion:1,challenger:2 by=a reason=z"},
            {"at": "3", "version": "2", "entry": "action=promote by=old-format reason=aliases=champion:9"}]
    assert registry.audited_aliases(rows) == {"champion": "1", "challenger": "2"}
    assert registry.audited_aliases(rows[2:]) is None


def test_the_encoder_is_registered_under_contrastive_registered_name():
    params = Params(contrastive={"registered_name": "poi-scene-encoder"}, root=Path("."))
    assert encoder_registered_name(params, "teacher") == "poi-scene-encoder"
    assert encoder_registered_name(params, "student") == "poi-scene-encoder-student"


def test_a_rejected_mind_folder_is_a_batch_rejection_that_survives_pickling():
    failure = Failure(table="behaviors.tsv", column="time", rule="time_format", count=2, examples=["line 3"])
    err = MindRejected([failure], Path("/q"), Path("/mind"))
    assert isinstance(err, BatchRejected)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is MindRejected and str(back) == str(err) and "behaviors.tsv" in str(back)


def test_popularity_is_the_smoothed_training_rate_and_the_overall_rate_for_unseen_items():
    # given "a" clicked 3 of 3 times and "b" 0 of 1 in training (overall rate 0.75)
    scores = registry.popularity(["a", "a", "a", "b"], [1, 1, 1, 0], ["b", "a", "new"])
    # then each is smoothed by one pseudo-row at 0.75, and an unseen item gets 0.75
    assert list(scores) == [0.75 / 2, 3.75 / 4, 0.75]
