"""Dataset layouts as people have them on disk -> lists of video items and class names (no decoding here).

Layouts:
- `kinetics`: SRC/<class name>/<video file> (classes sorted by name, label = index);
- `list`: a PaddleVideo-style list file of `relative/path label` lines (also `path num_frames label`),
  or a Kinetics CSV `label,youtube_id,time_start,time_end,split` whose clips are looked up under
  `video_root` (as trimmed `<id>_<start>_<end>.mp4` files, or full `<id>.mp4` videos cut to the times);
- `frames`: every leaf folder of JPEG/PNG frames is one video (Kinetics rawframes, iPER images_HD),
  labelled by a list file or by its parent folder's name.
List files may be label-less (iPER's `train.txt`: bare `001/1/1` folder paths); `label_level` then
takes the label from one folder level of the relative path (0 = first: the person in iPER), and
without it samples carry no label. Kinetics CSV rows whose video is missing become items that fail
(recorded in the manifest, counted in the summary), never a stop; `kinetics_version` checks the class
count and spells class names as the CSVs do ("air drumming" for an `air_drumming/` folder), so folder
and CSV layouts give the same label ids.
Each item carries a unique webdataset key derived from its relative path (no dots: webdataset
splits a member name at the first dot) and a size/mtime stamp so a resumed job notices changed inputs.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from pathlib import Path

from fastvid.store.format import MAX_KEY_LEN

# Input video files the layouts pick up (suffixes, with the dot).
SOURCE_VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".flv", ".mpg", ".mpeg", ".ts",
                                   ".3gp", ".ogv", ".wmv"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

LAYOUTS = ("kinetics", "list", "frames")


@dataclasses.dataclass(frozen=True)
class VideoItem:
    key: str                  # webdataset __key__
    source: str               # path relative to the dataset root, as reported in json/failures
    path: str                 # absolute path of the video file or frame folder
    label: int | None          # None: the sample has no label (label-less lists)
    label_name: str | None
    start: float | None = None  # cut [start, end) seconds (Kinetics CSV)
    end: float | None = None
    is_frames: bool = False
    stamp: str = ""            # size/mtime of the input, part of the resume fingerprint

    def fingerprint(self) -> list:
        """What a resumed job compares: everything but the absolute path, so `SRC` may be spelled differently."""
        return [self.key, self.source, self.label, self.label_name, self.start, self.end, self.is_frames, self.stamp]


def sanitize_key(relative: str) -> str:
    """Key for a relative path: extension dropped, '/' -> '__', anything but [A-Za-z0-9_-] -> '_'."""
    path = Path(relative)
    stem = str(path.with_suffix("")) if path.suffix.lower() in SOURCE_VIDEO_SUFFIXES else str(path)
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", stem.replace(os.sep, "/").replace("/", "__")).strip("_") or "sample"
    if len(key) > MAX_KEY_LEN:
        key = key[:MAX_KEY_LEN - 9] + "_" + hashlib.sha1(relative.encode()).hexdigest()[:8]
    return key


def unique_keys(relatives: list[str]) -> list[str]:
    """Sanitized keys made unique by a numeric suffix, deterministic for a given input order."""
    used: set[str] = set()
    keys = []
    for rel in relatives:
        base = key = sanitize_key(rel)
        n = 1
        while key in used:
            n += 1
            key = f"{base}_{n}"
        used.add(key)
        keys.append(key)
    return keys


def file_stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "missing"
    if path.is_dir():
        return f"dir:{len(os.listdir(path))}:{st.st_mtime_ns}"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _make_items(entries, root: Path, is_frames: bool = False) -> list[VideoItem]:
    """entries: (relative path, label, label name, start, end, source name) -> VideoItems with unique keys."""
    keys = unique_keys([e[5] for e in entries])
    items = []
    for key, (rel, label, name, start, end, source) in zip(keys, entries):
        path = (root / rel) if not Path(rel).is_absolute() else Path(rel)
        items.append(VideoItem(key=key, source=source, path=str(path), label=None if label is None else int(label),
                               label_name=name, start=start,
                               end=end, is_frames=is_frames, stamp=file_stamp(path)))
    return items


def _require_dir(path, what: str) -> Path:
    path = Path(path).absolute()
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} does not exist")
    if not path.is_dir():
        raise ValueError(f"{path}: {what} must be a directory")
    return path


def _within(path: Path, other: Path | None) -> bool:
    return other is not None and (path == other or other in path.parents)


def kinetics_layout(src, exclude=None) -> tuple[list[VideoItem], list[str]]:
    """SRC/<class>/<video>: classes sorted by name (Kinetics convention), videos found recursively per class.

    A folder without videos is not a class (it is reported on stderr), and nothing under `exclude`
    (the output directory, when it lies inside SRC) is ever read as input."""
    import sys

    root = _require_dir(src, "dataset root")
    exclude = Path(exclude).absolute() if exclude is not None else None
    class_dirs = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and not _within(d, exclude)),
                        key=lambda d: d.name)
    if not class_dirs:
        raise ValueError(f"{root}: no class folders (expected SRC/<class name>/<video file>)")
    found: dict[Path, list[str]] = {}
    for d in class_dirs:
        found[d] = [f.relative_to(root).as_posix() for f in sorted(d.rglob("*"))
                    if f.is_file() and f.suffix.lower() in SOURCE_VIDEO_SUFFIXES and not f.name.startswith(".")
                    and not _within(f, exclude)]
    empty = [d.name for d in class_dirs if not found[d]]
    if empty and len(empty) < len(class_dirs):
        print(f"warning: {root}: {len(empty)} folders without video files are not classes: {', '.join(empty[:10])}"
              f"{' ...' if len(empty) > 10 else ''}", file=sys.stderr)
    class_dirs = [d for d in class_dirs if found[d]]
    classes = [d.name for d in class_dirs]
    entries = [(rel, label, d.name, None, None, rel) for label, d in enumerate(class_dirs) for rel in found[d]]
    if not entries:
        raise ValueError(f"{root}: no video files ({', '.join(sorted(SOURCE_VIDEO_SUFFIXES))}) in its class folders")
    return _make_items(entries, root), classes


def read_class_names(path) -> list[str]:
    """One class name per line (line i = label i)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class list not found")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: class list is empty")
    return names


