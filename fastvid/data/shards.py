"""The sample table of a shard set: which tars, which samples, where their bytes are.

Both backends read the tars through the DALI index files (`<stem>.idx`, written by `fastvid shard`),
so they agree on the sample order and on the per-rank split. The PyAV backend reads a sample's
components with one seek + read per component, the same byte ranges DALI's webdataset reader uses.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from fastvid.shard.dali_index import index_path_for

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


def _index_samples(tar: Path, idx: Path | None):
    from fastvid.shard.dali_index import indexed_samples

    samples = indexed_samples(tar, idx)
    return [os.path.basename(key) for key, _ in samples], [fields for _, fields in samples]


def open_shard_set(shards) -> ShardSet:
    """A shard set directory (with manifest.json) or a list of tar paths -> ShardSet."""
    manifest = None
    if isinstance(shards, (str, os.PathLike)) and Path(shards).is_dir():
        from fastvid.shard.manifest import read_manifest, shard_files

        manifest = read_manifest(shards)
        if manifest.get("kind", "video") != "video":
            raise ValueError(f"{shards}: shard set holds {manifest['kind']!r} samples, the video loader needs kind 'video'")
        pairs = shard_files(shards)
    else:
        paths = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
        if not paths:
            raise ValueError("no shards given (expected a shard set directory or a list of .tar paths)")
        pairs = []
        for p in paths:
            p = Path(p)
            if not p.exists():
                raise FileNotFoundError(f"{p}: shard does not exist")
            idx = index_path_for(p)
            pairs.append((p, idx if idx.exists() else None))
        parent_manifest = Path(paths[0]).parent / "manifest.json"
        if parent_manifest.exists():
            from fastvid.shard.manifest import read_manifest

            manifest = read_manifest(parent_manifest.parent)
    shard_list = []
    for tar, idx in pairs:
        keys, comps = _index_samples(Path(tar), Path(idx) if idx else None)
        shard_list.append(Shard(Path(tar), Path(idx) if idx else None, keys, comps))
    if not any(len(s) for s in shard_list):
        raise ValueError(f"{shards}: the shard set holds no samples")
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
    return ShardSet(shard_list, classes, manifest, video_ext, (codec or "").lower() or None)


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
