"""`fastvid shard videos SRC OUT`: a video dataset on disk -> a video shard set.

Discovers the dataset (fastvid.video.sources), re-encodes or remuxes every clip (fastvid.video.transcode)
and writes shards, DALI indexes and the manifest with the store's writer (fastvid.store.writer).
"""

from __future__ import annotations

import argparse
import functools
import sys

from fastvid.store.options import add_common_arguments


def add_arguments(p) -> None:
    p.add_argument("src", help="dataset root (class folders, list-file root, or frames root)")
    p.add_argument("out", help="output directory for shards, indexes and manifest.json")
    p.add_argument("--layout", choices=("kinetics", "list", "frames"), default="kinetics",
                   help="kinetics: SRC/<class>/<video>; list: --list FILE (path label lines, or a Kinetics CSV); "
                        "frames: leaf folders of JPEG/PNG frames (default: kinetics)")
    p.add_argument("--list", dest="list_file", help="list file: 'relative/path label' lines, or a Kinetics CSV "
                   "(label,youtube_id,time_start,time_end,split)")
    p.add_argument("--video-root", help="where the list/CSV paths are found (default: SRC)")
    p.add_argument("--classes", dest="classes_file", help="class names, one per line (line i = label i)")
    p.add_argument("--label-level", type=_label_level, help="list/frames layouts: label = the folder at this level "
                   "of each relative path (0 = first; iPER images_HD: 0 = person), or 'none' for no label "
                   "(default: the list's labels, else the parent folder)")
    p.add_argument("--kinetics-version", type=int, choices=(400, 600, 700),
                   help="Kinetics-400/600/700: check the class count and name classes as the official CSVs do "
                        "(folder 'air_drumming' -> 'air drumming'), so folder and CSV layouts share label ids")
    p.add_argument("--codec", choices=("vp9", "h264", "copy"), default="vp9",
                   help="vp9 (decodable by DALI on CPU and GPU), h264 (libx264; NVDEC on GPU), or copy "
                        "(remux the original stream, no re-encode) (default: vp9)")
    p.add_argument("--short-side", type=int, help="resize so the short side is this many pixels (even; aspect kept)")
    p.add_argument("--fps", type=float, help="output frame rate (default: the source's); for --layout frames, "
                   "the rate the frames were taken at")
    p.add_argument("--gop", type=int, default=8, help="keyframe interval in frames (default: 8, cheap random access)")
    p.add_argument("--crf", type=int, help="quality, lower is better (default: 23 for h264, 32 for vp9)")
    p.add_argument("--preset", default="veryfast", help="libx264 preset (default: veryfast)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: --workers processes on this machine; ray: Ray tasks on a Ray cluster (same shards "
                        "for the same seed) (default: local)")
    p.add_argument("--ray-address", help="Ray cluster to join (e.g. 'auto' for the one `ray start --head` runs "
                   "here, or ray://host:10001); default: start a local Ray instance with --workers CPUs")
    add_common_arguments(p)


def _label_level(text: str):
    if text.lower() == "none":
        return "none"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--label-level {text!r}: a folder level (0, 1, ...) or 'none'") from None


def video_options(args):
    from fastvid.video.transcode import TranscodeOptions

    frames = args.layout == "frames"
    if frames and not args.fps:
        raise ValueError("--layout frames needs --fps (the rate the frames were taken at)")
    if frames and args.codec == "copy":
        raise ValueError("--codec copy cannot be used with --layout frames (there is no video stream to copy); use vp9 or h264")
    return TranscodeOptions(codec=args.codec, short_side=args.short_side, fps=None if frames else args.fps, gop=args.gop,
                            crf=args.crf, preset=args.preset, frames_fps=args.fps if frames else None)


def video_engine(args):
    """The encoder of `--engine` (None: the writer's local process pool)."""
    if args.engine == "local":
        if args.ray_address:
            raise ValueError("--ray-address needs --engine ray")
        return None
    from fastvid.store import ray_engine

    return ray_engine.engine(address=args.ray_address)


def run(args) -> int:
    from fastvid.video import sources, transcode
    from fastvid.store.writer import ShardJob, write_shard_set

    options = video_options(args)
    items, classes = sources.discover(args.layout, args.src, list_file=args.list_file, video_root=args.video_root,
                                      classes_file=args.classes_file, label_level=args.label_level,
                                      kinetics_version=args.kinetics_version, exclude=args.out)
    missing = sum(it.stamp == "missing" for it in items)
    if missing:
        print(f"shard {args.split}: {missing} of {len(items)} listed videos are missing (each is recorded as a "
              "failure in the manifest)", file=sys.stderr)
    recorded = {"layout": args.layout, **({"kinetics_version": args.kinetics_version} if args.kinetics_version else {}), "codec": options.codec, "container": "webm" if options.codec == "vp9" else "mp4",
                "short_side": options.short_side, "fps": options.fps, "frames_fps": options.frames_fps,
                "gop": options.gop if options.codec != "copy" else None, "crf": options.crf,
                "preset": options.preset if options.codec == "h264" else None}
    job = ShardJob(kind="video", classes=classes, options=recorded, split=args.split, max_samples=args.max_samples,
                   max_shard_bytes=args.max_shard_bytes, workers=args.workers, seed=args.seed, node_rank=args.node_rank,
                   num_nodes=args.num_nodes, strict=args.strict, desc=f"shard {args.split}", overwrite=args.overwrite,
                   engine=video_engine(args))
    write_shard_set(items, functools.partial(transcode.encode_sample, options=options), args.out, job)
    return 0
