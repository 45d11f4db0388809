"""The sample table of a shard set: which tars, which samples, where their bytes are.

Opening goes through fastvid.store.reader (one manifest read; URLs, brace patterns and pipe: commands
are fetched into the local shard cache first, since DALI needs local files). Both backends read the
tars through the DALI index files (`<stem>.idx`, written by `fastvid shard`), so they agree on the sample order and on the per-rank split. The PyAV backend reads a sample's
components with one seek + read per component, the same byte ranges DALI's webdataset reader uses.
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
    tar: Path
    idx: Path | None
    keys: list[str]
    components: list[dict]  # per sample: ext -> (offset, size)

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
    def shard_sizes(self) -> list[int]:
        return [len(s) for s in self.shards]

    def read_components(self, shard_index: int, sample_index: int, exts=None, handle=None) -> dict:
        """{ext: bytes} of one sample (all components, or only `exts`); `handle` is an open file of that tar."""
        shard = self.shards[shard_index]
        comps = shard.components[sample_index]
        wanted = comps if exts is None else {e: comps[e] for e in exts if e in comps}
        out = {}
        f = handle or open(shard.tar, "rb")
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
    """The video reader of fastvid.store.reader: an OpenedSet (manifest read once, local files) -> ShardSet."""
    from fastvid.store.tarindex import indexed_samples

    manifest = opened.manifest
    shard_list = []
    for f in opened.files:
        samples = indexed_samples(f.tar, f.idx)
        shard_list.append(Shard(f.tar, f.idx, [os.path.basename(key) for key, _ in samples], [fields for _, fields in samples]))
    if not any(len(s) for s in shard_list):
        raise ValueError(f"{opened.spec}: the shard set holds no samples")
    first = next(s for s in shard_list if len(s))
    exts = [e for e in first.components[0] if e in VIDEO_EXTS]
    if not exts:
        raise ValueError(f"{first.tar}: sample {first.keys[0]!r} has no video component (expected one of {VIDEO_EXTS})")
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
    if first_nonempty:
        shard_index = next(i for i, s in enumerate(shard_set.shards) if len(s))
    comps = shard_set.read_components(shard_index, sample_index, exts=("json",))
    if "json" not in comps:
        return {}
    try:
        return json.loads(comps["json"])
    except ValueError as exc:
        raise ValueError(f"{shard_set.shards[shard_index].tar}: sample {shard_set.shards[shard_index].keys[sample_index]!r} has invalid json ({exc})") from None


def _classes_from_labels(shard_list: list[Shard]) -> list[str]:
    """Without a manifest: class names are the label numbers seen in the `cls` fields."""
    top = -1
    for shard in shard_list:
        with open(shard.tar, "rb") as f:
            for comps in shard.components:
                if "cls" in comps:
                    f.seek(comps["cls"][0])
                    top = max(top, int(f.read(comps["cls"][1]).decode().strip()))
    return [str(i) for i in range(top + 1)]


def key_from_source_info(info: str) -> str:
    """DALI's source_info for a webdataset sample is 'tar:offset:member'; the key is the member up to its first dot."""
    member = info.rsplit(":", 1)[-1]
    return os.path.basename(member).split(".", 1)[0]


def read_sample(shard_set, item, handle=None) -> tuple[str, bytes, int, dict]:
    """(key, video bytes, label, json metadata) of a work item, read through the .idx byte ranges."""
    key = shard_set.shards[item.shard].keys[item.sample]
    comps = shard_set.read_components(item.shard, item.sample, exts=(shard_set.video_ext, "cls", "json"), handle=handle)
    if shard_set.video_ext not in comps:
        raise ValueError(f"no {shard_set.video_ext} component")
    meta = json.loads(comps["json"]) if "json" in comps else {}
    label = int(comps["cls"].decode().strip()) if "cls" in comps else int(meta["label"])
    return key, comps[shard_set.video_ext], label, meta
