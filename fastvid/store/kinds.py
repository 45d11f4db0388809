"""What a kind of data (video, events) plugs into the store: its set reader and its `fastvid shard` command.

The store is kind-free: it opens a set (manifest, shards, indexes, remote fetches) and hands it to the
`KindReader` registered for the manifest's `kind`. Kinds register themselves (fastvid.video.kind,
fastvid.events.kind, imported by the package root), so nothing here imports a kind.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class KindReader(abc.ABC):
    """How one kind reads, summarizes and verifies its samples."""

    kind: str = ""
    # The small components `sample_metadata` reads when a set has no per-shard metadata file (old sets).
    metadata_components: tuple[str, ...] = ("json",)

    @abc.abstractmethod
    def open(self, opened) -> Any:
        """An opened set (fastvid.store.reader.OpenedSet, manifest read and files local) -> the kind's sample table."""

    @abc.abstractmethod
    def sample_metadata(self, key: str, components: dict[str, bytes], where: str) -> dict:
        """What planning needs of one sample (video: frame count, fps, size; events: time span, event count,
        label times), from its components (at least `metadata_components`), as a flat dict of numbers,
        short strings, booleans or lists of numbers. The writer stores it per shard
        (fastvid.store.shardmeta); old sets compute it once. Unusable content: leave the field out, or
        raise ValueError naming `where` (the sample is then planned as broken)."""

    @staticmethod
    def sample_json(key: str, components: dict[str, bytes], where: str) -> dict:
        """A sample's json component as a dict ({} when it has none); invalid JSON is an error naming it."""
        if "json" not in components:
            return {}
        import json

        try:
            meta = json.loads(components["json"])
        except ValueError as exc:
            raise ValueError(f"{where}: sample {key!r} has invalid json ({exc})") from None
        return meta if isinstance(meta, dict) else {}

    # `fastvid inspect`: the kind's share of the summary (the store does sizes, hashes, keys and indexes).
    def inspect_sample(self, key: str, fields: dict, info: dict | None, acc: dict, verify: bool) -> list[str]:
        """Add one sample to `acc`; return problems found (only looked for when `verify`)."""
        return []

    def inspect_summary(self, acc: dict, classes: list[str]) -> dict:
        return {}

    def inspect_lines(self, summary: dict) -> list[str]:
        return []


@dataclass(frozen=True)
class ShardCommand:
    """`fastvid shard NAME ...`: turn a dataset of this kind into a shard set."""

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any], int]


_READERS: dict[str, KindReader] = {}
_SHARD_COMMANDS: dict[str, ShardCommand] = {}


def register_reader(reader: KindReader) -> None:
    _READERS[reader.kind] = reader


def register_shard_command(command: ShardCommand) -> None:
    _SHARD_COMMANDS[command.name] = command


def kinds() -> tuple[str, ...]:
    return tuple(_READERS)


def reader_for(kind: str) -> KindReader:
    if kind not in _READERS:
        raise ValueError(f"no reader for shard kind {kind!r} (known: {', '.join(_READERS) or 'none registered'})")
    return _READERS[kind]


def shard_commands() -> dict[str, ShardCommand]:
    return dict(_SHARD_COMMANDS)
