"""``ctr.user_min_requests``: which users get an ID row of their own, on the session's tiny world
(``trained_ctr`` in conftest.py)."""
import numpy as np
import pytest

from components.ctr.data import build_dataset

pytestmark = pytest.mark.slow


def _dataset(world, user_min_requests: int):
    p = world.params
    return build_dataset(p.model_copy(update={"ctr": p.ctr.model_copy(update={"user_min_requests": user_min_requests})}),
                         world.sources)


def test_users_below_the_minimum_read_the_unknown_row(trained_ctr):
    ds = _dataset(trained_ctr, 0)
    names = np.array(["<unknown>", *ds.encoder.users.to_list()])
    requests = np.bincount(ds.train.user, minlength=len(names))  # one row per training request
    assert requests[0] == 0  # nobody is unknown at 0: every user seen gets a row

    strict = _dataset(trained_ctr, 3)
    kept = set(strict.encoder.users.to_list())
    assert kept == set(names[requests >= 3])
    assert 0 < len(kept) < len(names) - 1  # the tiny world has users on both sides of the line
    # the same requests, the same order: a user below the line now reads row 0, the others their own row
    assert np.array_equal(strict.train.request_id, ds.train.request_id)
    below = requests[ds.train.user] < 3
    assert (strict.train.user[below] == 0).all() and (strict.train.user[~below] > 0).all()
    assert [strict.encoder.users.to_list()[i - 1] for i in strict.train.user[~below]] == list(names[ds.train.user[~below]])
