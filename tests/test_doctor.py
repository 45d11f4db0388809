"""`fastvid doctor` on a tiny shard set on the CPU: every stage timed, a bottleneck named, JSON + PNG written."""

from __future__ import annotations

import json

from fastvid.cli import main
from fastvid.doctor import KNOBS, STAGES

from test_loader import make_shards


def test_doctor_times_every_stage_and_names_the_bottleneck(tmp_path):
    data = make_shards(tmp_path / "data")
    out = tmp_path / "doc"
    rc = main(["doctor", "--shards", str(data.h264), "--model", "r3d_18", "--model-width", "4", "--device", "cpu",
               "--batch-size", "2", "--clip-len", "4", "--samples", "3", "--batches", "2", "--workers", "1", "--tune",
               "--out", str(out)])
    assert rc == 0
    result = json.loads((out / "doctor.json").read_text())
    assert list(result["stages"]) == list(STAGES)
    for stage in result["stages"].values():
        assert stage["ms_per_clip"] > 0 and stage["clips_per_s"] > 0 and stage["parallelism"] >= 1
    assert result["bottleneck"] in STAGES and result["knob"] == KNOBS[result["bottleneck"]]
    assert result["summary"].startswith(f"bottleneck: {result['bottleneck']}")
    assert result["backend"] == "pyav" and result["loader_clips_per_s"] > 0 and result["replay_ceiling_clips_per_s"] > 0
    assert result["data_bound"] == (result["loader_clips_per_s"] < result["replay_ceiling_clips_per_s"])
    assert {"threads", "prefetch", "clips_per_s"} <= set(result["tune"]["best"])
    assert len(result["tune"]["trials"]) == 2  # one thread setting (1 worker) x prefetch 2, 4
    assert (out / "doctor.png").read_bytes()[:4] == b"\x89PNG"
