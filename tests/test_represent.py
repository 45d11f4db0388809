"""Event representations: Numba kernels against numpy (np.add.at) and hand-computed values; batching,
dropped-event counting, empty windows; stacked_histogram_rvt against RVT's StackedHistogram re-written
here in torch; CUDA against Numba on a GPU."""

import math

import numpy as np
import pytest
import torch

from fastvid.events import EVENT_DTYPE, REPRESENTATIONS, represent, represent_batch
from fastvid.events.representations import represent_reference

W, H = 40, 30
KINDS = sorted(REPRESENTATIONS)
COUNT_KINDS = {"histogram", "stacked_histogram", "stacked_histogram_rvt", "event_frame"}


def _events(n, seed=0, t_start=1_000, duration=50_000, outside=True):
    rng = np.random.default_rng(seed)
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(t_start, t_start + duration, n))
    lo_x, hi_x = (-3, W + 3) if outside else (0, W)
    lo_y, hi_y = (-2, H + 2) if outside else (0, H)
    ev["x"] = rng.integers(lo_x, hi_x, n)
    ev["y"] = rng.integers(lo_y, hi_y, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def _one(t, x, y, p):
    ev = np.zeros(len(t), EVENT_DTYPE)
    ev["t"], ev["x"], ev["y"], ev["p"] = t, x, y, p
    return ev


def _assert_matches(out, ref, kind):
    if kind in COUNT_KINDS:
        assert np.array_equal(out, ref)
    else:
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_registry_lists_the_kinds_with_channel_counts():
    assert set(KINDS) == {"histogram", "stacked_histogram", "stacked_histogram_rvt", "voxel_grid", "time_surface",
                          "event_frame"}
    ev = _events(100)
    shapes = {k: tuple(represent(ev, k, (W, H), bins=4).shape) for k in KINDS}
    assert shapes == {"histogram": (2, H, W), "stacked_histogram": (8, H, W), "stacked_histogram_rvt": (8, H, W),
                      "voxel_grid": (4, H, W), "time_surface": (2, H, W), "event_frame": (1, H, W)}


@pytest.mark.parametrize("kind", KINDS)
def test_numba_matches_numpy_reference(kind):
    ev = _events(5000, seed=1)
    out, dropped = represent(ev, kind, (W, H), bins=5, tau_us=20_000, return_dropped=True)
    ref, ref_dropped = represent_reference(ev, kind, (W, H), bins=5, tau_us=20_000)
    assert out.dtype == torch.float32
    _assert_matches(out.numpy(), ref, kind)
    assert dropped == ref_dropped > 0
    assert np.abs(ref).sum() > 0


@pytest.mark.parametrize("kind", ["stacked_histogram", "voxel_grid", "time_surface"])
def test_explicit_t0_t1(kind):
    ev = _events(3000, seed=2)
    out = represent(ev, kind, (W, H), bins=3, t0=0, t1=60_000)
    ref, _ = represent_reference(ev, kind, (W, H), bins=3, t0=0, t1=60_000)
    _assert_matches(out.numpy(), ref, kind)
    assert not torch.equal(out, represent(ev, kind, (W, H), bins=3))  # defaults differ from 0..60 ms


def test_histogram_and_event_frame_by_hand():
    ev = _one(t=[0, 1, 2, 3, 4], x=[1, 1, 1, 2, 39], y=[0, 0, 0, 5, 29], p=[1, 1, 0, 0, 1])
    hist = represent(ev, "histogram", (W, H))
    assert hist[1, 0, 1] == 2 and hist[0, 0, 1] == 1 and hist[0, 5, 2] == 1 and hist[1, 29, 39] == 1
    assert hist.sum() == 5
    frame = represent(ev, "event_frame", (W, H))
    assert frame[0, 0, 1] == 1 and frame[0, 5, 2] == -1 and frame[0, 29, 39] == 1 and frame.abs().sum() == 3


def test_voxel_grid_by_hand():
    # bins=3 over t0=0..t1=100: ts = 2 t / 100. t=50 -> ts=1 (all in bin 1); t=25 -> ts=.5 (half in 0 and 1);
    # t=100 -> ts=2 (bin 2). OFF events count -1.
    ev = _one(t=[0, 25, 50, 100], x=[0, 3, 3, 4], y=[0, 1, 1, 2], p=[1, 0, 1, 1])
    vox = represent(ev, "voxel_grid", (W, H), bins=3)
    assert vox[0, 0, 0] == 1.0
    assert vox[0, 1, 3] == pytest.approx(-0.5) and vox[1, 1, 3] == pytest.approx(-0.5 + 1.0)
    assert vox[2, 2, 4] == 1.0
    assert vox.abs().sum() == pytest.approx(1 + 0.5 + 0.5 + 1)


def test_voxel_grid_single_timestamp_window():
    # t1 == t0: the span counts as 1, everything lands in bin 0.
    ev = _one(t=[7, 7], x=[1, 2], y=[1, 1], p=[1, 0])
    vox = represent(ev, "voxel_grid", (W, H), bins=4)
    assert vox[0, 1, 1] == 1 and vox[0, 1, 2] == -1 and vox.abs().sum() == 2


def test_stacked_histogram_by_hand_and_clip():
    # bins=2 over 0..100: t < 50 -> bin 0, t >= 50 -> bin 1 (t1 itself clamps into the last bin).
    ev = _one(t=[0, 10, 49, 50, 100, 100], x=[5] * 6, y=[6] * 6, p=[1, 1, 0, 1, 1, 1])
    sh = represent(ev, "stacked_histogram", (W, H), bins=2)
    # channel = polarity * bins + bin
    assert sh[2, 6, 5] == 2 and sh[0, 6, 5] == 1 and sh[3, 6, 5] == 3 and sh.sum() == 6
    clipped = represent(ev, "stacked_histogram", (W, H), bins=2, count_clip=2)
    assert clipped[3, 6, 5] == 2 and clipped[2, 6, 5] == 2 and clipped[0, 6, 5] == 1


def rvt_stacked_histogram(events, bins, height, width, count_cutoff=None):
    """RVT's StackedHistogram.construct (uzh-rpg/RVT, data/utils/representations.py) as it computes, re-written
    here in torch: t0/t1 = the window's first/last event, time normalised in float32 (int64 / int64 in torch),
    bin = floor(norm * bins) capped at bins - 1, counts put_ into (2, bins, H, W), clamped to count_cutoff
    (255 when None; int16 accumulation, i.e. its fastmode=False) -> (2*bins, H, W) uint8."""
    cutoff = 255 if count_cutoff is None else min(count_cutoff, 255)
    x, y, pol, time = (torch.from_numpy(np.ascontiguousarray(events[k]).astype(np.int64)) for k in ("x", "y", "p", "t"))
    counts = torch.zeros((2, bins, height, width), dtype=torch.int16)
    if time.numel():
        norm = (time - time[0]) / max(time[-1] - time[0], 1)
        assert norm.dtype == torch.float32
        b = torch.clamp((norm * bins).floor(), max=bins - 1).long()
        flat = ((pol * bins + b) * height + y) * width + x
        counts.put_(flat, torch.ones_like(flat, dtype=torch.int16), accumulate=True)
    return torch.clamp(counts, 0, cutoff).to(torch.uint8).reshape(2 * bins, height, width)


def _sparse_windows(window_us=50_000):
    """Windows on a 50 ms grid whose events fill only part of them (and one dense, one single-event, one
    empty), a few hot pixels so that counts pass a cutoff: (events, offsets, t0s, t1s)."""
    rng = np.random.default_rng(11)
    spans = [(0.0, 0.3), (0.4, 0.55), (0.1, 0.1), None, (0.0, 1.0), (0.7, 0.98)]  # fractions of the window
    parts, offsets, t0s = [], [0], []
    for i, span in enumerate(spans):
        t0 = 1_000_000 + i * window_us
        n = 0 if span is None else 1 if span[0] == span[1] else 3000
        ev = np.zeros(n, EVENT_DTYPE)
        if n:
            lo, hi = t0 + int(span[0] * window_us), t0 + int(span[1] * window_us)
            ev["t"] = np.sort(rng.integers(lo, hi, n)) if hi > lo else lo
            hot = rng.uniform(size=n) < 0.3
            ev["x"] = np.where(hot, 3, rng.integers(0, W, n))
            ev["y"] = np.where(hot, 4, rng.integers(0, H, n))
            ev["p"] = rng.integers(0, 2, n)
        parts.append(ev)
        offsets.append(offsets[-1] + n)
        t0s.append(t0)
    t0s = np.array(t0s, np.int64)
    return np.concatenate(parts), np.array(offsets, np.int64), t0s, t0s + window_us


@pytest.mark.parametrize("count_clip", [None, 10])
def test_stacked_histogram_rvt_matches_rvt_on_sparse_windows(count_clip):
    ev, offsets, t0s, t1s = _sparse_windows()
    # the loaders' call: window bounds as t0/t1; stacked_histogram_rvt ignores them, as RVT does
    rvt = represent_batch(ev, offsets, "stacked_histogram_rvt", (W, H), bins=5, t0=t0s, t1=t1s, count_clip=count_clip)
    window = represent_batch(ev, offsets, "stacked_histogram", (W, H), bins=5, t0=t0s, t1=t1s, count_clip=count_clip)
    for i in range(len(t0s)):
        events = ev[offsets[i]:offsets[i + 1]]
        expected = rvt_stacked_histogram(events, 5, H, W, count_cutoff=count_clip).float()
        if count_clip is None:
            assert expected.max() < 255  # (RVT caps at 255 without a cutoff; these counts stay below)
        assert torch.equal(rvt[i], expected), i
        assert torch.equal(rvt[i], represent(events, "stacked_histogram_rvt", (W, H), bins=5, count_clip=count_clip))
        # stacked_histogram (unchanged): bins split the window bounds, as the numpy reference computes
        ref, _ = represent_reference(events, "stacked_histogram", (W, H), bins=5, t0=t0s[i], t1=t1s[i])
        ref = torch.from_numpy(ref)
        assert torch.equal(window[i], ref if count_clip is None else ref.clamp(max=count_clip)), i
    # the conventions differ on the sparse windows, agree on the single-event, empty and dense ones
    differ = [not torch.equal(rvt[i], window[i]) for i in range(len(t0s))]
    assert differ == [True, True, False, False, False, True]
    if count_clip is not None:
        assert rvt.max() == count_clip and represent_batch(ev, offsets, "stacked_histogram_rvt", (W, H), bins=5).max() > 10


def test_stacked_histogram_time_bounds_by_hand():
    # window [0, 100), bins 2, events only in its first half: the window's bins put all of them in bin 0;
    # RVT's (first..last event = 0..40) split them 2 / 2 (t=40, the last event, clamps into the last bin).
    ev = _one(t=[0, 10, 20, 40], x=[5] * 4, y=[6] * 4, p=[1] * 4)
    window = represent(ev, "stacked_histogram", (W, H), bins=2, t0=0, t1=100)
    assert window[2, 6, 5] == 4 and window.sum() == 4
    rvt = represent(ev, "stacked_histogram_rvt", (W, H), bins=2, t0=0, t1=100)
    assert rvt[2, 6, 5] == 2 and rvt[3, 6, 5] == 2 and rvt.sum() == 4
    # without t0/t1 both take the first/last event
    assert torch.equal(represent(ev, "stacked_histogram", (W, H), bins=2), rvt)


def test_time_surface_by_hand():
    ev = _one(t=[10, 60, 70, 100], x=[2, 2, 2, 9], y=[3, 3, 3, 9], p=[1, 1, 0, 1])
    ts = represent(ev, "time_surface", (W, H), tau_us=50.0)
    assert ts[1, 3, 2] == pytest.approx(math.exp(-40 / 50), rel=1e-6)  # newest ON event wins
    assert ts[0, 3, 2] == pytest.approx(math.exp(-30 / 50), rel=1e-6)
    assert ts[1, 9, 9] == pytest.approx(1.0)
    assert (ts > 0).sum() == 3


def test_out_of_sensor_events_are_dropped_and_counted():
    ev = _one(t=[0, 1, 2, 3, 4, 5], x=[-1, W, 0, 5, 0, 3], y=[0, 0, -1, H, 0, 2], p=[1] * 6)
    for kind in KINDS:
        out, dropped = represent(ev, kind, (W, H), return_dropped=True)
        assert dropped == 4, kind
        assert (out != 0).sum() >= 1
    hist = represent(ev, "histogram", (W, H))
    assert hist.sum() == 2 and hist[1, 0, 0] == 1 and hist[1, 2, 3] == 1


def test_wide_integer_columns_are_not_wrapped_into_the_sensor():
    # 65536 + 3 would wrap to 3 as int16; it must be dropped instead.
    cols = {"t": np.arange(3, dtype=np.int64), "x": np.array([65539, 3, 2], np.int32),
            "y": np.array([1, 1, 70000], np.int64), "p": np.array([1, -1, 1], np.int64)}
    hist, dropped = represent(cols, "histogram", (W, H), return_dropped=True)
    assert dropped == 2 and hist.sum() == 1 and hist[0, 1, 3] == 1  # p=-1 is OFF


def test_dict_of_torch_tensors_equals_structured_array():
    ev = _events(2000, seed=3)
    cols = {k: torch.from_numpy(np.ascontiguousarray(ev[k])) for k in ("t", "x", "y", "p")}
    for kind in KINDS:
        assert torch.equal(represent(cols, kind, (W, H)), represent(ev, kind, (W, H)))


def test_empty_windows_give_zeros():
    empty = np.zeros(0, EVENT_DTYPE)
    for kind in KINDS:
        out, dropped = represent(empty, kind, (W, H), bins=3, return_dropped=True)
        assert out.shape[1:] == (H, W) and not out.any() and dropped == 0


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_per_window(kind):
    ev = _events(6000, seed=4)
    offsets = np.array([0, 1000, 1000, 2500, 2501, 6000])  # includes an empty and a one-event window
    out, dropped = represent_batch(ev, offsets, kind, (W, H), bins=4, tau_us=10_000, return_dropped=True)
    assert out.shape[0] == 5 and dropped.shape == (5,)
    for i in range(5):
        window = ev[offsets[i]:offsets[i + 1]]
        single, d = represent(window, kind, (W, H), bins=4, tau_us=10_000, return_dropped=True)
        assert torch.equal(out[i], single), (kind, i)
        assert int(dropped[i]) == d
    assert not out[1].any()


def test_batch_reference_matches_numba_batch():
    from fastvid.events.representations import represent_batch_reference

    ev = _events(3000, seed=9)
    offsets = np.array([0, 1000, 1000, 3000])
    for kind in KINDS:
        ref = represent_batch_reference(ev, offsets, kind, (W, H), bins=3, tau_us=9_000)
        _assert_matches(represent_batch(ev, offsets, kind, (W, H), bins=3, tau_us=9_000).numpy(), ref, kind)


def test_batched_with_per_window_times():
    ev = _events(4000, seed=5)
    offsets = np.array([0, 2000, 4000])
    t0 = np.array([0, int(ev["t"][2000]) - 500])
    t1 = np.array([int(ev["t"][1999]) + 100, 60_000])
    out = represent_batch(ev, offsets, "voxel_grid", (W, H), bins=5, t0=t0, t1=t1)
    for i in range(2):
        ref, _ = represent_reference(ev[offsets[i]:offsets[i + 1]], "voxel_grid", (W, H), bins=5, t0=t0[i], t1=t1[i])
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-5, atol=1e-5)


