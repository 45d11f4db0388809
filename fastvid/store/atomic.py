"""Atomic file writes for shard sets: temp name in the same directory, then rename, and no temp file
left behind when writing fails (a full disk included); the error always names the file."""

from __future__ import annotations

import os
from pathlib import Path


def tmp_name(path: Path) -> Path:
    return path.with_name(path.name + f".tmp-{os.getpid()}")


def with_path(exc: OSError, path) -> OSError:
    """`exc` naming `path` (ENOSPC from write() or close() carries no file name)."""
    if exc.filename:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    tmp = tmp_name(path)
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise with_path(exc, path) from exc
    return path
