"""fastvid's clip grid, clip choice, TSN segments and epoch plans against torchvision's documented rules.

`TorchvisionClips` re-implements, from torchvision's documentation and reference script, what
`VideoClips(frames_per_clip, step_between_clips=1, frame_rate)` + `RandomClipSampler` /
`UniformClipSampler` select: per video, resample the frame indices to the frame rate (a slice when
fps / frame_rate is an integer, else floor(arange(floor(n * rate / fps)) * fps / rate)), unfold them
into clips, then draw min(K, clips_per_video) clips without replacement (train) or
floor(linspace(0, K - 1, clips_per_video)) (eval). Randomness is not comparable across libraries,
so train draws are checked as sets/ranges and the deterministic parts exactly.
"""

import collections
import math

import numpy as np
import pytest
import torch

from fastvid.video import sampling
from fastvid.pipeline.contract import WorkItem
from fastvid.video.plan import ClipConfig, default_clips, plan_clips, video_grid
from fastvid.video.presets import get_preset


class TorchvisionClips:
    """torchvision's VideoClips clip list for given per-video (num_frames, fps)."""

    def __init__(self, videos, clip_len, step, frame_rate):
        self.clips = []
        for n, fps in videos:
            pts = torch.arange(n)
            if frame_rate is None:
                idx = slice(None, None, 1)
            else:
                total = int(math.floor(n * frame_rate / fps))
                s = fps / frame_rate
                idx = slice(None, None, int(s)) if float(s).is_integer() else (torch.arange(total, dtype=torch.float32) * s).floor().to(torch.int64)
            res = pts[idx]
            if res.numel() < clip_len:
                self.clips.append(torch.zeros(0, clip_len, dtype=torch.int64))
            else:
                self.clips.append(res.unfold(0, clip_len, step))

    def uniform(self, num):
        return [c[torch.linspace(0, len(c) - 1, num).floor().long()] for c in self.clips if len(c)]


VIDEOS = [(60, 30.0), (47, 25.0), (10, 30.0), (100, 29.97), (31, 15.0), (16, 24.0)]


@pytest.mark.parametrize("clip_len,frame_rate", [(4, 15), (8, None), (5, 10), (16, 15)])
def test_clip_grid_equals_torchvision_videoclips(clip_len, frame_rate):
    tv = TorchvisionClips(VIDEOS, clip_len, 1, frame_rate)
    for (n, fps), clips in zip(VIDEOS, tv.clips):
        grid = sampling.clip_grid(n, clip_len=clip_len, fps=fps, frame_rate=frame_rate)
        assert grid.shape == tuple(clips.shape) and np.array_equal(grid, clips.numpy()), (n, fps)


def test_uniform_eval_clips_equal_torchvision_uniform_sampler():
    tv = TorchvisionClips(VIDEOS, 4, 1, 15)
    cfg = ClipConfig(clip_len=4, frame_stride=1, clips_per_video=5, train=False, preset=get_preset("video_resnet"), frame_rate=15)
    ours = []
    for i, (n, fps) in enumerate(VIDEOS):
        meta = {"num_frames": n, "fps": fps, "height": 24, "width": 32}
        clips = default_clips(cfg, meta, f"v{i}", 0)
        if len(clips):
            ours.append(plan_clips(cfg, meta, f"v{i}", 0, clips).frames)
    expected = tv.uniform(5)
    assert len(ours) == len(expected) == sum(1 for c in tv.clips if len(c))  # short videos dropped, as torchvision
    for a, b in zip(ours, expected):
        assert np.array_equal(a, b.numpy())


