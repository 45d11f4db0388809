"""Faults and hostile input, with real files, processes and signals: untrusted checkpoints, SIGTERM
(preemption) at a random step, kill -9 during sharding and training and the resumes after it, locked
output directories, hostile names in manifests and progress files, truncated and corrupt inputs.
The README's "Guarantees" section points at the tests here."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_cli import env, rows, tiny_args

from fastvid.train.preempt import PREEMPTED_EXIT_CODE

class _WritesAFile:
    """Unpickling this runs a shell command (what a hostile checkpoint does): it creates `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def make_evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}, "optimizer": {}, "lr_scheduler": {}, "epoch": 0,
                "x": _WritesAFile(marker)}, ckpt)
    assert ckpt.is_file() and not marker.exists()
    return marker, ckpt


def train_in_process(args, capsys) -> tuple[int, str, str]:
    """`fastvid train` in this process (the errors under test come before any training step)."""
    from fastvid.cli import main as fastvid_main

    capsys.readouterr()
    rc = fastvid_main(["train", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def start_train(args, extra_env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fastvid", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**env(), **(extra_env or {})})


def wait_for_line(proc: subprocess.Popen, prefix: str, lines: list) -> None:
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return
    raise AssertionError("process ended before printing " + prefix + ":\n" + "".join(lines)[-3000:])


def wait_for_file_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before {n} batches:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no {n} batches within {timeout} s")


# ---- 1. checkpoints never run code unless trusted --------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--resume", "--weights"])
def test_hostile_checkpoint_runs_no_code_without_trust(shard_root, tmp_path, flag, capsys):
    marker, ckpt = make_evil_checkpoint(tmp_path)
    rc, _, err = train_in_process(tiny_args(shard_root, tmp_path / "out", "--epochs", "1", flag, str(ckpt)), capsys)
    assert rc == 1
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    last = err.strip().splitlines()[-1]
    assert f"{flag} {ckpt}: refusing to unpickle it" in last and "--trust-checkpoint" in last


def test_trust_checkpoint_is_the_explicit_way_to_load_a_foreign_pickle(tmp_path):
    from fastvid.train.checkpoint import load_checkpoint

    marker, ckpt = make_evil_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    assert load_checkpoint(ckpt, trust=True)["epoch"] == 0
    assert marker.exists()  # what --trust-checkpoint means: the file's code ran


# ---- 2. preemption ----------------------------------------------------------------------------------------------

def test_sigterm_at_a_random_step_checkpoints_exits_75_and_resume_sees_each_clip_once(shard_root, tmp_path, capsys):
    """--print-freq 1000 (as quickstart): SIGTERM still stops after the current step, skips evaluation,
    writes a mid-epoch checkpoint and exits 75; the resumed run trains exactly the rest of the epoch."""
    from fastvid.store.manifest import shard_files

    keys_split = tmp_path / "split.jsonl"
    args = ("--epochs", "1", "--print-freq", "1000")
    # One uninterrupted epoch trains 2 clips of each of the 8 videos (the videos' keys, from the tar).
    import tarfile

    videos = sorted({m.name.split(".", 1)[0] for tar, _ in shard_files(shard_root / "train") for m in tarfile.open(tar)})
    epoch = [k for k in videos for _ in range(2)]
    assert len(epoch) == 16

    out = tmp_path / "b"
    stop_after = random.Random().randint(1, 6)  # of 8 steps
    proc = start_train(tiny_args(shard_root, out, *args, "--log-keys", str(keys_split)))
    wait_for_file_lines(keys_split, stop_after, proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "exiting with code 75 (preempted)" in text
    assert not (out / "metrics.jsonl").exists()  # no evaluation, no epoch row: the epoch is not finished
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    done = len(keys_split.read_text().splitlines())
    assert ckpt["resume_epoch"] == 0 and ckpt["resume_step"] == done and stop_after <= done < 8

    rc, _, err = train_in_process(tiny_args(shard_root, out, *args, "--resume", str(out / "checkpoint.pth"),
                                            "--log-keys", str(keys_split)), capsys)
    assert rc == 0, err[-3000:]
    seen = [k for line in keys_split.read_text().splitlines() for k in json.loads(line)["keys"]]
    assert sorted(seen) == sorted(epoch)  # every clip of the epoch once: none lost, none repeated
    assert [g["epoch"] for g in rows(out)] == [0] and rows(out)[0]["steps"] == 8 - done


def test_quickstart_reports_preemption_instead_of_a_summary(tmp_path):
    """quickstart passes the trainer's exit code on and writes no summary (tiny run, SIGTERM during training)."""
    out = tmp_path / "qs"
    proc = subprocess.Popen([sys.executable, "-m", "fastvid", "quickstart", "--device", "cpu", "--out", str(out),
                             "--videos-per-class", "2", "--epochs", "50", "--backend", "pyav"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    lines: list = []
    wait_for_line(proc, "[3/4]", lines)
    while not (out / "train" / ".fastvid.lock").exists():
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    text = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "training was preempted" in text and "No summary written" in text
    assert not (out / "summary.json").exists() and (out / "train" / "checkpoint.pth").exists()


def test_kill9_during_training_keeps_the_last_checkpoint_and_resume_finishes(shard_root, tmp_path, capsys):
    out, keys = tmp_path / "k9", tmp_path / "keys.jsonl"
    args = tiny_args(shard_root, out, "--epochs", "2", "--print-freq", "1000")
    proc = start_train([*args, "--log-keys", str(keys)])
    wait_for_file_lines(keys, 8 + 3, proc)  # epoch 0 (8 steps) done and checkpointed, epoch 1 under way
    proc.kill()
    proc.communicate(timeout=60)
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)  # complete, plain data
    assert ckpt["epoch"] == 0 and [g["epoch"] for g in rows(out)] == [0]
    rc, _, err = train_in_process([*args, "--resume", str(out / "checkpoint.pth")], capsys)  # no stale lock either
    assert rc == 0, err[-3000:]
    assert [g["epoch"] for g in rows(out)] == [0, 1]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pth") == ["checkpoint.pth", "model_0.pth", "model_1.pth"]


# ---- 9. output directory locks ---------------------------------------------------------------------------------

def test_second_training_into_the_same_output_dir_refuses_and_kill9_leaves_no_stale_lock(shard_root, tmp_path, capsys):
    out = tmp_path / "locked"
    first = start_train(tiny_args(shard_root, out, "--epochs", "500"))
    lines: list = []
    wait_for_line(first, "optimizer:", lines)
    rc, _, err = train_in_process(tiny_args(shard_root, out, "--epochs", "1"), capsys)
    assert rc == 1
    assert f"--output-dir {out} is in use by pid {first.pid}" in err.strip().splitlines()[-1]
    first.kill()  # SIGKILL: the kernel releases the lock
    first.communicate(timeout=60)
    from fastvid.locks import lock_directory

    lock_directory(out).close()  # no stale lock


def test_a_job_refused_while_the_holder_writes_its_record_still_names_it(tmp_path):
    """Two jobs started together: the loser can find the lock taken and its record not yet written; it waits
    for the record instead of naming "another process"."""
    from fastvid.locks import LOCK_NAME, DirectoryInUse, lock_directory

    out = tmp_path / "racy"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time\n"
        f"f = open({str(out / LOCK_NAME)!r}, 'a+'); fcntl.flock(f.fileno(), fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(0.3)\n"
        "f.write('pid 4242 (fastvid shard videos)\\n'); f.flush(); time.sleep(30)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryInUse, match=r"is in use by pid 4242 \(fastvid shard videos\)"):
            lock_directory(out, "shard directory")
    finally:
        holder.kill()
        holder.communicate(timeout=60)


# ---- sharding: kill -9, reruns, --overwrite, encoder processes -------------------------------------------------

def shard_cmd(src: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "fastvid", "shard", "videos", str(src), str(out), "--codec", "vp9", "--max-samples", "1",
            "--split", "train", *extra]


def raw_videos(shard_root: Path) -> Path:
    return shard_root.parent / "raw_train"  # 8 libx264 clips in 2 class folders, made by the shard_root fixture


def wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def tar_stats(out: Path) -> dict:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("*.tar"))}


def test_kill9_during_sharding_and_during_an_overwrite_keeps_complete_shards(shard_root, tmp_path, capsys):
    from fastvid.cli import main as fastvid_main

    def shard(*extra):  # in this process: only the killed runs need a process of their own
        capsys.readouterr()
        rc = fastvid_main(shard_cmd(src, out, "--workers", "1", *extra)[3:])
        return rc, capsys.readouterr().err

    src, out = raw_videos(shard_root), tmp_path / "set"
    progress = out / ".fastvid-progress-train.json"
    proc = subprocess.Popen(shard_cmd(src, out, "--workers", "1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    wait_for(lambda: progress.exists() and len(json.loads(progress.read_text())["shards"]) >= 2, proc, "two complete shards")
    proc.kill()
    proc.wait()
    kept = {name: stat for name, stat in tar_stats(out).items() if name in [r["name"] for r in json.loads(progress.read_text())["shards"]]}
    assert len(kept) >= 2 and not (out / "manifest.json").exists()
    rc, err = shard()
    assert rc == 0, err[-3000:]
    assert "complete shards kept from an earlier run" in err
    done = tar_stats(out)
    assert len(done) == 8 and all(done[name] == stat for name, stat in kept.items())  # kept shards not rewritten
    assert not list(out.glob("*.tmp-*"))

    # another option: refused, the complete set untouched
    rc, err = shard("--crf", "40")
    assert rc == 1 and "crf None -> 40" in err and "--overwrite" in err
    assert tar_stats(out) == done
    # --overwrite killed half way: the old set still verifies
    staging = out.parent / ".set.overwrite"
    proc = subprocess.Popen(shard_cmd(src, out, "--workers", "1", "--crf", "40", "--overwrite"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env())
    wait_for(lambda: len(list(staging.glob("*.tar"))) >= 2, proc, "two staged shards")
    proc.kill()
    proc.wait()
    assert tar_stats(out) == done
    assert fastvid_main(["inspect", str(out), "--verify"]) == 0
    rc, err = shard("--crf", "40", "--overwrite")
    assert rc == 0, err[-3000:]
    assert json.loads((out / "manifest.json").read_text())["options"]["crf"] == 40 and not staging.exists()


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _interrupt_shard_videos_while_encoding(shard_root: Path, out: Path, sig: int, to_group: bool) -> None:
    """Start `fastvid shard videos --workers 2`, send `sig` once two encoders exist (to the job alone, or to its
    whole process group as a terminal's Ctrl-C or a scheduler does); check it stops cleanly and leaves nothing."""
    import psutil

    # Eight links to each clip (64 encodes, ~2.5 s; the 8 clips alone take 0.3 s): the signal cannot come after the
    # job's last encode.
    src = out.parent / "many"
    for clip in raw_videos(shard_root).glob("*/*.mp4"):
        (src / clip.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(8):
            (src / clip.parent.name / f"c{k}_{clip.name}").symlink_to(clip)
    # SIGINT at its default in the job, as a terminal leaves it: a test run started in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and an ignored signal stays ignored across exec.
    proc = subprocess.Popen(shard_cmd(src, out, "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env(), start_new_session=to_group,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    workers: list[int] = []

    def encoding():
        workers[:] = [c for c in _children(proc.pid) if "resource_tracker" not in " ".join(psutil.Process(c).cmdline())]
        return len(workers) >= 2

    wait_for(encoding, proc, "two encoder processes")
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    # The workers are gone as soon as the job is: none still encodes after its parent exited.
    alive = [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not list(out.glob("*.tmp-*"))  # the shard being written was removed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_shard_videos_stops_its_encoder_processes(shard_root, tmp_path, sig):
    _interrupt_shard_videos_while_encoding(shard_root, tmp_path / "set", sig, to_group=False)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_to_the_process_group_of_shard_videos_leave_the_decision_to_it(shard_root, tmp_path, sig):
    """Encoders ignore SIGINT/SIGTERM (also while they start): the job stops them, no worker prints a traceback."""
    _interrupt_shard_videos_while_encoding(shard_root, tmp_path / "set", sig, to_group=True)


@pytest.fixture(scope="module")
def longer_raw_videos(tmp_path_factory) -> Path:
    """24 clips of 48 frames: enough encoding (seconds) that two jobs started together overlap."""
    from fastvid.video.synth import make_motion_dataset

    root = tmp_path_factory.mktemp("raw_longer")
    make_motion_dataset(root, videos_per_class=12, classes=["move_up", "move_down"], num_frames=48, height=96, width=128,
                        fps=15, codec="libx264", seed=3)
    return root


def _tar_containers(out: Path) -> set[str]:
    import tarfile

    return {m.name.rsplit(".", 1)[1] for tar in out.glob("*.tar") for m in tarfile.open(tar) if m.name.endswith((".webm", ".mp4"))}


@pytest.mark.parametrize("codecs", [("vp9", "h264"), ("vp9", "vp9")], ids=["other_codec", "same_command"])
def test_two_shard_jobs_into_one_directory_one_refuses_naming_the_holder(longer_raw_videos, tmp_path, codecs):
    """Two `fastvid shard videos` started together into one empty directory: one writes the set, the other
    refuses with one line naming the directory and the holder's pid; the manifest describes the tars."""
    out = tmp_path / "set"
    procs = [subprocess.Popen(shard_cmd(longer_raw_videos, out, "--workers", "1", "--max-samples", "4", "--codec", codec),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env()) for codec in codecs]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 1], errs
    winner = 0 if procs[0].returncode == 0 else 1
    loser_err = errs[1 - winner]
    assert "Traceback" not in loser_err and len(loser_err.strip().splitlines()) == 1, loser_err
    assert loser_err.startswith(f"fastvid shard: error: shard directory {out} is in use by pid {procs[winner].pid} "), loser_err
    manifest = json.loads((out / "manifest.json").read_text())
    codec = codecs[winner]
    assert manifest["options"]["codec"] == codec and manifest["num_samples"] == 24 and manifest["failures"] == []
    assert _tar_containers(out) == {"webm" if codec == "vp9" else "mp4"}
    assert not list(out.glob("*.tmp-*"))
    from fastvid.cli import main as fastvid_main

    assert fastvid_main(["inspect", str(out), "--verify"]) == 0


def test_node_writers_share_a_directory_but_not_a_part(longer_raw_videos, tmp_path):
    """Multi-node: the nodes of one job write into one directory at once; a second writer of the same node part,
    or a single-node job, refuses while they run."""
    from fastvid.locks import DirectoryInUse, lock_directory
    from fastvid.store.writer import _lock_writer

    out = tmp_path / "set"
    held = _lock_writer(out, "train-n0", 2)
    held += _lock_writer(out, "train-n1", 2)  # node 1 beside node 0
    with pytest.raises(DirectoryInUse, match=f"node part train-n0 of shard directory {out} is in use by pid {os.getpid()}"):
        _lock_writer(out, "train-n0", 2)  # flock locks belong to open files: a second open conflicts in one process too
    r = subprocess.run(shard_cmd(longer_raw_videos, out), capture_output=True, text=True, env=env())
    assert r.returncode == 1 and f"shard directory {out} is in use by pid {os.getpid()}" in r.stderr, r.stderr
    for f in held:
        f.close()
    lock_directory(out).close()  # released: a single-node job may now take the directory


def test_full_disk_leaves_no_temp_files_and_names_the_path(shard_root, tmp_path):
    if os.geteuid() != 0 or sys.platform != "linux":
        pytest.skip("needs root on Linux to mount a small tmpfs")
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(disk)], capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        out = disk / "set"
        r = subprocess.run(shard_cmd(raw_videos(shard_root), out, "--workers", "1", "--max-samples", "4"),
                           capture_output=True, text=True, env=env(), timeout=300)
        assert r.returncode == 1
        last = r.stderr.strip().splitlines()[-1]
        assert "No space left on device" in last and str(out) in last and "Traceback" not in r.stderr
        left = sorted(p.name for p in out.iterdir())
        assert not [n for n in left if ".tmp-" in n], left
        from fastvid.train.checkpoint import atomic_save

        with pytest.raises(RuntimeError, match=f"could not write {disk / 'ckpt'}"):
            atomic_save({"model": {"w": torch.zeros(100_000)}}, disk / "ckpt" / "checkpoint.pth")
        assert list((disk / "ckpt").iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_header_only_dat_is_a_failure_and_strict_fails(tmp_path, capsys):
    import numpy as np
    from test_events_io import random_events, write_gen1_dat
    from test_events_shard import write_boxes

    src = tmp_path / "gen1"
    src.mkdir()
    ts, xs, ys, ps = random_events(500, 600_000, 1)
    write_gen1_dat(src / "good_td.dat", ts, xs, ys, ps)
    write_boxes(src / "good_bbox.npy", np.array([10_000, 300_000]), 1)
    write_gen1_dat(src / "empty_td.dat", [], [], [], [])
    write_boxes(src / "empty_bbox.npy", np.array([], dtype=np.uint64), 2)
    from fastvid.cli import main as fastvid_main

    assert fastvid_main(["shard", "events", str(src), str(tmp_path / "ev"), "--segment-ms", "250"]) == 0
    failures = json.loads((tmp_path / "ev" / "manifest.json").read_text())["failures"]
    assert [f["source"] for f in failures] == [str(src / "empty_td.dat")] and "no events" in failures[0]["error"]
    assert f"failed: {src / 'empty_td.dat'}" in capsys.readouterr().err
    assert fastvid_main(["shard", "events", str(src), str(tmp_path / "ev2"), "--segment-ms", "250", "--strict"]) == 1
    assert "--strict: 1 inputs failed" in capsys.readouterr().err


# ---- hostile names ----------------------------------------------------------------------------------------------

@pytest.fixture
def small_set(shard_root, tmp_path):
    import shutil

    out = tmp_path / "sets" / "train"
    shutil.copytree(shard_root / "train", out)
    return out


def _rename_first_shard(set_dir: Path, name: str) -> None:
    manifest = json.loads((set_dir / "manifest.json").read_text())
    manifest["shards"][0]["name"] = name
    (set_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.tar", "sub/x.tar", "a\x00.tar", ".."])
def test_hostile_shard_names_in_a_manifest_are_refused_everywhere(small_set, name):
    import shutil

    from conftest import video_loader

    shutil.copy(small_set / "train-000000.tar", small_set.parent / "outside.tar")
    _rename_first_shard(small_set, name)
    r = subprocess.run([sys.executable, "-m", "fastvid", "inspect", str(small_set), "--verify"], capture_output=True,
                       text=True, env=env())
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{small_set / 'manifest.json'}: shard name {name!r} is not a plain file name" in r.stderr
    with pytest.raises(ValueError, match="is not a plain file name"):
        video_loader(str(small_set), batch_size=2, clip_len=4, backend="pyav", device="cpu", num_workers=0)


def test_hostile_names_in_event_manifests_and_progress_files(small_set, tmp_path):
    from fastvid.events.reading import index_segments

    manifest = json.loads((small_set / "manifest.json").read_text())
    manifest["kind"] = "events"
    manifest["shards"][0]["name"] = "../../etc/passwd"
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="is not a plain file name"):
        index_segments(str(ev))

    # a resume progress file naming a tar outside the set: refused, nothing written next to that tar
    from test_shard_writer import encode_item, make_items

    from fastvid.store.writer import ShardJob, write_shard_set

    out = tmp_path / "w"
    job = ShardJob(kind="video", classes=["a", "b"], options={}, max_samples=5)
    write_shard_set(make_items(), encode_item, out, job)
    outside = tmp_path / "outside"
    outside.mkdir()
    progress = out / ".fastvid-progress-train.json"
    state = json.loads(progress.read_text())
    (outside / "x.tar").write_bytes((out / state["shards"][0]["name"]).read_bytes())
    state["shards"][0]["name"] = "../outside/x.tar"
    progress.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"\.fastvid-progress-train\.json: shard name '\.\./outside/x\.tar' is not a plain"):
        write_shard_set(make_items(), encode_item, out, job)
    assert sorted(p.name for p in outside.iterdir()) == ["x.tar"]


# ---- truncated and corrupt inputs ------------------------------------------------------------------------------

def _zero_videos(set_dir: Path) -> None:
    """Overwrite every video member's bytes with zeros in place (the tar and its index stay valid)."""
    import tarfile

    for tar_path in set_dir.glob("*.tar"):
        with tarfile.open(tar_path) as tar:
            spans = [(m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith((".webm", ".mp4"))]
        with open(tar_path, "r+b") as f:
            for offset, size in spans:
                f.seek(offset)
                f.write(bytes(size))


def test_dali_undecodable_shard_raises_its_own_error(small_set):
    pytest.importorskip("nvidia.dali")
    from conftest import video_loader

    _zero_videos(small_set)
    loader = video_loader(str(small_set), batch_size=2, clip_len=4, backend="dali", device="cpu", num_threads=1)
    with pytest.raises(RuntimeError, match=rf"no sample could be decoded from {small_set}.*8 samples failed; last: '\w+': {small_set}/train-000000.tar"):
        for _ in loader:
            pass


# ---- smaller items: one clear error each -------------------------------------------------------------------------

def test_training_mistakes_are_one_clear_line_each(shard_root, tmp_path, capsys):
    ckpt = tmp_path / "mc3.pth"
    torch.save({"model": {}, "optimizer": {}, "lr_scheduler": {}, "epoch": 0, "args": {"model": "mc3_18"}}, ckpt)
    cases = [
        (("--resume", str(ckpt)), f"--resume {ckpt}: this checkpoint is mc3_18, not r3d_18"),
        (("--model-kwarg", "nonsense=1"), "model 'r3d_18' does not accept the options ['nonsense', 'width']"),
        (("--model-kwarg", "width=[1"), "--model-kwarg: 'width=[1': VALUE is not a YAML value"),
        # (by default the tail is one smaller batch, as torchvision's; dropping it leaves no batch of 100 here)
        (("-b", "100", "--last-batch", "drop"), "use a smaller batch size (--batch-size)"),
    ]
    for extra, message in cases:
        try:
            rc, _, err = train_in_process(tiny_args(shard_root, tmp_path / "o", "--epochs", "1", *extra), capsys)
        except SystemExit as exc:  # argparse's usage error
            rc, err = exc.code, capsys.readouterr().err
        assert rc in (1, 2), err[-2000:]
        assert message in err.strip().splitlines()[-1], err[-2000:]
        assert "drop_last" not in err
    # a clip longer than every video: one clear error by default (torchvision drops such videos) ...
    long_args = ("--epochs", "1", "--max-steps-per-epoch", "1", "--clip-len", "12", "--frame-stride", "2", "--eval-every", "5")
    rc, out, err = train_in_process(tiny_args(shard_root, tmp_path / "long0", *long_args), capsys)
    assert rc == 1 and "no video holds a clip of 12 frames" in err.strip().splitlines()[-1], err[-2000:]
    # ... and with --short-videos pad: trained (padded), but said so
    rc, out, err = train_in_process(tiny_args(shard_root, tmp_path / "long", *long_args, "--short-videos", "pad"), capsys)
    assert rc == 0, err[-2000:]
    assert "spans more frames than any sampled video" in out and "(at most 16)" in out


def test_resuming_a_checkpoint_of_another_model_is_one_line_naming_it(shard_root, tmp_path):
    """`--resume` of weights that do not fit: one line on stderr naming the checkpoint and summing up the mismatch
    (before: load_state_dict's dump, 102 lines for another --model-width, 8 KB for a video checkpoint given to
    train-events), through both trainers' command lines."""
    from fastvid.events.detect.synth import CLASSES, make_moving_boxes_gen1
    from fastvid.events.writing import shard_events

    out = tmp_path / "w8"
    quick = ("--epochs", "1", "--max-steps-per-epoch", "1")
    r = subprocess.run([sys.executable, "-m", "fastvid", "train", *tiny_args(shard_root, out, *quick)], capture_output=True,
                       text=True, timeout=300, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = out / "checkpoint.pth"

    events = tmp_path / "events"
    make_moving_boxes_gen1(events / "src" / "train", 2, duration_us=600_000, seed=1)
    for split in ("train", "val"):
        shard_events(events / "src" / "train", events / "shards" / split, segment_ms=500, split=split, classes=list(CLASSES))
    runs = {
        "train": ["train", *tiny_args(shard_root, tmp_path / "w16", *quick, "--model-width", "16", "--resume", str(ckpt))],
        "train-events": ["train-events", "--data-path", str(events / "shards"), "--output-dir", str(tmp_path / "det"),
                         "--device", "cpu", "--model-width", "8", "--workers", "0", "--epochs", "1", "--resume", str(ckpt)],
    }
    expected = {"train": rf"{re.escape(str(ckpt))}: does not fit model r3d_18 \(width 16\): \d+ tensors differ in shape, e.g. stem.0.weight "
                         r"\[8,3,3,7,7\] in the file vs \[16,3,3,7,7\] in the model; 0 missing, 0 unexpected",
                # the trainer names the task mismatch before any weight is compared
                "train-events": rf"--resume {re.escape(str(ckpt))}: this checkpoint is r3d_18, a classification model; "
                                r"fastvid train-events trains detection models"}
    for command, argv in runs.items():
        r = subprocess.run([sys.executable, "-m", "fastvid", *argv], capture_output=True, text=True, timeout=300, env=env())
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
        assert len(lines[0]) < 300 and re.fullmatch(rf"fastvid {command}: error: {expected[command]}.*", lines[0]), lines[0]


def test_bad_box_timestamp_names_the_label_file(tmp_path):
    import numpy as np
    from test_events_io import random_events, write_gen1_dat
    from test_events_shard import write_boxes

    from fastvid.events.writing import list_segments

    ts, xs, ys, ps = random_events(300, 600_000, 1)
    write_gen1_dat(tmp_path / "r_td.dat", ts, xs, ys, ps)
    write_boxes(tmp_path / "r_bbox.npy", np.array([10_000, 2**63 + 5], dtype=np.uint64), 1)
    (item,) = list_segments(tmp_path, 500)
    assert item.error.startswith(f"{tmp_path / 'r_bbox.npy'}: box timestamp")


def test_rerun_webm_shards_are_byte_identical(shard_root, tmp_path):
    src = raw_videos(shard_root)
    for codec in ("vp9",):  # h264 (mp4) was already deterministic; WebM had random track UIDs
        digests = []
        for run in ("a", "b"):
            out = tmp_path / f"{codec}_{run}"
            from fastvid.cli import main as fastvid_main

            assert fastvid_main(shard_cmd(src, out, "--workers", "1", "--max-samples", "8", "--codec", codec)[3:]) == 0
            digests.append([s["sha256"] for s in json.loads((out / "manifest.json").read_text())["shards"]])
        assert digests[0] == digests[1], codec


def _truncate(path: Path, keep: float = 0.5) -> Path:
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))
    return path


@pytest.mark.parametrize("kind", ["manifest", "tar", "idx", "checkpoint"])
def test_truncated_inputs_of_training_are_one_clear_error_naming_the_file(small_set, tmp_path, capsys, kind):
    from fastvid.cli import main as fastvid_main

    import shutil

    shutil.copytree(small_set, small_set.parent / "val")
    args = ["train", *tiny_args(small_set.parent, tmp_path / "o", "--epochs", "1")]
    if kind == "checkpoint":
        victim = tmp_path / "c.pth"
        torch.save({"model": {"w": torch.zeros(1000)}, "optimizer": {}, "lr_scheduler": {}, "epoch": 0}, victim)
        args += ["--resume", str(victim)]
    else:
        victim = {"manifest": small_set / "manifest.json", "tar": small_set / "train-000000.tar",
                  "idx": small_set / "train-000000.idx"}[kind]
    _truncate(victim)
    assert fastvid_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fastvid train: error: ") and str(victim.name) in err, err
    if kind in ("manifest", "tar"):
        assert fastvid_main(["inspect", str(small_set), "--verify"]) == 1
        assert victim.name in "".join(capsys.readouterr())


def test_truncated_sources_become_failures_naming_them(shard_root, tmp_path):
    import shutil

    import numpy as np
    from test_events_io import random_events, write_gen1_dat
    from test_events_shard import write_boxes

    from fastvid.cli import main as fastvid_main

    src = tmp_path / "videos"
    shutil.copytree(raw_videos(shard_root), src)
    victim = _truncate(sorted(src.glob("*/*.mp4"))[0], 0.3)
    out = tmp_path / "v"
    assert fastvid_main(["shard", "videos", str(src), str(out), "--codec", "vp9", "--workers", "1"]) == 0
    failures = json.loads((out / "manifest.json").read_text())["failures"]
    assert [f["source"] for f in failures] == [victim.relative_to(src).as_posix()]

    ev = tmp_path / "gen1"
    ev.mkdir()
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        ts, xs, ys, ps = random_events(400, 600_000, seed)
        write_gen1_dat(ev / f"{name}_td.dat", ts, xs, ys, ps)
        write_boxes(ev / f"{name}_bbox.npy", np.array([10_000, 300_000]), seed)
    _truncate(ev / "b_td.dat", 0.77)
    _truncate(ev / "c_bbox.npy", 0.5)
    assert fastvid_main(["shard", "events", str(ev), str(tmp_path / "e"), "--segment-ms", "250"]) == 0
    failures = json.loads((tmp_path / "e" / "manifest.json").read_text())["failures"]
    assert sorted(f["source"] for f in failures) == [str(ev / "b_td.dat"), str(ev / "c_td.dat")]
    assert any(str(ev / "c_bbox.npy") in f["error"] for f in failures)


# ---- hostile sample metadata ---------------------------------------------------------------------------------

def _edit_sample_json(set_dir: Path, edits: dict[str, str]) -> None:
    """Rewrite the json of samples {key: raw JSON text of the new json} in a real shard set: the tar is rebuilt
    in the same member order, its DALI index rewritten, the manifest's size and sha256 updated."""
    import hashlib
    import io
    import tarfile

    from fastvid.store import tarindex

    manifest = json.loads((set_dir / "manifest.json").read_text())
    for record in manifest["shards"]:
        tar_path = set_dir / record["name"]
        buf = io.BytesIO()
        with tarfile.open(tar_path) as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as dst:
            for member in src.getmembers():
                data = src.extractfile(member).read()
                key, ext = member.name.split(".", 1)
                if ext == "json" and key in edits:
                    data = edits[key].encode()
                    member.size = len(data)
                dst.addfile(member, io.BytesIO(data))
        tar_path.write_bytes(buf.getvalue())
        tarindex.write_index(tar_path)
        record["bytes"], record["sha256"] = tar_path.stat().st_size, hashlib.sha256(buf.getvalue()).hexdigest()
    (set_dir / "manifest.json").write_text(json.dumps(manifest))


# Hostile values of a sample's json (JSON text: Python's json reads Infinity and NaN) and the field each breaks.
HOSTILE_METADATA = [("num_frames", "3e9"), ("num_frames", "Infinity"), ("fps", "Infinity"), ("width", "100000")]


def test_hostile_sample_metadata_is_a_bad_sample_naming_the_field(shard_root, tmp_path):
    """`fastvid train` over a real set whose sample jsons claim 3e9 frames (22 GiB of frame indices before), an
    infinite frame count or rate (an OverflowError traceback before) or a 100000-pixel side: each such sample is
    skipped, counted and logged with its key and the field; nothing is allocated in proportion to the claim (the
    run has a 6 GiB address-space limit)."""
    import resource
    import shutil
    import tarfile

    data = tmp_path / "data"
    shutil.copytree(shard_root / "val", data / "val")
    shutil.copytree(shard_root / "train", data / "train")
    tar = next((data / "train").glob("*.tar"))
    with tarfile.open(tar) as t:
        jsons = {m.name.split(".", 1)[0]: json.loads(t.extractfile(m).read()) for m in t.getmembers() if m.name.endswith(".json")}
    edits = {}
    for (field, value), key in zip(HOSTILE_METADATA, sorted(jsons)):
        text = json.dumps(jsons[key])
        edits[key] = text.replace(f'"{field}": {json.dumps(jsons[key][field])}', f'"{field}": {value}')
        assert edits[key] != text
    _edit_sample_json(data / "train", edits)

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "fastvid", "train", *tiny_args(data, out, "--epochs", "1")], capture_output=True,
                       text=True, timeout=300, env=env(), preexec_fn=limit_memory)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    for (field, value), key in zip(HOSTILE_METADATA, sorted(jsons)):
        assert re.search(rf"sample {key} failed to decode and was skipped: .*{tar.name}: ValueError: sample '{key}': "
                         rf"json field {field} is ", r.stderr), (key, field, r.stderr[-3000:])
    assert rows(out)[0]["decode_failures"] >= len(HOSTILE_METADATA)


@pytest.mark.parametrize("field,value", [("num_frames", 1e8), ("num_frames", float("nan")), ("num_frames", -1),
                                         ("num_frames", 2.5), ("num_frames", True), ("height", 0), ("width", 16385),
                                         ("height", "tall"), ("fps", 0), ("fps", -25.0), ("fps", float("inf")),
                                         ("fps", "fast")])
def test_metadata_out_of_bounds_is_a_value_error_naming_sample_and_field(field, value):
    from fastvid.video.plan import metadata_fields

    meta = {"num_frames": 16, "height": 48, "width": 64, "fps": 15.0, field: value}
    with pytest.raises(ValueError, match=rf"^sample 'clip_7': json field {field} is "):
        metadata_fields(meta, "clip_7")
    assert metadata_fields({"num_frames": 16.0, "height": 48, "width": 64, "fps": None}, "k") == (16, None, 48, 64)


def test_a_slow_frame_rate_claim_cannot_blow_up_the_resampled_grid():
    """fps 1e-6 resampled to 15 fps would be 1.5e14 frames: refused (the sample is bad), not allocated."""
    from fastvid.video import sampling

    with pytest.raises(ValueError, match="more than 10000000"):
        sampling.num_grid_clips(10, clip_len=4, fps=1e-6, frame_rate=15)
    # A clip's frames are computed for the rows asked for, whatever the video's length.
    rows = sampling.clip_rows(sampling.MAX_FRAMES, [0, 4_999_000], clip_len=4, frame_stride=2, fps=30, frame_rate=15)
    assert rows.tolist() == [[0, 4, 8, 12], [9_998_000, 9_998_004, 9_998_008, 9_998_012]]


# ---- preemption as schedulers send it ----------------------------------------------------------------------------

def test_sigterm_to_the_process_group_with_decode_workers_checkpoints_exits_75_and_resume_finishes(shard_root, tmp_path,
                                                                                                   capsys):
    """SIGTERM to the whole process group (`timeout`, Slurm's job-step signal, many launchers) reaches the PyAV
    decode workers too: they ignore it, so the trainer still stops after the step, checkpoints and exits 75
    (before: "DataLoader worker (pid ...) is killed by signal: Terminated", exit 1, no checkpoint)."""
    import psutil

    out, keys = tmp_path / "pg", tmp_path / "keys.jsonl"
    args = tiny_args(shard_root, out, "--epochs", "1", "--print-freq", "1000")
    args[args.index("-j") + 1] = "2"
    proc = subprocess.Popen([sys.executable, "-m", "fastvid", "train", *args, "--log-keys", str(keys)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env(), start_new_session=True)
    wait_for_file_lines(keys, 2, proc)
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2  # the decode workers are in the group the signal goes to
    os.killpg(proc.pid, signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "exiting with code 75 (preempted)" in text and "Traceback" not in text
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    done = ckpt["resume_step"]
    assert ckpt["resume_epoch"] == 0 and 2 <= done < 8
    psutil.wait_procs(workers, timeout=30)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]  # none outlives the job

    rc, _, err = train_in_process([*args, "--resume", str(out / "checkpoint.pth")], capsys)
    assert rc == 0, err[-3000:]
    assert [g["epoch"] for g in rows(out)] == [0] and rows(out)[0]["steps"] == 8 - done


# ---- decode workers and the user's script --------------------------------------------------------------------

UNGUARDED_SCRIPT = """\
import os, sys
from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader

with open(os.environ["SCRIPT_RUNS"], "a") as f:  # one line each time this body runs
    f.write(f"{os.getpid()}\\n")
data, first = sys.argv[1], sys.argv[2]
kw = dict(augmentation=Augmentation(crop_size=(32, 32), resize_size=(36, 48)), output=Output(device="cpu"), seed=0)
if first == "dali":
    print("dali clips", sum(len(b["key"]) for b in VideoLoader(data, 2, ClipSampling(4), execution=Execution("dali"), **kw)))
pyav = VideoLoader(data, 2, ClipSampling(4), execution=Execution("pyav", num_workers=2), **kw)  # never closed: the interpreter's exit stops it
print("pyav clips", sum(len(b["key"]) for b in pyav))
"""


@pytest.mark.parametrize("first", ["dali", "pyav"])
def test_a_script_without_main_guard_runs_once_with_pyav_workers(shard_root, tmp_path, first):
    """A user's script without `if __name__ == "__main__":`: after DALI ran, the PyAV workers start from a fork
    server, and they must not import the script again (before, each did and died: "DataLoader worker exited
    unexpectedly"). The script leaves its loader open: its exit must not wait on the workers either."""
    if first == "dali":
        pytest.importorskip("nvidia.dali")
    script, runs = tmp_path / "train_script.py", tmp_path / "runs.txt"
    script.write_text(UNGUARDED_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(shard_root / "train"), first], capture_output=True, text=True,
                       timeout=300, env={**env(), "SCRIPT_RUNS": str(runs)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pyav clips 8" in r.stdout and ("dali clips 8" in r.stdout) == (first == "dali")
    assert len(runs.read_text().splitlines()) == 1  # the script's body ran in this process only


SIGTERM_AFTER_DALI_SCRIPT = """\
import signal, sys, time
from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader


def main():
    stop = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))  # as the trainer does: note it, go on
    kw = dict(augmentation=Augmentation(crop_size=(32, 32), resize_size=(36, 48)), output=Output(device="cpu"), seed=0)
    loader = VideoLoader(sys.argv[1], 2, ClipSampling(4), execution=Execution("dali"), **kw)
    print("dali clips", sum(len(b["key"]) for b in loader), flush=True)
    seen = 0
    for batch in VideoLoader(sys.argv[1], 2, ClipSampling(4), execution=Execution("pyav", num_workers=2), **kw):
        if not seen:
            print("ready", flush=True)
            while not stop:
                time.sleep(0.05)
        seen += len(batch["key"])
    print("pyav clips", seen, "after SIGTERM", bool(stop), flush=True)


if __name__ == "__main__":
    main()
"""


def test_sigterm_to_the_group_spares_the_fork_server_and_its_decode_workers(shard_root, tmp_path):
    """After DALI ran, the PyAV workers come from a fork server, which is in the process group as well: a SIGTERM
    to the group kills neither the server nor the workers (before: "DataLoader worker ... exited unexpectedly")."""
    pytest.importorskip("nvidia.dali")
    script = tmp_path / "sigterm_script.py"
    script.write_text(SIGTERM_AFTER_DALI_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(shard_root / "train")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env(), cwd=tmp_path, start_new_session=True)
    lines: list = []
    wait_for_line(proc, "ready", lines)
    os.killpg(proc.pid, signal.SIGTERM)
    text = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, text[-3000:]
    assert "pyav clips 8 after SIGTERM True" in text
