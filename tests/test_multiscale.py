"""Multi-scale crop boxes follow TSM/PaddleVideo's GroupMultiScaleCrop rules (pure numpy, no kernels)."""

import numpy as np
import pytest

from fastvid.video.boxes import sample_multiscale_boxes
from fastvid.video.boxes import center_boxes, crop_pairs, crop_sizes, fixed_offsets


def test_crop_sizes_are_scales_of_short_side():
    hs, ws = crop_sizes(256, 340, out_size=224)
    # int(256 * (1, .875, .75, .66)) = 256, 224, 192, 168
    assert hs == [256, 224, 192, 168]
    assert ws == [256, 224, 192, 168]


def test_crop_sizes_snap_to_output_size_within_3_pixels():
    # int(226 * .875) = 197 ... ; 226 is 2 px from 224, so it snaps; 229 (5 px away) does not.
    assert crop_sizes(226, 400, out_size=224)[0] == [224, 197, 169, 149]
    assert crop_sizes(229, 400, out_size=224)[0][0] == 229
    # (h, w) output: heights snap to out_h, widths to out_w.
    hs, ws = crop_sizes(226, 400, out_size=(224, 197 + 2))
    assert hs[0] == 224 and ws[1] == 199


def test_pairs_respect_max_distort():
    pairs = {tuple(p) for p in crop_pairs(256, 340, max_distort=1, out_size=224).tolist()}
    sizes = [256, 224, 192, 168]
    expected = {(sizes[i], sizes[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1}
    assert pairs == expected and len(pairs) == 10
    assert {tuple(p) for p in crop_pairs(256, 340, max_distort=0).tolist()} == {(s, s) for s in sizes}
    assert len(crop_pairs(256, 340, max_distort=3)) == 16


def test_fixed_offsets_grid_matches_tsm():
    # h=224, w=192 in a 256x340 frame: w_step = (340-192)//4 = 37, h_step = (256-224)//4 = 8.
    pos = fixed_offsets(256, 340, 224, 192, more_fixed_offsets=True)
    expected = [(0, 0), (0, 148), (32, 0), (32, 148), (16, 74),  # corners + centre (y0, x0)
                (16, 0), (16, 148), (32, 74), (0, 74),  # centre-left/right, lower/upper centre
                (8, 37), (8, 111), (24, 37), (24, 111)]  # quarter points
    assert [tuple(p) for p in pos.tolist()] == expected
    assert len(fixed_offsets(256, 340, 224, 192, more_fixed_offsets=False)) == 5


@pytest.mark.parametrize("more", [True, False])
def test_sampled_boxes_lie_on_the_grid(more):
    height, width = 256, 340
    boxes = sample_multiscale_boxes(height, width, 2000, more_fixed_offsets=more, seed=3)
    assert boxes.shape == (2000, 4) and boxes.dtype == np.int64
    allowed_pairs = {tuple(p) for p in crop_pairs(height, width).tolist()}
    seen_positions = set()
    for y0, x0, h, w in boxes.tolist():
        assert (h, w) in allowed_pairs
        grid = {tuple(p) for p in fixed_offsets(height, width, h, w, more).tolist()}
        assert (y0, x0) in grid
        assert 0 <= y0 and y0 + h <= height and 0 <= x0 and x0 + w <= width
        if (h, w) == (224, 192):
            seen_positions.add((y0, x0))
    # Every grid position of one size shows up in 2000 draws (13 or 5 distinct ones here).
    assert len(seen_positions) == (13 if more else 5)
    # Every allowed size pair is drawn.
    assert {tuple(b) for b in boxes[:, 2:].tolist()} == allowed_pairs


def test_max_distort_zero_gives_square_crops():
    boxes = sample_multiscale_boxes(240, 320, 500, max_distort=0, seed=1)
    assert (boxes[:, 2] == boxes[:, 3]).all()
    assert set(boxes[:, 2].tolist()) == {240, 210, 180, 158}


def test_seed_determinism():
    a = sample_multiscale_boxes(256, 340, 64, seed=7)
    b = sample_multiscale_boxes(256, 340, 64, seed=7)
    c = sample_multiscale_boxes(256, 340, 64, seed=8)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    gen = np.random.default_rng(7)
    assert np.array_equal(sample_multiscale_boxes(256, 340, 64, seed=gen), a)


def test_random_offsets_cover_more_than_the_grid():
    boxes = sample_multiscale_boxes(64, 96, 3000, fixed_offsets=False, seed=0, out_size=32)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 96).all()
    one_size = boxes[(boxes[:, 2] == 64) & (boxes[:, 3] == 64)]
    # x0 is uniform over 0..32 (33 values): far more than the 5 grid columns; both ends reached.
    assert len(set(one_size[:, 1].tolist())) > 13
    assert one_size[:, 1].min() == 0 and one_size[:, 1].max() == 32


def test_small_frame_never_gets_a_box_bigger_than_itself():
    # Short side 222 snaps to 224 under TSM's rule; the box is clamped to the frame.
    boxes = sample_multiscale_boxes(222, 300, 200, seed=0, out_size=224)
    assert (boxes[:, 2] <= 222).all() and (boxes[:, 0] + boxes[:, 2] <= 222).all()


def test_empty_and_bad_arguments():
    assert sample_multiscale_boxes(64, 64, 0, seed=0).shape == (0, 4)
    with pytest.raises(ValueError, match="scales"):
        sample_multiscale_boxes(64, 64, 1, scales=(1.5,))
    with pytest.raises(ValueError, match="image size"):
        sample_multiscale_boxes(0, 64, 1)


def test_center_boxes():
    assert center_boxes(48, 64, 2, 32).tolist() == [[8, 16, 32, 32]] * 2
