"""The registry of loader backends: name -> factory and "can it decode these shards on this device?".

Every backend follows fastvid.data.contract (`epoch_chunks(epoch, work)` yields Chunk | Failure), so
the VideoLoader, `fastvid bench loader` and `fastvid doctor` treat them alike. `backend="auto"` takes
the first backend of `AUTO_ORDER[device]` that can decode the shard set on the device; videos below NVDEC's
128x128 minimum therefore fall back to a CPU decoder instead of failing on the GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch


# Preference of backend="auto", per device, by measurement.
# CPU: `fastvid bench loader` on the default set (480 VP9 videos at short side 128, 2 cores, 2026-11-30):
# PyAV workers 78 clips/s, DALI fed the work list 31 clips/s, so PyAV comes first; DALI's CPU decoder
# reads only VP8/VP9 anyway. GPU ordering unmeasured: no GPU has run the comparison with the NVDEC
# candidates yet, so the current default (DALI, then a CPU decoder) is kept, the candidates between them;
# reorder once `bench/gpu_check.sh` has measured them.
AUTO_ORDER = {
    "cpu": ("pyav", "dali"),
    "cuda": ("dali", "pynvvideocodec", "spdl", "torchcodec", "pyav"),
}


@dataclass(frozen=True)
class BackendOptions:
    videos_per_chunk: int      # videos per backend step (the rebatcher cuts exact batches)
    device: str                # "cpu" or "cuda[:N]": where clips are delivered
    num_threads: int           # decode threads (DALI, threaded GPU decoders)
    num_workers: int           # decode processes (PyAV)
    dtype: torch.dtype
    channels_last: bool
    prefetch: int = 2          # chunks decoded ahead


@dataclass(frozen=True)
class BackendSpec:
    name: str
    factory: Callable          # (shard_set, clip_config, BackendOptions) -> backend with epoch_chunks(epoch, work)
    can_decode: Callable[[str | None, str, int | None, int | None], bool]  # (codec, "cpu"|"cuda", width, height)
    description: str


REGISTRY: dict[str, BackendSpec] = {}


def register(spec: BackendSpec) -> None:
    REGISTRY[spec.name] = spec


def cpu_count() -> int:
    """Cores this process may use (the default for threads and workers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose_backend(backend: str, device: str, codec: str | None, width: int | None = None, height: int | None = None) -> str:
    """'auto' -> the first backend of AUTO_ORDER[device] that can decode (codec, width x height) on device ('cpu'|'cuda')."""
    names = ("auto", *REGISTRY)
    if backend not in names:
        raise ValueError(f"unknown backend {backend!r}; choose one of {names}")
    if backend != "auto":
        return backend
    for name in AUTO_ORDER["cpu" if device == "cpu" else "cuda"]:
        if name in REGISTRY and REGISTRY[name].can_decode(codec, device, width, height):
            return name
    return "pyav"


def create(name: str, shard_set, config, options: BackendOptions):
    return REGISTRY[name].factory(shard_set, config, options)


# ---- the backends -------------------------------------------------------------------------------------

def _dali(shard_set, config, o: BackendOptions):
    from fastvid.data.dali_backend import DALIBackend

    return DALIBackend(shard_set, config, videos_per_chunk=o.videos_per_chunk, device=o.device, num_threads=o.num_threads,
                       dtype=torch.float16 if o.dtype == torch.float16 else torch.float32, channels_last=o.channels_last,
                       prefetch=o.prefetch)


def _dali_can_decode(codec, device, width, height):
    from fastvid.data.dali_backend import can_decode

    return can_decode(codec, device, width, height)


def _pyav(shard_set, config, o: BackendOptions):
    from fastvid.data.pyav_backend import PyAVBackend

    return PyAVBackend(shard_set, config, videos_per_chunk=o.videos_per_chunk, num_workers=o.num_workers, device=o.device,
                       dtype=o.dtype, channels_last=o.channels_last, prefetch=max(2, o.prefetch))


def _threaded(decoder_module: str):
    def factory(shard_set, config, o: BackendOptions):
        import importlib

        from fastvid.data.threaded_backend import ThreadedBackend

        mod = importlib.import_module(decoder_module)
        return ThreadedBackend(shard_set, config, mod.make_decoder, videos_per_chunk=o.videos_per_chunk, device=o.device,
                               num_threads=o.num_threads, dtype=o.dtype, channels_last=o.channels_last, prefetch=o.prefetch,
                               decode_device=mod.DECODE_DEVICE)

    return factory


def _can(decoder_module: str):
    def can_decode(codec, device, width, height):
        import importlib

        return importlib.import_module(decoder_module).can_decode(codec, device, width, height)

    return can_decode


register(BackendSpec("dali", _dali, _dali_can_decode,
                     "one DALI pipeline fed the work list; NVDEC (device cuda) or DALI's CPU decoder (VP8/VP9)"))
register(BackendSpec("pyav", _pyav, lambda codec, device, w, h: True,
                     "PyAV (bundled FFmpeg) in persistent DataLoader worker processes; every codec, CPU"))
register(BackendSpec("pyav-threads", _threaded("fastvid.data.decoders.pyav_frames"), _can("fastvid.data.decoders.pyav_frames"),
                     "PyAV in a thread pool (one decoder per thread; the GIL is released while decoding)"))
register(BackendSpec("pynvvideocodec", _threaded("fastvid.data.decoders.pynvvideocodec"), _can("fastvid.data.decoders.pynvvideocodec"),
                     "NVIDIA PyNvVideoCodec SimpleDecoder per thread (NVDEC; bundled demuxer, no system FFmpeg)"))
register(BackendSpec("torchcodec", _threaded("fastvid.data.decoders.torchcodec"), _can("fastvid.data.decoders.torchcodec"),
                     "torchcodec VideoDecoder(device='cuda') (NVDEC; needs FFmpeg libraries on the system)"))
register(BackendSpec("spdl", _threaded("fastvid.data.decoders.spdl"), _can("fastvid.data.decoders.spdl"),
                     "SPDL demux + NVDEC decode (thread-local decoders; needs FFmpeg libraries on the system)"))
