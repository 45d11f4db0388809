"""Event shard layouts: the block layout (version 2) in every codec and column layout round-trips exactly,
windows read through its time index equal windows cut from the full decode, the npz layout (version 1)
still decodes, precomputed representations equal the loader's, and hostile samples (zstd bombs, counts that
lie, columns of unequal length) are refused with one error naming the tar and the sample while memory
stays bounded."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile

import numpy as np
import pytest

from fastvid.events import codec
from fastvid.events import blocks as layout
from fastvid.events.reading import SegmentReader, index_segments
from fastvid.events.types import EVENT_DTYPE
from test_events_io import random_events, write_gen1_dat
from test_events_shard import write_boxes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bursty_events(n: int, t0: int, seed: int, sensor=(304, 240)) -> np.ndarray:
    """Sorted events in bursts with quiet gaps of up to 0.2 s (time deltas that need 8, 16 and 32 bits),
    several events on one timestamp, and x/y up to the sensor's edge."""
    rng = np.random.default_rng(seed)
    gaps = rng.choice([0, 1, 3, 300, 70_000, 200_000], n, p=[0.2, 0.5, 0.28, 0.015, 0.004, 0.001])
    ev = np.zeros(n, EVENT_DTYPE)
    ev["t"] = t0 + np.cumsum(gaps)
    ev["x"] = rng.integers(0, sensor[0], n)
    ev["y"] = rng.integers(0, sensor[1], n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def assert_columns_equal(cols, ev):
    assert set(cols) == {"t", "x", "y", "p"}
    assert cols["t"].dtype == np.int64 and cols["x"].dtype == np.int16 and cols["p"].dtype == np.int8
    for name in "txyp":
        np.testing.assert_array_equal(cols[name], ev[name], err_msg=name)


@pytest.mark.parametrize("block_codec", layout.BLOCK_CODECS)
@pytest.mark.parametrize("time", layout.TIME_LAYOUTS)
@pytest.mark.parametrize("xy", layout.XY_LAYOUTS)
@pytest.mark.parametrize("block_ms", [1.0, 5.0, 100.0])
def test_block_layout_round_trip_and_windows(block_codec, time, xy, block_ms):
    t0 = 7_000_123
    ev = bursty_events(20_000, t0 + 17, seed=int(block_ms * 10) + len(time))
    ext, data = codec.encode_event_field(ev, t0, block_codec, 1, "blocks", block_ms=block_ms, time=time, xy=xy)
    assert ext == "events.evb"
    info = layout.block_layout_info(data)
    assert (info["codec"], info["xy"], info["n"]) == (block_codec, xy, len(ev))
    # A block's first delta counts from the block start: gaps above 255 us need 16 bits, blocks over 65.5 ms 32.
    assert info["time"] == ("raw-i64" if time == "raw" else "delta-u32" if block_ms > 65.535 else "delta-u16")
    full = codec.decode_event_field(ext, data, t0, num_events=len(ev))
    assert_columns_equal(full, ev)
    np.testing.assert_array_equal(codec.decode_event_field(ext, data, t0, columns=False), ev)
    rng = np.random.default_rng(1)
    t_end = int(ev["t"][-1])
    edges = [(None, None), (t0, t0 + 1), (t_end, t_end + 1), (t_end + 1, t_end + 10**6), (t0 - 10**6, t0), (5, 3)]
    edges += [tuple(sorted(rng.integers(t0 - 1000, t_end + 1000, 2))) for _ in range(40)]
    for a, b in edges:
        got = layout.decode_blocks(data, a, b, num_events=len(ev), segment_t0=t0)
        lo = 0 if a is None else np.searchsorted(ev["t"], a)
        hi = len(ev) if b is None else max(lo, np.searchsorted(ev["t"], b))
        assert_columns_equal(got, ev[lo:hi])


def test_block_layout_empty_and_sparse_segments():
    ev = np.zeros(0, EVENT_DTYPE)
    ext, data = codec.encode_event_field(ev, 100, "lz4", 1, "blocks")
    assert len(codec.decode_event_field(ext, data, 100, num_events=0)["t"]) == 0
    one = bursty_events(1, 10_000, seed=3)
    ext, data = codec.encode_event_field(one, 0, "zstd", 1, "blocks", block_ms=1)
    assert layout.block_layout_info(data)["blocks"] == 11  # blocks 0..9 are empty, the event is in block 10
    assert_columns_equal(codec.decode_window({codec.META_EXT: json.dumps({"t0": 0, "num_events": 1}), ext: data},
                                             9_000, 12_000), one)


@pytest.mark.parametrize("npz_codec,level", [("zstd", 1), ("deflate", 1), ("stored", 0)])
def test_npz_layout_still_decodes_and_cuts_windows(npz_codec, level):
    """Sets written before the block layout (version 1, no layout fields anywhere) keep loading."""
    t0 = 1_000_000
    ev = bursty_events(5000, t0, seed=4)
    ext, data = codec.encode_event_field(ev, t0, npz_codec, level)
    fields = {ext: data, codec.META_EXT: json.dumps({"t0": t0, "num_events": len(ev)}).encode()}
    assert_columns_equal(codec.decode_sample(fields, columns=True)["events"], ev)
    a, b = int(ev["t"][1000]), int(ev["t"][3000])
    assert_columns_equal(codec.decode_window(fields, a, b), ev[np.searchsorted(ev["t"], a):np.searchsorted(ev["t"], b)])


@pytest.fixture(scope="module")
def gen1_src(tmp_path_factory):
    src = tmp_path_factory.mktemp("layouts") / "src"
    src.mkdir()
    for i, duration in enumerate((900_000, 1_300_000)):
        ts, xs, ys, ps = random_events(3000 + 1000 * i, duration, seed=20 + i, width=64, height=48)
        write_gen1_dat(src / f"rec{i}_td.dat", ts, xs, ys, ps, width=64, height=48)
        write_boxes(src / f"rec{i}_bbox.npy", np.arange(0, duration, 50_000) + 7, seed=i, sensor=(64, 48))
    return src


SET_LAYOUTS = {"npz-zstd": dict(layout="npz", codec="zstd"), "blocks-lz4": dict(layout="blocks", codec="lz4"),
               "blocks-zstd-packed-raw": dict(layout="blocks", codec="zstd", xy="packed", time="raw"),
               "blocks-none-2ms": dict(layout="blocks", codec="none", block_ms=2.0)}


def test_every_layout_loads_the_same_windows(gen1_src, tmp_path):
    """One recording set sharded in each layout: the loader yields identical steps, SegmentReader.read_window
    equals the full decode cut to the window, and the manifest and samples record the layout version."""
    import torch

    from conftest import event_loader
    from fastvid.events.writing import EventLayout, shard_events
    from fastvid.store.manifest import read_manifest

    steps = {}
    for name, kw in SET_LAYOUTS.items():
        out = tmp_path / name
        manifest = shard_events(gen1_src, out, segment_ms=300, storage=EventLayout(**kw))
        version = 1 if kw["layout"] == "npz" else 2
        assert read_manifest(out)["options"]["layout_version"] == version
        loader = event_loader(out, 2, window_ms=50, bins=3, shuffle=False, num_workers=2)
        steps[name] = [(b["x"], b["num_events"]) for b in loader]
        with SegmentReader() as reader:
            for ref in index_segments(out):
                sample = reader.read(ref, columns=True)
                assert sample["meta"].get("layout_version", 1) == version
                t = sample["events"]["t"]
                for a, b in [(sample["meta"]["t0"] + 12_345, sample["meta"]["t0"] + 62_345), (None, None)]:
                    got = reader.read_window(ref, a, b)
                    lo = 0 if a is None else np.searchsorted(t, a)
                    hi = len(t) if b is None else np.searchsorted(t, b)
                    for k in "txyp":
                        np.testing.assert_array_equal(got[k], sample["events"][k][lo:hi])
        assert manifest["num_samples"] > 0
    first = steps.pop("npz-zstd")
    assert sum(int(n.sum()) for _, n in first) == 7000
    for name, got in steps.items():
        assert len(got) == len(first)
        for (xa, na), (xb, nb) in zip(first, got):
            assert torch.equal(na, nb) and torch.equal(xa, xb), name


def test_window_read_touches_only_its_blocks(tmp_path):
    """A 50 ms window of a 500 ms segment in 5 ms blocks reads the json, the block table and ~10 of ~100 blocks."""
    from fastvid.events.writing import EventLayout, shard_events

    src = tmp_path / "src"
    src.mkdir()
    ts, xs, ys, ps = random_events(100_000, 1_000_000, seed=3, width=64, height=48)
    write_gen1_dat(src / "dense_td.dat", ts, xs, ys, ps, width=64, height=48)
    out = tmp_path / "blocks"
    shard_events(src, out, segment_ms=500, storage=EventLayout("blocks", "none"), require_boxes=False)
    reads = []

    class CountingReader(SegmentReader):
        def _pread(self, ref, ext, start, stop):
            data = super()._pread(ref, ext, start, stop)
            reads.append(len(data))
            return data

    ref = index_segments(out)[0]
    with CountingReader() as reader:
        cols = reader.read_window(ref, 100_000, 150_000)
    assert len(cols["t"]) > 0
    assert sum(reads) < 0.2 * ref.fields["events.evb"][1]


def test_cli_block_layout_with_precomputed_histograms_equal_the_loader(gen1_src, tmp_path):
    """`fastvid shard events --precompute stacked_histogram:...` stores uint8 histograms per grid window that
    equal the loader's uint8 output (window bounds as t0/t1), read whole, by window, or into a float32 batch."""
    from fastvid.cli import main as fastvid_main
    from conftest import event_loader
    from fastvid.events.precompute import decode_representation, parse_spec

    out = tmp_path / "pre"
    spec = "stacked_histogram:window_ms=50:bins=3:count_cutoff=4"
    assert fastvid_main(["shard", "events", str(gen1_src), str(out), "--segment-ms", "300", "--codec", "zstd",
                         "--block-ms", "10", "--precompute", spec]) == 0
    ext = parse_spec(spec).ext
    refs = index_segments(out)
    assert all(ext in ref.fields for ref in refs)
    loader = event_loader(out, 1, window_ms=50, bins=3, shuffle=False, dtype="uint8", count_cutoff=4)
    expected = {(b["recording"][0], int(b["t0"][0])): b["x"][0].numpy() for b in loader}
    with SegmentReader() as reader:
        for ref in refs:
            meta = json.loads(reader.read_fields(ref, {"json"})["json"])
            whole = decode_representation(reader.read_fields(ref, {ext})[ext])
            assert whole.shape == (6, 6, 48, 64) and whole.dtype == np.uint8 and whole.max() <= 4
            for w in range(6):
                key = (meta["recording"], meta["t0"] + w * 50_000)
                if key in expected:  # windows past the recording's end are padding, never yielded
                    np.testing.assert_array_equal(whole[w], expected[key])
            batch = np.zeros((2, 6, 48, 64), np.float32)
            reader.read_representation(ref, ext, [4, 1], out=batch, out_zeroed=True)
            np.testing.assert_array_equal(batch, whole[[4, 1]])
            np.testing.assert_array_equal(reader.read_representation(ref, ext, [5]), whole[5:])
    with pytest.raises(ValueError, match="no precomputed"):
        with SegmentReader() as reader:
            reader.read_representation(refs[0], "histogram_w50000_b1.evr")


def test_storage_precompute_and_precompute_argument_both_store(gen1_src, tmp_path):
    """Representations named in the EventLayout given as `storage` are written, next to those of `precompute`."""
    from fastvid.events.precompute import parse_spec
    from fastvid.events.writing import EventLayout, shard_events

    a, b = parse_spec("stacked_histogram:window_ms=50:bins=3", 300), "stacked_histogram:window_ms=100:bins=2"
    out = tmp_path / "both"
    shard_events(gen1_src, out, segment_ms=300, storage=EventLayout("blocks", "lz4", precompute=(a,)), precompute=[b])
    refs = index_segments(out)
    assert refs and all(a.ext in ref.fields and parse_spec(b, 300).ext in ref.fields for ref in refs)


@pytest.mark.parametrize("encoding,rep_codec", [("dense", "none"), ("dense", "lz4"), ("sparse", "zstd"), ("sparse", "none")])
def test_precomputed_encodings_round_trip(encoding, rep_codec):
    from fastvid.events.precompute import compute_windows, decode_representation, encode_representation, parse_spec

    spec = parse_spec(f"stacked_histogram:window_ms=20:bins=4:encoding={encoding}", 100)
    ev = bursty_events(30_000, 500, seed=9, sensor=(32, 24))
    ev = ev[ev["t"] < 100_500]
    data = encode_representation(ev, 500, 100_500, spec, (32, 24), rep_codec)
    expected = compute_windows(ev, 500, 5, spec, (32, 24))
    assert expected.sum() > 0
    np.testing.assert_array_equal(decode_representation(data), expected)
    np.testing.assert_array_equal(decode_representation(data, [3, 0]), expected[[3, 0]])


def test_precompute_spec_errors():
    from fastvid.events.precompute import parse_spec

    for bad in ("voxel_grid:window_ms=50", "stacked_histogram:bins=10", "stacked_histogram:window_ms=50:bins=0",
                "stacked_histogram:window_ms=50:count_cutoff=300", "stacked_histogram:window_ms=50:foo=1"):
        with pytest.raises(ValueError, match="--precompute"):
            parse_spec(bad, 500)
    with pytest.raises(ValueError, match="must divide --segment-ms"):
        parse_spec("stacked_histogram:window_ms=30", 500)


# -- hostile samples ------------------------------------------------------------------------------------


def zstd_bomb(nbytes: int, content_size: bool) -> bytes:
    """A real zstd frame of a few KB that decompresses to `nbytes` zero bytes (streamed: never in memory)."""
    import zstandard

    buf = io.BytesIO()
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    with cctx.stream_writer(buf, size=nbytes if content_size else -1, closefd=False) as writer:
        chunk = bytes(1 << 20)
        for _ in range(nbytes >> 20):
            writer.write(chunk)
    return buf.getvalue()


def write_tar(path, samples: dict) -> str:
    """A webdataset tar of {key: {ext: bytes}}."""
    with tarfile.open(path, "w") as tar:
        for key, fields in samples.items():
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def meta(num_events: int, t0: int = 0, t_end: int = 1_000_000) -> bytes:
    return json.dumps({"recording": "rec", "segment": t0 // 500_000, "t0": t0, "t1": t0 + 500_000, "sensor_size": [304, 240],
                       "num_events": num_events, "num_boxes": 0, "recording_t_end": t_end}).encode()


def run_bounded(code: str, limit_mb: int = 700) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose address space may grow only `limit_mb` MB past its imports."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        import numpy, zstandard, lz4.block
        import fastvid.events.reading, fastvid.events.codec
        size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (size + {limit_mb} * 2**20, resource.RLIM_INFINITY))
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.parametrize("content_size", [True, False])
def test_zstd_bomb_in_npz_layout_is_refused_with_bounded_memory(tmp_path, content_size):
    """Issue 21: a small zstd events column that decodes to gigabytes while the json declares 2,580 events is
    refused (naming the tar and the sample) before it is inflated; the process never needs more than the
    declared size (it runs under an address-space limit far below the bomb's size)."""
    bomb = zstd_bomb(3 << 30, content_size)
    assert len(bomb) < 200_000
    tar = write_tar(tmp_path / "hostile-000000.tar", {"rec_s000000": {"events.npz.zst": bomb, "json": meta(2580)}})
    proc = run_bounded(f"""
        from fastvid.events.reading import SegmentReader, index_segments
        ref = index_segments([{tar!r}])[0]
        try:
            SegmentReader().read(ref, columns=True)
        except ValueError as exc:
            print("ERROR", exc)
        print("MAXRSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ERROR" in proc.stdout and "hostile-000000.tar" in proc.stdout and "rec_s000000" in proc.stdout
    assert "zstd" in proc.stdout and "MemoryError" not in proc.stdout
    assert int(proc.stdout.split("MAXRSS_MB")[1]) < 1500


def test_block_that_inflates_past_its_count_is_refused(tmp_path):
    """Block layout: every block decodes to exactly what its count needs (a zstd bomb in a block, a lying
    count, a table that runs past the field): refused with bounded memory."""
    ev = bursty_events(1000, 0, seed=5)
    _, good = codec.encode_event_field(ev, 0, "zstd", 1, "blocks", block_ms=5000)
    index = layout.parse_index(good)
    assert len(index.counts) == 1  # the table: counts[0], sizes[0] (zstd frames check themselves: no CRC column)
    head = bytes(good[:int(index.byte_offsets[0])])
    bomb = zstd_bomb(2 << 30, True)
    hostile = head[:-4] + np.uint32(len(bomb)).tobytes() + bomb
    tar = write_tar(tmp_path / "bomb-000000.tar", {"rec_s000000": {"events.evb": hostile, "json": meta(1000)},
                                                   "rec_s000001": {"events.evb": good, "json": meta(999)}})
    proc = run_bounded(f"""
        from fastvid.events.reading import SegmentReader, index_segments
        for ref in index_segments([{tar!r}]):
            for read in (lambda: SegmentReader().read(ref, columns=True), lambda: SegmentReader().read_window(ref, 0, 10**6)):
                try:
                    read()
                    print("DECODED", ref.key)
                except ValueError as exc:
                    print("ERROR", exc)
        print("MAXRSS_MB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ERROR")]
    assert len(lines) == 4 and "DECODED" not in proc.stdout, proc.stdout
    assert all("bomb-000000.tar" in ln for ln in lines)
    assert "rec_s000000" in lines[0] and "declares 2147483648" in lines[0]
    assert "rec_s000001" in lines[2] and "declares 999" in lines[2]
    assert int(proc.stdout.split("MAXRSS_MB")[1]) < 1500
    # A table that claims more blocks than the field holds.
    info = json.loads(head[8:8 + int.from_bytes(head[4:8], "little")])
    info["blocks"] = 10**6
    text = json.dumps(info).encode()
    with pytest.raises(ValueError, match="past the field"):
        layout.decode_blocks(head[:4] + len(text).to_bytes(4, "little") + text + head[8 + int.from_bytes(head[4:8], "little"):])


