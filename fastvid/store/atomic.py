"""Atomic file writes (shard sets, checkpoints, DAT files, reports): temp name in the same directory, then
rename, and no temp file left behind when writing fails (a full disk included); the error always names the file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def tmp_name(path: Path, hidden: bool = False) -> Path:
    """`<name>.tmp-<pid>` beside `path` (`.<name>.tmp-<pid>` when `hidden`)."""
    return path.with_name(("." if hidden else "") + path.name + f".tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, hidden: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success rename it onto `path` (os.replace), on any
    exception (the rename's included) remove the temp file and re-raise. A reader never sees half a file.

    Writers that infer a format from the file name (matplotlib's savefig) must be given it explicitly."""
    path = Path(path)
    tmp = tmp_name(path, hidden)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def with_path(exc: OSError, path) -> OSError:
    """`exc` naming `path` (ENOSPC from write() or close() carries no file name)."""
    if exc.filename:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    except OSError as exc:
        raise with_path(exc, path) from exc
    return path
