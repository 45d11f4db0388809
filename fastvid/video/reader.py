"""The sample table of a shard set: which tars, which samples, where their bytes are, what planning needs.

Opening goes through fastvid.store.reader (one manifest read, one index and one per-shard metadata file
per shard; a remote set's tars are not fetched at open). Both backends read the tars through the DALI
index byte ranges (`<stem>.idx`, written by `fastvid shard`), so they agree on the sample order and on
the per-rank split. The PyAV backend reads a sample's components with one seek + read per component,
the same byte ranges DALI's webdataset reader uses. A backend asks the set for a shard's local file
(`ShardSet.local_tar`): the tar itself for local sets, the copy the loader's ShardStream fetched for a
streamed (remote) one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

# Video components a sample may hold (what the writer stores: mp4 for H.264/copy, webm for VP9; the
# others come from `--codec copy` of such sources or from shards written by other tools).
VIDEO_EXTS = ("mp4", "webm", "mkv", "avi", "mov")

# Codecs DALI's CPU video decoder can handle (everything else needs NVDEC or PyAV).
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")


@dataclass
class Shard:
    tar: Path               # the local file (streamed sets: where the cache puts it; ask ShardSet.local_tar)
    idx: Path | None
    keys: list[str]
    components: list[dict]  # per sample: ext -> (offset, size)
    meta: object = None     # fastvid.store.shardmeta.ShardMeta: each sample's planning metadata
    address: str = ""       # as listed (path or URL), for messages

    def __len__(self):
        return len(self.keys)


@dataclass
class ShardSet:
    shards: list[Shard]
    classes: list[str]
    manifest: dict | None = None
    video_ext: str = "mp4"
    codec: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return sum(len(s) for s in self.shards)

    @property
    def streamed(self) -> bool:
        """Whether the tars are fetched while a rank reads them (a remote set): see fastvid.store.stream."""
        opened = self.extra.get("opened")
        return bool(opened is not None and opened.streamed)

    def local_tar(self, shard_index: int) -> Path:
        """The local file of a shard: through the stream the loader attached (`stream`), else the tar itself."""
        stream = self.__dict__.get("stream")
        if stream is not None:
            return stream.path(shard_index)
        opened = self.extra.get("opened")
        return opened.local_tar(shard_index) if opened is not None and opened.streamed else self.shards[shard_index].tar

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("stream", None)  # threads and locks stay in the process that fetches
        return state

    def read_components(self, shard_index: int, sample_index: int, exts=None, handle=None) -> dict:
        """{ext: bytes} of one sample (all components, or only `exts`); `handle` is an open file of that tar."""
        shard = self.shards[shard_index]
        comps = shard.components[sample_index]
        wanted = comps if exts is None else {e: comps[e] for e in exts if e in comps}
        out = {}
        f = handle or open(self.local_tar(shard_index), "rb")
        try:
            for ext, (offset, size) in wanted.items():
                f.seek(offset)
                out[ext] = f.read(size)
        finally:
            if handle is None:
                f.close()
        return out


def open_shard_set(shards, cache=None) -> ShardSet:
    """A shard set (directory or URL with manifest.json, tar paths/URLs, brace pattern, pipe: commands) -> ShardSet."""
    from fastvid.store.reader import open_shard_set as open_any

    return open_any(shards, kind="video", cache=cache)


def video_shard_set(opened) -> ShardSet:
    """The video reader of fastvid.store.reader: an OpenedSet (manifest, indexes, per-shard metadata) -> ShardSet."""
    from fastvid.store.tarindex import indexed_samples

    manifest = opened.manifest
    shard_list = []
    for f in opened.files:
        samples = f.index if f.index is not None else indexed_samples(f.tar, f.idx)
        shard_list.append(Shard(f.tar, f.idx, [os.path.basename(key) for key, _ in samples], [fields for _, fields in samples],
                                f.meta, f.address))
    if not any(len(s) for s in shard_list):
        raise ValueError(f"{opened.spec}: the shard set holds no samples")
    first = next(s for s in shard_list if len(s))
    exts = [e for e in first.components[0] if e in VIDEO_EXTS]
    if not exts:
        raise ValueError(f"{first.address or first.tar}: sample {first.keys[0]!r} has no video component (expected one of {VIDEO_EXTS})")
    video_ext = exts[0]
    codec = None
    if manifest is not None:
        codec = (manifest.get("options") or {}).get("codec")
    # The sample metadata is the authority on the codec (the manifest option may say 'copy').
    meta = sample_metadata(ShardSet(shard_list, [], manifest, video_ext), 0, 0, first_nonempty=True)
    if meta.get("codec"):
        codec = meta["codec"]
    classes = list(manifest["classes"]) if manifest is not None else []
    if not classes:
        classes = _classes_from_labels(shard_list)
    return ShardSet(shard_list, classes, manifest, video_ext, (codec or "").lower() or None,
                    extra={"source": opened.spec, "opened": opened})


def sample_metadata(shard_set: ShardSet, shard_index: int, sample_index: int, first_nonempty: bool = False) -> dict:
    """What planning needs of one sample (num_frames, fps, width, height, codec, ...): from the shard's
    metadata file (read once at open), or, for a table without one, the sample's json."""
    if first_nonempty:
        shard_index = next(i for i, s in enumerate(shard_set.shards) if len(s))
    shard = shard_set.shards[shard_index]
    if shard.meta is not None:
        return shard.meta.record(sample_index)
    comps = shard_set.read_components(shard_index, sample_index, exts=("json",))
    if "json" not in comps:
        return {}
    try:
        return json.loads(comps["json"])
    except ValueError as exc:
        raise ValueError(f"{shard.tar}: sample {shard.keys[sample_index]!r} has invalid json ({exc})") from None


