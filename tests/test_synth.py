"""The generated motion classes do what their names say, and survive a horizontal flip."""

import numpy as np
import pytest

from fastvid.video.synth import MOTION_CLASSES, coded_frames, decode_frame_index, motion_clip


def _shape_mask(clip):
    # The square is flat-coloured while the background carries noise: it is the most frequent colour.
    masks = []
    for frame in clip:
        flat = frame.reshape(-1, 3)
        colours, counts = np.unique(flat, axis=0, return_counts=True)
        masks.append((flat == colours[counts.argmax()]).all(-1).reshape(frame.shape[:2]))
    return np.stack(masks)


def _track(clip):
    mask = _shape_mask(clip)
    area = mask.sum(axis=(1, 2)).astype(float)
    ys = np.array([np.nonzero(m)[0].mean() for m in mask])
    xs = np.array([np.nonzero(m)[1].mean() for m in mask])
    return area, ys, xs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_classes_move_as_named(seed):
    rng = np.random.default_rng(seed)
    T, H, W = 8, 72, 96  # short clips: no wrap-around inside them
    for name in MOTION_CLASSES:
        area, ys, xs = _track(motion_clip(name, T, H, W, rng))
        dy, dx = ys[-1] - ys[0], xs[-1] - xs[0]
        if name == "move_up":
            assert dy < -5 and abs(dx) < 2, (name, dy, dx)
        elif name == "move_down":
            assert dy > 5 and abs(dx) < 2, (name, dy, dx)
        elif name == "move_sideways":
            assert abs(dx) > 5 and abs(dy) < 2, (name, dy, dx)
        elif name == "grow":
            assert area[-1] > 1.5 * area[0], (name, area)
        elif name == "shrink":
            assert area[-1] < 0.67 * area[0], (name, area)
        elif name == "still":
            assert abs(dx) < 1 and abs(dy) < 1 and abs(area[-1] - area[0]) <= 0.05 * area[0], (name, dy, dx, area)


def test_moving_square_wraps_instead_of_leaving_the_frame():
    rng = np.random.default_rng(3)
    area, _, _ = _track(motion_clip("move_down", 64, 48, 64, rng))
    assert area.min() > 0.8 * area.max()  # whole square visible in every frame


def test_classes_stay_apart_under_horizontal_flip():
    # A horizontal flip (the usual augmentation) must keep every clip recognizable as its own class:
    # flip-invariant features (vertical direction, sideways or not, growth) separate all classes.
    def signature(clip):
        area, ys, xs = _track(clip)
        return (int(np.sign(round(ys[-1] - ys[0]))), bool(abs(xs[-1] - xs[0]) > 5), int(np.sign(round(area[-1] - area[0], -1))))

    rng = np.random.default_rng(4)
    signatures = {}
    for name in MOTION_CLASSES:
        clip = motion_clip(name, 8, 72, 96, rng)
        signatures[name] = signature(clip)
        assert signature(clip[:, :, ::-1]) == signatures[name], name
    assert len(set(signatures.values())) == len(MOTION_CLASSES), signatures


def test_coded_frames_round_trip():
    frames = coded_frames(30, 8, 8, video_id=5)
    assert [decode_frame_index(f[..., 0].mean()) for f in frames] == [t % 28 for t in range(30)]
    assert decode_frame_index(frames[0][..., 1].mean()) == 5


def test_unknown_class_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown motion class 'jump'"):
        motion_clip("jump", 4, 8, 8, np.random.default_rng(0))
