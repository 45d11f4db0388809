"""Sets of boxes keyed by recording name, on disk: read labels or detections from a `.npz`
(one array per recording), a folder of `<recording>_bbox.npy` files (GEN1 layout, any depth), or an
event shard set (the boxes of its segments); write detections as a `.npz` atomically."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from fastvid.events.detect.evaluate import BBOX_SUFFIX, as_boxes
from fastvid.store.atomic import atomic_path


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy box array ({exc})") from None
    return _boxes(arr, str(path))


def _boxes(arr, source: str) -> np.ndarray:
    if arr.dtype.names is None:
        raise ValueError(f"{source}: expected a structured box array (t or ts, x, y, w, h, class_id[, class_confidence]), "
                         f"got dtype {arr.dtype}")
    try:
        return as_boxes(arr.reshape(-1))
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from None


def load_box_sets(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{recording name: BOX_DTYPE array} from a .npz, a GEN1-style folder or an event shard set."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".npy":
            return {path.name.removesuffix(BBOX_SUFFIX).removesuffix(".npy"): _load_npy(path)}
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: _boxes(z[name], f"{path}[{name}]") for name in z.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable .npz of box arrays ({exc})") from None
    if (path / "manifest.json").is_file():
        from fastvid.events import iter_segments

        parts: dict[str, list] = {}
        for sample in iter_segments(path):
            parts.setdefault(sample["meta"]["recording"], []).append(sample["boxes"])
        return {name: as_boxes(np.concatenate(chunks)) for name, chunks in parts.items()}
    files = sorted(path.rglob("*" + BBOX_SUFFIX))
    if not files:
        raise FileNotFoundError(f"{path}: no *{BBOX_SUFFIX} files, .npz or event shard set (manifest.json) found")
    return {(f.relative_to(path).parent / f.name[:-len(BBOX_SUFFIX)]).as_posix(): _load_npy(f) for f in files}


def save_box_sets(path: str | os.PathLike, sets: dict[str, np.ndarray]) -> Path:
    """Write {recording: boxes} as an uncompressed .npz under a temp name, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, hidden=True) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{name: as_boxes(boxes) for name, boxes in sets.items()})
    return path
