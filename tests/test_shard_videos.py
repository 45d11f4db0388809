"""`fastvid shard videos` end to end on PyAV-made clips with known content, read back by DALI and PyAV.

The dataset has several resolutions and frame rates (25, 29.97, 30 fps), file names with dots and
spaces, a class name with a space, a non-video file and one truncated clip.
"""

from __future__ import annotations

import io
import json
import tarfile

import av
import numpy as np
import pytest

from fastvid.cli import main
from fastvid.store import tarindex
from fastvid.store.manifest import read_manifest, shard_files
from fastvid.video.synth import decode_frame_index, frame_code, write_coded_video

CLASSES = ["abseiling", "juggling balls", "walking"]
# (class, file name, frames, height, width, fps, video id)
CLIPS = [
    ("walking", "w1.mp4", 24, 48, 64, 25, 1),
    ("walking", "clip.v2.mp4", 30, 72, 96, 29.97, 2),
    ("abseiling", "a1.mp4", 20, 50, 66, 30, 3),
    ("abseiling", "a2.mp4", 24, 48, 64, 25, 4),
    ("juggling balls", "my clip 1.mp4", 30, 72, 96, 29.97, 5),
    ("juggling balls", "j2.mp4", 20, 48, 64, 25, 6),
]
GOOD_KEYS = {"walking__w1", "walking__clip_v2", "abseiling__a1", "abseiling__a2", "juggling_balls__my_clip_1", "juggling_balls__j2"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinetics")
    for cls, name, n, h, w, fps, vid in CLIPS:
        write_coded_video(root / cls / name, n, h, w, fps=fps, video_id=vid, gop=8)
    data = (root / "walking" / "w1.mp4").read_bytes()
    (root / "walking" / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "abseiling" / "notes.txt").write_text("not a video")
    return root


def clip_spec(source: str):
    return next(c for c in CLIPS if source == f"{c[0]}/{c[1]}")


def read_tar(tar_path):
    samples: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for m in tar:
            key, ext = tarindex.split_member_name(m.name)
            samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


def all_samples(out):
    samples = {}
    for tar, _ in shard_files(out):
        samples.update(read_tar(tar))
    return samples


def decode_red_codes(data: bytes):
    """Frame indices (mod 28) and the video id code of an encoded clip, decoded with PyAV."""
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return [decode_frame_index(f[..., 0].mean()) for f in frames], [float(f[..., 1].mean()) for f in frames], frames


@pytest.fixture(scope="module")
def vp9_out(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("vp9")
    assert main(["shard", "videos", str(dataset), str(out), "--codec", "vp9", "--max-samples", "4", "--workers", "2"]) == 0
    return out


def test_manifest_values(vp9_out, dataset):
    m = read_manifest(vp9_out)
    assert m["kind"] == "video" and m["split"] == "train"
    assert m["classes"] == CLASSES  # sorted by name
    assert m["num_samples"] == 6 and [s["samples"] for s in m["shards"]] == [4, 2]
    assert len(m["failures"]) == 1 and m["failures"][0]["source"] == "walking/truncated.mp4"
    assert m["failures"][0]["error"]  # the reason is recorded
    assert m["options"]["codec"] == "vp9" and m["options"]["gop"] == 8 and m["options"]["layout"] == "kinetics"


def test_tar_contents(vp9_out):
    samples = all_samples(vp9_out)
    assert set(samples) == GOOD_KEYS
    for key, fields in samples.items():
        assert set(fields) == {"webm", "cls", "json"}
        info = json.loads(fields["json"])
        cls, name, n, h, w, fps, vid = clip_spec(info["source"])
        assert int(fields["cls"]) == info["label"] == CLASSES.index(cls)
        assert info["label_name"] == cls
        assert (info["width"], info["height"]) == (w, h)
        assert info["num_frames"] == n
        assert info["fps"] == pytest.approx(30000 / 1001 if fps == 29.97 else fps, rel=1e-9)
        assert info["duration"] == pytest.approx(n / info["fps"])
        assert info["codec"] == "vp9" and info["container"] == "webm" and info["source_codec"] == "h264"
        codes, greens, frames = decode_red_codes(fields["webm"])
        assert len(frames) == n
        assert codes == [t % 28 for t in range(n)]
        assert np.allclose(greens, frame_code(vid), atol=4)


def test_dali_reads_every_sample_through_the_index(vp9_out):
    from nvidia.dali import fn, pipeline_def

    pairs = shard_files(vp9_out)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def pipe():
        video, cls, info = fn.readers.webdataset(paths=[str(t) for t, _ in pairs], index_paths=[str(i) for _, i in pairs],
                                                 ext=["webm", "cls", "json"])
        return fn.decoders.video(video, device="cpu"), cls, info

    p = pipe()
    p.build()
    seen = set()
    for _ in range(read_manifest(vp9_out)["num_samples"]):
        frames, cls, info = (np.array(x[0]) for x in p.run())
        info = json.loads(info.tobytes())
        c, name, n, h, w, fps, vid = clip_spec(info["source"])
        assert frames.shape == (n, h, w, 3)
        assert [decode_frame_index(f[..., 0].mean()) for f in frames] == [t % 28 for t in range(n)]
        assert int(cls.tobytes()) == CLASSES.index(c)
        seen.add(info["source"])
    assert len(seen) == 6


def test_h264_resize_and_frame_rate(dataset, tmp_path):
    out = tmp_path / "h264"
    assert main(["shard", "videos", str(dataset), str(out), "--codec", "h264", "--short-side", "32", "--fps", "12.5",
                 "--gop", "4", "--workers", "1"]) == 0
    for key, fields in all_samples(out).items():
        info = json.loads(fields["json"])
        cls, name, n, h, w, fps, vid = clip_spec(info["source"])
        assert info["height"] == 32 and info["width"] % 2 == 0
        assert info["width"] == round(w * 32 / h / 2) * 2  # aspect kept, even
        assert info["fps"] == 12.5 and info["codec"] == "h264" and info["container"] == "mp4"
        assert abs(info["num_frames"] - n / (30000 / 1001 if fps == 29.97 else fps) * 12.5) <= 1
        codes, _, frames = decode_red_codes(fields["mp4"])
        assert len(frames) == info["num_frames"] and frames[0].shape == (32, info["width"], 3)
        # Frame i shows the source frame at time i / 12.5 s.
        expected = [int(i / 12.5 * (30000 / 1001 if fps == 29.97 else fps) + 1e-6) % 28 for i in range(len(frames))]
        assert codes == expected
        with av.open(io.BytesIO(fields["mp4"])) as c:
            keyframes = [p.is_keyframe for p in c.demux(video=0) if p.size]
        assert [i for i, k in enumerate(keyframes) if k] == list(range(0, len(keyframes), 4))


def test_copy_keeps_the_original_packets(dataset, tmp_path):
    out = tmp_path / "copy"
    assert main(["shard", "videos", str(dataset), str(out), "--codec", "copy", "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["num_samples"] == 6 and m["failures"][0]["source"] == "walking/truncated.mp4"
    for key, fields in all_samples(out).items():
        info = json.loads(fields["json"])
        cls, name, n, h, w, fps, vid = clip_spec(info["source"])
        assert info["codec"] == "h264" and info["container"] == "mp4" and info["num_frames"] == n
        assert info["fps"] == pytest.approx(30000 / 1001 if fps == 29.97 else fps, rel=1e-9)
        with av.open(str(dataset / info["source"])) as src, av.open(io.BytesIO(fields["mp4"])) as got:
            assert [bytes(p) for p in src.demux(video=0) if p.size] == [bytes(p) for p in got.demux(video=0) if p.size]


def test_exit_status_strict_and_nothing_written(dataset, tmp_path, capsys):
    assert main(["shard", "videos", str(dataset), str(tmp_path / "s"), "--codec", "copy", "--workers", "1", "--strict"]) == 1
    assert "--strict" in capsys.readouterr().err
    bad = tmp_path / "bad"
    (bad / "c").mkdir(parents=True)
    (bad / "c" / "x.mp4").write_bytes(b"\0" * 100)
    assert main(["shard", "videos", str(bad), str(tmp_path / "b"), "--workers", "1"]) == 1
    assert "nothing was written" in capsys.readouterr().err
    assert main(["shard", "videos", str(tmp_path / "missing"), str(tmp_path / "m")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_inspect_and_verify(vp9_out, tmp_path, capsys):
    import shutil

    from fastvid.store.inspect import summarize

    summary = summarize(vp9_out, verify=True)
    assert summary["problems"] == []
    assert summary["samples_per_class"] == {"abseiling": 2, "juggling balls": 2, "walking": 2}
    assert summary["codecs"] == {"vp9": 6}
    assert summary["resolutions"] == {"64x48": 3, "96x72": 2, "66x50": 1}
    assert summary["fps"] == {"25": 3, "29.97": 2, "30": 1}
    assert summary["frames"] == {"min": 20, "mean": 24.7, "max": 30}
    assert len(summary["failures"]) == 1
    assert main(["inspect", str(vp9_out), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "juggling balls" in text and "29.97" in text and "verify: OK" in text and "truncated.mp4" in text

    # A flipped byte in a video is caught by the sha256 check.
    broken = tmp_path / "broken"
    shutil.copytree(vp9_out, broken)
    tar = broken / "train-000000.tar"
    data = bytearray(tar.read_bytes())
    offset, size = next(c for c in tarindex.read_index(broken / "train-000000.idx")[0] if c[0] == "webm")[1:3]
    data[offset + size // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    assert main(["inspect", str(broken), "--verify"]) == 1
    assert "sha256" in capsys.readouterr().out

    # A sample without its json is caught even when the manifest's checksums are updated to match.
    missing = tmp_path / "missing"
    shutil.copytree(vp9_out, missing)
    tar = missing / "train-000001.tar"
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t]
    dropped = next(m.name for m, _ in members if m.name.endswith(".json"))
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, payload in members:
            if m.name != dropped:
                t.addfile(m, io.BytesIO(payload))
    tarindex.write_index(tar)
    manifest = json.loads((missing / "manifest.json").read_text())
    from fastvid.store.manifest import file_sha256

    manifest["shards"][1].update(bytes=tar.stat().st_size, sha256=file_sha256(tar))
    (missing / "manifest.json").write_text(json.dumps(manifest))
    problems = summarize(missing, verify=True)["problems"]
    assert any("missing json" in p for p in problems), problems


def test_cli_node_split_merge_and_verify(dataset, tmp_path, capsys):
    out = tmp_path / "nodes"
    for rank in (0, 1):
        assert main(["shard", "videos", str(dataset), str(out), "--codec", "copy", "--workers", "1", "--max-samples", "2",
                     "--num-nodes", "2", "--node-rank", str(rank)]) == 0
    assert main(["inspect", str(out)]) == 1  # no merged manifest yet: one clear error
    assert "fastvid manifest" in capsys.readouterr().err
    assert main(["manifest", str(out)]) == 0
    m = read_manifest(out)
    assert m["num_samples"] == 6 and len(m["failures"]) == 1
    assert {s["name"][:11] for s in m["shards"]} == {"train-n000-", "train-n001-"}
    assert set(all_samples(out)) == GOOD_KEYS
    assert main(["inspect", str(out), "--verify"]) == 0
