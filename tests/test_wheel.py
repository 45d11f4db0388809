"""The wheel installs and trains where DALI does not exist.

Builds the wheel (no setuptools warnings), checks what it ships (kernels, recipes, LICENSE, PEP 639
metadata, DALI/CuPy only as extras), installs it with pip into a fresh venv that sees this
environment's packages except DALI and fastvid itself, with `--no-index`, so pip must resolve every
dependency from what is there (a hard DALI dependency fails the install), then runs a CPU training
step with the PyAV backend from the installed copy.

The fresh venv sees this environment through a folder of links added by a .pth file: installing
torch and friends into it from scratch would take minutes; hiding DALI this way takes milliseconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HIDDEN = ("nvidia_dali", "fastvid", "__editable__", "_fastvid")


def _build_wheel(out: Path) -> tuple[Path, str]:
    # --no-build-isolation: setuptools>=77 comes with the test extra, so no network is needed.
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    wheels = list(out.glob("fastvid-*.whl"))
    assert len(wheels) == 1
    return wheels[0], r.stdout + r.stderr


def _view_without_dali(view: Path) -> None:
    """Links to every package of this environment's site-packages except DALI and fastvid."""
    import site

    view.mkdir()
    (view / "nvidia").mkdir()
    for sp in [*site.getsitepackages(), site.getusersitepackages()]:
        sp = Path(sp)
        if not sp.is_dir():
            continue
        for entry in sp.iterdir():
            name = entry.name
            if name.startswith(HIDDEN) or name.endswith(".pth"):
                continue
            if name == "nvidia" and entry.is_dir():
                for sub in entry.iterdir():
                    if sub.name != "dali" and not (view / "nvidia" / sub.name).exists():
                        (view / "nvidia" / sub.name).symlink_to(sub)
                continue
            if not (view / name).exists():
                (view / name).symlink_to(entry)


@pytest.mark.slow
def test_wheel_installs_without_dali_and_trains_on_cpu(tmp_path, shard_root):
    wheel, build_log = _build_wheel(tmp_path / "dist")
    assert not any(w in build_log for w in ("SetuptoolsDeprecationWarning", "SetuptoolsWarning", "License classifiers are deprecated"))

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"fastvid/kernels/crop.cu", "fastvid/kernels/events.cu", "fastvid/configs/r2plus1d_18_k400.yaml",
            "fastvid/configs/quickstart.yaml", "fastvid/video/boxes.py", "fastvid/store/kinds.py", "fastvid/pipeline/contract.py"} <= set(names)
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in meta and "Classifier: Programming Language :: Python :: 3" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    dali = [line for line in requires if "nvidia-dali" in line]
    assert dali and all("extra ==" in line and "platform_system" in line for line in dali)
    assert all("extra ==" in line for line in requires if "cupy" in line)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _view_without_dali(tmp_path / "view")
    site_dir = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    (site_dir / "zz_env_view.pth").write_text(str(tmp_path / "view") + "\n")

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHONPATH", "VIRTUAL_ENV"))}
    clean.update(OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    probe = subprocess.run([str(py), "-c", "import nvidia.dali"], capture_output=True, text=True, env=clean)
    assert probe.returncode != 0 and "dali" in probe.stderr  # DALI is hidden from this venv

    # pip from this environment, installing into the venv; --no-index: nothing may be downloaded.
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-index", str(wheel)],
                       capture_output=True, text=True, timeout=600, env=clean)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]

    out = tmp_path / "run"
    r = subprocess.run(
        [str(py), "-m", "fastvid", "train", "--config", "quickstart", "--data-path", str(shard_root), "--output-dir", str(out),
         "--device", "cpu", "--epochs", "1", "--max-steps-per-epoch", "1", "-j", "0", "--tensorboard", "none"],
        capture_output=True, text=True, timeout=600, env=clean, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["backend"] == "pyav" and row["steps"] == 1
    where = subprocess.run([str(py), "-c", "import fastvid; print(fastvid.__file__)"], capture_output=True, text=True,
                           env=clean, cwd=tmp_path).stdout
    assert where.startswith(str(env_dir))  # the installed copy ran, not this checkout
    env_report = subprocess.run([str(py), "-m", "fastvid", "env"], capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert "-- DALI backend" in env_report.stdout and "pip install 'fastvid[dali]'" in env_report.stdout
