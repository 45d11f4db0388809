"""`fastvid profile`: runs a real command, samples it, writes CSV + PNG + summary, passes its exit code on."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from fastvid import _gpu
from fastvid.profile import profile_command


BUSY = "import time\nx = bytearray(200 * 2**20)\nt = time.time()\nwhile time.time() - t < 1.5: pass\n"


def test_profile_records_cpu_and_rss_of_the_command(tmp_path):
    s = profile_command([sys.executable, "-c", BUSY], tmp_path / "p", interval=0.1)
    assert s["returncode"] == 0
    assert s["num_samples"] >= 5
    with open(tmp_path / "p" / "profile.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:6] == ["t_s", "cpu_percent", "rss_mib", "gpu0_util", "gpu0_mem_mib", "gpu0_sm_clock_mhz"]
    assert len(rows) == s["num_samples"]
    times = [float(r["t_s"]) for r in rows]
    assert times == sorted(times) and times[-1] > 1.0
    # the child holds a 200 MiB buffer and spins one core
    assert max(float(r["rss_mib"]) for r in rows) > 200
    assert max(float(r["cpu_percent"]) for r in rows) > 50
    png = (tmp_path / "p" / "profile.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["rss_max_bytes"] > 200 * 2**20


@pytest.mark.skipif(_gpu.cuda_available(), reason="checks the no-GPU behaviour")
def test_profile_without_gpu_leaves_gpu_columns_empty_and_says_so(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastvid", "profile", "--interval", "0.1", "--out", str(tmp_path / "q"), "--",
                        sys.executable, "-c", "import time; time.sleep(0.6); raise SystemExit(3)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3  # the command's exit status
    assert "GPU: none visible" in r.stderr
    with open(tmp_path / "q" / "profile.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(row["gpu0_util"] == "" and row["gpu0_mem_mib"] == "" for row in rows)
    assert json.loads((tmp_path / "q" / "summary.json").read_text())["gpu_note"].startswith("no GPU")


def test_profile_errors(tmp_path):
    with pytest.raises(ValueError, match="no command given"):
        profile_command([], tmp_path)
    with pytest.raises(FileNotFoundError, match="no-such-program-xyz"):
        profile_command(["no-such-program-xyz"], tmp_path)


@pytest.mark.gpu
def test_profile_samples_gpu(tmp_path):
    code = ("import torch, time\nx = torch.randn(4096, 4096, device='cuda')\nt = time.time()\n"
            "while time.time() - t < 3: y = x @ x\ntorch.cuda.synchronize()\n")
    s = profile_command([sys.executable, "-c", code], tmp_path, interval=0.1)
    assert s["returncode"] == 0 and s["num_gpus"] >= 1
    assert s["gpu_util_mean"] > 10 and s["gpu_mem_max_bytes"] > 64 * 2**20
    with open(tmp_path / "profile.csv") as f:
        rows = list(csv.DictReader(f))
    assert max(float(r["gpu0_util"]) for r in rows if r["gpu0_util"]) > 50
