"""Local copies of one rank's shards, in the order the rank reads them.

    stream = ShardStream(opened, order=[5, 2, 9], window=4)
    path = stream.path(5)        # the local file (blocks until it is there)
    stream.done(5)               # this rank will not read shard 5 again this epoch
    stream.close()

Loaders ask the stream for a shard's local file right before they read it and say when they are done
with it. For a local set the file is the shard itself.
"""

from __future__ import annotations

from pathlib import Path


class ShardStream:
    """The shards of `opened` (fastvid.store.reader.OpenedSet) as local files, for a rank that reads them
    in `order` (shard indices, first use first); at most `window` shards are held at a time."""

    def __init__(self, opened, order: list[int], *, window: int = 4):
        if window < 1:
            raise ValueError(f"the prefetch window must hold at least 1 shard, got {window}")
        self.opened = opened
        self.order = list(dict.fromkeys(order))
        self.window = window

    def path(self, shard: int) -> Path:
        return self.opened.files[shard].tar

    def done(self, shard: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
