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

from test_train_cli import env, rows, run_train, shard_root, tiny_args  # noqa: F401  (shard_root: fixture)

from fastvid.train.preempt import PREEMPTED_EXIT_CODE

EVIL = """
import os, sys, torch
class Evil:
    def __reduce__(self):
        return (os.system, ("touch " + sys.argv[1],))
ckpt = {"model": {"fc.weight": torch.zeros(2, 2)}, "optimizer": {}, "lr_scheduler": {}, "epoch": 0, "x": Evil()}
torch.save(ckpt, sys.argv[2])
"""


def make_evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker, ckpt = tmp_path / "pwned", tmp_path / "evil.pth"
    subprocess.run([sys.executable, "-c", EVIL, str(marker), str(ckpt)], check=True)
    assert ckpt.is_file() and not marker.exists()
    return marker, ckpt


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
def test_hostile_checkpoint_runs_no_code_without_trust(shard_root, tmp_path, flag):
    marker, ckpt = make_evil_checkpoint(tmp_path)
    r = run_train(tiny_args(shard_root, tmp_path / "out", "--epochs", "1", flag, str(ckpt)))
    assert r.returncode == 1
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert f"{flag} {ckpt}: refusing to unpickle it" in err[-1] and "--trust-checkpoint" in err[-1]


def test_trust_checkpoint_is_the_explicit_way_to_load_a_foreign_pickle(tmp_path):
    from fastvid.train.checkpoint import load_checkpoint

    marker, ckpt = make_evil_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="--trust-checkpoint"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    assert load_checkpoint(ckpt, trust=True)["epoch"] == 0
    assert marker.exists()  # what --trust-checkpoint means: the file's code ran


# ---- 2. preemption ----------------------------------------------------------------------------------------------

def test_sigterm_at_a_random_step_checkpoints_exits_75_and_resume_sees_each_clip_once(shard_root, tmp_path):
    """--print-freq 1000 (as quickstart): SIGTERM still stops after the current step, skips evaluation,
    writes a mid-epoch checkpoint and exits 75; the resumed run trains exactly the rest of the epoch."""
    keys_straight, keys_split = tmp_path / "straight.jsonl", tmp_path / "split.jsonl"
    args = ("--epochs", "1", "--print-freq", "1000")
    r = subprocess.run([sys.executable, "-m", "fastvid", "train", *tiny_args(shard_root, tmp_path / "a", *args)],
                       capture_output=True, text=True, env={**env(), "FASTVID_DEBUG_KEYS": str(keys_straight)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    epoch = [k for line in keys_straight.read_text().splitlines() for k in json.loads(line)["keys"]]
    assert len(epoch) == 16  # 8 videos x 2 clips

    out = tmp_path / "b"
    stop_after = random.Random().randint(1, 6)  # of 8 steps
    proc = start_train(tiny_args(shard_root, out, *args), {"FASTVID_DEBUG_KEYS": str(keys_split)})
    wait_for_file_lines(keys_split, stop_after, proc)
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == PREEMPTED_EXIT_CODE, text[-3000:]
    assert "exiting with code 75 (preempted)" in text
    assert not (out / "metrics.jsonl").exists()  # no evaluation, no epoch row: the epoch is not finished
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    done = len(keys_split.read_text().splitlines())
    assert ckpt["resume_epoch"] == 0 and ckpt["resume_step"] == done and stop_after <= done < 8

    r = subprocess.run([sys.executable, "-m", "fastvid", "train",
                        *tiny_args(shard_root, out, *args, "--resume", str(out / "checkpoint.pth"))],
                       capture_output=True, text=True, env={**env(), "FASTVID_DEBUG_KEYS": str(keys_split)}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
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


# ---- 9. output directory locks ---------------------------------------------------------------------------------

def test_second_training_into_the_same_output_dir_refuses_and_kill9_leaves_no_stale_lock(shard_root, tmp_path):
    out = tmp_path / "locked"
    first = start_train(tiny_args(shard_root, out, "--epochs", "500"))
    lines: list = []
    wait_for_line(first, "optimizer:", lines)
    r = run_train(tiny_args(shard_root, out, "--epochs", "1"))
    assert r.returncode == 1
    assert f"--output-dir {out} is in use by pid {first.pid}" in r.stderr and "Traceback" not in r.stderr
    first.kill()  # SIGKILL: the kernel releases the lock
    first.communicate(timeout=60)
    r = run_train(tiny_args(shard_root, out, "--epochs", "1", "--max-steps-per-epoch", "1"))
    assert r.returncode == 0, r.stderr[-3000:]
