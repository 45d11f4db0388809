"""Resource sampling for benchmarks, training metrics and `fastvid profile`.

`ResourceSampler` runs a daemon thread that samples CPU% and RSS (psutil, this process and its
children) and, when NVML is usable, GPU utilization, memory and SM clock (pynvml).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


def _nvml_handle_for_cuda_index(pynvml, index, count: int):
    """The NVML handle of CUDA device `index`, or None. NVML numbers every GPU of the machine and
    ignores CUDA_VISIBLE_DEVICES, so under e.g. CUDA_VISIBLE_DEVICES=4,5 (SLURM, per-rank pinning)
    CUDA device 0 is NVML device 4; entries may also be GPU UUIDs."""
    index = int(index or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if index >= len(entries):
            return None
        entry = entries[index]
        if not entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByUUID(entry)
        index = int(entry)
    return pynvml.nvmlDeviceGetHandleByIndex(index) if index < count else None


def _nvml_handles(indices=None):
    """NVML handles of all GPUs, or of the CUDA devices `indices` (CUDA numbering)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        if indices is None:
            return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        handles = [_nvml_handle_for_cuda_index(pynvml, i, count) for i in indices]
        return pynvml, [h for h in handles if h is not None]
    except Exception:  # no driver, no GPU, or nvidia-ml-py missing: GPU columns stay empty
        return None, []


@dataclass
class Sample:
    t: float
    cpu_percent: float
    rss_bytes: int
    gpu_util: list = field(default_factory=list)
    gpu_mem_bytes: list = field(default_factory=list)
    sm_clock_mhz: list = field(default_factory=list)


class ResourceSampler:
    """Context manager: `with ResourceSampler(interval=0.2) as s: ...; s.summary()`."""

    def __init__(self, interval: float = 0.2, pid: int | None = None, gpu_indices=None, keep_samples: bool = False):
        import psutil

        self.interval = interval
        self.process = psutil.Process(pid)
        self.keep_samples = keep_samples
        self.samples: list[Sample] = []
        self._nvml, self._handles = _nvml_handles(gpu_indices)
        self._known = {}
        self._stop = threading.Event()
        self._thread = None
        self._n = 0
        self._cpu_sum = 0.0
        self._gpu_sum = 0.0
        self._gpu_n = 0
        self._rss_max = 0
        self._gpu_mem_max = 0

    def _procs(self):
        # Keep one Process object per pid: psutil's cpu_percent(None) measures since the previous
        # call on the same object, so fresh objects for children would always read 0%.
        try:
            children = self.process.children(recursive=True)
        except Exception:
            children = []
        alive = {self.process.pid: self.process}
        for child in children:
            alive[child.pid] = self._known.get(child.pid, child)
        self._known = alive
        return list(alive.values())

    def _cpu_and_rss(self, procs):
        cpu, rss = 0.0, 0
        for p in procs:
            try:
                cpu += p.cpu_percent(None)
                rss += p.memory_info().rss
            except Exception:
                pass
        return cpu, rss

    def sample_once(self) -> Sample:
        cpu, rss = self._cpu_and_rss(self._procs())
        s = Sample(time.time(), cpu, rss)
        for h in self._handles:
            try:
                s.gpu_util.append(float(self._nvml.nvmlDeviceGetUtilizationRates(h).gpu))
                s.gpu_mem_bytes.append(int(self._nvml.nvmlDeviceGetMemoryInfo(h).used))
                s.sm_clock_mhz.append(float(self._nvml.nvmlDeviceGetClockInfo(h, self._nvml.NVML_CLOCK_SM)))
            except Exception:
                pass
        return s

    def _loop(self):
        self._cpu_and_rss(self._procs())  # prime psutil's cpu_percent
        while not self._stop.wait(self.interval):
            s = self.sample_once()
            self._n += 1
            self._cpu_sum += s.cpu_percent
            self._rss_max = max(self._rss_max, s.rss_bytes)
            if s.gpu_util:
                self._gpu_sum += sum(s.gpu_util) / len(s.gpu_util)
                self._gpu_n += 1
                self._gpu_mem_max = max(self._gpu_mem_max, max(s.gpu_mem_bytes))
            if self.keep_samples:
                self.samples.append(s)

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fastvid-resource-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.summary()

    def summary(self) -> dict:
        return {
            "cpu_percent": round(self._cpu_sum / self._n, 1) if self._n else None,
            "rss_max_bytes": self._rss_max or None,
            "gpu_util_mean": round(self._gpu_sum / self._gpu_n, 1) if self._gpu_n else None,
            "gpu_mem_max_bytes": self._gpu_mem_max or None,
            "num_samples": self._n,
        }

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
