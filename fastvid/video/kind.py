"""The video kind plugs into the core here: its set reader (fastvid.store.kinds), its loader backends
(fastvid.pipeline.backends), its models (fastvid.train.models) and `fastvid shard videos`.

Imported by the package root; everything heavy is imported inside the functions, so registering costs
nothing.
"""

from __future__ import annotations

import collections

from fastvid.pipeline import backends
from fastvid.store import kinds
from fastvid.store.inspect import histogram_lines
from fastvid.train import models

KIND = "video"


class VideoReader(kinds.KindReader):
    kind = KIND

    def open(self, opened):
        from fastvid.video.reader import video_shard_set

        return video_shard_set(opened)

    # What the clip planner (fastvid.video.plan) and the backend choice read of a sample's json, kept per
    # shard so that opening a set reads no sample json; `label` lets a set without a manifest name its classes.
    PLANNING_FIELDS = ("num_frames", "fps", "width", "height", "duration", "codec", "label")

    def sample_metadata(self, key: str, components: dict[str, bytes], where: str) -> dict:
        meta = self.sample_json(key, components, where)
        return {name: meta[name] for name in self.PLANNING_FIELDS if name in meta}

    def inspect_sample(self, key, fields, info, acc, verify):
        from fastvid.video.reader import VIDEO_EXTS

        for name in ("per_class", "codecs", "containers", "resolutions", "fps"):
            acc.setdefault(name, collections.Counter())
        problems = []
        label = None
        if "cls" in fields:
            try:
                label = int(fields["cls"])
            except ValueError:
                problems.append(f"{key}.cls is not an integer")
        if info is not None:
            if label is None and isinstance(info.get("label"), int):
                label = info["label"]
            elif verify and "label" in info and info["label"] != label:
                problems.append(f"{key}: cls {label} but json label {info['label']}")
            for name, field in (("codecs", "codec"), ("containers", "container")):
                if info.get(field):
                    acc[name][info[field]] += 1
            if info.get("width") and info.get("height"):
                acc["resolutions"][f"{info['width']}x{info['height']}"] += 1
            if info.get("fps"):
                acc["fps"][f"{float(info['fps']):.3f}".rstrip("0").rstrip(".")] += 1
            if isinstance(info.get("num_frames"), int):
                acc.setdefault("frames", []).append(info["num_frames"])
            if info.get("duration"):
                acc.setdefault("durations", []).append(float(info["duration"]))
        if label is not None:
            acc["per_class"][label] += 1
        if verify:
            videos = set(VIDEO_EXTS) & set(fields)
            missing = [c for c in ("cls", "json") if c not in fields]
            if not videos:
                missing.append("mp4/webm")
            elif any(fields[e] == 0 for e in videos):
                problems.append(f"{key}: empty video")
            if missing:
                problems.append(f"{key}: missing {', '.join(missing)}")
        return problems

    def inspect_summary(self, acc, classes):
        per_class = acc.get("per_class", collections.Counter())
        frames = acc.get("frames", [])

        def name_of(label):
            return classes[label] if 0 <= label < len(classes) else f"<label {label} not in classes>"

        return {
            "samples_per_class": {name_of(label): n for label, n in sorted(per_class.items())},
            "empty_classes": [c for i, c in enumerate(classes) if per_class[i] == 0],
            "codecs": dict(acc.get("codecs", {})),
            "containers": dict(acc.get("containers", {})),
            "resolutions": dict(acc.get("resolutions", collections.Counter()).most_common()),
            "fps": dict(acc.get("fps", collections.Counter()).most_common()),
            "frames": {"min": min(frames), "mean": round(sum(frames) / len(frames), 1), "max": max(frames)} if frames else None,
            "total_duration_s": round(sum(acc.get("durations", [])), 2),
        }

    def inspect_lines(self, summary):
        lines = [f"{summary['total_duration_s']:.1f} s of video"]
        if summary["frames"]:
            f = summary["frames"]
            lines.append(f"frames per clip: min {f['min']}, mean {f['mean']}, max {f['max']}")
        if summary["codecs"]:
            lines.append("codecs: " + ", ".join(f"{k} {v}" for k, v in summary["codecs"].items()))
        per_class = summary["samples_per_class"]
        if per_class:
            counts = list(per_class.values())
            lines.append(f"samples per class: min {min(counts)}, max {max(counts)}")
            lines += histogram_lines("samples per class", per_class, limit=20)
        if summary["empty_classes"]:
            lines.append(f"classes with no samples: {summary['empty_classes'][:10]}")
        lines += histogram_lines("resolution (WxH)", summary["resolutions"])
        lines += histogram_lines("fps", summary["fps"])
        return lines


# ---- loader backends ------------------------------------------------------------------------------

