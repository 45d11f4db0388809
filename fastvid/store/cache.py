"""Bounded local cache for shards read from URLs / `pipe:` commands (decoders such as DALI's readers and
PyAV workers read local files; fastvid's readers seek to each sample's byte range).

    cache = ShardCache("/local/nvme/fastvid-cache", max_bytes=500 << 30)
    path = cache.fetch(url, size_hint=n, tag=sha[:16], sha256=sha)   # local path, pinned while in use
    cache.release(path)                                              # unpinned: evictable again

- Entries are named `<hash of the URL's directory>-<tag>-<file name>`, so `<stem>.tar` and its `<stem>.idx`
  sit side by side as DALI expects; the tag (a shard's sha256 from its manifest, or the size/ETag/date of
  a listed tar) makes a rewritten object a new entry.
- Nothing unverified is kept: a download lands under `<entry>.tmp-<pid>` and is renamed only after its
  size and sha256 (when the manifest gives them) and the caller's `check` pass. A copy that fails them
  is fetched once more, then the error names the URL and what was wrong; the bad bytes are deleted.
- Concurrent ranks (processes of one node sharing the directory): a per-entry lock file serializes the
  download (the others wait, then reuse the file). The wait is bounded: a downloader that makes no
  progress for FASTVID_REMOTE_TIMEOUT seconds fails the waiters with a message, as the downloader's own
  transport fails after that long without data.
- Size limit with LRU eviction: a file's mtime is its last use; room is made by deleting the least
  recently used entries that no process has pinned (a process holds a shared lock on every entry it
  uses until `release()` or exit). Downloads reserve their size first (the temp file is allocated to the
  manifest's size under the cache lock), and temp files count against the limit; a temp file whose
  writer died (kill -9) is found by its free entry lock and deleted, so crashes never push the cache past
  its limit. When the pinned entries alone exceed the limit, `fetch` fails with a clear error instead of
  deleting files in use.
Default location and size: $FASTVID_CACHE_DIR (else ~/.cache/fastvid/shards), $FASTVID_CACHE_SIZE (else 100GiB).
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import os
import threading
import time
from pathlib import Path

from fastvid.store import remote

DEFAULT_MAX_BYTES = 100 << 30
LOCK_SUFFIX = ".lock"
_TMP_MARK = ".tmp-"
# Entry names of this layout: copies made before downloads were verified are never reused.
_LAYOUT = "v2"
SIDE_DIR = "meta"  # per-shard metadata computed for old sets (small; not counted, never evicted)
# Pins are per process (flock locks belong to open files: a second open in the same process would
# block on our own shared lock), counted over every ShardCache object of the process.
_PINS: dict[tuple[str, str], list[int]] = {}  # (cache root, entry name) -> [fd with a shared lock, users]
_PINS_LOCK = threading.RLock()
_ENTRY_MUTEXES: dict[tuple[str, str], threading.Lock] = {}


def _forget_parent_pins() -> None:
    """In a forked child (DataLoader workers): the parent's pins are the parent's. Close the inherited lock
    files without unlocking them (that would unpin the parent's entries) and start with fresh locks (one
    may have been held by another thread at fork time)."""
    global _PINS_LOCK
    for fd, _ in _PINS.values():
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass
    _PINS.clear()
    _ENTRY_MUTEXES.clear()
    _PINS_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_forget_parent_pins)


def default_cache() -> "ShardCache":
    from fastvid.store.options import parse_size

    root = os.environ.get("FASTVID_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastvid", "shards")
    size = os.environ.get("FASTVID_CACHE_SIZE")
    try:
        max_bytes = parse_size(size) if size else DEFAULT_MAX_BYTES
    except Exception as exc:  # argparse's error type: say which variable
        raise ValueError(f"FASTVID_CACHE_SIZE: {exc}") from None
    return ShardCache(root, max_bytes)


def entry_name(address: str, tag: str | None = None) -> str:
    """Cache file name of `address`: same prefix for every file of one directory (tar + idx stay paired);
    `tag` (a shard's sha256 from its manifest) makes a shard rewritten at the same URL a new entry."""
    where = address if remote.is_pipe(address) else remote.parent(address)
    prefix = hashlib.sha1(f"{_LAYOUT}|{where}".encode()).hexdigest()[:16]
    name = remote.basename(address)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".") or "shard"
    return f"{prefix}-{tag}-{safe}" if tag else f"{prefix}-{safe}"


