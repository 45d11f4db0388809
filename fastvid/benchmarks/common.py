"""Shared benchmark plumbing: the machine description stored with every result, and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
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
    if path is None:
        return
    if str(path) == "-":
        print(json.dumps(result, indent=2, default=str))
        return
    from fastvid.store.manifest import write_json_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(result, path, default=str)


def kernel_devices(device: str, bench_name: str) -> list[str]:
    """Devices a CuPy/Numba kernel benchmark runs on: 'auto' -> CPU, plus CUDA when a GPU and CuPy are there."""
    from fastvid import _gpu

    gpu = _gpu.cuda_available() and _gpu.cupy_available()
    if device == "cpu":
        return ["cpu"]
    if device == "cuda":
        if not gpu:
            raise RuntimeError(f"bench {bench_name} --device cuda: no CUDA GPU with CuPy is visible")
        return ["cuda"]
    return ["cpu", "cuda"] if gpu else ["cpu"]


def median_seconds(fns: dict, repeats: int, sync=None, with_min=False):
    """Round-robin timing of several callables (interleaved so load spikes hit all of them alike).

    Returns {name: median seconds}, and also {name: fastest seconds} with `with_min`."""
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up: compilation, caches, allocator
        fn()
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return (median, {name: min(ts) for name, ts in times.items()}) if with_min else median
