"""Local copies of one rank's shards, in the order the rank reads them: fetch ahead, evict behind.

    stream = ShardStream(opened, order=[5, 2, 9], window=4)
    path = stream.path(5)        # the local file (blocks until it is there)
    stream.done(5)               # this rank will not read shard 5 again this epoch
    stream.close()               # stops fetching, unpins what is left

Loaders ask the stream for a shard's local file right before they read it and say when they are done
with it. For a local set (and for tars fetched when the set was opened) the file is the shard itself and
the calls cost nothing.

For a streamed set (fastvid.store.reader: a remote set whose manifest lists its tars) background
threads download the shards of `order` into the set's ShardCache, in that order, keeping at most
`window` shards fetched-and-not-done: the first `path()` waits for one shard, never for the set. Each
download is verified against the manifest (size, sha256) by the cache. A fetched shard is pinned (no
process evicts it) until `done()`; from then on it is the least recently used entry, the first the
cache deletes when a later shard needs room, so a cache a few windows large serves a set of any size
(several ranks of a node share the cache directory: each holds its own window). A shard asked for
before its turn waits for the fetchers to reach it; a caller whose own progress is what frees the
window (the thread consuming the batches, such as a DataLoader dispatching tasks to worker processes)
passes `beyond_window=True` and gets it fetched at once, past the window, so a window can be exceeded
by that pipeline's lookahead (prefetch x workers chunks). A shard outside `order` is fetched at once.
A failed download is raised by `path()` of that shard (the message names the URL and what happened).

`ShardUse` turns "a batch of these samples was delivered" into `done()` calls: it counts down what
the rank still reads of each shard.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

_FETCHING = "fetching"


class ShardStream:
    """The shards of `opened` (fastvid.store.reader.OpenedSet) as local files, for a rank that reads them
    in `order` (shard indices, first use first); at most `window` shards are held at a time."""

    def __init__(self, opened, order: list[int], *, window: int = 4, fetchers: int | None = None):
        if window < 1:
            raise ValueError(f"the prefetch window must hold at least 1 shard, got {window}")
        self.opened = opened
        self.order = list(dict.fromkeys(int(s) for s in order))
        self.window = window
        self._cache = opened.cache
        self._queue = [s for s in self.order if opened.files[s].streamed]
        self._position = {s: i for i, s in enumerate(self._queue)}
        self._cond = threading.Condition()
        self._state: dict[int, object] = {}   # shard -> _FETCHING | local Path | the exception its download raised
        self._held: set[int] = set()          # fetched, pinned, not done
        self._finished: set[int] = set()      # done() before the fetchers reached them: skipped
        self._next = 0                        # position in _queue of the next shard a fetcher starts
        self._inflight = 0
        self._closed = False
        self._started = time.monotonic()
        self.stats = {"fetched_shards": [], "shard_bytes": 0, "wait_s": 0.0, "max_held": 0,
                      "first_path_s": None, "held_at_first_path": None}
        self._threads = []
        if self._queue:
            for i in range(fetchers or min(window, 4)):
                t = threading.Thread(target=self._fetch_loop, name=f"fastvid-fetch-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    # -- the loader's side -----------------------------------------------------------------------------

    def path(self, shard: int, *, beyond_window: bool = False) -> Path:
        """The local file of `shard` (blocks until it is there). A shard of `order` the fetchers have not
        reached yet is waited for: they reach it as earlier shards are done, which other threads' progress
        brings about. A caller whose own progress is what makes shards done (the thread that consumes the
        batches, e.g. a DataLoader dispatching tasks) passes `beyond_window=True`: such a shard is then
        fetched at once, past the window, instead of waiting for room only it could make. Shards outside
        `order` (or done before being read) are always fetched at once."""
        f = self.opened.files[shard]
        if not f.streamed:
            return f.tar
        t0 = time.monotonic()
        with self._cond:
            while True:
                state = self._state.get(shard)
                if isinstance(state, Path):
                    self._note_wait(t0)
                    return state
                if isinstance(state, BaseException):
                    raise state
                if self._closed:
                    raise RuntimeError(f"{f.address}: the shard stream is closed")
                ahead = self._position.get(shard, -1) >= self._next and shard not in self._finished
                if state is None and (beyond_window or not ahead):  # fetch it here, past the window
                    self._state[shard] = _FETCHING
                    self._finished.discard(shard)
                    self._inflight += 1
                    break
                self._cond.wait()
        self._fetch(shard)
        return self.path(shard)

    def local(self, shard: int) -> Path | None:
        """The local file of `shard` when it is already there, else None (never waits)."""
        f = self.opened.files[shard]
        if not f.streamed:
            return f.tar
        with self._cond:
            state = self._state.get(shard)
            return state if isinstance(state, Path) else None

    def done(self, shard: int) -> None:
        """This rank will not read `shard` again (until a later epoch's stream): unpin it, fetch further."""
        if not self.opened.files[shard].streamed:
            return
        with self._cond:
            state = self._state.get(shard)
            if state is _FETCHING:
                self._finished.add(shard)  # released when its fetch ends
                return
            self._state.pop(shard, None)
            self._finished.add(shard)
            if shard in self._held:
                self._held.discard(shard)
                self._cache.release(state)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        with self._cond:
            for shard in list(self._held):
                self._cache.release(self._state[shard])
            self._held.clear()
            self._state.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass

    # -- fetching --------------------------------------------------------------------------------------

    def _note_wait(self, t0: float) -> None:
        now = time.monotonic()
        self.stats["wait_s"] += now - t0
        if self.stats["first_path_s"] is None:
            self.stats["first_path_s"] = now - self._started
            self.stats["held_at_first_path"] = len(self.stats["fetched_shards"])

    def _fetch_loop(self) -> None:
        """One fetcher: the next shard of the queue whenever fewer than `window` are held or in flight."""
        while True:
            with self._cond:
                while not self._closed and (self._next >= len(self._queue)
                                            or len(self._held) + self._inflight >= self.window):
                    self._cond.wait()
                if self._closed:
                    return
                shard = self._queue[self._next]
                self._next += 1
                if shard in self._state or shard in self._finished:
                    continue  # fetched by path() already, or done without being read
                self._state[shard] = _FETCHING
                self._inflight += 1
            self._fetch(shard)

    def _fetch(self, shard: int) -> None:
        """Download one shard (the caller marked it _FETCHING and counted it in flight)."""
        f = self.opened.files[shard]
        try:
            path = self._cache.fetch(f.address, size_hint=f.bytes, tag=f.tag, sha256=f.sha256)
        except BaseException as exc:  # handed to whoever asks for this shard
            with self._cond:
                self._inflight -= 1
                self._state[shard] = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._inflight -= 1
            self.stats["fetched_shards"].append(shard)
            self.stats["shard_bytes"] += f.bytes or 0
            if self._closed or shard in self._finished:  # closed, or done() came while it downloaded
                self._cache.release(path)
                self._state.pop(shard, None)
            else:
                self._state[shard] = path
                self._held.add(shard)
                self.stats["max_held"] = max(self.stats["max_held"], len(self._held))
            self._cond.notify_all()


class ShardUse:
    """What a rank still reads of each shard in this epoch; `used(shard, n)` counts down and calls
    `stream.done(shard)` when nothing is left."""

    def __init__(self, stream: ShardStream, counts: dict[int, int], on_done=None):
        self.stream = stream
        self.left = dict(counts)
        self.on_done = on_done  # also called with the shard when it is done (e.g. to close the reader's file)
        self._lock = threading.Lock()

    def used(self, shard: int, n: int = 1) -> None:
        with self._lock:
            if shard not in self.left:
                return
            self.left[shard] -= n
            finished = self.left[shard] <= 0
            if finished:
                del self.left[shard]
        if finished:
            if self.on_done is not None:
                self.on_done(shard)
            self.stream.done(shard)
