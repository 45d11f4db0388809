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
