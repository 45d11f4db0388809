"""`fastvid quickstart` end to end on a tiny setting: dataset, shards, training, summary and report."""

import json
import re

import pytest

from fastvid import _gpu
from fastvid.cli import main


@pytest.mark.slow
def test_quickstart_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--device", "cpu", "--out", str(out), "--epochs", "2", "--videos-per-class", "3"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 6 and summary["chance_acc1"] == pytest.approx(16.67)
    # auto on the CPU: DALI's CPU decoder for the VP9 shards where DALI is installed (the test extra has it)
    assert summary["device"] == "cpu" and summary["backend"] == ("dali" if _gpu.dali_available() else "pyav")
    assert summary["epochs"] == 2
    assert 0 <= summary["val_acc1"] <= summary["val_acc5"] <= 100
    assert summary["train_clips_per_s"] > 0 and 0 <= summary["data_wait_frac"] < 1
    train = json.loads((out / "shards" / "train" / "manifest.json").read_text())
    val = json.loads((out / "shards" / "val" / "manifest.json").read_text())
    assert (train["num_samples"], val["num_samples"]) == (18, 12) and train["failures"] == []
    assert {s["name"].split("-")[0] for s in train["shards"]} == {"train"}
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    out_text = capsys.readouterr().out
    assert "quickstart: 6 classes" in out_text
    assert re.search(r"Epoch 0: train_loss .* \| eta \d+:\d\d:\d\d", out_text)  # the ETA while it runs

    # A rerun with the same parameters reuses videos, shards and the finished checkpoint.
    video = next((out / "videos" / "train").rglob("*.mp4"))
    stamp = video.stat().st_mtime_ns
    assert main(["quickstart", "--device", "cpu", "--out", str(out), "--epochs", "2", "--videos-per-class", "3"]) == 0
    assert video.stat().st_mtime_ns == stamp
    assert [json.loads(line)["epoch"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()] == [0, 1]

    # Other parameters start afresh: no stale videos, shards or checkpoint from the other dataset.
    assert main(["quickstart", "--device", "cpu", "--out", str(out), "--epochs", "1", "--videos-per-class", "2"]) == 0
    train = json.loads((out / "shards" / "train" / "manifest.json").read_text())
    assert train["num_samples"] == 12 and len(list((out / "videos" / "train").rglob("*.mp4"))) == 12
    assert [json.loads(line)["epoch"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()] == [0]

    # Another model does not resume the old checkpoint (its weights would not fit).
    assert main(["quickstart", "--device", "cpu", "--out", str(out), "--epochs", "1", "--videos-per-class", "2",
                 "--model", "mc3_18"]) == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
