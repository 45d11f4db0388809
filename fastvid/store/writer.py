"""Generic, atomic, resumable WebDataset shard-set writer (used for videos and for event streams).

`write_shard_set(items, encode, out_dir, ShardJob(...))` turns a list of items (anything picklable with a
unique `.key` and a `.source`) into `OUT/<split>-000000.tar ...` plus, per tar, a DALI index and the
per-sample planning metadata the kind's reader extracts (`<stem>.meta.json`, fastvid.store.shardmeta),
and a manifest that records the sha256 of all three. What it guarantees:
- deterministic order: items are shuffled with `seed` (so class-sorted inputs come out mixed), then
  node `r` of `n` takes every n-th item and names its shards `<split>-n<r>-000000.tar`; with `group`
  (events: the recording), whole groups are shuffled and dealt, their items kept together in order, so
  a group lives in one shard or a few consecutive ones;
- nothing half-written: a shard is written as `<name>.tmp-<pid>` and renamed when complete;
- resumable: after each shard a progress file records it; a rerun with the same items and options
  keeps complete shards untouched and goes on from the next one;
- a complete set is never replaced silently: a rerun with other items or options refuses unless
  `overwrite`, which builds the new set beside the old one and swaps it in at the end (a killed
  rerun leaves the old set intact; rerunning it resumes the new one);
- bad input never stops the job: an exception in `encode` becomes a manifest failure;
- a full disk leaves no temp file, and the error names the file being written;
- one writer per directory: a second job into the same OUT refuses, naming the holder (flock, released
  by the kernel when the holder dies, kill -9 included); the nodes of one multi-node job share the
  directory, one writer per node part. So the temp files that a writer clears are never a live job's.
Encoding runs in `workers` processes that leave a SIGINT/SIGTERM to the process group to this one (which
stops them) and die with it; the tars are written by this process in order.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from fastvid.store import kinds, shardmeta, tarindex
from fastvid.store.atomic import with_path, write_text_atomic
from fastvid.store.format import (FORMAT, MANIFEST_NAME, OPTIONAL_SHARD_HASHES, SHARD_KEYS, VERSION, check_key,
                                  check_split, meta_name_for, partial_manifest_name, plain_file_name, shard_name,
                                  shard_prefix)
from fastvid.store.manifest import write_json_atomic, write_wids_index

DEFAULT_MAX_SAMPLES = 1000
DEFAULT_MAX_SHARD_BYTES = 1 << 30  # 1 GiB: big enough for sequential reads, small enough to spread over workers
TAR_BLOCK = 512
MAX_LISTED_FAILURES = 10  # failed inputs named in the summary line (all are in the manifest)
# Fixed member mtime so that a rerun of the same job produces byte-identical tars.
MEMBER_MTIME = 0


def shuffled_order(num_items: int, seed: int) -> list[int]:
    """The deterministic permutation of item indices used for a given seed."""
    order = list(range(num_items))
    random.Random(seed).shuffle(order)
    return order


def node_part(order: Sequence[int], node_rank: int, num_nodes: int) -> list[int]:
    """Disjoint, balanced part of `order` for one node (every num_nodes-th element)."""
    return list(order[node_rank::num_nodes])


def grouped_node_part(groups: Sequence, seed: int, node_rank: int, num_nodes: int) -> list[int]:
    """Item indices of one node when items come in groups (`groups[i]`: item i's group): the distinct groups
    (in first-seen order) are shuffled with `seed` and dealt to nodes; a group's items stay together, in order."""
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    names = list(members)
    return [i for g in node_part([names[j] for j in shuffled_order(len(names), seed)], node_rank, num_nodes)
            for i in members[g]]


def to_bytes(ext: str, value: Any) -> bytes:
    """Bytes stored for a sample field: bytes as-is, text UTF-8, ints as decimal text, dicts/lists as JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        return str(int(value)).encode()
    if isinstance(value, (int, float)):
        return str(value).encode()
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value).encode("utf-8")
    if hasattr(value, "__array__"):  # numpy arrays: stored in .npy format
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        return buf.getvalue()
    raise TypeError(f"field {ext!r}: cannot store a {type(value).__name__}")


def tar_member_bytes(size: int) -> int:
    """Bytes a member of `size` takes in a tar (header + data padded to 512)."""
    return TAR_BLOCK + -(-size // TAR_BLOCK) * TAR_BLOCK


def item_fingerprint(item) -> Any:
    """What identifies an item's input for resume: its dataclass fields (incl. any size/mtime stamp)."""
    fp = getattr(item, "fingerprint", None)
    if fp is not None:
        return fp() if callable(fp) else fp
    if dataclasses.is_dataclass(item):
        return dataclasses.asdict(item)
    return [item.key, item.source]


def _encode_one(encode: Callable, item) -> tuple[bool, Any]:
    """Run `encode(item)`, turning every field into bytes; (False, message) on any error."""
    try:
        fields = encode(item)
        if not isinstance(fields, dict) or not fields:
            raise ValueError(f"encode returned {type(fields).__name__}, expected a non-empty dict of fields")
        out = {}
        for ext, value in fields.items():
            if ext.startswith("_"):
                continue
            out[ext] = to_bytes(ext, value)
        return True, out
    except Exception as exc:  # one bad input must not stop the job
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return False, f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _die_with_parent(parent: int) -> None:
    """Worker initializer: on Linux, get SIGKILL when the parent dies (even by kill -9), so no encoder
    outlives the job."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except Exception:  # not Linux: the parent's terminate-on-exit below still applies
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def obey_parent(parent: int, owner: int | None = None) -> None:
    """Initializer of worker processes (encoders here, the PyAV loader's decoders): die with `parent`, ignore
    SIGINT, and take SIGTERM only from `owner` (the process that manages this one; default: the parent).

    A Ctrl-C or a scheduler's SIGTERM goes to the whole process group: the owner decides what it means (stop and
    clean up, or checkpoint and exit 75) and stops its workers itself, so a worker killed first can neither print
    a traceback nor take the owner down with it. The owner's own SIGTERM (multiprocessing's terminate, at its
    exit) still ends the worker at once, as a worker that ignored it would keep the exiting owner waiting."""
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # not Linux: SIGTERM keeps its default
        return
    # SIGTERM stays blocked in this thread and every thread started from now on; one thread takes it and reads
    # who sent it (a handler cannot).
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])  # may be blocked since its start (signals_deferred)
    threading.Thread(target=_exit_on_sigterm_from, args=(parent if owner is None else owner,), daemon=True,
                     name="fastvid-sigterm").start()


def _exit_on_sigterm_from(owner: int) -> None:
    while True:
        if signal.sigwaitinfo([signal.SIGTERM]).si_pid == owner:
            os._exit(0)


@contextlib.contextmanager
def signals_deferred():
    """While worker processes start (encoders here, the PyAV loader's decoders), SIGINT/SIGTERM wait until done.

    A spawned or fork-server child reads its bootstrap from a pipe the parent writes after starting it: a parent
    that unwinds in between closes the pipe, and the child dies printing `EOFError: Ran out of input`. So the
    signals are only noted meanwhile and delivered after. They are also blocked in this thread, and a child
    inherits the mask (through fork and exec): a signal to the whole group cannot reach a child before
    `obey_parent` has set it up. Start multiprocessing's resource tracker before (its start unblocks them).
    Only the main thread can change signal handlers; elsewhere (and without signal masks: Windows) this does nothing."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    noted: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum)) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # pending signals arrive now, and are noted
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if noted:
            signal.raise_signal(noted[0])  # the real handler runs now: KeyboardInterrupt or SystemExit


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    # SIGKILL: nothing of an encoder's is worth a clean exit. The executor has no public way to stop running
    # tasks; its process table is stable across 3.8-3.13.
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            proc.kill()
        except Exception:
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def _iter_encoded(encode, items, workers: int):
    """Yield (item, ok, fields|error) in item order, encoding in `workers` processes when > 1."""
    if workers <= 1:
        for item in items:
            yield (item, *_encode_one(encode, item))
        return
    import multiprocessing

    # spawn: codec libraries with threads do not survive fork reliably.
    ctx = multiprocessing.get_context("spawn")
    if os.name == "posix":
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()  # now: its start would unblock the signals that signals_deferred blocks
    window = collections.deque()
    it = iter(items)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=obey_parent, initargs=(os.getpid(),))
    try:
        with signals_deferred():  # the pool starts its processes in these submits
            for item in it:
                window.append((item, pool.submit(_encode_one, encode, item)))
                if len(window) >= 4 * workers:
                    break
        while window:
            item, future = window.popleft()
            try:
                ok, payload = future.result()
            except Exception as exc:  # a worker died (e.g. a codec crashed) -> the pool is unusable
                raise RuntimeError(
                    f"an encoding worker died while processing {item.source} ({type(exc).__name__}: {exc}); "
                    "rerun the same command to resume from the last complete shard") from exc
            nxt = next(it, None)
            if nxt is not None:
                with signals_deferred():  # a submit may start a process (one that was not needed before)
                    window.append((nxt, pool.submit(_encode_one, encode, nxt)))
            yield item, ok, payload
    except BaseException:  # interrupted (SIGINT/SIGTERM), a write failed, or a worker died: stop encoding now
        _stop_workers(pool)
        raise
    pool.shutdown(wait=True)


