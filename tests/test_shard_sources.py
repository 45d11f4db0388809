"""Dataset layouts (list files, Kinetics CSV with trimming, frame folders), keys and frame-rate handling."""

from __future__ import annotations

import fractions
import io
import json
import tarfile

import av
import pytest

from fastvid.cli import main
from fastvid.store import tarindex
from fastvid.video import sources, transcode
from fastvid.store.manifest import read_manifest, shard_files
from fastvid.video.synth import coded_frames, decode_frame_index, write_coded_video


def samples_of(out):
    samples = {}
    for tar, _ in shard_files(out):
        with tarfile.open(tar) as t:
            for m in t:
                key, ext = tarindex.split_member_name(m.name)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    return samples


def decoded(data: bytes):
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_keys_are_sanitized_and_unique():
    rels = ["a b/c.d.mp4", "a_b/c_d.mp4", "x/y.MP4", "frames/v1/001", "ü/ñ.webm", "z/" + "long" * 40 + ".mp4"]
    keys = sources.unique_keys(rels)
    assert keys[:4] == ["a_b__c_d", "a_b__c_d_2", "x__y", "frames__v1__001"]
    assert len(set(keys)) == len(keys)
    for k in keys:
        assert "." not in k and " " not in k and len(k) <= sources.MAX_KEY_LEN


def test_kinetics_layout_labels_sorted(tmp_path, capsys):
    for cls in ["zumba", "abseiling", "bowling"]:
        write_coded_video(tmp_path / cls / "v.mp4", 4)
    (tmp_path / "empty_class").mkdir()
    items, classes = sources.discover("kinetics", tmp_path)
    assert classes == ["abseiling", "bowling", "zumba"]  # a folder without videos is not a class
    assert "1 folders without video files are not classes: empty_class" in capsys.readouterr().err
    assert {it.source: it.label for it in items} == {"abseiling/v.mp4": 0, "bowling/v.mp4": 1, "zumba/v.mp4": 2}
    with pytest.raises(ValueError, match="no class folders"):
        sources.discover("kinetics", tmp_path / "zumba")


def test_list_layout_paddlevideo_style(tmp_path):
    root = tmp_path / "videos"
    write_coded_video(root / "archery" / "a.mp4", 8, video_id=1)
    write_coded_video(root / "bowling" / "b.mp4", 10, video_id=2)
    write_coded_video(root / "bowling" / "c.mp4", 12, video_id=3)
    lst = tmp_path / "train.list"
    lst.write_text("archery/a.mp4 0\nbowling/b.mp4 1\n\nbowling/c.mp4 1\nbowling/missing.mp4 1\n")
    items, classes = sources.discover("list", root, list_file=lst)
    assert classes == ["archery", "bowling"]  # names inferred from the folders of each integer label
    out = tmp_path / "out"
    assert main(["shard", "videos", str(root), str(out), "--layout", "list", "--list", str(lst), "--codec", "vp9",
                 "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["num_samples"] == 3 and m["classes"] == ["archery", "bowling"]
    assert m["failures"][0]["source"] == "bowling/missing.mp4" and "no such file" in m["failures"][0]["error"]
    frames = {json.loads(s["json"])["source"]: (int(s["cls"]), json.loads(s["json"])["num_frames"]) for s in samples_of(out).values()}
    assert frames == {"archery/a.mp4": (0, 8), "bowling/b.mp4": (1, 10), "bowling/c.mp4": (1, 12)}
    # Integer labels with a class-name file; and name labels sorted into integers.
    names = tmp_path / "classes.txt"
    names.write_text("Archery\nBowling\nCurling\n")
    items, classes = sources.discover("list", root, list_file=lst, classes_file=names)
    assert classes == ["Archery", "Bowling", "Curling"] and items[1].label_name == "Bowling"
    lst2 = tmp_path / "named.list"
    lst2.write_text("bowling/b.mp4 bowling\narchery/a.mp4 archery\n")
    items, classes = sources.discover("list", root, list_file=lst2)
    assert classes == ["archery", "bowling"] and [it.label for it in items] == [1, 0]
    with pytest.raises(FileNotFoundError, match="nope.list"):
        sources.discover("list", root, list_file=tmp_path / "nope.list")


def test_kinetics_csv_trims_full_videos(tmp_path):
    root = tmp_path / "raw"
    # A full "YouTube" video of 100 frames at 25 fps (4 s), and an already-trimmed clip.
    write_coded_video(root / "abc123XYZ-_.mp4", 100, 48, 64, fps=25, video_id=7, gop=8)
    write_coded_video(root / "bowling" / "qqq_000002_000003.mp4", 25, 48, 64, fps=25, video_id=8)
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("label,youtube_id,time_start,time_end,split\n"
                        "air drumming,abc123XYZ-_,1,2,train\n"
                        "air drumming,abc123XYZ-_,2.5,3.5,train\n"
                        "bowling,qqq,2,3,train\n"
                        "bowling,notdownloaded,0,10,train\n")
    out = tmp_path / "out"
    assert main(["shard", "videos", str(tmp_path), str(out), "--layout", "list", "--list", str(csv_file),
                 "--video-root", str(root), "--codec", "vp9", "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["classes"] == ["air drumming", "bowling"] and m["num_samples"] == 3
    assert [f["source"] for f in m["failures"]] == ["bowling/notdownloaded_000000_000010.mp4"]
    by_start = {}
    for key, s in samples_of(out).items():
        info = json.loads(s["json"])
        frames = decoded(s["webm"])
        assert len(frames) == info["num_frames"] == 25
        first = decode_frame_index(frames[0][..., 0].mean())
        by_start[info.get("time_start")] = (key, first, info["label_name"])
    # Cut clips start with the frame on screen at the start time: 1 s -> frame 25, 2.5 s -> frame 62
    # (shown from 2.48 s); codes are mod 28.
    assert by_start[1.0] == ("abc123XYZ-__000001_000002", 25 % 28, "air drumming")
    assert by_start[2.5] == ("abc123XYZ-__000002_000003", 62 % 28, "air drumming")
    assert by_start[None] == ("bowling__qqq_000002_000003", 0, "bowling")


def _write_jpegs(folder, n, h=48, w=64, video_id=0):
    folder.mkdir(parents=True)
    for t, frame in enumerate(coded_frames(n, h, w, video_id)):
        with av.open(str(folder / f"img_{t + 1:05d}.jpg"), "w", format="image2") as c:
            s = c.add_stream("mjpeg", rate=1)
            s.width, s.height, s.pix_fmt = w, h, "yuvj420p"
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                c.mux(p)
            for p in s.encode():
                c.mux(p)


def test_frames_layout_rawframes(tmp_path, capsys):
    root = tmp_path / "rawframes"
    _write_jpegs(root / "jump" / "vid_a", 12, video_id=1)
    _write_jpegs(root / "run" / "vid_b", 9, video_id=2)
    (root / "run" / "vid_c").mkdir()  # no images: not a video
    out = tmp_path / "out"
    assert main(["shard", "videos", str(root), str(out), "--layout", "frames", "--workers", "1"]) == 1
    assert "--layout frames needs --fps" in capsys.readouterr().err
    assert main(["shard", "videos", str(root), str(out), "--layout", "frames", "--fps", "29.97", "--codec", "h264",
                 "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["classes"] == ["jump", "run"] and m["num_samples"] == 2 and m["failures"] == []
    got = {}
    for key, s in samples_of(out).items():
        info = json.loads(s["json"])
        frames = decoded(s["mp4"])
        assert info["fps"] == pytest.approx(30000 / 1001) and len(frames) == info["num_frames"]
        assert [decode_frame_index(f[..., 0].mean()) for f in frames] == list(range(len(frames)))
        got[key] = (int(s["cls"]), info["num_frames"])
    assert got == {"jump__vid_a": (0, 12), "run__vid_b": (1, 9)}
    # iPER-style folders labelled by a list file.
    lst = tmp_path / "frames.list"
    lst.write_text("jump/vid_a 5\nrun/vid_b 12 2\n")  # 'path label' and rawframes 'path num_frames label'
    items, classes = sources.discover("frames", root, list_file=lst)
    assert [(it.source, it.label) for it in items] == [("jump/vid_a", 5), ("run/vid_b", 2)] and len(classes) == 6


def test_resample_times_pure():
    rate = fractions.Fraction(25)
    same = list(transcode.resample_times(((i / 25, i) for i in range(10)), rate))
    assert same == list(range(10))
    half = list(transcode.resample_times(((i / 25, i) for i in range(10)), fractions.Fraction(25, 2)))
    assert half == [0, 2, 4, 6, 8]
    double = list(transcode.resample_times(((i / 25, i) for i in range(4)), fractions.Fraction(50)))
    assert double == [0, 0, 1, 1, 2, 2, 3, 3]
    # Variable rate: a 120 ms gap is filled by repeating the frame shown during it.
    vfr = [(0.0, "a"), (0.04, "b"), (0.16, "c"), (0.2, "d")]
    assert list(transcode.resample_times(iter(vfr), rate)) == ["a", "b", "b", "b", "c", "d"]
    # 29.97 -> 25: timestamps with rounding still map to the frame on screen.
    ntsc = [(round(i * 1001 / 30000, 3), i) for i in range(30)]
    out = list(transcode.resample_times(iter(ntsc), rate))
    assert len(out) == 26  # 1.001 s of source: output times 0 .. 1.0 s
    for k, i in enumerate(out):  # the frame on screen at k/25, up to the 1 ms rounding of the timestamps
        assert i * 1001 / 30000 <= k / 25 + 1e-3 and (i == 29 or (i + 1) * 1001 / 30000 > k / 25 - 1e-3)
    assert out[:5] == [0, 1, 2, 3, 4] and out[-1] == 29
    # A cut clip stops at its duration.
    assert list(transcode.resample_times(((i / 25, i) for i in range(10)), rate, duration=0.2)) == [0, 1, 2, 3, 4]


def test_output_size_even_and_aspect():
    assert transcode.output_size(1280, 720, 256) == (456, 256)
    assert transcode.output_size(720, 1280, 256) == (256, 456)
    assert transcode.output_size(640, 480, 128) == (170, 128)
    assert transcode.output_size(65, 49, None) == (64, 48)
    with pytest.raises(ValueError, match="even"):
        transcode.TranscodeOptions(codec="h264", short_side=127)
    with pytest.raises(ValueError, match="copy"):
        transcode.TranscodeOptions(codec="copy", fps=10)


def _write_vfr(path, times_ms, h=48, w=64):
    frames = coded_frames(len(times_ms), h, w)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "18"})
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, 1000)
        for t, f in zip(times_ms, frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts, vf.time_base = t, fractions.Fraction(1, 1000)
            for p in s.encode(vf):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


def test_variable_frame_rate_and_2997_metadata(tmp_path):
    # 29.97 fps: exact rational rate, float in the metadata.
    p = write_coded_video(tmp_path / "ntsc.mp4", 30, 48, 64, fps=29.97)
    with av.open(str(p)) as c:
        assert transcode.stream_rate(c.streams.video[0]) == fractions.Fraction(30000, 1001)
    data, meta = transcode.transcode(p, transcode.TranscodeOptions("vp9"))
    assert meta["fps"] == 30000 / 1001 and meta["num_frames"] == 30 and meta["duration"] == pytest.approx(1.001)
    assert transcode.probe(p)["num_frames"] == 30
    # Variable frame rate: 20 frames with irregular gaps over ~1.2 s.
    times = [0, 40, 80, 120, 160, 280, 320, 360, 400, 440, 560, 600, 640, 680, 720, 840, 880, 920, 960, 1000]
    vfr = tmp_path / "vfr.mp4"
    _write_vfr(vfr, times)
    data, meta = transcode.transcode(vfr, transcode.TranscodeOptions("h264", fps=25))
    frames = decoded(data)
    assert meta["fps"] == 25.0 and len(frames) == meta["num_frames"]
    assert meta["num_frames"] == 26  # 1.04 s at 25 fps: gaps filled, nothing dropped
    shown = [decode_frame_index(f[..., 0].mean()) for f in frames]
    # Each output time shows the source frame on screen then (the latest one not after it).
    expected = [max(i for i, t in enumerate(times) if t <= k * 40) for k in range(26)]
    assert shown == expected
    # Without --fps the output is constant-rate at the source's average rate, with matching metadata.
    data, meta = transcode.transcode(vfr, transcode.TranscodeOptions("vp9"))
    assert len(decoded(data)) == meta["num_frames"]
    assert meta["duration"] == pytest.approx(1.04, abs=2 / meta["fps"])
    with av.open(io.BytesIO(data)) as c:
        assert float(transcode.stream_rate(c.streams.video[0])) == pytest.approx(meta["fps"], rel=1e-3)


def test_kinetics_csv_copy_cuts_at_keyframes(tmp_path):
    root = tmp_path / "raw"
    write_coded_video(root / "vid001.mp4", 100, 48, 64, fps=25, video_id=3, gop=8)
    csv_file = tmp_path / "val.csv"
    csv_file.write_text("label,youtube_id,time_start,time_end,split\nx,vid001,1,2,val\n")
    out = tmp_path / "out"
    assert main(["shard", "videos", str(root), str(out), "--layout", "list", "--list", str(csv_file), "--codec", "copy",
                 "--split", "val", "--workers", "1"]) == 0
    (key, s), = samples_of(out).items()
    info = json.loads(s["json"])
    frames = decoded(s["mp4"])
    # Without re-encoding the cut starts at the keyframe before 1 s (frame 24) and ends before 2 s (frame 50).
    assert len(frames) == info["num_frames"] == 26
    assert [decode_frame_index(f[..., 0].mean()) for f in frames] == [t % 28 for t in range(24, 50)]
    assert read_manifest(out)["shards"][0]["name"] == "val-000000.tar"


def test_truncated_file_with_index_up_front_is_a_failure(tmp_path):
    # An MP4 with its index first ("faststart") still opens when cut short; the missing frames must be noticed.
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        s = out.add_stream("libx264", rate=25, options={"preset": "veryfast"})
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        for frame in coded_frames(60, 96, 128):
            for p in s.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    assert transcode.remux(path)[1]["num_frames"] == 60
    cut = tmp_path / "cut.mp4"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(ValueError, match="truncated or corrupt: only .* of the 60 frames"):
        transcode.remux(cut)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        transcode.transcode(cut, transcode.TranscodeOptions("vp9"))


def test_out_inside_src_is_never_a_class(tmp_path):
    src = tmp_path / "src"
    for cls in ["a", "b"]:
        write_coded_video(src / cls / "v.mp4", 4)
    out = src / "shards"
    for _ in range(2):  # the rerun sees OUT (with shards and their videos' names) inside SRC
        assert main(["shard", "videos", str(src), str(out), "--codec", "vp9", "--workers", "1"]) == 0
    write_coded_video(out / "stray" / "x.mp4", 4)  # even videos under OUT are not inputs
    items, classes = sources.discover("kinetics", src, exclude=out)
    assert classes == ["a", "b"] and sorted(it.source for it in items) == ["a/v.mp4", "b/v.mp4"]
    assert read_manifest(out)["classes"] == ["a", "b"]
