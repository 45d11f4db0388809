"""`fastvid bench all`: runs the chosen benchmarks, keeps going past a failing one, writes JSON and a chart."""

import json

from fastvid.benchmarks.all import _speedups
from fastvid.cli import main


def test_speedups_are_found_at_any_depth_by_whole_words():
    result = {"duration_s": 3.0, "speedup_vs_baseline": {"dali": 3.5, "pyav": 2.0},
              "rows": {"x": {"voxel_cpu_vs_np_add_at": 4.0}}, "ratio_note": "text", "ok": True}
    assert _speedups("k", result) == {"k: speedup_vs_baseline/dali": 3.5, "k: speedup_vs_baseline/pyav": 2.0,
                                      "k: rows/x/voxel_cpu_vs_np_add_at": 4.0}


def test_bench_all_quick_writes_json_and_chart(tmp_path):
    out = tmp_path / "all.json"
    rc = main(["bench", "all", "--device", "cpu", "--only", "crop,events", "--quick", "--json", str(out),
               "--work-dir", str(tmp_path / "work")])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["benchmarks"]) == {"crop", "events"}
    assert all(entry["ok"] for entry in result["benchmarks"].values())
    assert any(k.startswith("crop: ") for k in result["speedups"]) and any(k.startswith("events: ") for k in result["speedups"])
    assert all(v > 0 for v in result["speedups"].values())
    assert result["device_info"]["cpu_cores"] >= 1
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_bench_all_rejects_unknown_kinds(tmp_path, capsys):
    assert main(["bench", "all", "--only", "loader,warp", "--json", str(tmp_path / "x.json")]) == 1
    assert "unknown benchmark(s) ['warp']" in capsys.readouterr().err


def test_gen1_like_data_is_regenerated_when_its_box_file_is_missing(tmp_path):
    """An interrupted generation (DAT written, box file not) must not be reused: shard_events would
    then fail every recording for want of its _bbox.npy."""
    from fastvid.benchmarks.events_io import make_gen1_like
    from fastvid.events.io import read_boxes, read_dat_header

    src = tmp_path / "gen1_like"
    make_gen1_like(src, recordings=1, duration_s=0.5, rate_meps=0.01)
    (src / "rec000_bbox.npy").unlink()
    make_gen1_like(src, recordings=1, duration_s=0.5, rate_meps=0.01)
    assert len(read_boxes(src / "rec000_bbox.npy")) > 0
    assert read_dat_header(src / "rec000_td.dat").num_events == 5000


def test_gpu_sampler_follows_cuda_visible_devices(monkeypatch):
    """NVML ignores CUDA_VISIBLE_DEVICES: CUDA device 0 under CUDA_VISIBLE_DEVICES=2,3 is NVML GPU 2,
    so sampling NVML GPU 0 would report another GPU's utilization."""
    import sys
    import types

    from fastvid import metrics

    fake = types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 4,
                                 nvmlDeviceGetHandleByIndex=lambda i: f"nvml{i}",
                                 nvmlDeviceGetHandleByUUID=lambda u: f"uuid:{u}")
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert metrics._nvml_handles([1])[1] == ["nvml1"]
    assert metrics._nvml_handles(None)[1] == ["nvml0", "nvml1", "nvml2", "nvml3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert metrics._nvml_handles([0])[1] == ["nvml2"]
    assert metrics._nvml_handles([1])[1] == ["nvml3"]
    assert metrics._nvml_handles([2])[1] == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert metrics._nvml_handles([0])[1] == ["uuid:GPU-abc"]