class _HashingFile:
    """Write-only file that computes the sha256 of what goes through it (no second read of the shard)."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")
        self.digest = hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class _ShardFile:
    """One shard being written: a TarWriter on a temp file, renamed into place by `finish`."""

    def __init__(self, out_dir: Path, name: str, kind: str):
        import webdataset as wds

        self.path = out_dir / name
        self.tmp = out_dir / f"{name}.tmp-{os.getpid()}"
        self.stream = _HashingFile(self.tmp)
        self.writer = wds.TarWriter(self.stream, encoder=False, mtime=MEMBER_MTIME)
        self.samples = 0
        self.bytes = 0
        self.kind = kind
        self.kind_reader = kinds.reader_for(kind) if kind in kinds.kinds() else None
        self.meta: list[tuple[str, dict]] = []

    def write(self, key: str, fields: dict[str, bytes]) -> None:
        try:
            self.writer.write({"__key__": key, **fields})
        except OSError as exc:  # e.g. ENOSPC: name the file
            raise with_path(exc, self.tmp) from exc
        self.samples += 1
        self.bytes += sum(tar_member_bytes(len(v)) for v in fields.values())
        if self.kind_reader is not None:
            try:
                self.meta.append((key, self.kind_reader.sample_metadata(key, fields, str(self.path))))
            except ValueError:
                self.meta.append((key, {}))  # planned as a broken sample, as a reader of its json would

    def finish(self) -> dict:
        try:
            self.writer.close()
            self.stream.flush()
            os.fsync(self.stream.file.fileno())
            self.stream.close()
        except OSError as exc:
            raise with_path(exc, self.tmp) from exc
        # Index and metadata first (from the temp tar), then the tar: a tar under its final name always has both.
        idx = tarindex.index_path_for(self.path)
        tarindex.write_index(self.tmp, idx)
        record = {"name": self.path.name, "samples": self.samples, "bytes": self.tmp.stat().st_size,
                  "sha256": self.stream.digest.hexdigest(), "index_sha256": _sha256_of(idx.read_bytes())}
        if self.kind_reader is not None:
            text = shardmeta.dumps(shardmeta.build(self.kind, self.path.name, self.meta))
            write_text_atomic(text, self.path.with_name(meta_name_for(self.path.name)))
            record["meta_sha256"] = _sha256_of(text.encode())
        self.tmp.replace(self.path)
        return record

    def abort(self) -> None:
        """Drop the temp file; closing may fail again (a full disk), the unlink must still happen."""
        for close in (self.writer.close, self.stream.close):
            try:
                close()
            except Exception:
                pass
        self.tmp.unlink(missing_ok=True)


def _sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _progress_path(out_dir: Path, prefix: str) -> Path:
    return out_dir / f".fastvid-progress-{prefix}.json"


def _load_done_shards(out_dir: Path, prefix: str, fingerprint: str) -> list[dict]:
    """Complete shards of an earlier run of the same job, in order, up to the first one that is gone or changed."""
    path = _progress_path(out_dir, prefix)
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        return []
    done = []
    for record in state.get("shards", []):
        tar = out_dir / plain_file_name(record.get("name") if isinstance(record, dict) else record, str(path))
        if not tar.is_file() or tar.stat().st_size != record["bytes"]:
            break
        idx = tarindex.index_path_for(tar)
        if not idx.is_file():
            tarindex.write_index(tar, idx)
        meta = tar.with_name(meta_name_for(tar.name))
        if "meta_sha256" in record and (not meta.is_file() or _sha256_of(meta.read_bytes()) != record["meta_sha256"]):
            break  # its metadata is gone or changed: write this shard again
        done.append(record)
    return done


def _remove_leftovers(out_dir: Path, prefix: str, keep: int) -> list[str]:
    """Delete temp files of this prefix and shards numbered >= keep (from an earlier, different run).
    Only called under the lock of this prefix (`_lock_writer`), so no live process is writing them."""
    removed = []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d{{6}})\.(tar|idx|meta\.json)(\.tmp-\d+)?$")
    for path in out_dir.iterdir():
        m = pattern.match(path.name)
        if m and (m.group(3) or int(m.group(1)) >= keep):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def _lock_writer(out_dir: Path, prefix: str, num_nodes: int) -> list:
    """Locks held while writing into out_dir (keep the list alive): the whole directory for a single-node job;
    for a node of a multi-node job, the directory shared with the other nodes and its own part exclusively."""
    from fastvid.locks import lock_directory

    if num_nodes == 1:
        return [lock_directory(out_dir, "shard directory")]
    return [lock_directory(out_dir, "shard directory", shared=True),
            lock_directory(out_dir, f"node part {prefix} of shard directory", name=f".fastvid-{prefix}.lock")]


def _check_same_set(manifest_path: Path, split: str, kind: str) -> None:
    """One shard set (one split, one kind) per directory: refuse to mix, instead of clobbering its manifest."""
    try:
        existing = json.loads(manifest_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if isinstance(existing, dict) and (existing.get("split"), existing.get("kind")) != (split, kind):
        raise ValueError(f"{manifest_path.parent} already holds a {existing.get('kind')} shard set of split "
                         f"{existing.get('split')!r}; write split {split!r} ({kind}) to its own directory")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB' (binary units), for summary lines."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n} B"


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """One shard-writing job: the set it writes (kind, classes, the options it records, split, shard sizes)
    and how the work is split and run (workers, seed, node part, engine, grouping, failure handling)."""

    kind: str
    classes: Sequence[str]
    options: dict
    split: str = "train"
    max_samples: int | None = DEFAULT_MAX_SAMPLES
    max_shard_bytes: int | None = DEFAULT_MAX_SHARD_BYTES
    workers: int = 1
    seed: int = 0
    node_rank: int = 0
    num_nodes: int = 1
    strict: bool = False               # any failed input fails the job (else failures are recorded)
    desc: str = "shard"                # progress bar and summary label
    overwrite: bool = False            # replace a complete set of another job (built beside, swapped in)
    engine: Callable | None = None     # engine(encode, items, workers) -> (item, ok, fields|error) in order
    group: Callable | None = None      # group(item): items of one group stay together and in order

    def check(self) -> "ShardJob":
        if self.num_nodes < 1 or not 0 <= self.node_rank < self.num_nodes:
            raise ValueError(f"node_rank must be in [0, num_nodes): got node_rank={self.node_rank}, "
                             f"num_nodes={self.num_nodes}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")
        if self.max_shard_bytes is not None and self.max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes must be >= 1, got {self.max_shard_bytes}")
        check_split(self.split)
        return self

    @property
    def prefix(self) -> str:
        return shard_prefix(self.split, self.node_rank, self.num_nodes)

    def recorded_options(self) -> dict:
        """The manifest's options: the caller's, plus what decides how items fall into shards."""
        return {**self.options, "seed": self.seed, "max_samples": self.max_samples,
                "max_shard_bytes": self.max_shard_bytes, "num_nodes": self.num_nodes,
                **({"grouped": True} if self.group is not None else {})}


def write_shard_set(items, encode: Callable, out_dir, job: ShardJob) -> dict:
    """Write `items` as a WebDataset shard set under `out_dir` as `job` says; returns the (partial, for
    num_nodes > 1) manifest.

    `encode(item) -> {ext: value}` (a top-level function or a functools.partial of one, so worker
    processes can pickle it) returns the sample's fields; exceptions become manifest failures. The shards
    do not depend on the engine (fastvid.store.ray_engine runs the encoding on Ray).
    """
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C: the shard being written is deleted and the encoders are stopped.
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return _write_shard_set(list(items), encode, Path(out_dir), job.check())
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum, frame):
    raise SystemExit(128 + signum)


def _staging_dir(out_dir: Path) -> Path:
    """Where --overwrite builds the new set: beside OUT (hidden, so no class-folder scan picks it up)."""
    return out_dir.parent / f".{out_dir.name}.overwrite"


def _swap_in(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by staging: one atomic exchange where the OS has it (Linux renameat2), else two renames."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        AT_FDCWD, RENAME_EXCHANGE = -100, 2
        if libc.renameat2(AT_FDCWD, os.fsencode(staging), AT_FDCWD, os.fsencode(out_dir), RENAME_EXCHANGE) == 0:
            shutil.rmtree(staging)  # now the old set
            return
    except (OSError, AttributeError):
        pass
    old = out_dir.parent / f".{out_dir.name}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    out_dir.rename(old)
    staging.rename(out_dir)
    shutil.rmtree(old)


def _changes(old: dict, new: dict) -> str:
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(diff[:5]) if diff else "the inputs differ"


def _check_keys(items) -> None:
    seen = set()
    for item in items:
        check_key(item.key, item.source)
        if item.key in seen:
            raise ValueError(f"{item.source}: duplicate sample key {item.key!r}")
        seen.add(item.key)


def _node_items(items: list, job: ShardJob) -> list:
    """This node's items, in the job's deterministic order (whole groups when the job groups them)."""
    if job.group is None:
        return [items[i] for i in node_part(shuffled_order(len(items), job.seed), job.node_rank, job.num_nodes)]
    return [items[i] for i in grouped_node_part([job.group(it) for it in items], job.seed, job.node_rank, job.num_nodes)]


def _fingerprint(job: ShardJob, mine: list) -> str:
    """What makes a rerun the same job (resume) or another one (refuse, or --overwrite)."""
    return hashlib.sha256(json.dumps(
        {"kind": job.kind, "split": job.split, "classes": list(job.classes), "options": job.recorded_options(),
         "node_rank": job.node_rank, "items": [item_fingerprint(it) for it in mine]},
        sort_keys=True, default=str).encode()).hexdigest()


def _write_shard_set(items: list, encode: Callable, out_dir: Path, job: ShardJob) -> dict:
    _check_keys(items)
    locks = _lock_writer(out_dir, job.prefix, job.num_nodes)  # noqa: F841 (held until this function returns)
    manifest_path = out_dir / (partial_manifest_name(job.node_rank) if job.num_nodes > 1 else MANIFEST_NAME)
    _check_same_set(out_dir / MANIFEST_NAME, job.split, job.kind)
    mine = _node_items(items, job)
    fingerprint = _fingerprint(job, mine)
    done = _load_done_shards(out_dir, job.prefix, fingerprint)
    if not done and manifest_path.exists():
        # A complete set of another job (other options or inputs) is here: never delete it silently.
        return _replace_set(items, encode, out_dir, job, manifest_path, len(mine))
    _remove_leftovers(out_dir, job.prefix, keep=len(done))  # temp files are never taken as complete
    if not done:  # a fresh job: an old manifest here would describe shards that are being replaced
        manifest_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    records, pending_failures, written_bytes = _write_shards(
        encode, mine, out_dir, job, done, lambda recs: write_json_atomic({"fingerprint": fingerprint, "shards": recs},
                                                                          _progress_path(out_dir, job.prefix)))
    _remove_leftovers(out_dir, job.prefix, keep=len(records))
    manifest = _manifest(job, records, pending_failures)
    write_json_atomic(manifest, manifest_path)
    if job.num_nodes == 1:
        write_wids_index(out_dir, manifest)
    _summary(job, manifest, records, manifest_path, kept=len(done), seconds=time.perf_counter() - t0,
             written_bytes=written_bytes)
    _check_failures(manifest, len(mine), job.strict, manifest_path)
    return manifest


def _replace_set(items: list, encode: Callable, out_dir: Path, job: ShardJob, manifest_path: Path, num_mine: int) -> dict:
    """--overwrite: build the new set beside the complete one and swap it in when complete; else refuse."""
    try:
        old_options = json.loads(manifest_path.read_text()).get("options") or {}
    except (json.JSONDecodeError, AttributeError):
        old_options = {}
    if not job.overwrite:
        raise ValueError(f"{out_dir} holds a complete shard set made with other options or inputs "
                         f"({_changes(old_options, job.recorded_options())}); rerun with --overwrite to replace it (the "
                         "new set is built beside it and swapped in when complete), or write to another directory")
    if job.num_nodes > 1:
        raise ValueError(f"--overwrite with --num-nodes > 1: remove {out_dir} first (node parts cannot be swapped "
                         "one by one)")
    staging = _staging_dir(out_dir)
    manifest = _write_shard_set(items, encode, staging, dataclasses.replace(job, strict=False, overwrite=False))
    _swap_in(staging, out_dir)
    print(f"{job.desc}: replaced the shard set in {out_dir}", file=sys.stderr)
    _check_failures(manifest, num_mine, job.strict, manifest_path)
    return manifest


def _write_shards(encode: Callable, mine: list, out_dir: Path, job: ShardJob, done: list, save_progress):
    """Encode the items after the complete shards `done` and write them into shards (a shard closes at
    max_samples or max_shard_bytes); after each shard, `save_progress(records)`. Returns (records, failures
    after the last shard, bytes written)."""
    from tqdm import tqdm

    records = list(done)
    start = done[-1]["end"] if done else 0
    state = {"current": None, "start": start, "failures": [], "bytes": 0}
    bar = tqdm(total=len(mine), initial=start, desc=job.desc, unit="item", dynamic_ncols=True, file=sys.stderr,
               disable=None)

    def close_current(end: int):
        record = state["current"].finish()
        record.update(start=state["start"], end=end, failures=state["failures"])
        state["bytes"] += record["bytes"]
        records.append(record)
        state.update(current=None, failures=[])
        save_progress(records)

    failed_count = sum(len(r["failures"]) for r in records)
    encoded = (job.engine or _iter_encoded)(encode, mine[start:], job.workers)
    try:
        for position, (item, ok, payload) in enumerate(encoded, start):
            if not ok:
                state["failures"].append({"source": str(item.source), "error": payload})
                failed_count += 1
            else:
                size = sum(tar_member_bytes(len(v)) for v in payload.values())
                current = state["current"]
                if current is not None and job.max_shard_bytes is not None and current.bytes + size > job.max_shard_bytes:
                    close_current(position)
                if state["current"] is None:
                    state.update(start=position, current=_ShardFile(out_dir, shard_name(job.prefix, len(records)), job.kind))
                state["current"].write(item.key, payload)
                if job.max_samples is not None and state["current"].samples >= job.max_samples:
                    close_current(position + 1)
            bar.update(1)
            bar.set_postfix(shards=len(records) + (state["current"] is not None), failed=failed_count, refresh=False)
        if state["current"] is not None:
            close_current(len(mine))
    except BaseException:
        encoded.close()  # stop the encoder processes now, not when the traceback is freed
        if state["current"] is not None:
            state["current"].abort()
        raise
    finally:
        bar.close()
    return records, state["failures"], state["bytes"]


def _manifest(job: ShardJob, records: list, pending_failures: list) -> dict:
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "kind": job.kind,
        "split": job.split,
        "num_samples": sum(r["samples"] for r in records),
        "classes": list(job.classes),
        "shards": [{k: r[k] for k in SHARD_KEYS + OPTIONAL_SHARD_HASHES if k in r} for r in records],
        "failures": [f for r in records for f in r["failures"]] + pending_failures,
        "options": job.recorded_options(),
    }
    if job.num_nodes > 1:
        manifest["node_rank"] = job.node_rank
    return manifest


def _summary(job: ShardJob, manifest: dict, records: list, manifest_path: Path, *, kept: int, seconds: float,
             written_bytes: int) -> None:
    """The job's summary line on stderr, and the first failed inputs."""
    failures = manifest["failures"]
    skipped = f", {kept} complete shards kept from an earlier run" if kept else ""
    print(f"{job.desc}: {manifest['num_samples']} samples in {len(records)} shards "
          f"({human_bytes(sum(r['bytes'] for r in records))}) -> {manifest_path}; {len(failures)} failed{skipped}; "
          f"{seconds:.1f} s ({human_bytes(written_bytes / max(seconds, 1e-9))}/s written)", file=sys.stderr)
    for f in failures[:MAX_LISTED_FAILURES]:
        print(f"  failed: {f['source']}: {f['error']}", file=sys.stderr)
    if len(failures) > MAX_LISTED_FAILURES:
        print(f"  ... and {len(failures) - MAX_LISTED_FAILURES} more (see 'failures' in {manifest_path})", file=sys.stderr)


def _check_failures(manifest: dict, num_inputs: int, strict: bool, manifest_path: Path) -> None:
    failures = manifest["failures"]
    if num_inputs and manifest["num_samples"] == 0:
        first = failures[0] if failures else {"source": "?", "error": "?"}
        raise RuntimeError(f"nothing was written: all {num_inputs} inputs failed (first: {first['source']}: {first['error']})")
    if strict and failures:
        raise RuntimeError(f"--strict: {len(failures)} inputs failed (first: {failures[0]['source']}: {failures[0]['error']}); "
                           f"see 'failures' in {manifest_path}")
