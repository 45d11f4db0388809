"""`fastvid inspect OUT [--verify]`: what a shard set holds, and whether it is intact.

Reads the manifest and the small members of every tar (`cls`, `json`): samples per class, bytes,
codecs, resolution / fps / frame-count histograms, failures. `--verify` also checks each shard's
sha256 and size against the manifest, that every sample has the same components (video, cls, json
for video sets), that `cls` agrees with the json label, and that the DALI index matches the tar.
"""

from __future__ import annotations

import collections
import json
import sys
import tarfile

from fastvid.shard import dali_index
from fastvid.shard.format import VIDEO_EXTS as _VIDEO_EXTS
from fastvid.shard.manifest import MANIFEST_NAME, file_sha256
from fastvid.shard.writer import human_bytes

VIDEO_EXTS = set(_VIDEO_EXTS)


def iter_samples(tar_path):
    """(key, {ext: bytes for small members, or size for video members}) per sample, in tar order."""
    current_key, fields = None, {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = dali_index.split_member_name(member.name)
            if key != current_key:
                if current_key is not None:
                    yield current_key, fields
                current_key, fields = key, {}
            if ext in ("cls", "json", "txt", "boxes.npy"):
                fields[ext] = tar.extractfile(member).read()
            else:
                fields[ext] = member.size
    if current_key is not None:
        yield current_key, fields


def summarize(out_dir, verify: bool = False) -> dict:
    """Summary dict of the shard set; with verify=True, a list of `problems` (empty when intact)."""
    from fastvid.shard.reader import open_files

    opened = open_files(out_dir, missing_ok=True)  # a directory, or a URL (its shards come through the local cache)
    if opened.manifest is None:
        raise FileNotFoundError(f"{out_dir}: not a shard set (no {MANIFEST_NAME})")
    manifest = opened.manifest
    classes = manifest["classes"]
    per_class = collections.Counter()
    codecs, resolutions, fps_hist, containers = (collections.Counter() for _ in range(4))
    frames, durations = [], []
    num_events, recordings = 0, set()  # event shard sets
    component_sets = collections.Counter()
    problems: list[str] = []
    keys_seen: set[str] = set()
    sample_count = 0
    for shard, shard_file in zip(manifest["shards"], opened.files):
        tar = shard_file.tar
        if not tar.is_file():
            problems.append(f"{shard['name']}: missing")
            continue
        if verify:
            size = tar.stat().st_size
            if size != shard["bytes"]:
                problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
            digest = file_sha256(tar)
            if digest != shard["sha256"]:
                problems.append(f"{shard['name']}: sha256 {digest[:16]}... does not match the manifest ({shard['sha256'][:16]}...)")
        count = 0
        try:
            for key, fields in iter_samples(tar):
                count += 1
                if key in keys_seen:
                    problems.append(f"{shard['name']}: duplicate key {key}")
                keys_seen.add(key)
                component_sets[tuple(sorted(fields))] += 1
                label = None
                if "cls" in fields:
                    try:
                        label = int(fields["cls"])
                    except ValueError:
                        problems.append(f"{shard['name']}: {key}.cls is not an integer")
                info = None
                if "json" in fields:
                    try:
                        info = json.loads(fields["json"])
                    except ValueError:
                        problems.append(f"{shard['name']}: {key}.json is not valid JSON")
                if isinstance(info, dict):
                    if label is None and isinstance(info.get("label"), int):
                        label = info["label"]
                    elif verify and "label" in info and info["label"] != label:
                        problems.append(f"{shard['name']}: {key}: cls {label} but json label {info['label']}")
                    if info.get("codec"):
                        codecs[info["codec"]] += 1
                    if info.get("container"):
                        containers[info["container"]] += 1
                    if info.get("width") and info.get("height"):
                        resolutions[f"{info['width']}x{info['height']}"] += 1
                    if info.get("fps"):
                        fps_hist[f"{float(info['fps']):.3f}".rstrip("0").rstrip(".")] += 1
                    if isinstance(info.get("num_frames"), int):
                        frames.append(info["num_frames"])
                    if info.get("duration"):
                        durations.append(float(info["duration"]))
                if manifest["kind"] == "events":
                    # Event samples carry boxes, not one label: count boxes per class instead.
                    if isinstance(info, dict):
                        num_events += int(info.get("num_events", 0))
                        recordings.add(info.get("recording"))
                        if info.get("t1") is not None and info.get("t0") is not None:
                            durations.append((info["t1"] - info["t0"]) / 1e6)
                    if "boxes.npy" in fields:
                        import io

                        import numpy as np

                        try:
                            boxes = np.load(io.BytesIO(fields["boxes.npy"]), allow_pickle=False)
                            for cid, n in zip(*np.unique(boxes["class_id"], return_counts=True)):
                                per_class[int(cid)] += int(n)
                        except (ValueError, KeyError, OSError) as exc:
                            problems.append(f"{shard['name']}: {key}.boxes.npy unreadable ({exc})")
                elif label is not None:
                    per_class[label] += 1
                if verify and manifest["kind"] == "video":
                    missing = [c for c in ("cls", "json") if c not in fields]
                    if not VIDEO_EXTS & set(fields):
                        missing.append("mp4/webm")
                    elif any(fields[e] == 0 for e in VIDEO_EXTS & set(fields)):
                        problems.append(f"{shard['name']}: {key}: empty video")
                    if missing:
                        problems.append(f"{shard['name']}: {key}: missing {', '.join(missing)}")
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"{shard['name']}: unreadable tar ({exc})")
        sample_count += count
        if count != shard["samples"]:
            problems.append(f"{shard['name']}: {count} samples in the tar, manifest says {shard['samples']}")
        if verify:
            idx = dali_index.index_path_for(tar)
            try:
                if dali_index.read_index(idx) != dali_index.index_entries(tar):
                    problems.append(f"{idx.name}: does not match {shard['name']}")
            except FileNotFoundError:
                problems.append(f"{idx.name}: missing DALI index")
            except (ValueError, tarfile.TarError, OSError) as exc:
                problems.append(f"{idx.name}: {exc}")
    if verify and len(component_sets) > 1:
        common = component_sets.most_common(1)[0][0]
        odd = sum(n for comps, n in component_sets.items() if comps != common)
        problems.append(f"{odd} samples do not have the usual components {list(common)}: {dict(component_sets)}")

    def name_of(label):
        return classes[label] if 0 <= label < len(classes) else f"<label {label} not in classes>"

    summary = {
        "dir": str(out_dir),  # as given (a path or URL)
        "kind": manifest["kind"],
        "split": manifest["split"],
        "num_samples": manifest["num_samples"],
        "samples_read": sample_count,
        "num_shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "num_classes": len(classes),
        "samples_per_class": {name_of(label): n for label, n in sorted(per_class.items())},
        "empty_classes": [c for i, c in enumerate(classes) if per_class[i] == 0],
        "codecs": dict(codecs),
        "containers": dict(containers),
        "resolutions": dict(resolutions.most_common()),
        "fps": dict(fps_hist.most_common()),
        "frames": {"min": min(frames), "mean": round(sum(frames) / len(frames), 1), "max": max(frames)} if frames else None,
        "total_duration_s": round(sum(durations), 2),
        "failures": manifest["failures"],
        "options": manifest["options"],
    }
    if manifest["kind"] == "events":
        summary["num_events"] = num_events
        summary["num_recordings"] = len(recordings)
        summary["boxes_per_class"] = summary.pop("samples_per_class")
    if verify:
        summary["problems"] = problems
    return summary