def _classes_from_labels(shard_list: list[Shard]) -> list[str]:
    """Without a manifest: class names are the label numbers seen in the `cls` fields."""
    top = -1
    for shard in shard_list:
        labels = shard.meta.column("label") if shard.meta is not None else [None] * len(shard)
        if all(isinstance(v, int) for v in labels):
            top = max([top] + labels)
            continue
        with open(shard.tar, "rb") as f:
            for comps in shard.components:
                if "cls" in comps:
                    f.seek(comps["cls"][0])
                    top = max(top, int(f.read(comps["cls"][1]).decode().strip()))
    return [str(i) for i in range(top + 1)]


class TarHandles:
    """Open tar files of one reader (a worker, a thread, a feeder), one per shard. A streamed set's shard may
    be evicted and fetched again between epochs: a handle is reopened when the shard's local path changes or
    its file was deleted (an open handle would keep the deleted bytes on the cache disk)."""

    def __init__(self, shard_set):
        self.shard_set = shard_set
        self._open: dict[int, tuple[Path, object]] = {}

    def get(self, shard_index: int, path: Path | None = None):
        path = Path(path) if path is not None else self.shard_set.local_tar(shard_index)
        held = self._open.get(shard_index)
        if held is not None:
            if held[0] == path and os.fstat(held[1].fileno()).st_nlink > 0:
                return held[1]
            held[1].close()
        f = open(path, "rb")
        self._open[shard_index] = (path, f)
        if self.shard_set.streamed:  # keep only what is read now: done shards must leave the disk
            for other in [s for s in self._open if s != shard_index and os.fstat(self._open[s][1].fileno()).st_nlink == 0]:
                self._open.pop(other)[1].close()
        return f

    def close(self) -> None:
        for _, f in self._open.values():
            f.close()
        self._open.clear()


def read_sample(shard_set, item, handle=None) -> tuple[str, bytes, int, dict]:
    """(key, video bytes, label, json metadata) of a work item, read through the .idx byte ranges."""
    key = shard_set.shards[item.shard].keys[item.sample]
    comps = shard_set.read_components(item.shard, item.sample, exts=(shard_set.video_ext, "cls", "json"), handle=handle)
    if shard_set.video_ext not in comps:
        raise ValueError(f"no {shard_set.video_ext} component")
    meta = json.loads(comps["json"]) if "json" in comps else {}
    label = int(comps["cls"].decode().strip()) if "cls" in comps else int(meta["label"])
    return key, comps[shard_set.video_ext], label, meta
