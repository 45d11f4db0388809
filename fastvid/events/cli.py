"""`fastvid shard events SRC OUT --format gen1|gen4 --segment-ms 500`: event recordings -> event shards.

fastvid/shard/cli.py delegates its `events` sub-command here (add_arguments / run).
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
    parser.add_argument("--codec", default="zstd", choices=["zstd", "deflate", "stored"],
                        help="event column codec: zstd (default: events.npz.zst, fast to decode), deflate (events.npz as np.savez_compressed would), stored")
    parser.add_argument("--compress-level", type=int, default=1, help="codec level: 1 (default, fast) to 19 (zstd) / 9 (deflate); 0 = uncompressed")
    add_common_arguments(parser, max_samples=None, max_shard_bytes=None, workers=1)


def run(args) -> int:
    from fastvid.events.writing import shard_events

    writer_kw = {"workers": args.workers, "seed": args.seed, "node_rank": args.node_rank,
                 "num_nodes": args.num_nodes, "strict": args.strict, "overwrite": args.overwrite}
    if args.max_samples is not None:
        writer_kw["max_samples"] = args.max_samples
    if args.max_shard_bytes is not None:
        writer_kw["max_shard_bytes"] = args.max_shard_bytes
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    shard_events(args.src, args.out, format=args.format, segment_ms=args.segment_ms, split=args.split,
                 classes=classes, require_boxes=not args.allow_missing_boxes,
                 compress_level=args.compress_level, codec=args.codec, **writer_kw)
    return 0  # the writer's summary names the failed recordings
