"""The one stage-statistics hook of the pipeline: seconds per loader stage and counters, summed over the
threads and processes that did the work (read and decode run in parallel, so their sums can exceed wall
time). Backends report per chunk (`Chunk.stage_s`); the pipeline adds the consumer's `wait`, the host to
device `transfer` and the kind's device-side stage; `fastvid doctor`, `fastvid bench` and the trainers'
logs read `snapshot()`.
"""

from __future__ import annotations

import threading


class StageStats:
    """Thread-safe sums: `add(stage, seconds)`, `count(name, n)`; `snapshot()` -> {"stage_s": {...}, **counts}."""

    def __init__(self):
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._seconds: dict[str, float] = {}
            self._counts: dict[str, int] = {}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    def merge(self, stage_s: dict[str, float]) -> None:
        with self._lock:
            for stage, seconds in stage_s.items():
                self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def seconds(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    def snapshot(self) -> dict:
        with self._lock:
            return {"stage_s": dict(self._seconds), **self._counts}
