"""`fastvid inspect OUT [--verify]`: what a shard set holds, and whether it is intact.

Reads the manifest and the small members of every tar (`cls`, `json`, boxes): bytes, failures, which
kind of set it is, whether it has per-shard metadata (`<stem>.meta.json`, fastvid.store.shardmeta), and
what the set's kind reports (video: samples per class, codecs, resolution / fps / frame-count
histograms; events: events, recordings, boxes per class). `--verify` also checks each shard's sha256
and size against the manifest, that every sample has the same components, the kind's own checks
(video: cls agrees with the json label), that the DALI index matches the tar, and that the metadata
file lists the tar's samples. A remote set's tars are streamed through the cache one or two at a time.
"""

from __future__ import annotations

import collections
import hashlib
import json
import sys
import tarfile

from fastvid.store import kinds, tarindex
from fastvid.store.format import MANIFEST_NAME, meta_name_for
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

    opened = open_files(out_dir, missing_ok=True)  # a directory, or a URL (its tars are streamed below)
    if opened.manifest is None:
        raise FileNotFoundError(f"{out_dir}: not a shard set (no {MANIFEST_NAME})")
    manifest = opened.manifest
    kind = kinds.reader_for(manifest["kind"])
    acc: dict = {}
    component_sets = collections.Counter()
    problems: list[str] = []
    keys_seen: set[str] = set()
    sample_count = 0
    stream = opened.stream(range(len(opened.files)), window=2) if opened.streamed else None
    try:
        for i, (shard, shard_file) in enumerate(zip(manifest["shards"], opened.files)):
            try:
                tar = stream.path(i) if stream is not None else shard_file.tar
            except OSError as exc:
                problems.append(f"{shard['name']}: {exc}")
                continue
            if not tar.is_file():
                problems.append(f"{shard['name']}: missing")
                continue
            count = _read_shard(shard, tar, kind, acc, verify, component_sets, keys_seen, problems)
            sample_count += count
            if count != shard["samples"]:
                problems.append(f"{shard['name']}: {count} samples in the tar, manifest says {shard['samples']}")
            if verify:
                problems += _verify_bytes(shard, tar) + _verify_index(shard, shard_file, tar)
                problems += _verify_meta(shard, shard_file, tar, manifest["kind"])
            if stream is not None:
                stream.done(i)
    finally:
        if stream is not None:
            stream.close()
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
        "per_shard_metadata": _metadata_state(manifest, opened),
        **kind.inspect_summary(acc, manifest["classes"]),
        "failures": manifest["failures"],
        "options": manifest["options"],
    }
    if verify:
        summary["problems"] = problems
    return summary


def _read_shard(shard, tar, kind, acc, verify, component_sets, keys_seen, problems) -> int:
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
    return count


def _metadata_state(manifest: dict, opened) -> str:
    """'all' shards have a metadata file (listed with its sha256 in the manifest, or beside a local tar),
    'none', or 'some'."""
    from pathlib import Path

    from fastvid.store import remote

    def has(shard, f) -> bool:
        if "meta_sha256" in shard:
            return True
        return not remote.is_remote(f.address) and Path(f.address).with_name(meta_name_for(shard["name"])).is_file()

    flags = [has(s, f) for s, f in zip(manifest["shards"], opened.files)]
    return "all" if all(flags) else "some" if any(flags) else "none"


def _verify_bytes(shard: dict, tar) -> list[str]:
    problems = []
    size = tar.stat().st_size
    if size != shard["bytes"]:
        problems.append(f"{shard['name']}: {size} bytes, manifest says {shard['bytes']}")
    digest = file_sha256(tar)
    if digest != shard["sha256"]:
        problems.append(f"{shard['name']}: sha256 {digest[:16]}... does not match the manifest ({shard['sha256'][:16]}...)")
    return problems


def _verify_index(shard: dict, shard_file, tar) -> list[str]:
    idx = tarindex.index_path_for(tar)
    try:
        if shard_file.index is not None:  # read at open (a remote set's, fetched and checked then)
            listed = shard_file.index
        else:
            listed = tarindex.samples_of(tarindex.read_index(idx))
        if listed != tarindex.samples_of(tarindex.index_entries(tar)):
            return [f"{idx.name}: does not match {shard['name']}"]
    except FileNotFoundError:
        return [f"{idx.name}: missing DALI index"]
    except (ValueError, tarfile.TarError, OSError) as exc:
        return [f"{idx.name}: {exc}"]
    return []


def _verify_meta(shard: dict, shard_file, tar, kind: str) -> list[str]:
    """The shard's metadata file (when it has one) lists the tar's samples, in order."""
    from pathlib import Path

    from fastvid.store import remote, shardmeta

    name = meta_name_for(shard["name"])
    if remote.is_remote(shard_file.address):
        if "meta_sha256" not in shard:
            return []
        address = remote.join(remote.parent(shard_file.address), name)
        try:
            data = remote.read_bytes(address)
        except OSError as exc:
            return [f"{name}: {exc}"]
        if "meta_sha256" in shard and hashlib.sha256(data).hexdigest() != shard["meta_sha256"]:
            return [f"{name}: sha256 does not match the manifest"]
    else:
        path = Path(shard_file.address).with_name(name)
        if not path.is_file():
            return [f"{name}: missing (the manifest lists its sha256)"] if "meta_sha256" in shard else []
        data = path.read_bytes()
        if "meta_sha256" in shard and hashlib.sha256(data).hexdigest() != shard["meta_sha256"]:
            return [f"{name}: sha256 does not match the manifest"]
    try:  # the metadata must list the index's samples (the index against the tar is _verify_index's check)
        index = shard_file.index if shard_file.index is not None else \
            tarindex.samples_of(tarindex.read_index(tarindex.index_path_for(tar)))
        shardmeta.parse(data, name, kind=kind, keys=[key for key, _ in index])
    except (ValueError, OSError) as exc:
        return [f"{name}: {exc}" if not str(exc).startswith(name) else str(exc)]
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
             f"{summary['num_classes']} classes",
             "  per-shard metadata: " + {"all": "yes (<stem>.meta.json beside every shard)",
                                         "some": "some shards only (opening computes the rest once from the sample jsons)",
                                         "none": "no (an older set: opening computes it once from the sample jsons)"}
             [summary["per_shard_metadata"]]]
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
            lines.append("  verify: OK (sha256, sizes, components, labels, DALI indexes and metadata match)")
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
