"""Reading Prophesee DAT, bbox and plain event files, checked against files written here by an
independent struct-based writer (not fastvid code); segment logic on known times."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fastvid.events import io as evio
from fastvid.events import segments as seg
from fastvid.events.types import EVENT_DTYPE


def write_gen1_dat(path, ts, xs, ys, ps, width=304, height=240, header=None):
    """Write a DAT file the way the format is described: '% ' text lines, type byte, size byte, then
    per event '<I' timestamp and '<I' word = x | y << 14 | p << 28. Returns the header byte length."""
    lines = header if header is not None else [
        "% Data file containing Event2D events.",
        "% Version 2",
        "% Date 2026-11-21 05:00:00",
        f"% Height {height}",
        f"% Width {width}",
    ]
    head = b"".join(line.encode("ascii") + b"\n" for line in lines) + bytes([0, 8])
    body = bytearray()
    for t, x, y, p in zip(ts, xs, ys, ps):
        body += struct.pack("<II", int(t), int(x) | (int(y) << 14) | (int(p) << 28))
    with open(path, "wb") as f:
        f.write(head)
        f.write(bytes(body))
    return len(head)


def random_events(n, t_max, seed, width=304, height=240):
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(0, t_max, n))
    return ts, rng.integers(0, width, n), rng.integers(0, height, n), rng.integers(0, 2, n)


def test_read_dat_values_and_header(tmp_path):
    ts = [5, 10, 10, 999_999, 4_000_000_000]
    xs = [0, 303, 17, 16383, 1]
    ys = [0, 239, 100, 16383, 2]
    ps = [1, 0, 1, 1, 0]
    path = tmp_path / "rec_td.dat"
    write_gen1_dat(path, ts, xs, ys, ps, width=304, height=240)
    ev, header = evio.read_dat(path, return_header=True)
    assert ev.dtype == EVENT_DTYPE
    assert ev["t"].tolist() == ts  # uint32 beyond 2**31 survives as int64
    assert ev["x"].tolist() == xs
    assert ev["y"].tolist() == ys
    assert ev["p"].tolist() == ps
    assert header.sensor_size == (304, 240)
    assert header.version == 2 and header.event_size == 8 and header.num_events == 5
    assert evio.read_dat_header(path).sensor_size == (304, 240)
    assert evio.read_events(path)["x"].tolist() == xs


def test_time_range_matches_full_read_and_mask(tmp_path):
    ts, xs, ys, ps = random_events(5000, 2_000_000, seed=1)
    path = tmp_path / "a_td.dat"
    write_gen1_dat(path, ts, xs, ys, ps)
    full = evio.read_dat(path)
    for t0, t1 in [(0, 1), (123_456, 654_321), (ts[10], ts[10] + 1), (ts[-1], ts[-1] + 1), (3_000_000, 4_000_000), (None, 500_000), (1_500_000, None)]:
        part = evio.read_dat(path, t0, t1)
        mask = np.ones(len(full), bool)
        if t0 is not None:
            mask &= full["t"] >= t0
        if t1 is not None:
            mask &= full["t"] < t1
        np.testing.assert_array_equal(part, full[mask])
    assert len(evio.read_dat(path, ts[10], ts[10] + 1)) >= 1


def test_truncated_file_names_offset(tmp_path):
    path = tmp_path / "cut_td.dat"
    head_len = write_gen1_dat(path, [1, 2, 3], [1, 2, 3], [1, 2, 3], [0, 1, 0])
    with open(path, "ab") as f:
        f.write(b"\x01\x02\x03")  # a partial 4th event
    with pytest.raises(ValueError) as err:
        evio.read_dat(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and f"byte {head_len + 3 * 8}" in msg


def test_unsorted_timestamps_name_offset(tmp_path):
    path = tmp_path / "bad_td.dat"
    head_len = write_gen1_dat(path, [10, 20, 15, 30], [1, 2, 3, 4], [1, 2, 3, 4], [0, 1, 0, 1])
    with pytest.raises(ValueError) as err:
        evio.read_dat(path)
    msg = str(err.value)
    assert str(path) in msg and "not sorted" in msg and f"byte {head_len + 2 * 8}" in msg
    with pytest.raises(ValueError, match="not sorted"):
        evio.check_dat_sorted(path)


@pytest.mark.parametrize(
    "lines,offset_of",
    [
        (["% Height abc", "% Width 304"], 0),
        (["% Version 2", "% Height 240", "% Width x"], len("% Version 2\n% Height 240\n")),
    ],
)
def test_bad_header_names_offset(tmp_path, lines, offset_of):
    path = tmp_path / "hdr_td.dat"
    write_gen1_dat(path, [1], [1], [1], [1], header=lines)
    with pytest.raises(ValueError) as err:
        evio.read_dat(path)
    assert str(path) in str(err.value) and f"byte {offset_of}" in str(err.value)


def test_bad_header_event_size_and_no_header(tmp_path):
    path = tmp_path / "size_td.dat"
    head = b"% Height 240\n% Width 304\n"
    path.write_bytes(head + bytes([0, 4]) + b"\0" * 8)
    with pytest.raises(ValueError, match=rf"byte {len(head) + 1}.*event size is 4"):
        evio.read_dat(path)
    raw = tmp_path / "raw_td.dat"
    raw.write_bytes(struct.pack("<II", 1, 2))
    with pytest.raises(ValueError, match="byte 0"):
        evio.read_dat_header(raw)
    with pytest.raises(FileNotFoundError):
        evio.read_dat(tmp_path / "missing_td.dat")


def test_empty_dat(tmp_path):
    path = tmp_path / "empty_td.dat"
    write_gen1_dat(path, [], [], [], [])
    ev, header = evio.read_dat(path, return_header=True)
    assert len(ev) == 0 and header.num_events == 0
    assert len(evio.read_dat(path, 0, 100)) == 0
    assert evio.dat_time_span(path) is None


def test_read_boxes_ts_and_t_fields(tmp_path):
    gen1 = np.dtype([("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"), ("confidence", "<f4"), ("track_id", "<u4")])
    boxes = np.zeros(3, gen1)
    boxes["ts"] = [100, 50_000, 50_000]
    boxes["x"], boxes["w"] = [1.5, 2, 3], [10, 20, 30]
    boxes["class_id"] = [0, 1, 0]
    boxes["track_id"] = [7, 8, 9]
    boxes["confidence"] = 1
    path = tmp_path / "rec_bbox.npy"
    np.save(path, boxes)
    out = evio.read_boxes(path)
    assert out.dtype == evio.BOX_DTYPE
    assert out["t"].tolist() == [100, 50_000, 50_000]
    assert out["x"].tolist() == [1.5, 2, 3] and out["class_id"].tolist() == [0, 1, 0] and out["track_id"].tolist() == [7, 8, 9]
    older = np.zeros(2, [("t", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1")])
    older["t"] = [20, 10]  # out of order: sorted on read
    older["class_id"] = [1, 0]
    np.save(tmp_path / "old_bbox.npy", older)
    out = evio.read_boxes(tmp_path / "old_bbox.npy")
    assert out["t"].tolist() == [10, 20] and out["class_id"].tolist() == [0, 1] and out["track_id"].tolist() == [0, 0]
    assert out["class_confidence"].tolist() == [1.0, 1.0]  # no score in the file: 1
    np.save(tmp_path / "nobox.npy", np.zeros(2, [("q", "f4")]))
    with pytest.raises(ValueError, match="nobox.npy.*lacks"):
        evio.read_boxes(tmp_path / "nobox.npy")


def test_read_boxes_keeps_class_confidence_and_uint32_track_ids(tmp_path):
    # the toolbox / 1 Mpx layout: 't' and 'class_confidence'
    toolbox = np.dtype([("t", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                        ("class_confidence", "<f4"), ("track_id", "<u4")])
    boxes = np.zeros(3, toolbox)
    boxes["t"] = [10, 20, 30]
    boxes["w"] = boxes["h"] = 5
    boxes["class_confidence"] = [0.25, 0.5, 0.875]
    boxes["track_id"] = [1, 2**31 + 5, 2**32 - 1]
    np.save(tmp_path / "a_bbox.npy", boxes)
    out = evio.read_boxes(tmp_path / "a_bbox.npy")
    assert out["class_confidence"].tolist() == [0.25, 0.5, 0.875]
    assert out["track_id"].tolist() == [1, 2**31 + 5, 2**32 - 1]
    # GEN1's own name for the score is 'confidence'
    gen1 = np.zeros(1, [("ts", "<u8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "u1"),
                        ("confidence", "<f4"), ("track_id", "<u4")])
    gen1["confidence"], gen1["track_id"] = 0.75, 3_000_000_000
    np.save(tmp_path / "g_bbox.npy", gen1)
    out = evio.read_boxes(tmp_path / "g_bbox.npy")
    assert out["class_confidence"].tolist() == [0.75] and out["track_id"].tolist() == [3_000_000_000]
    # an int32 copy that wrapped ids above 2**31 negative is read back as the uint32 id
    wrapped = np.zeros(1, [("t", "<i8"), ("x", "<f4"), ("y", "<f4"), ("w", "<f4"), ("h", "<f4"), ("class_id", "<i4"),
                           ("track_id", "<i4")])
    wrapped["track_id"] = np.array([3_000_000_000], np.uint32).view(np.int32)
    assert evio.normalize_boxes(wrapped)["track_id"].tolist() == [3_000_000_000]


def test_boxes_cropped_to_sensor(tmp_path):
    boxes = np.zeros(5, evio.BOX_DTYPE)
    boxes["t"] = [1, 2, 3, 4, 5]
    #            inside      left edge    right/bottom   wholly outside   zero height after crop
    boxes["x"] = [10, -5, 290, 400, 20]
    boxes["y"] = [10, 20, 230, 10, -30]
    boxes["w"] = [20, 15, 50, 10, 10]
    boxes["h"] = [20, 10, 40, 10, 25]
    out = evio.crop_boxes(boxes, (304, 240))
    assert out["t"].tolist() == [1, 2, 3]
    assert out["x"].tolist() == [10, 0, 290] and out["w"].tolist() == [20, 10, 13]  # 303 - 290
    assert out["y"].tolist() == [10, 20, 230] and out["h"].tolist() == [20, 10, 9]  # 239 - 230
    np.save(tmp_path / "c_bbox.npy", boxes)
    assert evio.read_boxes(tmp_path / "c_bbox.npy", sensor_size=(304, 240)).tolist() == out.tolist()
    assert len(evio.read_boxes(tmp_path / "c_bbox.npy")) == 5  # no sensor given: not cropped


def test_plain_array_files(tmp_path):
    ts, xs, ys, ps = random_events(300, 100_000, seed=3)
    structured = np.zeros(300, [("x", "<u2"), ("y", "<u2"), ("t", "<u8"), ("p", "<i2")])
    structured["x"], structured["y"], structured["t"], structured["p"] = xs, ys, ts, np.where(ps > 0, 1, -1)
    np.save(tmp_path / "ev.npy", structured)
    np.savez(tmp_path / "ev.npz", x=xs, y=ys, t=ts, p=ps)
    np.save(tmp_path / "cols.npy", np.stack([xs, ys, ts, ps], 1))
    for name in ("ev.npy", "ev.npz", "cols.npy"):
        ev = evio.read_events(tmp_path / name)
        assert ev.dtype == EVENT_DTYPE
        assert ev["t"].tolist() == ts.tolist() and ev["x"].tolist() == xs.tolist() and ev["p"].tolist() == ps.tolist()
        part = evio.read_events(tmp_path / name, 20_000, 60_000)
        assert part["t"].tolist() == [t for t in ts.tolist() if 20_000 <= t < 60_000]
    np.savez(tmp_path / "unsorted.npz", x=[1, 2], y=[1, 2], t=[5, 4], p=[0, 1])
    with pytest.raises(ValueError, match="unsorted.npz.*not sorted"):
        evio.read_events(tmp_path / "unsorted.npz")


@pytest.mark.parametrize("name, data", [("bad.npy", b"\x93NUMPY garbage"), ("bad.npz", b"PK\x03\x04junk")])
def test_unreadable_array_file_names_the_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ValueError, match=rf"{name}: not a readable event file"):
        evio.read_events(path)


def test_h5_needs_h5py_or_reads(tmp_path):
    from fastvid import _gpu

    path = tmp_path / "ev.h5"
    if _gpu.has_module("h5py"):
        import h5py

        with h5py.File(path, "w") as f:
            for k, v in zip("xytp", ([1, 2], [3, 4], [10, 20], [0, 1])):
                f[f"events/{k}"] = np.array(v)
        assert evio.read_events(path)["t"].tolist() == [10, 20]
    else:
        path.write_bytes(b"not really hdf5")
        with pytest.raises(ImportError, match="h5py.*pip install h5py"):
            evio.read_events(path)


# ---------------------------------------------------------------------------- segment logic


def test_write_dat_failing_mid_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    import errno

    ts, xs, ys, ps = random_events(100, 10_000, seed=3)
    events = np.zeros(len(ts), EVENT_DTYPE)
    events["t"], events["x"], events["y"], events["p"] = ts, xs, ys, ps
    path = tmp_path / "a_td.dat"
    evio.write_dat(path, events)
    before = path.read_bytes()
    assert evio.read_dat(path)["t"].tolist() == events["t"].tolist()

    class FullDisk:  # the header is half written, then the disk is full
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    real_open = open
    monkeypatch.setattr(evio, "open", lambda p, mode: FullDisk(real_open(p, mode)), raising=False)
    with pytest.raises(OSError, match="No space left"):
        evio.write_dat(path, events[:10])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a_td.dat"]


def test_segment_edges_cover_span_half_open():
    edges = seg.segment_edges(120_000, 1_000_000, 500_000)
    assert edges.tolist() == [0, 500_000, 1_000_000, 1_500_000]  # t=1_000_000 opens the third segment
    assert seg.segment_edges(0, 499_999, 500_000).tolist() == [0, 500_000]
    with pytest.raises(ValueError):
        seg.segment_edges(0, 10, 0)


def test_split_preserves_counts_at_borders():
    t = np.array([0, 1, 499_999, 500_000, 500_000, 999_999, 1_000_000, 1_234_567])
    edges = seg.recording_edges((int(t[0]), int(t[-1])), np.array([500_000, 1_499_999]), 500_000)
    assert edges.tolist() == [0, 500_000, 1_000_000, 1_500_000]
    offsets = seg.split_sorted(t, edges)
    assert offsets.tolist() == [0, 3, 6, 8]
    parts = [t[offsets[k] : offsets[k + 1]].tolist() for k in range(len(edges) - 1)]
    assert parts == [[0, 1, 499_999], [500_000, 500_000, 999_999], [1_000_000, 1_234_567]]
    assert seg.recording_edges(None, None, 500_000).tolist() == []


def test_grid_windows_edges():
    from fastvid.events.windows import grid_windows

    g = grid_windows(1000, 1000 + 120, 50)
    assert g.start.tolist() == [1000, 1050, 1100] and g.stop.tolist() == [1050, 1100, 1150]
    g = grid_windows(0, 100, 50)
    assert g.start.tolist() == [0, 50] and g.stop.tolist() == [50, 100]


def test_read_dat_equals_the_plain_numpy_reader_of_the_benchmark(tmp_path):
    """The benchmark's baseline (np.fromfile + bit fields) and read_dat agree on every field."""
    from fastvid.benchmarks.events_read import plain_numpy_read

    ts, xs, ys, ps = random_events(3000, 1_000_000, seed=8)
    path = tmp_path / "b_td.dat"
    write_gen1_dat(path, ts, xs, ys, ps)
    ours, plain = evio.read_dat(path), plain_numpy_read(path)
    for name in "txyp":
        assert ours[name].tolist() == plain[name].tolist()
    assert evio.read_dat_indices(path, 10, 20).tolist() == ours[10:20].tolist()
    with pytest.raises(ValueError, match="outside"):
        evio.read_dat_indices(path, 10, 5000)