def parse_list_file(path) -> list[tuple[str, str | None]]:
    """(relative path, label token) per non-empty line of `path label` or `path num_frames label`;
    a list whose every line is a bare path (iPER's `001/1/1`) gives label None."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: list file not found")
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    if lines and all(len(line.split()) == 1 for _, line in lines):
        return [(line, None) for _, line in lines]  # label-less list
    rows = []
    for n, line in lines:
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(f"{path}:{n}: expected 'relative/path label', got {line!r}")
        # The path may contain spaces; the label is the last token (rawframes lists put num_frames before it).
        if len(parts) >= 3 and parts[-2].isdigit() and parts[-1].lstrip("-").isdigit():
            rel = " ".join(parts[:-2])
        else:
            rel = " ".join(parts[:-1])
        rows.append((rel, parts[-1]))
    if not rows:
        raise ValueError(f"{path}: list file has no entries")
    return rows


def labels_from_tokens(rows: list[tuple[str, str]], class_names: list[str] | None, where: str):
    """Integer labels (names from `class_names` or the folders) or names (sorted -> labels); returns (labels, names, classes)."""
    tokens = [t for _, t in rows]
    if all(t.lstrip("-").isdigit() for t in tokens):
        labels = [int(t) for t in tokens]
        if min(labels) < 0:
            raise ValueError(f"{where}: negative label {min(labels)}")
        num = max(labels) + 1
        if class_names is not None:
            if len(class_names) < num:
                raise ValueError(f"{where}: label {num - 1} but the class list has only {len(class_names)} names")
            classes = list(class_names)
        else:
            classes = _names_from_folders(rows, labels, num)
        return labels, [classes[i] for i in labels], classes
    classes = sorted(set(tokens)) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(tokens) - set(index))
    if unknown:
        raise ValueError(f"{where}: labels {unknown[:5]} are not in the class list")
    return [index[t] for t in tokens], tokens, classes


def _names_from_folders(rows, labels, num) -> list[str]:
    """Class names for integer labels: the common parent folder of each label's paths when that is
    unambiguous (PaddleVideo's `abseiling/x.mp4 0`), else the label number as text."""
    folders: dict[int, set[str]] = {}
    for (rel, _), label in zip(rows, labels):
        parent = Path(rel).parent.name
        folders.setdefault(label, set()).add(parent)
    names = []
    for i in range(num):
        parents = folders.get(i, set())
        names.append(next(iter(parents)) if len(parents) == 1 and "" not in parents else str(i))
    if len(set(names)) != len(names):
        return [str(i) for i in range(num)]
    return names


def labels_from_level(rels: list[str], level: int, class_names: list[str] | None, where: str):
    """Labels from folder level `level` of each relative path (0 = first folder); (labels, names, classes)."""
    names = []
    for rel in rels:
        parts = Path(rel).parts
        if not -len(parts) <= level < len(parts):
            raise ValueError(f"{where}: {rel!r} has no folder level {level} (it has {len(parts)} levels)")
        names.append(parts[level])
    classes = sorted(set(names)) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(f"{where}: folder names {unknown[:5]} at level {level} are not in the class list")
    return [index[n] for n in names], names, classes


def _row_labels(rows, class_names, label_level, where):
    """Labels of list rows: from the folder level when asked, else from the tokens, else none."""
    if label_level == "none" or any(token is None for _, token in rows) and label_level is None:
        return [None] * len(rows), [None] * len(rows), []
    if label_level is not None:
        return labels_from_level([rel for rel, _ in rows], label_level, class_names, where)
    return labels_from_tokens(rows, class_names, where)


def list_layout(list_file, root, class_names: list[str] | None = None,
                label_level: int | str | None = None) -> tuple[list[VideoItem], list[str]]:
    """PaddleVideo-style list of `relative/path label` lines (or bare paths), paths relative to `root`."""
    root = _require_dir(root, "video root")
    rows = parse_list_file(list_file)
    labels, names, classes = _row_labels(rows, class_names, label_level, str(list_file))
    entries = [(rel, label, name, None, None, rel) for (rel, _), label, name in zip(rows, labels, names)]
    return _make_items(entries, root), classes


def is_kinetics_csv(path) -> bool:
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return False
    with open(path, newline="") as f:
        header = f.readline()
    return "youtube_id" in header


def kinetics_csv_layout(csv_file, video_root, class_names: list[str] | None = None) -> tuple[list[VideoItem], list[str]]:
    """Kinetics annotation CSV rows -> clips under video_root (trimmed files, or full videos cut to the times)."""
    csv_file = Path(csv_file)
    root = _require_dir(video_root, "--video-root")
    with open(csv_file, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_file}: missing CSV columns {sorted(missing)} (expected label,youtube_id,time_start,time_end,split)")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{csv_file}: no rows")
    by_stem: dict[str, Path] = {}
    for f in sorted(root.rglob("*")):
        if f.suffix.lower() in SOURCE_VIDEO_SUFFIXES and f.is_file():
            by_stem.setdefault(f.stem, f)
    classes = sorted({r["label"] for r in rows}) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(classes)}
    entries, key_names = [], []
    for n, row in enumerate(rows, 2):
        name = row["label"]
        if name not in index:
            raise ValueError(f"{csv_file}:{n}: label {name!r} is not in the class list")
        try:
            t0, t1 = float(row["time_start"]), float(row["time_end"])
        except ValueError:
            raise ValueError(f"{csv_file}:{n}: time_start/time_end must be numbers") from None
        clip_stem = f"{row['youtube_id']}_{int(t0):06d}_{int(t1):06d}"
        if clip_stem in by_stem:  # already trimmed (the usual Kinetics download)
            path, start, end = by_stem[clip_stem], None, None
        elif row["youtube_id"] in by_stem:  # the full video: cut on the fly
            path, start, end = by_stem[row["youtube_id"]], t0, t1
        else:  # not downloaded / removed from YouTube: an item that fails (recorded, counted), not a stop
            path, start, end = root / name / f"{clip_stem}.mp4", None, None
        rel = path.relative_to(root).as_posix()
        entries.append((rel, index[name], name, start, end, rel if start is None else f"{rel}[{t0:g}-{t1:g}s]"))
        # Keys name the clip, not the file: one full video can give several clips.
        key_names.append(f"{Path(rel).parent.as_posix()}/{clip_stem}")
    items = _make_items(entries, root)
    return [dataclasses.replace(it, key=key) for it, key in zip(items, unique_keys(key_names))], classes


