"""Trainer callbacks: code a user, a test or an audit runs at the trainer's hooks, without patching it.

    Trainer(task, callbacks=[MyCallback()]).run()

`on_batch(epoch, step, unit)` runs on every rank when the trainer takes a training unit from the task
(before its optimizer step): `step` is the unit's first task step within the epoch (batches for video,
windows for the event detector; a resumed epoch continues its count). The built-in `KeyLog` is what
the hidden `--log-keys FILE` flag installs.
"""

from __future__ import annotations

import json
from pathlib import Path


class Callback:
    """Override the hooks you need; each default does nothing."""

    def on_batch(self, epoch: int, step: int, unit) -> None:
        """A training unit (fastvid.train.task.Unit: .keys, .clips, .data) was taken from the loader."""


class KeyLog(Callback):
    """Appends one JSON line per training unit and rank to `path`:
    {"rank": r, "epoch": e, "step": s, "keys": [...], "clips": [...]} (clips: null where the task has none).
    Ranks append to the same file, one write per line, flushed, so a killed run keeps what it logged."""

    def __init__(self, path: str | Path, rank: int):
        self.path = Path(path)
        self.rank = rank

    def on_batch(self, epoch: int, step: int, unit) -> None:
        row = {"rank": self.rank, "epoch": epoch, "step": step, "keys": list(unit.keys), "clips": unit.clips}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_key_log(path: str | Path) -> list[dict]:
    """The rows a KeyLog wrote (tests and audits); a last line still being written is left out."""
    text = Path(path).read_text()
    lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    return [json.loads(line) for line in lines if line.strip()]
