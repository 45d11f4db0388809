"""Shared benchmark plumbing: the machine description stored with every result, and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path


def device_info() -> dict:
    """What the numbers were measured on: CPU, cores, GPU (if any) and library versions."""
    import psutil

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpu": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "gpu": None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["host_cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for name, module in (("torch", "torch"), ("dali", "nvidia.dali"), ("av", "av"), ("numba", "numba"), ("cupy", "cupy")):
        try:
            mod = __import__(module, fromlist=["__version__"])
            info[name] = getattr(mod, "__version__", "?")
        except Exception:
            info[name] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    info["device"] = info["gpu"] or f"CPU: {info['host_cpu']} ({info['cpu_cores']} cores)"
    return info


def write_json(result: dict, path: str | os.PathLike | None) -> None:
    """Write `result` atomically to `path` (no-op for None); '-' prints it."""
    text = json.dumps(result, indent=2, default=str)
    if path is None:
        return
    if str(path) == "-":
        print(text)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
