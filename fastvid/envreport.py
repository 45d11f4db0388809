"""`fastvid env`: which loader backends, GPU libraries and logging sinks this environment can use,
and the command that adds each missing one.

`environment_report()` returns plain `Check` rows (no printing), so another command (e.g. a
`fastvid doctor --env`) can show the same report; `format_report()` renders them as text.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Check:
    name: str          # what was checked, e.g. "DALI"
    ok: bool           # usable here
    detail: str        # version, devices, or why not
    hint: str = ""     # how to add it when missing ("" when ok or nothing to do)
    group: str = ""    # "core", "backend", "gpu", "logging"


def _version(module: str) -> tuple[object | None, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a CUDA library missing under an installed package
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'not importable'}"
    return mod, getattr(mod, "__version__", "installed")


def _dali_platform() -> bool:
    """DALI publishes wheels for Linux x86_64/aarch64 only."""
    return sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64")


def environment_report() -> list[Check]:
    checks = [Check("python", True, f"{platform.python_version()} on {platform.system()} {platform.machine()}", group="core")]

    torch, ver = _version("torch")
    cuda = False
    if torch is None:
        checks.append(Check("PyTorch", False, ver, "pip install torch", "core"))
    else:
        cuda = bool(torch.cuda.is_available())
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU-only build"
        devices = f"{torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}" if cuda else "no GPU visible"
        checks.append(Check("PyTorch", True, f"{ver} ({build}; {devices})",
                            "" if cuda or torch.version.cuda else "for GPUs install a CUDA build of torch (https://pytorch.org/get-started/)",
                            "core"))

    av, ver = _version("av")
    if av is None:
        checks.append(Check("PyAV backend", False, ver, "pip install av", "backend"))
    else:
        decoders = sorted(c for c in ("h264", "vp9", "vp8") if c in getattr(av, "codecs_available", ()))
        checks.append(Check("PyAV backend", True, f"av {ver}; decoders: {', '.join(decoders) or 'none found'}", group="backend"))

    dali, ver = _version("nvidia.dali")
    if dali is None:
        hint = "pip install 'fastvid[dali]'" if _dali_platform() else "not available on this platform (DALI ships Linux wheels only); the PyAV backend is used"
        checks.append(Check("DALI backend", False, ver, hint, "backend"))
    else:
        where = "CPU (VP9 shards) and GPU (NVDEC)" if cuda else "CPU decoding of VP9 shards (no GPU visible for NVDEC)"
        checks.append(Check("DALI backend", True, f"nvidia-dali {ver}; {where}", group="backend"))

    cupy, ver = _version("cupy")
    if cupy is None:
        checks.append(Check("CuPy (CUDA kernels)", False, ver,
                            "pip install 'fastvid[gpu]' (CUDA 13: cupy-cuda13x); the Numba CPU kernels are used meanwhile", "gpu"))
    else:
        try:
            n = cupy.cuda.runtime.getDeviceCount()
            checks.append(Check("CuPy (CUDA kernels)", n > 0, f"cupy {ver}; {n} device(s)",
                                "" if n else "no CUDA device visible to CuPy", "gpu"))
        except Exception as exc:
            checks.append(Check("CuPy (CUDA kernels)", False, f"cupy {ver}; {type(exc).__name__}: {exc}",
                                "check the NVIDIA driver and that the cupy-cudaXXx wheel matches it", "gpu"))

    numba, ver = _version("numba")
    checks.append(Check("Numba (CPU kernels)", numba is not None, ver if numba is None else f"numba {ver}",
                        "" if numba is not None else "pip install numba", "gpu"))

    pynvml, ver = _version("pynvml")
    if pynvml is None:
        checks.append(Check("NVML (GPU utilization)", False, ver, "pip install nvidia-ml-py", "gpu"))
    else:
        try:
            pynvml.nvmlInit()
            checks.append(Check("NVML (GPU utilization)", True, f"{pynvml.nvmlDeviceGetCount()} GPU(s)", group="gpu"))
        except Exception as exc:
            checks.append(Check("NVML (GPU utilization)", False, f"no NVIDIA driver ({type(exc).__name__})",
                                "only needed on GPU machines", "gpu"))

    tb, ver = _version("tensorboard")
    checks.append(Check("TensorBoard", tb is not None, ver if tb is None else f"tensorboard {ver}",
                        "" if tb is not None else "pip install 'fastvid[tensorboard]'", "logging"))
    wandb, ver = _version("wandb")
    checks.append(Check("Weights & Biases", wandb is not None, ver if wandb is None else f"wandb {ver}",
                        "" if wandb is not None else "pip install 'fastvid[wandb]' (optional)", "logging"))
    return checks


def format_report(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok " if c.ok else "-- "
        lines.append(f"{mark}{c.name:<{width}}  {c.detail}")
        if c.hint and not c.ok:
            lines.append(f"   {'':<{width}}  -> {c.hint}")
        elif c.hint:
            lines.append(f"   {'':<{width}}  note: {c.hint}")
    backends = [c.name.split()[0].lower() for c in checks if c.group == "backend" and c.ok]
    lines.append(f"loader backends usable here: {', '.join(backends) or 'none'}"
                 + (" (backend='auto' takes the first of the kind's auto order (fastvid.pipeline.backends.auto_order) that can decode the shards here)" if len(backends) > 1 else ""))
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    checks = environment_report()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_report(checks))
    return 0
