"""Elastic resume with real processes: a checkpoint written mid-epoch on N ranks resumes on M != N ranks
(torchrun, gloo, CPU) and the epoch's training clips are each seen exactly once across both runs.

Each rank logs the keys and grid clips of every training batch it takes (the hidden --log-keys flag:
fastvid.train.callbacks.KeyLog). The expected epoch is fastvid's global clip list (sampling.train_items);
the union of what the first run trained on before its checkpoint and what the resumed run trained on must
be that whole list (the last batch is kept, as torchvision keeps it) with no repeats.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import video_loader

from fastvid.train.callbacks import read_key_log
from fastvid.video import sampling

from test_train_cli import _free_port, env, tiny_args

CPV = 5  # clips per video: 8 videos x 5 = 40 training clips per epoch


def args(shard_root, out, *extra):
    return tiny_args(shard_root, out, "--clips-per-video", str(CPV), "--epochs", "2", *extra)


def epoch_clips(shard_root: Path, epoch: int) -> list[tuple[str, int]]:
    ld = video_loader(str(shard_root / "train"), batch_size=2, clip_len=4, clips_per_video=CPV, device="cpu", backend="pyav",
                     num_workers=0)
    items = sampling.train_items(ld._grid_sizes, [s.keys for s in ld.shard_set.shards], clips_per_video=CPV, seed=0,
                                 epoch=epoch)
    return [(ld.shard_set.shards[it.shard].keys[it.sample], it.clips[0]) for it in items]


def logged(path: Path, epoch: int) -> list[list[tuple[str, int]]]:
    """Per rank: the (key, clip) of every clip of `epoch` it took, in order."""
    per_rank: dict[int, list] = {}
    for row in read_key_log(path) if path.exists() else []:
        if row["epoch"] == epoch:
            per_rank.setdefault(row["rank"], []).extend(zip(row["keys"], row["clips"]))
    return [per_rank[r] for r in sorted(per_rank)]


def launch(cmd_args, nproc: int, key_log: Path) -> subprocess.Popen:
    e = env()
    cmd_args = [*cmd_args, "--log-keys", str(key_log)]
    if nproc == 1:
        cmd = [sys.executable, "-m", "fastvid", "train", *cmd_args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port", str(_free_port()),
               "-m", "fastvid", "train", *cmd_args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e)


def wait_for(pred, proc, timeout=240):
    t0 = time.time()
    while not pred():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early (rc {proc.returncode}): {proc.stdout.read()[-3000:]}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def workers(proc: subprocess.Popen) -> list[int]:
    import psutil

    kids = psutil.Process(proc.pid).children(recursive=True)
    return [p.pid for p in kids if "fastvid" in " ".join(p.cmdline())] or [proc.pid]


def check_epoch(shard_root, before: list[tuple[str, int]], after: list[tuple[str, int]], epoch: int, world: int):
    expected = epoch_clips(shard_root, epoch)
    seen = before + after
    assert len(set(seen)) == len(seen), "a clip was trained on twice"
    assert set(seen) == set(expected), "the runs did not train on every clip of the epoch"


@pytest.mark.slow
def test_sigterm_on_two_ranks_resumes_on_one(shard_root, tmp_path):
    out, keys = tmp_path / "run", tmp_path / "keys"
    proc = launch(args(shard_root, out), 2, keys)
    wait_for(lambda: sum(len(r) for r in logged(keys, 0)) >= 4, proc)  # both ranks trained at least once
    for pid in workers(proc):
        os.kill(pid, signal.SIGTERM)
    text, _ = proc.communicate(timeout=240)
    # every worker exits 75 (preempted); torchrun then reports the workers' failure with its own status
    assert proc.returncode != 0 and "exiting with code 75 (preempted)" in text, text[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt.get("resume_epoch") == 0, "expected a mid-epoch checkpoint of epoch 0"
    position = ckpt["loader"]["position"]
    first = logged(keys, 0)
    assert [len(r) for r in first] == [position // 2] * 2  # equal batches on both ranks, all of them checkpointed
    # the global order: round j = rank 0's batch j then rank 1's batch j
    before = [c for j in range(position // 4) for r in first for c in r[2 * j:2 * j + 2]]

    keys2 = tmp_path / "keys2"
    r = launch(args(shard_root, out, "--epochs", "1", "--resume", str(out / "checkpoint.pth")), 1, keys2)
    text, _ = r.communicate(timeout=240)
    assert r.returncode == 0, text[-3000:]
    (after,) = logged(keys2, 0)
    check_epoch(shard_root, before, after, 0, 1)


@pytest.mark.slow
def test_save_every_steps_on_one_rank_resumes_on_two_after_a_crash(shard_root, tmp_path):
    out, keys = tmp_path / "run", tmp_path / "keys"
    proc = launch(args(shard_root, out, "--save-every-steps", "3"), 1, keys)
    ckpt_path = out / "checkpoint.pth"
    wait_for(ckpt_path.exists, proc)
    proc.kill()  # a crash: no preemption handler runs, the last periodic checkpoint is all there is
    proc.communicate(timeout=60)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ckpt.get("resume_epoch") == 0 and ckpt["world_size"] == 1 and ckpt["resume_step"] % 3 == 0
    position = ckpt["loader"]["position"]
    assert position == 2 * ckpt["resume_step"]
    (first,) = logged(keys, 0)
    before = first[:position]  # clips trained on after the checkpoint are lost with the crash and come again

    keys2 = tmp_path / "keys2"
    r = launch(args(shard_root, out, "--epochs", "1", "--resume", str(ckpt_path)), 2, keys2)
    text, _ = r.communicate(timeout=300)
    assert r.returncode == 0, text[-3000:]
    second = logged(keys2, 0)
    assert len(second) == 2 and len(second[0]) == len(second[1]) > 0  # equal batches per rank
    # round j: rank 0's batch j, then rank 1's (the last round's batches may be smaller: the tail is kept)
    after = [c for j in range(-(-len(second[0]) // 2)) for rank in second for c in rank[2 * j:2 * j + 2]]
    check_epoch(shard_root, before, after, 0, 2)
    # the lr schedule continued at the same point of training on the new world size
    ck2 = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    assert ck2["epoch"] == 0 and ck2["world_size"] == 2
    # one warmup epoch (0.001 x lr -> lr) ends exactly at the epoch boundary, though the steps per epoch changed
    assert ck2["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.01)
    assert ck2["lr_scheduler"]["last_epoch"] == 10  # 40 clips / (2 ranks x 2) steps per epoch on the new world