def _histogram_lines(title: str, counts: dict, limit: int = 12) -> list[str]:
    if not counts:
        return []
    total = sum(counts.values())
    width = max(len(str(k)) for k in list(counts)[:limit])
    lines = [f"{title}:"]
    for k, n in list(counts.items())[:limit]:
        bar = "#" * max(1, round(30 * n / total))
        lines.append(f"  {str(k):<{width}}  {n:>7}  {bar}")
    if len(counts) > limit:
        lines.append(f"  ... {len(counts) - limit} more")
    return lines


def format_summary(summary: dict) -> str:
    lines = [f"{summary['dir']}: {summary['kind']} shard set, split {summary['split']!r}",
             f"  {summary['num_samples']} samples in {summary['num_shards']} shards, {human_bytes(summary['bytes'])}, "
             f"{summary['num_classes']} classes, {summary['total_duration_s']:.1f} s of video" if summary["kind"] == "video" else
             f"  {summary['num_samples']} samples in {summary['num_shards']} shards, {human_bytes(summary['bytes'])}, "
             f"{summary['num_classes']} classes"]
    if summary["frames"]:
        f = summary["frames"]
        lines.append(f"  frames per clip: min {f['min']}, mean {f['mean']}, max {f['max']}")
    if summary["codecs"]:
        lines.append("  codecs: " + ", ".join(f"{k} {v}" for k, v in summary["codecs"].items()))
    if summary["kind"] == "events":
        lines.append(f"  {summary['num_events']:,} events from {summary['num_recordings']} recordings, "
                     f"{summary['total_duration_s']:.1f} s of recording")
        per_class, unit = summary["boxes_per_class"], "boxes"
    else:
        per_class, unit = summary["samples_per_class"], "samples"
    if per_class:
        counts = list(per_class.values())
        lines.append(f"  {unit} per class: min {min(counts)}, max {max(counts)}")
        lines += ["  " + line for line in _histogram_lines(f"{unit} per class", per_class, limit=20)]
    if summary["empty_classes"]:
        lines.append(f"  classes with no {unit}: {summary['empty_classes'][:10]}")
    lines += ["  " + line for line in _histogram_lines("resolution (WxH)", summary["resolutions"])]
    lines += ["  " + line for line in _histogram_lines("fps", summary["fps"])]
    failures = summary["failures"]
    lines.append(f"  failures: {len(failures)}")
    for f in failures[:10]:
        lines.append(f"    {f['source']}: {f['error']}")
    if len(failures) > 10:
        lines.append(f"    ... {len(failures) - 10} more (see manifest.json)")
    if "problems" in summary:
        if summary["problems"]:
            lines.append(f"  verify: {len(summary['problems'])} PROBLEMS")
            lines += [f"    {p}" for p in summary["problems"][:20]]
        else:
            lines.append("  verify: OK (sha256, sizes, components, labels and DALI indexes match)")
    return "\n".join(lines)


def add_arguments(parser) -> None:
    parser.add_argument("out", help=f"shard set directory or URL (with {MANIFEST_NAME}): path, file://, http(s)://, s3://")
    parser.add_argument("--verify", action="store_true", help="check sha256 of every shard, sample components and indexes")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    summary = summarize(args.out, verify=args.verify)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    if args.verify and summary["problems"]:
        print(f"inspect: {len(summary['problems'])} problems found in {args.out}", file=sys.stderr)
        return 1
    return 0