def test_bad_arguments():
    ev = _events(10)
    with pytest.raises(ValueError, match="unknown event representation"):
        represent(ev, "voxels", (W, H))
    with pytest.raises(ValueError, match="offsets"):
        represent_batch(ev, [0, 20], "histogram", (W, H))
    with pytest.raises(ValueError, match="column 'p'"):
        represent({"t": ev["t"], "x": ev["x"], "y": ev["y"]}, "histogram", (W, H))
    with pytest.raises(ValueError, match="one value per window"):
        represent_batch(ev, [0, 5, 10], "voxel_grid", (W, H), t0=[1, 2, 3])


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_matches_numba(kind):
    ev = _events(20000, seed=6)
    offsets = np.array([0, 5000, 5000, 12000, 20000])
    cpu, d_cpu = represent_batch(ev, offsets, kind, (W, H), bins=5, tau_us=15_000, return_dropped=True)
    gpu, d_gpu = represent_batch(ev, offsets, kind, (W, H), bins=5, tau_us=15_000, device="cuda", return_dropped=True)
    assert gpu.is_cuda and gpu.shape == cpu.shape
    assert torch.equal(d_gpu.cpu(), d_cpu)
    if kind in COUNT_KINDS:
        assert torch.equal(gpu.cpu(), cpu)
    else:
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_takes_torch_cuda_columns_and_explicit_times():
    ev = _events(8000, seed=7)
    cols = {k: torch.from_numpy(np.ascontiguousarray(ev[k])).cuda() for k in ("t", "x", "y", "p")}
    offsets = np.array([0, 4000, 8000])
    t0, t1 = np.array([0, 20_000]), np.array([40_000, 60_000])
    gpu = represent_batch(cols, offsets, "stacked_histogram", (W, H), bins=3, t0=t0, t1=t1, device="cuda", count_clip=3)
    cpu = represent_batch(ev, offsets, "stacked_histogram", (W, H), bins=3, t0=t0, t1=t1, count_clip=3)
    assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.gpu
