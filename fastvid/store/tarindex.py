"""DALI index files for WebDataset tars, so `fn.readers.webdataset(index_paths=...)` can seek.

DALI's index format ("v1.2", the one its `wds2idx` tool writes) is a text file:

    v1.2 <number of samples>
    <ext> <data offset> <size> <member name> [<ext> <data offset> <size> <member name> ...]

one line per sample, components of a sample on the same line. The data offset is the byte position
of the member's data (just after its 512-byte tar header). Member names are split into key and
extension at the first dot of the file name, like webdataset does.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from fastvid.store.atomic import write_text_atomic

INDEX_VERSION = "v1.2"


def split_member_name(name: str) -> tuple[str, str]:
    """('dir/key', 'ext.more') for 'dir/key.ext.more': the extension starts at the first dot of the base name."""
    base_start = name.rfind("/") + 1
    dot = name.find(".", base_start)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def index_entries(tar_path: str | os.PathLike) -> list[list[tuple[str, int, int, str]]]:
    """Samples of a tar as lists of (ext, data offset, size, member name), in archive order."""
    samples: list[list[tuple[str, int, int, str]]] = []
    last_key = None
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = split_member_name(member.name)
            if not key or key.endswith("/") or not ext:
                continue  # hidden files and extension-less members are not sample components
            if " " in member.name:
                raise ValueError(f"{tar_path}: member name {member.name!r} has a space; DALI's index format cannot hold it")
            entry = (ext, member.offset_data, member.size, member.name)
            if key != last_key:
                samples.append([entry])
                last_key = key
            else:
                samples[-1].append(entry)
    return samples


def format_index(samples: list[list[tuple[str, int, int, str]]]) -> str:
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for components in samples:
        lines.append(" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in components))
    return "\n".join(lines) + "\n"


def index_path_for(tar_path: str | os.PathLike) -> Path:
    """OUT/<stem>.idx next to OUT/<stem>.tar."""
    tar_path = Path(tar_path)
    return tar_path.with_name(tar_path.name.split(".", 1)[0] + ".idx")


def write_index(tar_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> Path:
    """Write the DALI index of `tar_path` (default: `<stem>.idx` beside it), atomically; returns its path."""
    idx_path = Path(idx_path) if idx_path is not None else index_path_for(tar_path)
    samples = index_entries(tar_path)
    if not samples:
        raise ValueError(f"{tar_path}: no samples in the tar, nothing to index")
    write_text_atomic(format_index(samples), idx_path)
    return idx_path


def read_index(idx_path: str | os.PathLike) -> list[list[tuple[str, int, int, str]]]:
    """Parse a v1.2 index file back into per-sample component lists (for checks and inspection)."""
    try:
        text = Path(idx_path).read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{idx_path}: not a DALI {INDEX_VERSION} webdataset index (not text)") from None
    return parse_index(text, str(idx_path))


def parse_index(text: str | bytes, where: str) -> list[list[tuple[str, int, int, str]]]:
    """Parse the text of a v1.2 index (`where` names it in errors)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: not a DALI {INDEX_VERSION} webdataset index (not text)") from None
    lines = text.splitlines()
    if not lines or not lines[0].startswith(INDEX_VERSION + " "):
        raise ValueError(f"{where}: not a DALI {INDEX_VERSION} webdataset index")
    try:
        count = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise ValueError(f"{where}: malformed header {lines[0]!r}") from None
    samples = []
    for line in lines[1:]:
        parts = line.split()
        try:
            if len(parts) % 4:
                raise ValueError
            components = [(parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)]
            if not components or any(offset < 0 or size < 0 for _, offset, size, _ in components):
                raise ValueError
            samples.append(components)
        except ValueError:
            raise ValueError(f"{where}: malformed line {line!r}") from None
    if len(samples) != count:
        raise ValueError(f"{where}: header says {count} samples, found {len(samples)}")
    return samples


def check_tar_file(path: str | os.PathLike) -> None:
    """ValueError unless `path` starts like a tar archive: catches an HTML error page, an empty `pipe:` output
    or a truncated download before it is cached or handed to a decoder."""
    with open(path, "rb") as f:
        head = f.read(tarfile.BLOCKSIZE)
    if not head:
        raise ValueError("empty (0 bytes), not a tar archive")
    try:
        tarfile.TarInfo.frombuf(head, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        shown = head[:40].decode("latin-1").replace("\n", " ").strip()
        raise ValueError(f"not a tar archive (it starts with {shown!r})") from None


def index_problems(samples: list, expected_samples: int | None, tar_bytes: int | None) -> str | None:
    """What is wrong with a parsed index against what the manifest says of its tar (None: nothing)."""
    if expected_samples is not None and len(samples) != expected_samples:
        return f"lists {len(samples)} samples, the manifest says {expected_samples}"
    end = max((offset + size for components in samples for _, offset, size, _ in components), default=0)
    if tar_bytes is not None and end > tar_bytes:
        return f"points past the end of its tar (byte {end} of {tar_bytes})"
    return None


def samples_of(entries: list) -> list[tuple[str, dict]]:
    """[(key, {ext: (data offset, size)})] from parsed index entries."""
    return [(split_member_name(components[0][3])[0], {ext: (offset, size) for ext, offset, size, _ in components})
            for components in entries]


def indexed_samples(tar_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> list[tuple[str, dict]]:
    """[(key, {ext: (data offset, size)})] of a shard, from its index (or by scanning the tar when there is none),
    checked against the tar's size: a tar cut short (interrupted copy, full disk) is one clear error here rather
    than a stream of per-sample read failures later."""
    tar_path = Path(tar_path)
    if idx_path is not None and Path(idx_path).exists():
        entries = read_index(idx_path)
    else:
        entries = index_entries(tar_path)
    end = max((offset + size for components in entries for _, offset, size, _ in components), default=0)
    actual = tar_path.stat().st_size
    if end > actual:
        raise ValueError(f"{tar_path}: truncated or changed since it was indexed: its samples end at byte {end}, the file "
                         f"has {actual} bytes. Rerun the `fastvid shard` command (it rewrites incomplete shards) and "
                         f"check with `fastvid inspect --verify`.")
    return samples_of(entries)