class CacheFullError(OSError):
    pass


class _HashingWriter:
    """The temp file being downloaded into: counts and hashes what goes through (no second read)."""

    def __init__(self, f, want_hash: bool):
        self.f = f
        self.size = 0
        self.digest = hashlib.sha256() if want_hash else None

    def write(self, data) -> int:
        self.f.write(data)
        if self.digest is not None:
            self.digest.update(data)
        self.size += len(data)
        return len(data)


class ShardCache:
    def __init__(self, root, max_bytes: int = DEFAULT_MAX_BYTES, *, timeout: float | None = None):
        if max_bytes < 1:
            raise ValueError(f"cache size must be >= 1 byte, got {max_bytes}")
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"{self.root}: cannot create the shard cache directory ({exc.strerror}); "
                                     "set FASTVID_CACHE_DIR to a writable directory") from None
        self.max_bytes = int(max_bytes)
        self.timeout = timeout
        self._key = str(self.root.resolve())
        self._held: collections.Counter = collections.Counter()  # entries this object pinned -> times
        self.stats = {"downloads": 0, "downloaded_bytes": 0, "hits": 0, "refetched": 0}

    # -- bookkeeping ------------------------------------------------------------------------------

    def _wait_s(self) -> float:
        return self.timeout if self.timeout is not None else remote.timeout_s()

    def _entries(self) -> list[Path]:
        return [p for p in self.root.iterdir()
                if p.is_file() and not p.name.endswith(LOCK_SUFFIX) and _TMP_MARK not in p.name and not p.name.startswith(".")]

    def _temp_files(self) -> list[Path]:
        return [p for p in self.root.iterdir() if _TMP_MARK in p.name and not p.name.startswith(".")]

    def used_bytes(self) -> int:
        """Bytes held: complete entries and downloads in progress."""
        return sum(_size(p) for p in self._entries() + self._temp_files())

    def _lock_fd(self, name: str) -> int:
        return os.open(self.root / (name + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o644)

    def _global_lock(self) -> int:
        fd = os.open(self.root / (".cache" + LOCK_SUFFIX), os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _sweep_temp_files(self) -> int:
        """Delete temp files whose writer is gone (its entry lock is free); the bytes of live ones."""
        live = 0
        for tmp in self._temp_files():
            fd = self._lock_fd(tmp.name.split(_TMP_MARK, 1)[0])
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # being written right now
                _unlock(fd)
                live += _size(tmp)
                continue
            try:
                tmp.unlink(missing_ok=True)
            finally:
                _unlock(fd)
        return live

    def _make_room(self, incoming: int, address: str) -> None:
        """Delete least recently used, unpinned entries until `incoming` more bytes fit (under the cache lock)."""
        in_progress = self._sweep_temp_files()
        entries = sorted(self._entries(), key=_mtime)
        used = sum(_size(p) for p in entries) + in_progress
        for path in entries:
            if used + incoming <= self.max_bytes:
                return
            if (self._key, path.name) in _PINS:
                continue
            fd = self._lock_fd(path.name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # in use by another process
                _unlock(fd)
                continue
            try:
                size = _size(path)
                path.unlink(missing_ok=True)
                used -= size
            finally:
                _unlock(fd)
        if used + incoming > self.max_bytes:
            raise CacheFullError(f"{address}: the shard cache {self.root} (limit {self.max_bytes} bytes) cannot hold "
                                 f"{incoming} more bytes: {used} bytes are in use by running jobs. Raise "
                                 "FASTVID_CACHE_SIZE (each rank holds its prefetch window of shards) or point "
                                 "FASTVID_CACHE_DIR elsewhere")

    def _entry_mutex(self, name: str) -> threading.Lock:
        with _PINS_LOCK:
            return _ENTRY_MUTEXES.setdefault((self._key, name), threading.Lock())

    def _wait_for_lock(self, fd: int, mode: int, name: str, address: str) -> None:
        """flock `mode` on an entry, waiting while another process works on it as long as it makes progress."""
        wait = self._wait_s()
        last, last_change, pause = None, time.monotonic(), 0.01
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            progress = [(p.name, _size(p), _mtime(p)) for p in self.root.glob(name + _TMP_MARK + "*")]
            if progress != last:
                last, last_change = progress, time.monotonic()
            elif time.monotonic() - last_change > wait:
                raise remote.ShardSourceError(
                    f"{address}: waited {wait:g} s for another process downloading it into {self.root}, which made "
                    "no progress (FASTVID_REMOTE_TIMEOUT sets the wait)")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)

    # -- public -----------------------------------------------------------------------------------

    def path_of(self, address: str, tag: str | None = None) -> Path:
        """Where `fetch(address, tag=tag)` puts the file (it may not be there yet)."""
        return self.root / entry_name(address, tag)

    def side_path(self, name: str) -> Path:
        """A small file kept beside the cache (computed per-shard metadata of old sets): not counted, never evicted."""
        side = self.root / SIDE_DIR
        side.mkdir(exist_ok=True)
        return side / name

    def fetch(self, address: str, size_hint: int | None = None, tag: str | None = None, *, sha256: str | None = None,
              check=None) -> Path:
        """Local path of `address` (downloaded once, verified, then reused); pinned until `release()`.
        `size_hint`/`sha256`: what the manifest says the bytes are; `check(path)`: raises ValueError when the
        downloaded file is not what was asked for (e.g. an HTML page instead of a tar)."""
        name = entry_name(address, tag)
        path = self.root / name
        key = (self._key, name)
        with self._entry_mutex(name):
            with _PINS_LOCK:
                if key in _PINS:
                    _PINS[key][1] += 1
                    self._held[name] += 1
                    _touch(path)
                    self.stats["hits"] += 1
                    return path
            fd = self._lock_fd(name)
            try:
                self._pin_entry(fd, path, address, size_hint, sha256, check)
            except BaseException:
                _unlock(fd)  # drops whatever lock this fd held
                raise
            with _PINS_LOCK:
                _PINS[key] = [fd, 1]
                self._held[name] += 1
        return path

    def _pin_entry(self, fd: int, path: Path, address: str, size_hint, sha256, check) -> None:
        """Hold a shared lock on the entry's lock file with the entry present (downloading it if needed)."""
        while True:
            if path.is_file():
                self._wait_for_lock(fd, fcntl.LOCK_SH, path.name, address)  # an evictor holds it only briefly
                if path.is_file():
                    _touch(path)
                    self.stats["hits"] += 1
                    return
                fcntl.flock(fd, fcntl.LOCK_UN)
                continue
            self._wait_for_lock(fd, fcntl.LOCK_EX, path.name, address)  # waits while another rank downloads it
            if not path.is_file():
                self._download(address, path, size_hint, sha256, check)
            _touch(path)  # last use, for LRU
            fcntl.flock(fd, fcntl.LOCK_SH)  # pinned: others may read it, nobody evicts it
            return

    def _download(self, address: str, path: Path, size_hint, sha256, check) -> None:
        """Download `address` to `path` under its entry lock: verified, or fetched once more, or an error."""
        for stale in self.root.glob(path.name + _TMP_MARK + "*"):
            stale.unlink(missing_ok=True)  # we hold the entry lock: these belong to a writer that died
        problem = None
        for attempt in range(2):
            problem = self._download_once(address, path, size_hint, sha256, check)
            if problem is None:
                return
            if attempt == 0:
                self.stats["refetched"] += 1
        raise remote.ShardSourceError(f"{address}: {problem} (downloaded twice; the bad copy was not kept)")

    def _download_once(self, address: str, path: Path, size_hint, sha256, check) -> str | None:
        """One download into a temp file, renamed into place when it passes; what was wrong otherwise."""
        tmp = path.with_name(path.name + f"{_TMP_MARK}{os.getpid()}")
        try:
            with open(self._reserve(tmp, address, size_hint or 0), "r+b") as f:
                out = _HashingWriter(f, sha256 is not None)
                try:
                    size = remote.copy_to(address, out)
                    f.truncate(size)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise self._disk_full(address, tmp, size_hint, exc) from None
                    raise
            self.stats["downloads"] += 1
            self.stats["downloaded_bytes"] += size
            if size_hint is not None and size != size_hint:
                return f"got {size} bytes, the manifest says {size_hint}"
            if sha256 is not None and out.digest.hexdigest() != sha256:
                return f"sha256 {out.digest.hexdigest()[:16]}... does not match the manifest's {sha256[:16]}..."
            if check is not None:
                try:
                    check(tmp)
                except ValueError as exc:
                    return str(exc)
            if size > self.max_bytes:
                raise CacheFullError(f"{address}: {size} bytes is more than the whole shard cache ({self.max_bytes} bytes)")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        if size_hint is None:  # size known only now: evict afterwards if needed
            gfd = self._global_lock()
            _PINS[(self._key, path.name)] = [-1, 0]  # keep the new entry while making room
            try:
                self._make_room(0, address)
            finally:
                del _PINS[(self._key, path.name)]
                _unlock(gfd)
        return None

    def _reserve(self, tmp: Path, address: str, size: int) -> Path:
        """Make room for `size` bytes and allocate them to `tmp`, under the cache lock (so two downloads
        cannot both count on the same free bytes)."""
        gfd = self._global_lock()
        try:
            self._make_room(size, address)
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if size:
                    os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise self._disk_full(address, tmp, size, exc) from None
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
            finally:
                os.close(fd)
        finally:
            _unlock(gfd)
        return tmp

    def _disk_full(self, address: str, tmp: Path, size, exc: OSError) -> OSError:
        try:
            free = os.statvfs(self.root)
            left = f"{free.f_bavail * free.f_frsize} bytes free"
        except OSError:
            left = "free space unknown"
        need = f"{size} bytes needed, " if size else ""
        return OSError(exc.errno, f"{address}: the cache disk is full: cannot write {tmp} ({need}{left} on the disk of "
                                  f"{self.root}: {exc.strerror}). Free space there, lower FASTVID_CACHE_SIZE below "
                                  "the disk's free space, or point FASTVID_CACHE_DIR at a larger disk")

    def release(self, path: str | os.PathLike | None = None) -> None:
        """Unpin one entry this object fetched (`path`), or all of them (they stay cached until evicted)."""
        with _PINS_LOCK:
            if path is None:
                names, self._held = list(self._held.items()), collections.Counter()
            else:
                name = Path(path).name
                if not self._held.get(name):
                    return
                names = [(name, 1)]
                self._held[name] -= 1
                if not self._held[name]:
                    del self._held[name]
            for name, times in names:
                pin = _PINS.get((self._key, name))
                if pin is None:
                    continue
                pin[1] -= times
                if pin[1] <= 0:
                    del _PINS[(self._key, name)]
                    if pin[0] >= 0:
                        _unlock(pin[0])

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


def _unlock(fd: int) -> None:
    """Release a lock file's flock, then close it. An explicit unlock, not just the close: a process forked
    while the lock was held (DataLoader workers) shares the open file, and the lock would live on in it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except FileNotFoundError:
        pass