def test_cuda_stacked_histogram_rvt_ignores_window_bounds():
    ev, offsets, t0s, t1s = _sparse_windows()
    for count_clip in (None, 10):
        gpu = represent_batch(ev, offsets, "stacked_histogram_rvt", (W, H), bins=5, t0=t0s, t1=t1s, device="cuda",
                              count_clip=count_clip)
        cpu = represent_batch(ev, offsets, "stacked_histogram_rvt", (W, H), bins=5, t0=t0s, t1=t1s, count_clip=count_clip)
        assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)
        for i in range(len(t0s)):
            expected = rvt_stacked_histogram(ev[offsets[i]:offsets[i + 1]], 5, H, W, count_cutoff=count_clip)
            assert torch.equal(gpu[i].cpu(), expected.float()), i
    window = represent_batch(ev, offsets, "stacked_histogram", (W, H), bins=5, t0=t0s, t1=t1s, device="cuda")
    assert torch.equal(window.cpu(), represent_batch(ev, offsets, "stacked_histogram", (W, H), bins=5, t0=t0s, t1=t1s))


def test_package_exports_the_function_after_module_import():
    import fastvid.events
    import fastvid.events.representations  # noqa: F401  (module and function names must not clash)

    ev = _events(500, seed=8)
    assert torch.equal(fastvid.events.represent(ev, "histogram", (W, H)), represent_batch(ev, [0, 500], "histogram", (W, H))[0])