def test_training_draws_grid_clips_without_replacement_and_shuffles_the_whole_epoch():
    tv = TorchvisionClips(VIDEOS, 4, 1, 15)
    cfg = ClipConfig(clip_len=4, frame_stride=1, clips_per_video=5, train=True, preset=get_preset("video_resnet"), frame_rate=15)
    metas = [{"num_frames": n, "fps": fps, "height": 24, "width": 32} for n, fps in VIDEOS]
    keys = [[f"v{i}" for i in range(len(VIDEOS))]]
    sizes = [[len(video_grid(cfg, m, k)) for m, k in zip(metas, keys[0])]]
    assert sizes[0] == [len(c) for c in tv.clips]
    items = sampling.train_items(sizes, keys, clips_per_video=5, seed=0, epoch=0)
    # RandomClipSampler's epoch length: sum of min(K, clips_per_video)
    assert len(items) == sum(min(len(c), 5) for c in tv.clips) == sampling.num_train_clips(sizes, 5)
    assert all(len(it.clips) == 1 for it in items)
    for i, clips in enumerate(tv.clips):
        picked = [it.clips[0] for it in items if it.sample == i]
        assert len(set(picked)) == len(picked) == min(len(clips), 5)  # without replacement
        frames = {tuple(plan_clips(cfg, metas[i], keys[0][i], 0, [c]).frames[0]) for c in picked}
        assert frames <= {tuple(row.tolist()) for row in clips}
    # shuffled across videos: not grouped by video
    order = [it.sample for it in items]
    assert order != sorted(order)
    assert sampling.train_items(sizes, keys, clips_per_video=5, seed=0, epoch=1) != items
    repl = sampling.train_items(sizes, keys, clips_per_video=5, seed=0, epoch=0, clip_sampling="with_replacement")
    assert len(repl) == 5 * sum(1 for c in tv.clips if len(c)) == sampling.num_train_clips(sizes, 5, "with_replacement")


def test_padding_short_videos_is_an_option():
    assert sampling.clip_grid(6, clip_len=4, frame_stride=2).shape == (0, 4)
    assert sampling.clip_grid(6, clip_len=4, frame_stride=2, short_videos="pad").tolist() == [[0, 2, 4, 5]]
    assert sampling.clip_grid(20, clip_len=4, frame_stride=2, step_between_clips=3)[:, 0].tolist() == [0, 3, 6, 9, 12]


def test_frame_stride_is_a_dilation_of_the_resampled_frames():
    grid = sampling.clip_grid(40, clip_len=3, frame_stride=2, fps=30, frame_rate=15)
    assert grid[0].tolist() == [0, 4, 8] and grid[1].tolist() == [2, 6, 10] and len(grid) == 20 - 4


def test_each_training_clip_has_its_own_crop_and_flip():
    cfg = ClipConfig(clip_len=4, frame_stride=1, clips_per_video=8, train=True, preset=get_preset("video_resnet"), seed=1)
    meta = {"num_frames": 200, "fps": 25, "height": 240, "width": 320}
    plan = plan_clips(cfg, meta, "k", 0)
    assert len({tuple(b) for b in plan.boxes}) > 1 and 0 < plan.flips.sum() < 8
    alone = plan_clips(cfg, meta, "k", 0, clips=[plan.clips[3]])
    assert np.array_equal(alone.boxes[0], plan.boxes[3]) and alone.flips[0] == plan.flips[3]


def test_eval_views_share_frames_and_cover_the_long_side():
    cfg = ClipConfig(clip_len=4, frame_stride=1, clips_per_video=2, train=False, preset=get_preset("video_resnet"), spatial_views=3)
    plan = plan_clips(cfg, {"num_frames": 50, "fps": 25, "height": 240, "width": 320}, "k", 0)
    assert plan.frames.shape == (6, 4) and plan.clips.tolist() == [0, 0, 0, 46, 46, 46]  # grid clips 0 and K - 1
    assert np.array_equal(plan.frames[0], plan.frames[2]) and not np.array_equal(plan.frames[0], plan.frames[3])
    y = {int(b[0]) for b in plan.boxes}
    xs = [int(b[1]) for b in plan.boxes[:3]]
    assert len(y) == 1 and xs[0] == 0 and xs[0] < xs[1] < xs[2] and xs[2] + plan.boxes[2][3] == 320
    # a short-side resize (tsm preset) keeps a portrait frame portrait: top/centre/bottom
    tsm = ClipConfig(clip_len=4, frame_stride=1, clips_per_video=2, train=False, preset=get_preset("tsm"), spatial_views=3)
    portrait = plan_clips(tsm, {"num_frames": 50, "fps": 25, "height": 320, "width": 240}, "k", 0)
    assert [int(b[0]) for b in portrait.boxes[:3]][0] == 0 and len({int(b[1]) for b in portrait.boxes}) == 1


