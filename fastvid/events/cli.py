"""`fastvid shard events SRC OUT --format gen1|gen4 --segment-ms 500`: event recordings -> event shards.

fastvid/store/cli.py delegates its `events` sub-command here (add_arguments / run).
"""

from __future__ import annotations

from fastvid.store.options import add_common_arguments


def add_arguments(parser):
    parser.add_argument("src", help="dataset folder (gen1: *_td.dat, gen4: *_td.h5, raw: *.raw, with *_bbox.npy next to each, any depth) or one events file")
    parser.add_argument("out", help="output folder for the shards, DALI indexes and manifest.json")
    parser.add_argument("--format", default="gen1", choices=["gen1", "gen4", "raw"],
                        help="dataset layout: gen1 (Prophesee GEN1 *_td.dat), gen4 (Prophesee 1 Mpx as RVT's *_td.h5; needs h5py + hdf5plugin), "
                             "raw (Prophesee EVT 2.0/3.0 *.raw); each with *_bbox.npy next to it; default gen1")
    parser.add_argument("--segment-ms", type=float, default=500.0, help="duration of one sample, in ms (default: 500)")
    parser.add_argument("--classes", default=None, help="comma-separated class names, index = class_id (default: the format's, GEN1 car,pedestrian)")
    parser.add_argument("--allow-missing-boxes", action="store_true", help="shard recordings without a _bbox.npy (no boxes) instead of failing them")
    parser.add_argument("--layout", default="blocks", choices=["blocks", "npz"],
                        help="event column layout: blocks (default: events.evb, a time index of --block-ms blocks so a window "
                             "read decompresses only its blocks) or npz (the version-1 layout, events.npz[.zst])")
    parser.add_argument("--codec", default=None, choices=["lz4", "zstd", "none", "deflate", "stored"],
                        help="event column codec: blocks layout lz4 (default: fastest to decode), zstd (smallest) or none; "
                             "npz layout zstd (default), deflate or stored")
    parser.add_argument("--compress-level", type=int, default=1,
                        help="codec level: 1 (default, fast) to 19 (zstd) / 12 (lz4 HC) / 9 (deflate); 0 = uncompressed")
    parser.add_argument("--block-ms", type=float, default=5.0, help="blocks layout: duration of one indexed block, in ms (default 5)")
    parser.add_argument("--time-column", default="delta", choices=["delta", "raw"],
                        help="blocks layout: timestamps as deltas in the smallest unsigned type (default) or raw int64")
    parser.add_argument("--xy-column", default="split", choices=["split", "packed"],
                        help="blocks layout: x, y as uint16 columns + bit-packed p (default), or packed in one uint32 as in DAT files")
    parser.add_argument("--precompute", action="append", default=[], metavar="SPEC",
                        help="store a representation next to the events, read back as tensors without decoding events, e.g. "
                             "stacked_histogram:window_ms=50:bins=10 (RVT's; uint8 counts; window_ms must divide --segment-ms); "
                             "repeatable")
    add_common_arguments(parser, max_samples=None, max_shard_bytes=None, workers=1)


def run(args) -> int:
    from fastvid.events.writing import EventLayout, shard_events

    writer_kw = {"workers": args.workers, "seed": args.seed, "node_rank": args.node_rank,
                 "num_nodes": args.num_nodes, "strict": args.strict, "overwrite": args.overwrite}
    if args.max_samples is not None:
        writer_kw["max_samples"] = args.max_samples
    if args.max_shard_bytes is not None:
        writer_kw["max_shard_bytes"] = args.max_shard_bytes
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    storage = EventLayout(args.layout, args.codec or ("lz4" if args.layout == "blocks" else "zstd"),
                          int(args.compress_level), float(args.block_ms), args.time_column, args.xy_column)
    shard_events(args.src, args.out, format=args.format, segment_ms=args.segment_ms, split=args.split,
                 classes=classes, require_boxes=not args.allow_missing_boxes, storage=storage,
                 precompute=args.precompute, **writer_kw)
    return 0  # the writer's summary names the failed recordings
