"""BPR warm start of the CTR model's ID rows (components/ctr/id_pretrain.py)."""
import numpy as np
import torch

from components.ctr.id_pretrain import behaviour_pairs, pretrain_id_embeddings, rescale


def test_pairs_read_only_the_log_before_the_cut_and_only_rows_with_an_id():
    ts = np.array([10, 20, 30, 5, 50])  # user 1: rows 0-2, user 0 (unknown ID): row 3, user 2: row 4
    poi = np.array([3, 0, 4, 2, 1])  # row 1's PoI has no ID of its own
    beh = np.array([1, 2, 4, 4, 3])
    u, p, w = behaviour_pairs({1: (0, 3), 0: (3, 4), 2: (4, 5)}, ts, poi, beh, [1.0, 2.0, 2.0, 3.0], before_ns=30)
    assert u.tolist() == [1] and p.tolist() == [3] and w.tolist() == [1.0]  # ts 30 and 50 are not before the cut
    u, p, w = behaviour_pairs({1: (0, 3), 0: (3, 4), 2: (4, 5)}, ts, poi, beh, [1.0, 2.0, 2.0, 3.0], before_ns=99)
    assert u.tolist() == [1, 1, 2] and p.tolist() == [3, 4, 1] and w.tolist() == [1.0, 3.0, 2.0]


def test_bpr_puts_each_user_nearer_the_pois_of_their_own_taste():
    rng = np.random.default_rng(0)
    n_users, n_pois = 41, 31  # row 0 unknown; users 1-20 like PoIs 1-15, users 21-40 PoIs 16-30
    users = rng.integers(1, n_users, 4000)
    pois = np.where(users <= 20, rng.integers(1, 16, 4000), rng.integers(16, 31, 4000))
    u, p = pretrain_id_embeddings(users, pois, np.ones(4000, np.float32), n_users, n_pois, dim=8, epochs=5, seed=0)
    score = u @ p.T
    own = torch.cat([score[1:21, 1:16].flatten(), score[21:, 16:].flatten()]).mean()
    other = torch.cat([score[1:21, 16:].flatten(), score[21:, 1:16].flatten()]).mean()
    assert own > other + 0.5
    assert torch.all(u[0] == 0) and torch.all(p[0] == 0)  # the unknown rows are left to the model
    again, _ = pretrain_id_embeddings(users, pois, np.ones(4000, np.float32), n_users, n_pois, dim=8, epochs=5, seed=0)
    assert torch.equal(u, again)  # seeded
    scaled = rescale(u, 0.05)
    assert abs(float(scaled[1:].pow(2).mean().sqrt()) - 0.05) < 1e-6 and torch.all(scaled[0] == 0)


def test_feedback_entries_are_a_pair_s_log_within_the_window_after_its_impression():
    from components.ctr.id_pretrain import feedback_entries

    # impressions: user 1 saw PoI 5 at t=100, user 2 saw PoI 5 at t=200
    imp_user, imp_poi, imp_ts = np.array([1, 2]), np.array([5, 5]), np.array([100, 200])
    entry_user = np.array([1, 1, 1, 1, 1, 2, 2, 3])
    entry_poi = np.array([5, 5, 5, 5, 6, 5, 5, 5])
    entry_ts = np.array([99, 100, 130, 161, 110, 150, 260, 120])
    got = feedback_entries(entry_user, entry_poi, entry_ts, imp_user, imp_poi, imp_ts, window_ns=60)
    # before the impression, after the window, another PoI, another user's: kept
    assert got.tolist() == [False, True, True, False, False, False, True, False]
    assert not feedback_entries(entry_user, entry_poi, entry_ts, imp_user, imp_poi, imp_ts, window_ns=0).any()
    assert not feedback_entries(entry_user, entry_poi, entry_ts, imp_user[:0], imp_poi[:0], imp_ts[:0], 60).any()


def test_a_held_out_share_of_the_log_stops_the_bpr_when_it_stops_improving():
    rng = np.random.default_rng(1)
    n_users, n_pois = 41, 31
    users = rng.integers(1, n_users, 3000)
    pois = np.where(users <= 20, rng.integers(1, 16, 3000), rng.integers(16, 31, 3000))
    kw = dict(n_users=n_users, n_pois=n_pois, dim=8, seed=0, holdout=0.2, patience=2)
    u, p = pretrain_id_embeddings(users, pois, np.ones(3000, np.float32), epochs=40, **kw)
    # It stopped on its own well before either cap: a larger cap gives the same factors.
    u2, p2 = pretrain_id_embeddings(users, pois, np.ones(3000, np.float32), epochs=80, **kw)
    assert torch.equal(u, u2) and torch.equal(p, p2)
    score = u @ p.T
    own = torch.cat([score[1:21, 1:16].flatten(), score[21:, 16:].flatten()]).mean()
    other = torch.cat([score[1:21, 16:].flatten(), score[21:, 1:16].flatten()]).mean()
    assert own > other + 0.5  # ... and still learnt the two tastes
    # Without the hold-out the cap is run to the end: the factors differ.
    u3, _ = pretrain_id_embeddings(users, pois, np.ones(3000, np.float32), epochs=40, n_users=n_users,
                                   n_pois=n_pois, dim=8, seed=0)
    assert not torch.equal(u, u3)


def test_a_row_whose_pairs_are_all_held_out_reads_zeros():
    users = np.array([1, 1, 2, 2, 3] * 40 + [4])  # user 4 and PoI 6 have one pair between them
    pois = np.array([1, 2, 3, 4, 5] * 40 + [6])
    for seed in range(40):
        u, p = pretrain_id_embeddings(users, pois, np.ones(len(users), np.float32), 5, 7, dim=4, epochs=3,
                                      seed=seed, holdout=0.2)
        g = torch.Generator().manual_seed(seed)
        torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)  # the factors' draws come first
        held = torch.randperm(len(users), generator=g)[:round(0.2 * len(users))]
        if (held == len(users) - 1).any():  # the lone pair was held out: neither row was trained
            assert torch.all(u[4] == 0) and torch.all(p[6] == 0)
            return
    raise AssertionError("no seed held the lone pair out")


def test_a_history_without_some_entries_keeps_each_user_s_others_in_order():
    from components.ctr.data import History

    h = History(ts=np.array([1, 2, 3, 4, 5]), poi_row=np.array([10, 11, 12, 13, 14]), behavior=np.array([1, 2, 1, 4, 1]),
                context=np.zeros(5, np.int64), user_start={"a": 0, "b": 3}, user_end={"a": 3, "b": 5},
                slot=np.ones(5, np.int64))
    got = h.without(np.array([False, True, False, True, False]))
    assert got.poi_row.tolist() == [10, 12, 14] and got.ts.tolist() == [1, 3, 5] and got.slot.tolist() == [1, 1, 1]
    assert got.user_start == {"a": 0, "b": 2} and got.user_end == {"a": 2, "b": 3}
    assert h.poi_row.tolist() == [10, 11, 12, 13, 14]  # the original is left as it was
