"""Faults and hostile input, with real files, processes and signals: untrusted checkpoints, SIGTERM
(preemption) at a random step, kill -9 during sharding and training and the resumes after it, locked
output directories, hostile names in manifests and progress files, truncated and corrupt inputs.
The README's "Guarantees" section points at the tests here."""

from __future__ import annotations

import json
import os
import random
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


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_killing_shard_videos_stops_its_encoder_processes(shard_root, tmp_path, sig):
    import psutil

    out = tmp_path / "set"
    proc = subprocess.Popen(shard_cmd(raw_videos(shard_root), out, "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env())
    workers: list[int] = []

    def encoding():
        workers[:] = [c for c in _children(proc.pid) if "resource_tracker" not in " ".join(psutil.Process(c).cmdline())]
        return len(workers) >= 2

    wait_for(encoding, proc, "two encoder processes")
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0
    assert "Traceback" not in err, err[-3000:]
    # The workers are gone as soon as the job is: none still encodes after its parent exited.
    alive = [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
    assert not list(out.glob("*.tmp-*"))  # the shard being written was removed


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

    from fastvid.store.writer import write_shard_set

    out = tmp_path / "w"
    kw = dict(kind="video", classes=["a", "b"], options={}, max_samples=5)
    write_shard_set(make_items(), encode_item, out, **kw)
    outside = tmp_path / "outside"
    outside.mkdir()
    progress = out / ".fastvid-progress-train.json"
    state = json.loads(progress.read_text())
    (outside / "x.tar").write_bytes((out / state["shards"][0]["name"]).read_bytes())
    state["shards"][0]["name"] = "../outside/x.tar"
    progress.write_text(json.dumps(state))
    with pytest.raises(ValueError, match=r"\.fastvid-progress-train\.json: shard name '\.\./outside/x\.tar' is not a plain"):
        write_shard_set(make_items(), encode_item, out, **kw)
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