def _dali(shard_set, config, o: backends.BackendOptions):
    import torch

    from fastvid.video.dali_backend import DALIBackend

    return DALIBackend(shard_set, config, videos_per_chunk=o.videos_per_chunk, device=o.device, num_threads=o.num_threads,
                       dtype=torch.float16 if o.dtype == torch.float16 else torch.float32, channels_last=o.channels_last,
                       prefetch=o.prefetch)


def _dali_can_decode(codec, device, width, height):
    from fastvid.video.dali_backend import can_decode

    return can_decode(codec, device, width, height)


def _pyav(shard_set, config, o: backends.BackendOptions):
    from fastvid.video.pyav_backend import PyAVBackend

    return PyAVBackend(shard_set, config, videos_per_chunk=o.videos_per_chunk, num_workers=o.num_workers, device=o.device,
                       dtype=o.dtype, channels_last=o.channels_last, prefetch=max(2, o.prefetch))


def _threaded(shard_set, config, o: backends.BackendOptions, decoder):
    from fastvid.video.threaded_backend import ThreadedBackend

    return ThreadedBackend(shard_set, config, decoder.make_decoder, videos_per_chunk=o.videos_per_chunk, device=o.device,
                           num_threads=o.num_threads, dtype=o.dtype, channels_last=o.channels_last, prefetch=o.prefetch,
                           decode_device=decoder.DECODE_DEVICE)


def _pyav_frames():
    from fastvid.video.decoders import pyav_frames

    return pyav_frames


def _pynvvideocodec():
    from fastvid.video.decoders import pynvvideocodec

    return pynvvideocodec


def _torchcodec():
    from fastvid.video.decoders import torchcodec

    return torchcodec


def _spdl():
    from fastvid.video.decoders import spdl

    return spdl


def _register_threaded(name: str, decoder_module, description: str) -> None:
    backends.register(backends.BackendSpec(
        KIND, name, lambda table, config, o: _threaded(table, config, o, decoder_module()),
        lambda codec, device, w, h: decoder_module().can_decode(codec, device, w, h), description))


def _load_models() -> None:
    from fastvid.video.models import s3d, tsm, video_resnet  # noqa: F401 (their decorators register them)


def _shard_arguments(parser) -> None:
    from fastvid.video import cli

    cli.add_arguments(parser)


def _shard_run(args) -> int:
    from fastvid.video import cli

    return cli.run(args)


kinds.register_reader(VideoReader())
kinds.register_shard_command(kinds.ShardCommand(
    "videos", "video files or frame folders -> video shards", _shard_arguments, _shard_run))
backends.register(backends.BackendSpec(
    KIND, "dali", _dali, _dali_can_decode,
    "one DALI pipeline fed the work list; NVDEC (device cuda) or DALI's CPU decoder (VP8/VP9)"))
backends.register(backends.BackendSpec(
    KIND, "pyav", _pyav, lambda codec, device, w, h: True,
    "PyAV (bundled FFmpeg) in persistent DataLoader worker processes; every codec, CPU"))
_register_threaded("pyav-threads", _pyav_frames, "PyAV in a thread pool (one decoder per thread; the GIL is released while decoding)")
_register_threaded("pynvvideocodec", _pynvvideocodec,
                   "NVIDIA PyNvVideoCodec SimpleDecoder per thread (NVDEC; bundled demuxer, no system FFmpeg)")
_register_threaded("torchcodec", _torchcodec, "torchcodec VideoDecoder(device='cuda') (NVDEC; needs FFmpeg libraries on the system)")
_register_threaded("spdl", _spdl, "SPDL demux + NVDEC decode (thread-local decoders; needs FFmpeg libraries on the system)")
# Preference of backend="auto", per device, by measurement.
# CPU: `fastvid bench loader` on the default set (480 VP9 videos at short side 128, 2-core Intel Xeon,
# 2026-12-07, bench/results/loader-cpu-short128.json): DALI's CPU decoder fed the work list 111.6 clips/s
# (1.93 cores busy, first batch 0.31 s), PyAV workers 79.9 (1.51 cores, 1.45 s), so DALI comes first for
# the codecs it reads (VP8/VP9); PyAV takes every other codec, and machines without DALI. `fastvid
# quickstart` agrees (255 s with DALI, 283 s with PyAV). GPU ordering unmeasured: no GPU has run the
# comparison with the NVDEC candidates yet, so the current default (DALI, then a CPU decoder) is kept,
# the candidates between them; reorder once `bench/gpu_check.sh` has measured them. The last entry
# decodes everything (last resort).
backends.set_auto_order(KIND, "cpu", ("dali", "pyav"))
backends.set_auto_order(KIND, "cuda", ("dali", "pynvvideocodec", "spdl", "torchcodec", "pyav"))
models.add_model_source(_load_models)
