"""Command-line options shared by the shard commands (`fastvid shard videos`, `fastvid shard events`):
the size parser and the writer options every shard job has. Both command modules import this one,
so neither needs the other."""

from __future__ import annotations

import argparse
import os
import re

SIZE_UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9, "T": 1e12, "TB": 1e12,
              "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """'500MB', '1GiB', '3e8' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 500MB, 1GiB, 300000000)")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).upper()])


def add_common_arguments(p, *, max_samples: int | None = 1000, max_shard_bytes: str | None = "1GiB",
                         workers: int | None = None) -> None:
    """Options every shard job has. None for max_samples/max_shard_bytes leaves the writer's default;
    workers=None: the number of CPUs, at most 8."""
    p.add_argument("--split", default="train", help="split name, used in shard names (default: train)")
    p.add_argument("--max-samples", type=int, default=max_samples,
                   help=f"at most this many samples per shard (default: {max_samples or 'the writer' + chr(39) + 's'})")
    p.add_argument("--max-shard-bytes", type=parse_size, default=parse_size(max_shard_bytes) if max_shard_bytes else None,
                   help="start a new shard before one would exceed this size, e.g. 500MB, 1GiB "
                        f"(default: {max_shard_bytes or 'the writer' + chr(39) + 's'})")
    if workers is None:
        p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                       help="encoding processes (default: number of CPUs, at most 8)")
    else:
        p.add_argument("--workers", type=int, default=workers, help=f"encoding processes (default: {workers})")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle of samples across shards (default: 0)")
    p.add_argument("--num-nodes", type=int, default=1, help="split the job over this many machines (default: 1)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's part, 0..num-nodes-1 (default: 0)")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any input failed")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a complete shard set in OUT made with other options or inputs (the new set is built "
                        "beside it and swapped in when complete); without it such a rerun refuses")
