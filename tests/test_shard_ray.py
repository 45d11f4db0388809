"""`fastvid shard videos --engine ray` on a real local Ray instance with 2 CPUs: the same shards, indexes and
manifest as the local engine, a killed Ray worker's task retried, and a rerun resuming after a job that
lost its worker for good."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from fastvid.cli import main  # noqa: E402
from fastvid.store import ray_engine  # noqa: E402
from fastvid.video import sources, transcode
from fastvid.store.writer import ShardJob, write_shard_set  # noqa: E402
from fastvid.video.synth import write_coded_video  # noqa: E402

ARGS = ["--codec", "vp9", "--max-samples", "2", "--seed", "3", "--short-side", "32"]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray") / "src"
    vid = 0
    for name in ("jump", "run", "swim"):
        for j in range(3):
            write_coded_video(root / name / f"{name}{j}.mp4", num_frames=8 + vid, height=32, width=48, fps=25,
                              codec="h264", video_id=vid, gop=4)
            vid += 1
    (root / "swim" / "broken.mp4").write_bytes(b"not a video")  # recorded as a failure by both engines
    return root


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    # Workers import this module's helpers by value (the tests directory is not a package).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def set_contents(out: Path) -> dict:
    """Everything a reader sees: manifest (minus timing-free fields are all there is), tar bytes, indexes."""
    manifest = json.loads((out / "manifest.json").read_text())
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.suffix in (".tar", ".idx")}
    return {"manifest": manifest, "files": files, "wids": json.loads((out / "wids-index.json").read_text())}


def test_ray_engine_writes_the_same_shard_set_as_local(src, tmp_path, local_ray):
    assert main(["shard", "videos", str(src), str(tmp_path / "local"), *ARGS, "--workers", "1"]) == 0
    assert main(["shard", "videos", str(src), str(tmp_path / "ray"), *ARGS, "--engine", "ray"]) == 0
    local, on_ray = set_contents(tmp_path / "local"), set_contents(tmp_path / "ray")
    assert on_ray == local
    assert local["manifest"]["num_samples"] == 9 and len(local["manifest"]["failures"]) == 1
    assert local["manifest"]["failures"][0]["source"] == "swim/broken.mp4"


class KillOnce:
    """encode_sample that SIGKILLs its Ray worker the first time it sees `victim` (a marker file remembers)."""

    def __init__(self, options, victim: str, marker: Path, always: bool = False):
        self.encode = functools.partial(transcode.encode_sample, options=options)
        self.victim, self.marker, self.always = victim, str(marker), always

    def __call__(self, item):
        if item.source == self.victim and os.path.exists(self.marker):
            if not self.always:
                os.unlink(self.marker)
            os.kill(os.getpid(), signal.SIGKILL)
        return self.encode(item)


def _write(src, out, encode, engine):
    items, classes = sources.discover("kinetics", src)
    return write_shard_set(items, encode, out, ShardJob(kind="video", classes=classes, options={"codec": "vp9"}, max_samples=2,
                           seed=3, engine=engine))


def test_killed_worker_is_retried_and_a_rerun_resumes(src, tmp_path, local_ray):
    options = transcode.TranscodeOptions(codec="vp9", short_side=32)
    plain = functools.partial(transcode.encode_sample, options=options)
    expected = _write(src, tmp_path / "local", plain, None)

    # A worker killed once: Ray retries its task, the output is unchanged.
    marker = tmp_path / "kill-once"
    marker.touch()
    once = _write(src, tmp_path / "retried", KillOnce(options, "run/run1.mp4", marker),
                  ray_engine.engine(max_retries=2))
    assert not marker.exists() and once["shards"] == expected["shards"]

    # A worker that dies every time: the job stops naming the input, complete shards stay, a rerun resumes.
    marker.touch()
    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match=r"Ray worker died .* run/run1\.mp4.*rerun the same command to resume"):
        _write(src, out, KillOnce(options, "run/run1.mp4", marker, always=True), ray_engine.engine(max_retries=0))
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tmp-*"))
    marker.unlink()
    resumed = _write(src, out, plain, ray_engine.engine())
    assert resumed["shards"] == expected["shards"]
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept  # complete shards were not rewritten
