"""Pure clip sampling and rank partitioning (fastvid.data.sampling)."""

import numpy as np
import pytest

from fastvid.data import sampling


def test_clip_frame_indices_follow_stride():
    assert sampling.clip_frame_indices(3, 4, 2.0, 100).tolist() == [3, 5, 7, 9]


def test_short_video_is_padded_with_last_frame():
    # 6 frames, clip of 4 with stride 2 needs 7: start 0 and the last index repeats frame 5.
    idx = sampling.sample_clip_indices(6, clip_len=4, frame_stride=2, train=True, seed=0, epoch=0, key="k")
    assert idx.tolist() == [[0, 2, 4, 5]]
    idx = sampling.sample_clip_indices(2, clip_len=4, frame_stride=3, train=False, clips_per_video=2)
    assert idx.tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]


def test_train_starts_are_in_range_and_depend_on_seed_epoch_key():
    kw = dict(clip_len=8, frame_stride=2, clips_per_video=4, train=True)
    a = sampling.sample_clip_indices(100, seed=1, epoch=0, key="a", **kw)
    assert a.shape == (4, 8)
    assert (a[:, 0] >= 0).all() and (a[:, -1] <= 99).all()
    assert (np.diff(a, axis=1) == 2).all()
    assert np.array_equal(a, sampling.sample_clip_indices(100, seed=1, epoch=0, key="a", **kw))
    others = [sampling.sample_clip_indices(100, seed=s, epoch=e, key=k, **kw) for s, e, k in ((2, 0, "a"), (1, 1, "a"), (1, 0, "b"))]
    assert all(not np.array_equal(a, o) for o in others)


def test_train_starts_cover_the_whole_range():
    starts = {int(sampling.sample_clip_indices(20, clip_len=4, frame_stride=2, seed=0, epoch=e, key="v")[0, 0]) for e in range(300)}
    assert starts == set(range(0, 20 - 7 + 1))  # span 7 -> starts 0..13


def test_eval_starts_are_evenly_spaced_and_deterministic():
    idx = sampling.sample_clip_indices(50, clip_len=4, frame_stride=2, clips_per_video=3, train=False, seed=5, epoch=3, key="x")
    # span 7 -> max start 43 -> linspace(0, 43, 3) = 0, 21.5, 43 -> rounded 0, 22, 43
    assert idx[:, 0].tolist() == [0, 22, 43]
    assert np.array_equal(idx, sampling.sample_clip_indices(50, clip_len=4, frame_stride=2, clips_per_video=3, train=False,
                                                            seed=9, epoch=0, key="y"))


def test_frame_rate_derives_stride_from_fps():
    assert sampling.frame_step(1, fps=30, frame_rate=15) == 2.0
    assert sampling.frame_step(2, fps=25, frame_rate=None) == 2.0
    idx = sampling.sample_clip_indices(100, clip_len=5, frame_stride=1, train=False, fps=25, frame_rate=10)
    assert idx.tolist() == [[0, 2, 5, 7, 10]]  # step 2.5, floored
    with pytest.raises(ValueError):
        sampling.frame_step(0)


def test_rank_ranges_match_dali_split():
    assert sampling.rank_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert sampling.rank_ranges(9, 2) == [(0, 4), (4, 9)]


@pytest.mark.parametrize("num_samples,world,batch,cpv", [(10, 3, 2, 1), (9, 2, 2, 1), (11, 4, 3, 2), (7, 2, 5, 3)])
def test_rank_plans_are_disjoint_with_equal_batch_counts(num_samples, world, batch, cpv):
    sizes = [4, 0, num_samples - 4]
    for drop_last in (True, False):
        nb = sampling.batches_per_epoch(num_samples, world, batch, cpv, drop_last)
        plans = [sampling.rank_epoch_plan(sizes, r, world, batch_size=batch, clips_per_video=cpv, drop_last=drop_last,
                                          seed=3, epoch=1, shuffle=True) for r in range(world)]
        for plan in plans:
            assert len(plan) * cpv >= nb * batch  # enough clips for the common batch count
            assert len(plan) == sampling.videos_per_epoch(nb, batch, cpv)
        sets = [set(p) for p in plans]
        for i in range(world):
            for j in range(i + 1, world):
                assert not sets[i] & sets[j]
        if drop_last:
            assert all(len(set(p)) == len(p) for p in plans)  # no repeats when dropping
        else:
            assert set().union(*sets) == {(s, i) for s in range(3) for i in range(sizes[s])}  # nothing left out


def test_epoch_shuffle_changes_with_epoch_and_not_with_rank():
    sizes = [5, 5, 5, 5]
    a0 = sampling.rank_epoch_samples(sizes, 0, 2, seed=0, epoch=0, shuffle=True)
    b0 = sampling.rank_epoch_samples(sizes, 1, 2, seed=0, epoch=0, shuffle=True)
    a1 = sampling.rank_epoch_samples(sizes, 0, 2, seed=0, epoch=1, shuffle=True)
    assert set(a0).isdisjoint(b0) and len(set(a0) | set(b0)) == 20
    assert list(a1) != list(a0)  # a new epoch reshuffles
    assert sampling.shard_order(4, 0, 0, False).tolist() == [0, 1, 2, 3]
    later = [sampling.rank_epoch_samples(sizes, 0, 2, seed=0, epoch=e, shuffle=True) for e in range(1, 6)]
    assert any(set(x) != set(a0) for x in later)  # ranks get other tars in other epochs


def test_batches_per_epoch_policy():
    # ranks of 3, 3, 4 videos, batch 2: drop -> 1 each (smallest rank), wrap -> 2 each (largest rank)
    assert sampling.batches_per_epoch(10, 3, 2, 1, drop_last=True) == 1
    assert sampling.batches_per_epoch(10, 3, 2, 1, drop_last=False) == 2
    assert sampling.batches_per_epoch(10, 1, 4, 3, drop_last=True) == 7  # 30 clips
