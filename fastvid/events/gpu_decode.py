"""Block-layout event windows decoded straight into torch tensors on a device, for the GPU path.

`decode_windows(items, device)` takes N windows (the ``events.evb`` bytes of a segment, the window's
[t0, t1)), decompresses the blocks they overlap as ONE batch, unpacks the columns and cuts the windows,
and returns concatenated columns + N+1 offsets: the input of `represent_batch(..., device)`.

* device "cuda": the stored blocks go to the GPU as they are (a few bytes per event), nvCOMP decompresses
  them there (lz4: raw LZ4 blocks; zstd: standard frames; none: nothing to do), and torch ops on the GPU
  unpack the columns; with ``decompress="host"`` the host decompresses and ships the decoded blocks.
* device "cpu": the CPU twin, run in CI: host decompression (fastvid.events.blocks), then the very
  same torch unpacking code on CPU tensors.

Unpacking is vectorized over every event of every block (gathers of bytes at computed positions, one
cumulative sum for the time deltas), so a batch costs a fixed handful of kernel launches however many
blocks it spans. Sizes are checked on the host before anything is sent: each block's count fixes its
decoded size, zstd frames must declare exactly that size, and lz4/stored blocks pass their CRC-32.
GPU figures are unmeasured (no GPU was lent while this was written).
"""

from __future__ import annotations

import zlib

import numpy as np

from fastvid.events import blocks


def _torch():
    import torch

    return torch


class _Plan:
    """The blocks a batch of windows needs, and where each one's bytes and events go."""

    def __init__(self, items):
        self.indexes, self.chunks, self.raw_sizes, self.counts, self.starts = [], [], [], [], []
        self.time, self.xy, self.codecs = [], [], []
        self.block_of_window = []  # (first block, last block + 1) in the batch, per window
        self.windows = []
        for data, t0, t1 in items:
            index = blocks.parse_index(data)
            k_lo, k_hi = index.block_range(t0, t1)
            first = len(self.counts)
            view = memoryview(data)
            for k in range(k_lo, k_hi):
                c = int(index.counts[k])
                if c == 0:
                    continue
                stored = view[int(index.byte_offsets[k]):int(index.byte_offsets[k + 1])]
                _check_stored(index, k, stored, blocks.block_nbytes(c, index.time, index.xy))
                self.chunks.append(stored)
                self.raw_sizes.append(blocks.block_nbytes(c, index.time, index.xy))
                self.counts.append(c)
                self.starts.append(index.t0 + k * index.block_us)
                self.time.append(index.time)
                self.xy.append(index.xy)
                self.codecs.append(index.codec)
            self.block_of_window.append((first, len(self.counts)))
            self.windows.append((t0, t1))


def _check_stored(index, k: int, stored, raw_size: int) -> None:
    """What the host can check before a device decompresses: CRC-32 of lz4/stored blocks, the zstd frame's size."""
    if index.crcs is not None and zlib.crc32(stored) != int(index.crcs[k]):
        raise ValueError(f"block {k} fails its CRC-32 check (the stored bytes are damaged)")
    if index.codec == "zstd":
        declared = blocks._zstd().frame_content_size(stored)
        if declared != raw_size:
            raise ValueError(f"block {k}: zstd frame declares {declared} decompressed bytes, its count needs {raw_size}")
    elif index.codec == "none" and len(stored) != raw_size:
        raise ValueError(f"block {k} holds {len(stored)} bytes where its count needs {raw_size}")


def _raw_blocks_host(plan: _Plan, device):
    """Decompress on the host: (one uint8 tensor of the decoded blocks back to back on `device`, their offsets)."""
    torch = _torch()
    raw = b"".join(bytes(blocks._decompress(codec, chunk, size))
                   for codec, chunk, size in zip(plan.codecs, plan.chunks, plan.raw_sizes))
    host = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.zeros(0, dtype=torch.uint8)
    return host.to(device), np.concatenate([[0], np.cumsum(plan.raw_sizes, dtype=np.int64)])[:-1]


