"""`fastvid inspect OUT [--verify]`: what a shard set holds, and whether it is intact.

Reads the manifest and the small members of every tar (`cls`, `json`, boxes): bytes, failures, and
what the set's kind reports (video: samples per class, codecs, resolution / fps / frame-count
histograms; events: events, recordings, boxes per class). `--verify` also checks each shard's sha256
and size against the manifest, that every sample has the same components, the kind's own checks
(video: cls agrees with the json label), and that the DALI index matches the tar.
"""

from __future__ import annotations

import collections
import json
import sys
import tarfile

from fastvid.store import kinds, tarindex
from fastvid.store.format import MANIFEST_NAME
from fastvid.store.manifest import file_sha256
from fastvid.store.writer import human_bytes


def iter_samples(tar_path):
    """(key, {ext: bytes for small members, or size for video members}) per sample, in tar order."""
    current_key, fields = None, {}
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = tarindex.split_member_name(member.name)
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
    """Summary dict of the shard set; with verify=True, a list of `problems` (empty when intact).
    Sizes, hashes, keys, components and indexes are checked here; the reader of the set's kind
    (fastvid.store.kinds) adds what its samples hold (classes, codecs, events, ...)."""
    from fastvid.store.reader import open_files

    opened = open_files(out_dir, missing_ok=True)  # a directory, or a URL (its shards come through the local cache)
    if opened.manifest is None:
        raise FileNotFoundError(f"{out_dir}: not a shard set (no {MANIFEST_NAME})")
    manifest = opened.manifest
    kind = kinds.reader_for(manifest["kind"])
    acc: dict = {}
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
            problems += _verify_bytes(shard, tar)
        count = 0
        try:
            for key, fields in iter_samples(tar):
                count += 1
                if key in keys_seen:
                    problems.append(f"{shard['name']}: duplicate key {key}")
                keys_seen.add(key)
                component_sets[tuple(sorted(fields))] += 1
                info = None
                if "json" in fields:
                    try:
                        info = json.loads(fields["json"])
                    except ValueError:
                        problems.append(f"{shard['name']}: {key}.json is not valid JSON")
                found = kind.inspect_sample(key, fields, info if isinstance(info, dict) else None, acc, verify)
                problems += [f"{shard['name']}: {p}" for p in found]
        except (tarfile.TarError, OSError, EOFError) as exc:
            problems.append(f"{shard['name']}: unreadable tar ({exc})")
        sample_count += count
        if count != shard["samples"]:
            problems.append(f"{shard['name']}: {count} samples in the tar, manifest says {shard['samples']}")
        if verify:
            problems += _verify_index(shard, tar)
    if verify and len(component_sets) > 1:
        common = component_sets.most_common(1)[0][0]
        odd = sum(n for comps, n in component_sets.items() if comps != common)
        problems.append(f"{odd} samples do not have the usual components {list(common)}: {dict(component_sets)}")
    summary = {
        "dir": str(out_dir),  # as given (a path or URL)
        "kind": manifest["kind"],
        "split": manifest["split"],
        "num_samples": manifest["num_samples"],
        "samples_read": sample_count,
        "num_shards": len(manifest["shards"]),
        "bytes": sum(s["bytes"] for s in manifest["shards"]),
        "num_classes": len(manifest["classes"]),
        **kind.inspect_summary(acc, manifest["classes"]),
        "failures": manifest["failures"],
        "options": manifest["options"],
    }
    if verify:
        summary["problems"] = problems
    return summary


def _verify_bytes(shard: dict, tar) -> list[str]:
    problems = []
    size = tar.stat().st_size
    if size != shard["bytes"]:
        problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
    digest = file_sha256(tar)
    if digest != shard["sha256"]:
        problems.append(f"{shard['name']}: sha256 {digest[:16]}... does not match the manifest ({shard['sha256'][:16]}...)")
    return problems


def _verify_index(shard: dict, tar) -> list[str]:
    idx = tarindex.index_path_for(tar)
    try:
        if tarindex.read_index(idx) != tarindex.index_entries(tar):
            return [f"{idx.name}: does not match {shard['name']}"]
    except FileNotFoundError:
        return [f"{idx.name}: missing DALI index"]
    except (ValueError, tarfile.TarError, OSError) as exc:
        return [f"{idx.name}: {exc}"]
    return []


def histogram_lines(title: str, counts: dict, limit: int = 12) -> list[str]:
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
             f"{summary['num_classes']} classes"]
    lines += ["  " + line for line in kinds.reader_for(summary["kind"]).inspect_lines(summary)]
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
