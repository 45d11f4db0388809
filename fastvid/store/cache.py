"""Bounded local cache for shards read from URLs / `pipe:` commands (decoders such as DALI's readers need
local files and index paths).

    cache = ShardCache("/local/nvme/fastvid-cache", max_bytes=500 << 30)
    path = cache.fetch("s3://bucket/k400/train/train-000000.tar")   # local path, pinned while in use

- Entries are named `<hash of the URL's directory>-<file name>`, so `<stem>.tar` and its `<stem>.idx`
  sit side by side as DALI expects.
- Concurrent ranks (processes of one node sharing the directory): a per-entry lock file serializes the
  download (the others wait, then reuse the file); data is written under a temporary name and renamed.
- Size limit with LRU eviction: a file's mtime is its last use; room is made by deleting the least
  recently used entries that no process has pinned (a process holds a shared lock on every entry it
  uses until `release()` or exit). When the pinned entries alone exceed the limit, `fetch` fails with a
  clear error instead of deleting files in use.
Default location and size: $FASTVID_CACHE_DIR (else ~/.cache/fastvid/shards), $FASTVID_CACHE_SIZE (else 100GiB).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path

from fastvid.store import remote

DEFAULT_MAX_BYTES = 100 << 30
LOCK_SUFFIX = ".lock"
_TMP_MARK = ".tmp-"
# Pins are per process (flock locks belong to open files: a second open in the same process would
# block on our own shared lock), counted over every ShardCache object of the process.
_PINS: dict[tuple[str, str], list[int]] = {}  # (cache root, entry name) -> [fd with a shared lock, users]
_PINS_LOCK = threading.RLock()


def default_cache() -> "ShardCache":
    from fastvid.store.options import parse_size

    root = os.environ.get("FASTVID_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastvid", "shards")
    size = os.environ.get("FASTVID_CACHE_SIZE")
    return ShardCache(root, parse_size(size) if size else DEFAULT_MAX_BYTES)


def entry_name(address: str, tag: str | None = None) -> str:
    """Cache file name of `address`: same prefix for every file of one directory (tar + idx stay paired);
    `tag` (a shard's sha256 from its manifest) makes a shard rewritten at the same URL a new entry."""
    if remote.is_pipe(address):
        prefix = hashlib.sha1(address.encode()).hexdigest()[:16]
    else:
        prefix = hashlib.sha1(remote.parent(address).encode()).hexdigest()[:16]
    name = remote.basename(address)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "shard"
    return f"{prefix}-{tag}-{safe}" if tag else f"{prefix}-{safe}"


class CacheFullError(OSError):
    pass


class ShardCache:
    def __init__(self, root, max_bytes: int = DEFAULT_MAX_BYTES):
        if max_bytes < 1:
            raise ValueError(f"cache size must be >= 1 byte, got {max_bytes}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self._key = str(self.root.resolve())
        self._held: set[str] = set()  # entries this object pinned

    # -- bookkeeping ------------------------------------------------------------------------------

    def _entries(self) -> list[Path]:
        return [p for p in self.root.iterdir()
                if p.is_file() and not p.name.endswith(LOCK_SUFFIX) and _TMP_MARK not in p.name and not p.name.startswith(".")]

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._entries())

    def _lock_fd(self, name: str) -> int:
        return os.open(self.root / (name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o644)

    def _make_room(self, incoming: int, address: str) -> None:
        """Delete least recently used, unpinned entries until `incoming` more bytes fit (under the cache lock)."""
        entries = sorted(self._entries(), key=lambda p: p.stat().st_mtime_ns)
        used = sum(p.stat().st_size for p in entries)
        for path in entries:
            if used + incoming <= self.max_bytes:
                return
            if (self._key, path.name) in _PINS:
                continue
            fd = self._lock_fd(path.name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # in use by another process
                os.close(fd)
                continue
            try:
                size = path.stat().st_size
                path.unlink(missing_ok=True)
                used -= size
            finally:
                os.close(fd)
        if used + incoming > self.max_bytes:
            raise CacheFullError(f"{address}: the shard cache {self.root} (limit {self.max_bytes} bytes) cannot hold "
                                 f"{incoming} more bytes: {used} bytes are in use by running jobs. Raise "
                                 "FASTVID_CACHE_SIZE (the set a job reads must fit) or point FASTVID_CACHE_DIR elsewhere")

    # -- public -----------------------------------------------------------------------------------

    def fetch(self, address: str, size_hint: int | None = None, tag: str | None = None) -> Path:
        """Local path of `address` (downloaded once, then reused); pinned until `release()`."""
        name = entry_name(address, tag)
        path = self.root / name
        key = (self._key, name)
        with _PINS_LOCK:
            if key in _PINS:
                if name not in self._held:
                    _PINS[key][1] += 1
                    self._held.add(name)
                os.utime(path)
                return path
            fd = self._lock_fd(name)
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another rank downloads this entry
            try:
                if not path.is_file():
                    self._download(address, path, size_hint)
                os.utime(path)  # last use, for LRU
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
            fcntl.flock(fd, fcntl.LOCK_SH)  # pinned: others may read it, nobody evicts it
            _PINS[key] = [fd, 1]
            self._held.add(name)
        return path

    def _download(self, address: str, path: Path, size_hint: int | None) -> None:
        global_fd = os.open(self.root / (".cache" + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(global_fd, fcntl.LOCK_EX)
            self._make_room(size_hint or 0, address)
        finally:
            os.close(global_fd)
        tmp = path.with_name(path.name + f"{_TMP_MARK}{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                size = remote.copy_to(address, f)
                f.flush()
                os.fsync(f.fileno())
            if size_hint is not None and size != size_hint:
                raise remote.ShardSourceError(f"{address}: got {size} bytes, the manifest says {size_hint}")
            if size > self.max_bytes:
                raise CacheFullError(f"{address}: {size} bytes is more than the whole shard cache ({self.max_bytes} bytes)")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        if size_hint is None:  # size known only now: evict afterwards if needed
            global_fd = os.open(self.root / (".cache" + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(global_fd, fcntl.LOCK_EX)
                _PINS[(self._key, path.name)] = [-1, 0]  # keep the new entry while making room
                try:
                    self._make_room(0, address)
                finally:
                    del _PINS[(self._key, path.name)]
            finally:
                os.close(global_fd)

    def release(self) -> None:
        """Unpin every entry this object fetched (they stay cached until evicted)."""
        with _PINS_LOCK:
            held, self._held = self._held, set()
            for name in held:
                pin = _PINS.get((self._key, name))
                if pin is None:
                    continue
                pin[1] -= 1
                if pin[1] <= 0:
                    del _PINS[(self._key, name)]
                    os.close(pin[0])

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass
