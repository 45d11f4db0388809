"""Datasets as they really are: a Kinetics CSV full of missing and dead videos (recorded, counted, never a
stop), `--kinetics-version` naming, and iPER's label-less `train.txt` over images_HD frame folders."""

from __future__ import annotations

import json

import pytest

from fastvid.cli import main
from fastvid.video import sources
from fastvid.store.manifest import read_manifest
from fastvid.video.synth import write_coded_video
from test_shard_sources import _write_jpegs, samples_of


def test_kinetics_csv_with_missing_and_dead_videos(tmp_path, capsys):
    root = tmp_path / "k400"
    names = [f"class {i:03d}" for i in range(400)]
    rows = [f"{name},vid{i:03d},{i},{i + 2},train" for i, name in enumerate(names)]
    write_coded_video(root / "class 000" / "vid000_000000_000002.mp4", num_frames=8, height=32, width=48, fps=25,
                      codec="h264", video_id=0)
    (root / "class 001").mkdir()
    (root / "class 001" / "vid001_000001_000003.mp4").write_bytes(b"")  # a dead download: empty file
    csv_file = tmp_path / "train.csv"
    csv_file.write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n")
    out = tmp_path / "shards"
    assert main(["shard", "videos", str(root), str(out), "--layout", "list", "--list", str(csv_file), "--codec", "vp9",
                 "--kinetics-version", "400", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "398 of 400 listed videos are missing" in err and "399 failed" in err
    m = read_manifest(out)
    assert m["num_samples"] == 1 and len(m["classes"]) == 400 and m["options"]["kinetics_version"] == 400
    errors = {f["source"]: f["error"] for f in m["failures"]}
    assert len(errors) == 399 and "no such file" in errors["class 399/vid399_000399_000401.mp4"]
    assert "class 001/vid001_000001_000003.mp4" in errors and "no such file" not in errors["class 001/vid001_000001_000003.mp4"]
    (sample,) = samples_of(out).values()
    assert int(sample["cls"]) == 0 and json.loads(sample["json"])["label_name"] == "class 000"
    # A subset of classes would shift every label id: refused under --kinetics-version.
    short = tmp_path / "short.csv"
    short.write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows[:10]) + "\n")
    with pytest.raises(ValueError, match="10 classes, but Kinetics-400 has 400"):
        sources.discover("list", root, list_file=short, kinetics_version=400)


def test_kinetics_version_gives_folders_the_csv_label_ids(tmp_path):
    # Folder downloads write underscores; the CSV (and so the official label order) has spaces.
    folder_names = ["air_drumming", "airplane", "abseiling"]
    # The class count check needs all classes; check the naming and order on a 400-class set.
    names = [f"c_{i:03d}" for i in range(397)] + folder_names
    items = [sources.VideoItem(key=f"k{i}", source=f"{n}/v.mp4", path="/x", label=i, label_name=n)
             for i, n in enumerate(names)]
    relabelled, classes = sources.apply_kinetics_version(items, names, 400, "src")
    assert classes == sorted(n.replace("_", " ") for n in names)
    by_name = {it.label_name: it.label for it in relabelled}
    # Sorted with spaces: "abseiling" < "air drumming" < "airplane" (with underscores "air_drumming" > "airplane").
    assert by_name["abseiling"] < by_name["air drumming"] < by_name["airplane"]
    assert classes[by_name["air drumming"]] == "air drumming"


def test_iper_label_less_lists_and_folder_levels(tmp_path):
    root = tmp_path / "images_HD"
    folders = ["001/1/1", "001/10/2", "002/1/1"]
    for vid, rel in enumerate(folders):
        _write_jpegs(root / rel, 3, h=32, w=48, video_id=vid)
    train = tmp_path / "train.txt"
    train.write_text("001/1/1\n001/10/2\n002/1/1\n")
    # Label from the person (folder level 0); the full relative path stays in each sample's json.
    out = tmp_path / "by_person"
    assert main(["shard", "videos", str(root), str(out), "--layout", "frames", "--list", str(train), "--fps", "30",
                 "--label-level", "0", "--workers", "1"]) == 0
    m = read_manifest(out)
    assert m["classes"] == ["001", "002"] and m["num_samples"] == 3
    got = {json.loads(s["json"])["source"]: (int(s["cls"]), json.loads(s["json"])["label_name"])
           for s in samples_of(out).values()}
    assert got == {"001/1/1": (0, "001"), "001/10/2": (0, "001"), "002/1/1": (1, "002")}
    # No label at all: no .cls member, no label in the json, no classes.
    out = tmp_path / "unlabelled"
    assert main(["shard", "videos", str(root), str(out), "--layout", "frames", "--list", str(train), "--fps", "30",
                 "--workers", "1"]) == 0
    assert read_manifest(out)["classes"] == []
    for s in samples_of(out).values():
        info = json.loads(s["json"])
        assert "cls" not in s and "label" not in info and info["source"] in folders
    # Without a list: folder level 1 is the cloth; 'none' drops labels.
    items, classes = sources.discover("frames", root, label_level=1)
    assert classes == ["1", "10"] and [it.label for it in items] == [0, 1, 0]
    items, classes = sources.discover("frames", root, label_level="none")
    assert classes == [] and {it.label for it in items} == {None}
    with pytest.raises(ValueError, match=r"'001/1/1' has no folder level 5"):
        sources.discover("frames", root, list_file=train, label_level=5)