def test_cuda_request_without_a_gpu_is_a_clear_error():
    from fastvid import _gpu

    if _gpu.cuda_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        represent(_events(10), "histogram", (W, H), device="cuda")
    assert represent(_events(10), "histogram", (W, H), device="auto").device.type == "cpu"


def test_events_benchmark_runs_and_reports_every_row():
    from fastvid.benchmarks.events import EventsBench, run_benchmark, synthetic_windows

    ev, offsets = synthetic_windows(3, 500, 50_000)
    assert offsets.tolist() == [0, 500, 1000, 1500]
    assert (np.diff(ev["t"][:500]) >= 0).all() and ev["t"][500] >= 50_000  # sorted inside, windows in order
    result = run_benchmark(EventsBench(device="cpu", kinds=("voxel_grid", "histogram"), events_per_window=500, batch=2,
                                       repeats=1, progress=False))
    modes = {(r["kind"], r["mode"]) for r in result["results"]}
    assert modes == {(k, m) for k in ("voxel_grid", "histogram")
                     for m in ("single", "batched", "numpy_add_at", "numpy_add_at_batched")}
    assert all(r["events_per_s"] > 0 for r in result["results"])
    assert result["speedup_vs_numpy_add_at"]["voxel_grid_cpu_single_vs_np_add_at"] > 0