def _aligned_offsets(sizes, align: int) -> np.ndarray:
    """Offsets (N+1) of buffers laid out back to back, each starting on an `align`-byte boundary."""
    padded = -(-np.asarray(sizes, np.int64) // align) * align
    return np.concatenate([[0], np.cumsum(padded)])


def _raw_blocks_nvcomp(plan: _Plan, device):
    """Send the stored blocks to the GPU (one copy, each block aligned as nvCOMP needs) and decompress them there
    with nvCOMP (nvidia-nvcomp-cu13 5.3, the libnvcomp DALI pins, or 6.x; one batch per codec) straight into views
    of one preallocated buffer whose per-block capacity is the size the block's count fixes: a block that would
    inflate past it is an error, so GPU memory stays bounded by what the sample declares."""
    torch = _torch()
    from fastvid import _gpu

    nvcomp = _gpu.require_nvcomp()
    dev = torch.device(device)
    stream = torch.cuda.current_stream(dev).cuda_stream
    align = 16  # nvCOMP's most restrictive decompression alignment (Codec.get_required_decompression_alignment)
    raw_offsets = _aligned_offsets(plan.raw_sizes, align)
    raw = torch.empty(int(raw_offsets[-1]), dtype=torch.uint8, device=dev)
    for codec_name, algorithm in (("none", None), ("lz4", "LZ4"), ("zstd", "Zstd")):
        idx = [i for i, c in enumerate(plan.codecs) if c == codec_name]
        if not idx:
            continue
        sizes = [len(plan.chunks[i]) for i in idx]
        offsets = _aligned_offsets(sizes, align)
        host = np.zeros(int(offsets[-1]), np.uint8)
        for i, a in zip(idx, offsets[:-1]):
            host[int(a):int(a) + len(plan.chunks[i])] = np.frombuffer(plan.chunks[i], np.uint8)
        stored = torch.from_numpy(host).to(dev)
        if algorithm is None:  # stored blocks: placed as they are
            for i, a in zip(idx, offsets[:-1]):
                raw[int(raw_offsets[i]):int(raw_offsets[i]) + plan.raw_sizes[i]] = stored[int(a):int(a) + plan.raw_sizes[i]]
            continue
        codec = nvcomp.Codec(algorithm=algorithm, bitstream_kind=nvcomp.BitstreamKind.RAW, device_id=dev.index or 0,
                             cuda_stream=stream)
        # One view per block into the two device buffers (nvCOMP 5.x takes lists, 6.x wraps them as a batch).
        srcs = nvcomp.as_arrays([stored[int(a):int(a) + n] for a, n in zip(offsets[:-1], sizes)], stream)
        want = [plan.raw_sizes[i] for i in idx]
        outs = nvcomp.as_arrays([raw[int(raw_offsets[i]):int(raw_offsets[i]) + plan.raw_sizes[i]] for i in idx], stream)
        try:
            decoded = codec.decode(srcs, out=outs)
        except ValueError as exc:  # a block larger than its count allows
            raise ValueError(f"nvCOMP: a {codec_name} block decodes to more than its event count allows ({exc})") from None
        got = list(decoded.buffer_sizes) if hasattr(decoded, "buffer_sizes") else [int(a.buffer_size) for a in decoded]
        if got != want:
            bad = next(k for k, (g, w) in enumerate(zip(got, want)) if g != w)
            raise ValueError(f"nvCOMP decoded a {codec_name} block to {got[bad]} bytes, its count needs {want[bad]}")
    return raw, raw_offsets[:-1]


def _gather_le(raw, pos, nbytes: int):
    """Little-endian unsigned integers of `nbytes` bytes starting at byte positions `pos` (int64 tensors)."""
    value = raw[pos].long()
    for k in range(1, nbytes):
        value |= raw[pos + k].long() << (8 * k)
    return value


def unpack_columns(raw, raw_offsets, counts, starts, time_layouts, xy_layouts):
    """Decoded blocks (one uint8 tensor; block k starts at raw_offsets[k]) -> columns t int64, x/y int16, p int8
    on raw's device.

    counts/starts: events and start time of each block; time_layouts/xy_layouts: each block's layout (one
    per set in practice). Pure torch, the same code on CPU and GPU."""
    torch = _torch()
    dev = raw.device
    n_blocks = len(counts)
    counts_np = np.asarray(counts, np.int64)
    tsize = np.array([8 if t == "raw-i64" else np.dtype(blocks._DELTA_TYPES[t]).itemsize for t in time_layouts], np.int64)
    packed = np.array([xy == "packed" for xy in xy_layouts])
    raw_base = np.asarray(raw_offsets, np.int64)
    event_base = np.concatenate([[0], np.cumsum(counts_np)])
    n = int(event_base[-1])
    if n_blocks == 0 or n == 0:
        return {"t": torch.zeros(0, dtype=torch.int64, device=dev), "x": torch.zeros(0, dtype=torch.int16, device=dev),
                "y": torch.zeros(0, dtype=torch.int16, device=dev), "p": torch.zeros(0, dtype=torch.int8, device=dev)}

    def per_event(values):
        return torch.repeat_interleave(torch.as_tensor(values, device=dev), torch.as_tensor(counts_np, device=dev))

    j = torch.arange(n, device=dev) - per_event(event_base[:-1])  # index inside the block
    base, count, ts = per_event(raw_base), per_event(counts_np), per_event(tsize)
    values = torch.zeros(n, dtype=torch.int64, device=dev)
    for width in sorted(set(tsize.tolist())):  # one width per set in practice; one gather per width
        m = ts == width
        values[m] = _gather_le(raw, (base + j * width)[m], width)
    is_raw = per_event(np.array([t == "raw-i64" for t in time_layouts]))
    # Delta blocks: t = block start + running sum of the deltas inside the block (one global cumsum, minus
    # the sum before the block).
    running = torch.cumsum(torch.where(is_raw, torch.zeros_like(values), values), 0)
    before = torch.cat([torch.zeros(1, dtype=torch.int64, device=dev), running])[per_event(event_base[:-1])]
    t = torch.where(is_raw, values, per_event(np.asarray(starts, np.int64)) + running - before)
    xy_at = base + count * ts
    is_packed = per_event(packed)
    x, y, p = (torch.zeros(n, dtype=torch.int64, device=dev) for _ in range(3))
    if packed.any():  # x | y << 14 | p << 28 in one little-endian uint32
        m = is_packed
        word = _gather_le(raw, (xy_at + 4 * j)[m], 4)
        x[m], y[m], p[m] = word & 0x3FFF, (word >> 14) & 0x3FFF, (word >> 28) & 1
    if not packed.all():  # x uint16, y uint16, p bit-packed (np.packbits: the first event is the MSB)
        m = ~is_packed
        at, jm, cm = xy_at[m], j[m], count[m]
        x[m] = _gather_le(raw, at + 2 * jm, 2)
        y[m] = _gather_le(raw, at + 2 * cm + 2 * jm, 2)
        p[m] = (raw[at + 4 * cm + jm // 8].long() >> (7 - jm % 8)) & 1
    return {"t": t, "x": x.to(torch.int16), "y": y.to(torch.int16), "p": p.to(torch.int8)}


def decode_windows(items, device="cpu", decompress: str = "auto"):
    """N windows of block-layout segments -> (columns {"t", "x", "y", "p"} as torch tensors on `device`,
    offsets (N+1,) int64 numpy), ready for `represent_batch(columns, offsets, ..., device=device)`.

    items: (events.evb bytes, t0, t1) per window (t0/t1 None: open end).
    decompress: "auto" (nvCOMP on CUDA devices, the host elsewhere), "host" or "device"."""
    torch = _torch()
    plan = _Plan(items)
    on_cuda = str(device).startswith("cuda")
    if decompress not in ("auto", "host", "device"):
        raise ValueError(f"decompress must be 'auto', 'host' or 'device', got {decompress!r}")
    if decompress == "device" and not on_cuda:
        raise ValueError("decompress='device' needs a CUDA device (nvCOMP)")
    use_nvcomp = on_cuda and decompress != "host"
    raw, raw_offsets = _raw_blocks_nvcomp(plan, device) if use_nvcomp and plan.chunks else _raw_blocks_host(plan, device)
    cols = unpack_columns(raw, raw_offsets, plan.counts, plan.starts, plan.time, plan.xy)
    # Cut each window out of its own blocks (decoded once per window, back to back, in window order).
    event_base = np.concatenate([[0], np.cumsum(np.asarray(plan.counts, np.int64))])
    per_window = np.array([event_base[last] - event_base[first] for first, last in plan.block_of_window], np.int64)
    dev = raw.device
    owner = torch.repeat_interleave(torch.arange(len(per_window), device=dev), torch.as_tensor(per_window, device=dev))
    big = np.iinfo(np.int64).max
    lo = torch.tensor([-big if t0 is None else int(t0) for t0, _ in plan.windows], dtype=torch.int64, device=dev)
    hi = torch.tensor([big if t1 is None else int(t1) for _, t1 in plan.windows], dtype=torch.int64, device=dev)
    keep = (cols["t"] >= lo[owner]) & (cols["t"] < hi[owner])
    counts = torch.bincount(owner[keep], minlength=len(per_window))
    cols = {k: v[keep] for k, v in cols.items()}
    offsets = np.concatenate([[0], np.cumsum(counts.cpu().numpy())]).astype(np.int64)
    return cols, offsets


def represent_segments_gpu(shards, window_ms: float, bins: int, batch: int, device: str = "cuda",
                           decompress: str = "auto") -> tuple[int, int]:
    """Benchmark helper: every grid window of a block-layout shard set, `batch` windows per decode_windows +
    represent_batch call on `device`; returns (events, windows)."""
    import json

    from fastvid.events.representations import represent_batch
    from fastvid.events.codec import EVENTS_EVB_EXT, META_EXT
    from fastvid.events.reading import SegmentReader, index_segments

    torch = _torch()
    window_us = int(round(window_ms * 1000))
    events = windows = 0
    todo = []
    with SegmentReader() as reader:
        for ref in index_segments(shards):
            fields = reader.read_fields(ref, {EVENTS_EVB_EXT, META_EXT})
            meta = json.loads(fields[META_EXT])
            for a in range(meta["t0"], meta["t1"], window_us):
                todo.append((fields[EVENTS_EVB_EXT], a, a + window_us))
    sensor = tuple(meta["sensor_size"])
    for i in range(0, len(todo), batch):
        part = todo[i:i + batch]
        cols, offsets = decode_windows(part, device, decompress)
        t0s = np.array([a for _, a, _ in part], np.int64)
        represent_batch(cols, offsets, "stacked_histogram", sensor, bins=bins, t0=t0s, t1=t0s + window_us, device=device)
        events += int(offsets[-1])
        windows += len(part)
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    return events, windows
