"""The registry of loader backends: (kind, name) -> factory and "can it decode these shards on this device?".

Every backend follows fastvid.pipeline.contract (`epoch_chunks(epoch, work)` yields Chunk | Failure), so
loaders, `fastvid bench loader` and `fastvid doctor` treat them alike. A kind with a choice of decoders
registers them and its `auto` preference per device here (the video kind: fastvid.video.kind; the events
kind has one backend, fastvid.events.backend.EventBackend, and builds it directly); `backend="auto"` takes the
first backend of that order that can decode the set on the device (so videos below NVDEC's 128x128
minimum fall back to a CPU decoder instead of failing on the GPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from typing import Any


@dataclass(frozen=True)
class BackendOptions:
    videos_per_chunk: int      # videos per backend step (the rebatcher cuts exact batches)
    device: str                # "cpu" or "cuda[:N]": where clips are delivered
    num_threads: int           # decode threads (DALI, threaded GPU decoders)
    num_workers: int           # decode processes (PyAV)
    dtype: Any                 # torch dtype of the delivered tensors
    channels_last: bool
    prefetch: int = 2          # chunks decoded ahead


@dataclass(frozen=True)
class BackendSpec:
    kind: str                  # the data kind it reads ("video", "events")
    name: str
    factory: Callable          # (sample table, kind config, BackendOptions) -> backend with epoch_chunks(epoch, work)
    can_decode: Callable[[str | None, str, int | None, int | None], bool]  # (codec, "cpu"|"cuda", width, height)
    description: str


_REGISTRY: dict[tuple[str, str], BackendSpec] = {}
_AUTO_ORDER: dict[tuple[str, str], tuple[str, ...]] = {}  # (kind, "cpu"|"cuda") -> preference of backend="auto"


def register(spec: BackendSpec) -> None:
    _REGISTRY[(spec.kind, spec.name)] = spec


def set_auto_order(kind: str, device: str, names: tuple[str, ...]) -> None:
    _AUTO_ORDER[(kind, device)] = tuple(names)


def auto_order(kind: str, device: str) -> tuple[str, ...]:
    return _AUTO_ORDER.get((kind, "cpu" if device == "cpu" else "cuda"), ())


def names(kind: str) -> list[str]:
    return [name for k, name in _REGISTRY if k == kind]


def spec(kind: str, name: str) -> BackendSpec:
    if (kind, name) not in _REGISTRY:
        raise ValueError(f"unknown {kind} backend {name!r}; choose one of {('auto', *names(kind))}")
    return _REGISTRY[(kind, name)]


def cpu_count() -> int:
    """Cores this process may use (the default for threads and workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_backend(kind: str, backend: str, device: str, codec: str | None, width: int | None = None,
                   height: int | None = None) -> str:
    """'auto' -> the first backend of the kind's auto order on `device` ('cpu'|'cuda') that can decode
    (codec, width x height); a named backend is checked to exist."""
    if backend != "auto":
        return spec(kind, backend).name
    order = auto_order(kind, device)
    for name in order:
        if (kind, name) in _REGISTRY and _REGISTRY[(kind, name)].can_decode(codec, device, width, height):
            return name
    if not order:
        raise ValueError(f"no {kind} backend is registered for {device}")
    return order[-1]  # the last of the order is the kind's decoder of last resort


def create(kind: str, name: str, table, config, options: BackendOptions):
    return spec(kind, name).factory(table, config, options)
