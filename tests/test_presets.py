"""Preset crop geometry (fastvid.video.presets): pure boxes, flips and sizes."""

import numpy as np
import pytest

from fastvid.video import presets
from fastvid.video.plan import ClipConfig, plan_clips


def test_video_resnet_eval_is_centre_crop_of_128x171_resize():
    p = presets.get_preset("video_resnet")
    (g,) = presets.clip_geometry(p, 128, 171, train=False)
    # frame already 128x171: centre crop 112 at (8, 30) (round((171-112)/2) = 30)
    assert g.box == (8, 30, 112, 112) and not g.flip and g.out_size == (112, 112)
    (g,) = presets.clip_geometry(p, 256, 342, train=False)  # 2x: the box scales to source pixels
    assert g.box == (16, 60, 224, 224)


def test_video_resnet_train_boxes_stay_inside_and_flip_half_the_time():
    p = presets.get_preset("video_resnet")
    rng = np.random.default_rng(0)
    geo = presets.clip_geometry(p, 240, 320, train=True, rng=rng, n=2000)
    boxes = np.array([g.box for g in geo])
    sy, sx = 240 / 128, 320 / 171
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 240).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 320).all()
    assert np.allclose(boxes[:, 2], round(112 * sy), atol=1) and np.allclose(boxes[:, 3], round(112 * sx), atol=1)
    assert boxes[:, 0].max() == round(16 * sy) and boxes[:, 1].max() == round(59 * sx)  # the full jitter range is used
    flips = np.mean([g.flip for g in geo])
    assert 0.45 < flips < 0.55


def test_s3d_and_size_overrides():
    p = presets.get_preset("s3d")
    assert p.crop_size == (224, 224) and p.resize_size == (256, 256) and p.mean == presets.KINETICS_MEAN
    (g,) = presets.clip_geometry(p, 256, 256, train=False)
    assert g.box == (16, 16, 224, 224)
    p = presets.get_preset("video_resnet", crop_size=64, resize_size=(80, 100))
    (g,) = presets.clip_geometry(p, 80, 100, train=False)
    assert g.box == (8, 18, 64, 64) and g.out_size == (64, 64)
    with pytest.raises(ValueError, match="unknown preset"):
        presets.get_preset("nope")


def test_single_resize_size_is_a_short_side_for_every_preset():
    # torchvision's --val-resize-size 128 is Resize(128): short side 128, aspect kept (not a 128x128 square).
    p = presets.get_preset("video_resnet", resize_size=128)
    (g,) = presets.clip_geometry(p, 240, 320, train=False)
    # 240x320 -> 128x171; centre 112 crop at (8, 30) -> source box (15, 56, 210, 210)
    assert g.box == (15, 56, 210, 210) and g.out_size == (112, 112)


def test_tsm_eval_short_side_256_centre_224():
    p = presets.get_preset("tsm")
    assert p.mean == presets.IMAGENET_MEAN and p.std == presets.IMAGENET_STD
    (g,) = presets.clip_geometry(p, 240, 320, train=False)
    # short side 240 -> 256 (x16/15), width 341; centre 224 crop -> 210 source pixels square at the centre
    assert g.out_size == (224, 224)
    y0, x0, h, w = g.box
    assert (h, w) == (210, 210) and y0 == 15 and abs(x0 - (320 - 210) / 2) <= 1


def test_tsm_train_uses_multiscale_fixed_offsets():
    from fastvid.video import boxes as kboxes

    p = presets.get_preset("tsm")
    geo = presets.clip_geometry(p, 240, 320, train=True, rng=np.random.default_rng(1), n=400)
    sizes = {(g.box[2], g.box[3]) for g in geo}
    allowed = {tuple(x) for x in kboxes.crop_pairs(240, 320, p.scales, 1, 224)}
    assert sizes <= allowed and len(sizes) > 3
    for g in geo:
        y0, x0, h, w = g.box
        assert y0 % ((240 - h) // 4 or 1) == 0 and x0 % ((320 - w) // 4 or 1) == 0  # on the fixed grid
        assert g.out_size == (224, 224)


def test_plan_is_a_function_of_seed_epoch_key():
    cfg = ClipConfig(clip_len=8, frame_stride=2, clips_per_video=2, train=True, preset=presets.get_preset("video_resnet"), seed=4)
    meta = {"num_frames": 60, "fps": 25.0, "height": 240, "width": 320}
    a, b = plan_clips(cfg, meta, "vid", 0), plan_clips(cfg, meta, "vid", 0)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.boxes, b.boxes)
    c = plan_clips(cfg, meta, "vid", 1)
    assert not (np.array_equal(a.frames, c.frames) and np.array_equal(a.boxes, c.boxes))
    # every clip is its own sample with its own crop (torchvision transforms each clip on its own)
    assert a.frames.shape == (2, 8) and a.boxes.shape == (2, 4) and not (a.boxes[0] == a.boxes[1]).all()
    assert np.array_equal(plan_clips(cfg, meta, "vid", 0, clips=[a.clips[1]]).boxes[0], a.boxes[1])  # per clip, not per call
    with pytest.raises(ValueError, match="vid"):
        plan_clips(cfg, {"fps": 25}, "vid", 0)
