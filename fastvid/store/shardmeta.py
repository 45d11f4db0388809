"""Per-shard planning metadata (`<stem>.meta.json` beside `<stem>.tar` and `<stem>.idx`).

What a loader must know of every sample before the first batch (video: frame count, fps, size; events:
time span, event count, label times) is written with the shard, so opening a set reads one small file
per shard instead of one json per sample, and a remote set can be planned without fetching its tars.
The kind says what to keep (`KindReader.sample_metadata(key, components, where)`); the store keeps it
as columns, one list per field, in sample order:

    {"format": "fastvid-shard-meta", "version": 1, "kind": "video", "shard": "train-000000.tar",
     "keys": ["vid0", "vid1", ...],
     "columns": {"num_frames": [250, 300, ...], "fps": [25.0, 29.97, ...], ...}}

A missing value is null. The file is untrusted input like any downloaded file: `parse` checks its
structure, that its keys are the index's keys in order, and that every value is a finite number, a short
string, a boolean, null, or a list of finite numbers. Sets written before this file existed still open:
`compute_records` builds the same records from the sample components once (fastvid.store.reader keeps
the result next to the shards, or in the cache directory).
"""

from __future__ import annotations

import json
import math
import re

META_FORMAT = "fastvid-shard-meta"
META_VERSION = 1
MAX_META_BYTES = 256 << 20       # a shard's metadata is KBs to MBs; refuse to parse a hostile giant
MAX_COLUMNS = 64
MAX_STRING = 1024
MAX_LIST = 1 << 20
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ShardMeta:
    """The metadata of one shard: `keys` in sample order and `columns` (field -> list, one value per sample)."""

    __slots__ = ("keys", "columns")

    def __init__(self, keys: list[str], columns: dict[str, list]):
        self.keys = keys
        self.columns = columns

    def __len__(self) -> int:
        return len(self.keys)

    def record(self, i: int) -> dict:
        """Sample `i`'s metadata as a dict (null values left out)."""
        return {name: col[i] for name, col in self.columns.items() if col[i] is not None}

    def column(self, name: str) -> list:
        return self.columns.get(name, [None] * len(self.keys))


def build(kind: str, shard_name: str, records: list[tuple[str, dict]]) -> dict:
    """The JSON document of a shard from its (key, metadata) records, in sample order."""
    names: dict[str, None] = {}
    for _, meta in records:
        names.update(dict.fromkeys(meta))
    columns = {name: [_clean(meta.get(name)) for _, meta in records] for name in names if _COLUMN_NAME.match(str(name))}
    return {"format": META_FORMAT, "version": META_VERSION, "kind": kind, "shard": shard_name,
            "keys": [key for key, _ in records], "columns": columns}


def _clean(value):
    """A value as the file may hold it (anything else becomes null: planning treats it as unknown)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_STRING else None
    if isinstance(value, (list, tuple)) and len(value) <= MAX_LIST and all(_finite_number(v) for v in value):
        return list(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _clean(value.tolist())
    return None


def _finite_number(v) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and math.isfinite(v))


def dumps(doc: dict) -> str:
    return json.dumps(doc, separators=(",", ":"), allow_nan=False) + "\n"


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def parse(data: bytes, where: str, *, kind: str, keys: list[str] | None) -> ShardMeta:
    """A validated ShardMeta from the file's bytes; ValueError naming `where` otherwise. `keys`: the
    shard's sample keys from its index (the file must list the same, in order)."""
    if len(data) > MAX_META_BYTES:
        raise ValueError(f"{where}: {len(data)} bytes, more than a shard's metadata can be ({MAX_META_BYTES})")
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{where}: not a shard metadata file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != META_FORMAT:
        raise ValueError(f"{where}: not a shard metadata file (no 'format': {META_FORMAT!r})")
    if doc.get("version") != META_VERSION:
        raise ValueError(f"{where}: unsupported shard metadata version {doc.get('version')!r} (this fastvid reads {META_VERSION})")
    if doc.get("kind") != kind:
        raise ValueError(f"{where}: metadata of kind {doc.get('kind')!r}, the set is {kind!r}")
    file_keys, columns = doc.get("keys"), doc.get("columns")
    if not isinstance(file_keys, list) or not all(isinstance(k, str) for k in file_keys):
        raise ValueError(f"{where}: 'keys' must be a list of sample keys")
    if keys is not None and file_keys != list(keys):
        raise ValueError(f"{where}: its {len(file_keys)} sample keys are not the index's {len(keys)} keys in order "
                         "(the file belongs to another shard or is stale)")
    if not isinstance(columns, dict) or len(columns) > MAX_COLUMNS:
        raise ValueError(f"{where}: 'columns' must be an object of at most {MAX_COLUMNS} fields")
    for name, col in columns.items():
        if not _COLUMN_NAME.match(name):
            raise ValueError(f"{where}: column name {name!r} is not an identifier")
        if not isinstance(col, list) or len(col) != len(file_keys):
            raise ValueError(f"{where}: column {name!r} must hold one value per sample ({len(file_keys)})")
        for value in col:
            if _clean(value) is not value and not (isinstance(value, list) and _clean(value) == value):
                raise ValueError(f"{where}: column {name!r} holds {str(value)[:40]!r} (numbers, short strings, "
                                 "booleans, null or lists of numbers only)")
    return ShardMeta(file_keys, columns)


def compute_records(kind_reader, index: list[tuple[str, dict]], read_ranges, where: str) -> list[tuple[str, dict]]:
    """(key, metadata) of every sample of a shard without a metadata file, from the sample components the
    kind needs (`kind_reader.metadata_components`), read through `read_ranges([(offset, size)]) -> [bytes]`."""
    wanted = tuple(kind_reader.metadata_components)
    spots = [(key, ext, fields[ext]) for key, fields in index for ext in wanted if ext in fields]
    data = read_ranges([span for _, _, span in spots]) if spots else []
    components: dict[str, dict[str, bytes]] = {key: {} for key, _ in index}
    for (key, ext, _), blob in zip(spots, data):
        components[key][ext] = blob
    records = []
    for key, _ in index:
        try:
            meta = kind_reader.sample_metadata(key, components[key], where)
        except ValueError:
            meta = {}  # unusable metadata: the planner treats the sample as broken, as with a bad json
        records.append((key, meta))
    return records