def test_lz4_block_that_inflates_past_its_count_is_refused():
    import lz4.block

    ev = bursty_events(500, 0, seed=6)
    _, good = codec.encode_event_field(ev, 0, "lz4", 1, "blocks", block_ms=5000)
    index = layout.parse_index(good)
    head = bytearray(good[:int(index.byte_offsets[0])])
    big = lz4.block.compress(bytes(50 << 20), store_size=False)  # 50 MB of zeros in ~200 KB
    jlen = int.from_bytes(head[4:8], "little")
    table = np.frombuffer(bytes(head[8 + jlen:]), np.uint32).copy()
    table[1] = len(big)  # sizes[0]
    table[2] = __import__("zlib").crc32(big)  # crc32[0]: the block is intact, just far too large
    hostile = bytes(head[:8 + jlen]) + table.tobytes() + big
    with pytest.raises(ValueError, match="lz4"):
        layout.decode_blocks(hostile, num_events=500)


def npz_with_columns(n_declared: int, lengths: dict, deflate: bool = False) -> bytes:
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as zf:
        cols = {"dt": np.zeros(lengths.get("dt", n_declared), np.uint8), "x": np.zeros(lengths.get("x", n_declared), np.uint16),
                "y": np.zeros(lengths.get("y", n_declared), np.uint16),
                "p": np.zeros(lengths.get("p", (n_declared + 7) // 8), np.uint8), "n": np.array(n_declared, np.int64)}
        for name, arr in cols.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def test_columns_of_unequal_length_are_one_error_naming_tar_and_sample(tmp_path):
    """Issue 21: an npz whose x column is shorter than the others used to decode and fail later in the
    representation, naming no file. Now the reader and the loader refuse it, naming the tar and the key."""
    from conftest import event_loader

    good = npz_with_columns(100, {})
    short_x = npz_with_columns(100, {"x": 60})
    tar = write_tar(tmp_path / "uneven-000000.tar", {"rec_s000000": {"events.npz": good, "json": meta(100)},
                                                     "rec_s000001": {"events.npz": short_x, "json": meta(100, 500_000)}})
    refs = index_segments([tar])
    with SegmentReader() as reader:
        assert len(reader.read(refs[0], columns=True)["events"]["t"]) == 100
        with pytest.raises(ValueError, match=r"uneven-000000.tar: cannot decode segment 'rec_s000001'.*x\.npy.*\(100,\)"):
            reader.read(refs[1], columns=True)
    # The loader's failure policy: one failure naming tar and segment, padding rows in its place; past the
    # budget, the epoch fails with that message.
    loader = event_loader([tar], 1, window_ms=100, shuffle=False, num_workers=1)
    steps = list(loader)
    assert loader.stats["failures"] == 1 and sum(int(s["valid"].sum()) for s in steps) == 5
    with pytest.raises(RuntimeError, match=r"uneven-000000.tar: cannot decode segment 'rec_s000001'"):
        list(event_loader([tar], 1, window_ms=100, shuffle=False, num_workers=1, failure_budget=0))


def test_npz_members_that_inflate_past_the_declared_count_are_refused():
    """A deflate npz whose x column holds 10 M events (10 KB compressed) in a sample that declares 100."""
    bomb = npz_with_columns(100, {"x": 10_000_000}, deflate=True)
    assert len(bomb) < 100_000
    with pytest.raises(ValueError, match=r"x\.npy holds shape \(10000000,\), the sample declares \(100,\)"):
        codec.decode_event_field("events.npz", bomb, 0, num_events=100)
    with pytest.raises(ValueError, match="json declares 5"):
        codec.decode_event_field("events.npz", npz_with_columns(100, {}), 0, num_events=5)


def test_boxes_that_declare_more_than_they_hold_are_refused():
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (10**9,)})
    with pytest.raises(ValueError, match="declares shape"):
        codec.decode_boxes(buf.getvalue() + bytes(64))


# -- decoding into torch tensors (the GPU path and its CPU twin) ----------------------------------------


def device_items():
    """Windows of segments in every codec and column layout (aligned, unaligned, empty, whole)."""
    t0 = 3_000_000
    ev = bursty_events(6000, t0, seed=11)
    t_end = int(ev["t"][-1])
    items, expected = [], []
    for i, (c, time, xy) in enumerate([("lz4", "delta", "split"), ("zstd", "raw", "packed"), ("none", "delta", "packed"),
                                       ("lz4", "raw", "split"), ("zstd", "delta", "split")]):
        data = layout.encode_blocks(ev, t0, c, 1, [1.0, 5.0, 100.0][i % 3], time, xy)
        for a, b in [(t0 + 10_000, t0 + 60_000), (t0 + 33, t0 + 9_999), (None, None), (t_end + 1, t_end + 10), (t0, t_end // 2)]:
            items.append((data, a, b))
            expected.append(layout.decode_blocks(data, a, b))
    return items, expected


def test_device_decode_cpu_twin_equals_host_decode():
    """decode_windows on the CPU (host decompression + the torch unpacking the GPU runs) gives the columns
    and offsets of decode_blocks, window by window, and feeds represent_batch unchanged."""
    from fastvid.events.representations import represent_batch
    from fastvid.events.gpu_decode import decode_windows

    items, expected = device_items()
    cols, offsets = decode_windows(items, "cpu")
    assert offsets.tolist() == np.concatenate([[0], np.cumsum([len(e["t"]) for e in expected])]).tolist()
    for i, exp in enumerate(expected):
        for k in "txyp":
            got = cols[k][offsets[i]:offsets[i + 1]].numpy()
            assert got.dtype == exp[k].dtype
            np.testing.assert_array_equal(got, exp[k], err_msg=f"window {i} column {k}")
    x = represent_batch(cols, offsets, "stacked_histogram", (304, 240), bins=4)
    host = {k: np.concatenate([e[k] for e in expected]) for k in "txyp"}
    np.testing.assert_array_equal(x.numpy(), represent_batch(host, offsets, "stacked_histogram", (304, 240), bins=4).numpy())
    with pytest.raises(ValueError, match="needs a CUDA device"):
        decode_windows(items[:1], "cpu", decompress="device")


def test_device_decode_refuses_damaged_blocks_before_sending_them():
    from fastvid.events.gpu_decode import decode_windows

    ev = bursty_events(2000, 0, seed=12)
    data = bytearray(layout.encode_blocks(ev, 0, "lz4", 1, 1000.0))
    data[-10] ^= 0xFF
    with pytest.raises(ValueError, match="CRC-32"):
        decode_windows([(bytes(data), None, None)], "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("decompress", ["device", "host"])
def test_gpu_decode_equals_cpu_twin(decompress):
    """nvCOMP decompression on the GPU (or host decompression + GPU unpacking) equals the CPU twin."""
    from fastvid.events.gpu_decode import decode_windows

    if decompress == "device":
        pytest.importorskip("nvidia.nvcomp")
    items, _ = device_items()
    cpu_cols, cpu_off = decode_windows(items, "cpu")
    gpu_cols, gpu_off = decode_windows(items, "cuda", decompress)
    assert gpu_off.tolist() == cpu_off.tolist()
    for k in "txyp":
        assert gpu_cols[k].is_cuda
        np.testing.assert_array_equal(gpu_cols[k].cpu().numpy(), cpu_cols[k].numpy())


@pytest.mark.gpu
def test_gpu_shard_windows_to_representations_match_cpu(gen1_src, tmp_path):
    """The whole GPU path on a shard set (block layout, lz4): the same stacked histograms as on the CPU."""
    import torch

    from fastvid.events.representations import represent_batch
    from fastvid.events.gpu_decode import decode_windows
    from fastvid.events.writing import EventLayout, shard_events

    out = tmp_path / "gpu"
    shard_events(gen1_src, out, segment_ms=300, storage=EventLayout("blocks", "lz4"))
    with SegmentReader() as reader:
        items = []
        for ref in index_segments(out):
            fields = reader.read_fields(ref)
            t0 = json.loads(fields["json"])["t0"]
            items += [(fields["events.evb"], t0 + k * 50_000, t0 + (k + 1) * 50_000) for k in range(6)]
    results = []
    for device in ("cpu", "cuda"):
        cols, offsets = decode_windows(items, device)
        t0s = np.array([a for _, a, _ in items])
        results.append(represent_batch(cols, offsets, "stacked_histogram", (64, 48), bins=5, t0=t0s, t1=t0s + 50_000,
                                       device=device).cpu())
    assert results[0].sum() > 0
    torch.testing.assert_close(results[1], results[0])


def test_uint8_kernels_equal_float32_clamped():
    """represent_batch(out_dtype="uint8") counts in uint8 on the CPU: the same values as float32 + clamp + cast."""
    import torch

    from fastvid.events.representations import represent_batch

    ev = bursty_events(40_000, 0, seed=13, sensor=(4, 3))  # ~500 events per cell: counts past 255
    ev["x"][::97] = 25  # some events outside the sensor
    offsets = np.array([0, 100, 100, 25_000, 40_000])
    t0s = np.array([0, 5, int(ev["t"][100]), int(ev["t"][25_000]) - 7])
    for kind in ("stacked_histogram", "histogram"):
        for clip in (None, 3.7, 1000.0):
            ref, dropped = represent_batch(ev, offsets, kind, (4, 3), bins=3, t0=t0s, t1=t0s + 400_000, count_clip=clip,
                                           return_dropped=True)
            got, got_dropped = represent_batch(ev, offsets, kind, (4, 3), bins=3, t0=t0s, t1=t0s + 400_000, count_clip=clip,
                                               return_dropped=True, out_dtype="uint8")
            assert got.dtype == torch.uint8 and float(ref.max()) > (255 if clip != 3.7 else 3)
            assert torch.equal(got, ref.clamp(max=255).to(torch.uint8)) and torch.equal(got_dropped, dropped)
    with pytest.raises(ValueError, match="counts only"):
        represent_batch(ev, offsets, "voxel_grid", (4, 3), out_dtype="uint8")


def test_events_shards_benchmark_paths_cover_the_same_windows(tmp_path):
    """The side-by-side benchmark, tiny: every path goes over the same windows and events as the DAT baseline."""
    from fastvid.benchmarks.events_shards import EventsShardsBench, format_table, run_benchmark

    r = run_benchmark(EventsShardsBench(work_dir=str(tmp_path), recordings=2, duration_s=0.3, rate_meps=0.05, repeats=1,
                                        batch=4, layouts=["npz-zstd (v1 default)", "blocks-lz4"], tonic_windows=2))
    dat = r["paths"]["dat"]
    assert dat["windows"] == 2 * 6 and dat["events"] == r["data"]["events"]
    for name, row in r["paths"].items():
        if name.startswith(("tonic", "floor")):
            continue
        assert (row["events"], row["windows"]) == (dat["events"], dat["windows"]), name
        assert len(row["seconds"]) == 1 and row["x_dat"] > 0
    assert {"shards:blocks-lz4", "windows->uint8:blocks-lz4", "precomputed (uint8 batch)", "loader uint8: precomputed",
            "loader uint8: events"} <= set(r["paths"])
    assert "x dat" in format_table(r)


def test_loader_reads_precomputed_windows_with_the_same_boxes(gen1_src, tmp_path):
    """With precomputed histograms in the set, the loader reads them (not the events) and hands out the same
    inputs, labels and boxes per window as its events path, each segment's boxes decoded once per pass."""
    from fastvid.cli import main as fastvid_main
    from conftest import event_loader

    out = tmp_path / "pre"
    assert fastvid_main(["shard", "events", str(gen1_src), str(out), "--segment-ms", "300", "--codec", "zstd",
                         "--block-ms", "10", "--precompute", "stacked_histogram:window_ms=50:bins=3"]) == 0

    def by_window(precomputed):
        loader = event_loader(out, 2, window_ms=50, bins=3, shuffle=False, dtype="uint8", precomputed=precomputed,
                              window_mode="grid")
        assert (loader.precomputed is not None) == precomputed
        rows = {}
        for b in loader:
            for i in range(len(b["recording"])):
                if b["recording"][i]:
                    rows[(b["recording"][i], int(b["t0"][i]))] = (b["x"][i].numpy(), b["boxes"][i])
        return rows

    events, stored = by_window(False), by_window(True)
    assert stored.keys() == events.keys() and len(stored) > 10
    assert sum(len(boxes) for _, boxes in events.values()) > 0
    for key, (x, boxes) in events.items():
        np.testing.assert_array_equal(stored[key][0], x)
        np.testing.assert_array_equal(np.asarray(stored[key][1]), np.asarray(boxes))


def test_loader_skips_a_corrupt_precomputed_window_as_zero_padding(gen1_src, tmp_path):
    """One stored histogram window made undecodable: with a failure budget the loader names its tar and key,
    hands out that row as padding (zeros, not valid, no boxes) and every other window as the events path does."""
    from fastvid.cli import main as fastvid_main
    from fastvid.events.precompute import parse_spec
    from fastvid.events.reading import SegmentReader, index_segments
    from conftest import event_loader

    out = tmp_path / "pre"
    assert fastvid_main(["shard", "events", str(gen1_src), str(out), "--segment-ms", "300", "--codec", "zstd",
                         "--precompute", "stacked_histogram:window_ms=50:bins=3"]) == 0
    ext = parse_spec("stacked_histogram:window_ms=50:bins=3").ext
    ref = index_segments(out)[1]
    with SegmentReader() as reader:
        index = reader.representation_index(ref, ext)
    k = int(np.argmax(index.sizes))  # a window with events: its bytes are a zstd frame
    start = ref.fields[ext][0] + int(index.byte_offsets[k])
    with open(ref.tar, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * int(index.sizes[k]))

    def by_window(precomputed, **kw):
        loader = event_loader(out, 2, window_ms=50, bins=3, shuffle=False, dtype="uint8", precomputed=precomputed,
                              window_mode="grid", **kw)
        rows, padding = {}, []
        for b in loader:
            for i in range(len(b["recording"])):
                if b["recording"][i]:
                    rows[(b["recording"][i], int(b["t0"][i]))] = (b["x"][i].numpy(), b["boxes"][i])
                else:
                    padding.append((b["x"][i].numpy(), len(b["boxes"][i]), bool(b["valid"][i])))
        return rows, padding, loader.stats

    from fastvid.pipeline.contract import FailureBudgetExceeded

    with pytest.raises(FailureBudgetExceeded, match=f"{ref.tar}: cannot decode segment '{ref.key}'"):
        by_window(True, failure_budget=0)
    events, _, _ = by_window(False)
    stored, padding, stats = by_window(True, failure_budget=1)
    assert stats["failures"] == 1 and stats["failed_keys"][0].startswith(ref.recording)
    assert len(stored) == len(events) - 1 and set(stored) < set(events)
    assert any(x.any() for x, _ in events.values())
    for key, (x, boxes) in stored.items():
        np.testing.assert_array_equal(x, events[key][0])
        np.testing.assert_array_equal(np.asarray(boxes), np.asarray(events[key][1]))
    assert padding and all(not x.any() and n == 0 and not valid for x, n, valid in padding)