def frame_folders(root: Path) -> list[Path]:
    """Leaf folders (no sub-folders) holding at least one image, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if not dirnames and any(Path(f).suffix.lower() in IMAGE_SUFFIXES for f in filenames):
            found.append(Path(dirpath))
    return sorted(found)


def frames_layout(src, list_file=None, class_names: list[str] | None = None,
                  label_level: int | str | None = None) -> tuple[list[VideoItem], list[str]]:
    """Each leaf folder of frames is one video; labels from `list_file` (folder paths), from folder level
    `label_level` of the relative path, none (`label_level="none"`), or the parent folder name."""
    root = _require_dir(src, "frames root")
    if list_file is not None:
        rows = parse_list_file(list_file)
        labels, names, classes = _row_labels(rows, class_names, label_level, str(list_file))
        entries = [(rel, label, name, None, None, rel) for (rel, _), label, name in zip(rows, labels, names)]
        return _make_items(entries, root, is_frames=True), classes
    folders = frame_folders(root)
    if not folders:
        raise ValueError(f"{root}: no folders of frame images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rels = [f.relative_to(root).as_posix() for f in folders]
    if label_level == "none":
        return _make_items([(rel, None, None, None, None, rel) for rel in rels], root, is_frames=True), []
    if label_level is not None:
        labels, names, classes = labels_from_level(rels, label_level, class_names, str(root))
        entries = [(rel, label, name, None, None, rel) for rel, label, name in zip(rels, labels, names)]
        return _make_items(entries, root, is_frames=True), classes
    parents = [Path(r).parent.name for r in rels]
    if any(not p for p in parents):
        raise ValueError(f"{root}: frame folders directly under the root have no parent folder to name their class; "
                         "give --list FILE with 'folder label' lines")
    classes = sorted(set(parents)) if class_names is None else list(class_names)
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(parents) - set(index))
    if unknown:
        raise ValueError(f"{root}: class folders {unknown[:5]} are not in the class list")
    entries = [(rel, index[p], p, None, None, rel) for rel, p in zip(rels, parents)]
    return _make_items(entries, root, is_frames=True), classes


KINETICS_VERSIONS = (400, 600, 700)


def kinetics_class_name(name: str) -> str:
    """The CSV spelling of a Kinetics class: folder downloads write `air_drumming` for `air drumming`."""
    return " ".join(name.replace("_", " ").split())


def apply_kinetics_version(items: list[VideoItem], classes: list[str], version: int, where: str):
    """Class names spelled as in the Kinetics-`version` CSVs, labels = index in their sorted order, and a
    check that all `version` classes are there (a subset would silently shift every label id)."""
    if version not in KINETICS_VERSIONS:
        raise ValueError(f"--kinetics-version {version}: expected one of {KINETICS_VERSIONS}")
    names = sorted({kinetics_class_name(c) for c in classes})
    if len(names) != version:
        raise ValueError(f"{where}: {len(names)} classes, but Kinetics-{version} has {version}; shard the full class "
                         "set (missing videos are fine) or drop --kinetics-version")
    index = {name: i for i, name in enumerate(names)}
    out = [dataclasses.replace(it, label=index[kinetics_class_name(it.label_name)],
                               label_name=kinetics_class_name(it.label_name)) for it in items]
    return out, names


def discover(layout: str, src, *, list_file=None, video_root=None, classes_file=None, label_level=None,
             kinetics_version: int | None = None, exclude=None) -> tuple[list[VideoItem], list[str]]:
    """Items and class names for one of LAYOUTS; nothing under `exclude` (OUT) is taken as input."""
    class_names = read_class_names(classes_file) if classes_file else None
    if label_level is not None and layout == "kinetics":
        raise ValueError("--label-level applies to --layout list and frames")
    if kinetics_version is not None and not (layout == "kinetics" or (layout == "list" and list_file and is_kinetics_csv(list_file))):
        raise ValueError("--kinetics-version applies to --layout kinetics and Kinetics CSV lists")
    if layout == "kinetics":
        items, classes = kinetics_layout(src, exclude=exclude)
        if class_names is not None:
            raise ValueError("--classes applies to --layout list and frames (kinetics takes class names from the folders)")
    elif layout == "list":
        if list_file is None:
            raise ValueError("--layout list needs --list FILE")
        if is_kinetics_csv(list_file):
            items, classes = kinetics_csv_layout(list_file, video_root or src, class_names)
        else:
            return list_layout(list_file, video_root or src, class_names, label_level)
    elif layout == "frames":
        return frames_layout(src, list_file, class_names, label_level)
    else:
        raise ValueError(f"--layout {layout!r}: expected one of {LAYOUTS}")
    if kinetics_version is not None:
        items, classes = apply_kinetics_version(items, classes, kinetics_version, str(list_file or src))
    return items, classes