def test_tsn_segments_one_frame_per_equal_segment():
    idx = sampling.segment_indices(80, 8, train=False)
    assert idx.tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    rng = np.random.default_rng(0)
    for _ in range(50):
        t = sampling.segment_indices(80, 8, train=True, rng=rng)
        assert all(10 * i <= f < 10 * (i + 1) for i, f in enumerate(t))
    assert sampling.segment_indices(3, 8, train=False).tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # centres of 3/8-frame segments
    cfg = ClipConfig(clip_len=8, frame_stride=1, clips_per_video=1, train=True, preset=get_preset("tsm"), sampler="segments")
    plan = plan_clips(cfg, {"num_frames": 80, "fps": 25, "height": 240, "width": 320}, "k", 0)
    assert plan.frames.shape == (1, 8) and all(10 * i <= f < 10 * (i + 1) for i, f in enumerate(plan.frames[0]))


@pytest.mark.parametrize("n,world,batch", [(37, 2, 4), (37, 3, 2), (100, 4, 3)])
def test_rank_plans_are_disjoint_equal_and_independent_of_world_size(n, world, batch):
    items = [WorkItem(0, i, (0,)) for i in range(n)]
    plans = [sampling.rank_train_items(items, r, world, batch) for r in range(world)]
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == sampling.train_batches(n, world, batch) * batch
    flat = [it for p in plans for it in p]
    assert len(set(flat)) == len(flat)
    # every step consumes world x batch consecutive clips of the one global list
    assert sorted(it.sample for it in flat) == list(range(len(flat)))
    # resume at a global position on another world size: exactly the rest, still equal per rank
    pos = world * batch
    rest = [sampling.rank_train_items(items, r, world + 1, batch, start=pos) for r in range(world + 1)]
    seen = {it.sample for p in rest for it in p}
    assert len({len(p) for p in rest}) == 1 and seen.isdisjoint(range(pos))
    assert n - pos - len(seen) < (world + 1) * batch


@pytest.mark.parametrize("n,world,batch", [(37, 2, 4), (37, 3, 2), (100, 4, 3), (16, 1, 3), (11, 2, 3), (5, 4, 4)])
def test_partial_last_batch_plans_every_clip_as_torchvision_does(n, world, batch):
    """LastBatch.PARTIAL: every clip of the epoch is trained; each rank gets ceil(ceil(n / world) / batch) batches
    (torchvision: DistributedSampler pads to ceil(n / world) per rank, the DataLoader keeps the smaller last
    batch), the last one of last_batch_rows clips on every rank, the padding repeating the epoch's first clips."""
    items = [WorkItem(0, i, (0,)) for i in range(n)]
    plans = [sampling.rank_train_items(items, r, world, batch, partial=True) for r in range(world)]
    per_rank = -(-n // world)
    steps = sampling.train_batches(n, world, batch, partial=True)
    assert steps == -(-per_rank // batch) and {len(p) for p in plans} == {(steps - 1) * batch + sampling.last_batch_rows(n, world, batch)}
    flat = [it.sample for p in plans for it in p]
    assert set(flat) == set(range(n)) and len(flat) - n == world * sampling.last_batch_rows(n, world, batch) - (n % (world * batch) or world * batch)
    twice = sorted(sample for sample, count in collections.Counter(flat).items() if count > 1)
    assert twice == list(range(len(flat) - n))  # the padding repeats the epoch's first clips, once each
    # a resume at a round boundary on another world size still trains exactly the rest
    pos = world * batch if n > world * batch else 0
    rest = {it.sample for r in range(world + 1)
            for it in sampling.rank_train_items(items, r, world + 1, batch, start=pos, partial=True)}
    assert rest >= set(range(pos, n))


def test_eval_plans_wrap_to_equal_batches():
    items = [WorkItem(0, i, (0, 1)) for i in range(7)]
    plans = [sampling.rank_eval_items(items, r, 3, 4, 2) for r in range(3)]
    assert {len(p) for p in plans} == {sampling.eval_batches(7, 3, 4, 2) * 4 // 2}
    assert {it.sample for p in plans for it in p} == set(range(7))
