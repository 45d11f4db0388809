"""Real servers on 127.0.0.1 for the remote-set tests (fastvid.benchmarks.servers: an HTTP file server with
byte ranges and misbehaviour on demand, and moto's S3-compatible server, both counting the bytes they send
per client process), the bench's shard-set builder with real H.264 clips, and a cache-size sampler."""

from __future__ import annotations

import threading
from pathlib import Path

from fastvid.benchmarks.remote import clip_bytes, encode_clip, write_clip_set  # noqa: F401 (the bench's set builder)
from fastvid.benchmarks.servers import (Behaviour, Ledger, client_rank, http_server, s3_env, s3_server,  # noqa: F401
                                       upload_tree)


def cache_peak(root: Path, stop: threading.Event, peak: list) -> None:
    """Sample the bytes held in a cache directory (entries and temp files, not lock files) until `stop`."""
    while not stop.is_set():
        total = 0
        try:
            for p in root.iterdir():
                if p.is_file() and not p.name.endswith(".lock"):
                    try:
                        total += p.stat().st_size
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
        peak[0] = max(peak[0], total)
        stop.wait(0.02)
