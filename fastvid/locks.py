"""Exclusive locks on output directories, so two jobs never write into the same one.

`flock` on `DIR/.fastvid.lock`: the kernel drops the lock when the holder exits, however it exits
(kill -9 included), so a crashed run never leaves a stale lock behind. The file records the holder's
pid and command for the error message; its presence alone means nothing.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
from pathlib import Path

LOCK_NAME = ".fastvid.lock"


class DirectoryInUse(RuntimeError):
    pass


def lock_directory(path: str | os.PathLike, what: str = "output directory", *, shared: bool = False,
                   name: str = LOCK_NAME):
    """Take the lock of `path` (created if needed) for this process's lifetime; returns the open lock file
    (keep a reference; closing it releases the lock). Raises DirectoryInUse when another process holds it.

    `shared`: several holders at once (the node writers of one multi-node shard job), none while an
    exclusive holder has it. `name`: another lock file in `path` (a lock of one part of the directory)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / name
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(f)
        f.close()
        raise DirectoryInUse(f"{what} {path} is in use by {holder}; wait for it to finish or choose another directory "
                             f"(the lock is {lock_path}; it is released when that process exits)") from None
    # Shared holders overwrite each other's record: the file then names one of them (the latest).
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} ({' '.join(sys.argv[:3])})" + (" and possibly other node writers" if shared else "") + "\n")
    f.flush()
    return f


def _holder(f) -> str:
    """The holder's record. A holder writes it right after taking the lock: a job refused in between (two
    started together) waits up to 1 s for it rather than naming no one."""
    deadline = time.monotonic() + 1.0
    while True:
        f.seek(0)
        holder = f.read().strip()
        if holder or time.monotonic() > deadline:
            return holder or "another process"
        time.sleep(0.01)
