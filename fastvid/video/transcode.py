"""Video probing, remuxing (`--codec copy`) and re-encoding (h264/vp9) with PyAV, into bytes.

Every function returns the encoded container bytes together with the metadata stored in the
sample's `json` (fps as a float from the exact stream rate, frame count actually written, size,
codec, duration), so the manifest never repeats what a container header claims without checking.
Re-encoding resamples frames on their timestamps to a constant rate (variable frame-rate inputs and
29.97 fps come out with correct metadata), resizes keeping the aspect ratio with even dimensions,
and uses a short keyframe interval so a loader can seek cheaply.
"""

from __future__ import annotations

import dataclasses
import fractions
import io
import re
from pathlib import Path
from typing import Iterator

from fastvid.video.sources import IMAGE_SUFFIXES

CODECS = ("vp9", "h264", "copy")
ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9"}
CONTAINERS = {"h264": "mp4", "vp9": "webm"}
# Bitexact muxing: no random track UIDs or version tags, so the same clip always gives the same bytes
# (reruns, node counts and engines produce identical shards).
MUX_OPTIONS = {"fflags": "+bitexact"}
# `--codec copy` always remuxes into MP4 so a shard set has one video extension ("mp4").
COPY_CONTAINER = "mp4"
# A file yielding fewer frames than its container promises (minus this slack) is reported as truncated.
TRUNCATION_SLACK = 0.02


@dataclasses.dataclass(frozen=True)
class TranscodeOptions:
    codec: str = "vp9"            # vp9 | h264 | copy
    short_side: int | None = None  # resize so min(H, W) == short_side (aspect kept, even dims)
    fps: float | None = None       # output frame rate (default: the source's)
    gop: int = 8                   # keyframe interval in frames: small = cheap random access
    crf: int | None = None         # quality (default: 23 for h264, 32 for vp9)
    preset: str = "veryfast"       # libx264 preset
    frames_fps: float | None = None  # frame rate of image-folder inputs
    threads: int = 0               # codec threads per clip (0: FFmpeg's choice, measured fastest even with workers)

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"--codec {self.codec!r}: expected one of {CODECS}")
        if self.short_side is not None and (self.short_side < 2 or self.short_side % 2):
            raise ValueError(f"--short-side {self.short_side}: must be an even number >= 2")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"--fps {self.fps}: must be > 0")
        if self.gop < 1:
            raise ValueError(f"--gop {self.gop}: must be >= 1")
        if self.codec == "copy" and (self.short_side or self.fps):
            raise ValueError("--codec copy keeps the original stream: --short-side and --fps need --codec h264 or vp9")


# Muxers in bit-exact mode: Matroska/WebM track and segment UIDs come from the track numbers instead of
# a random generator, and no version strings are written, so the same input gives the same bytes.
MUX_OPTIONS = {"fflags": "+bitexact"}


def exact_rate(fps: float | fractions.Fraction) -> fractions.Fraction:
    """Exact rational rate; 29.97 -> 30000/1001 (NTSC, not 2997/100), 25.0 -> 25."""
    if isinstance(fps, fractions.Fraction):
        return fps
    ntsc = float(fps) * 1.001
    if abs(ntsc - round(ntsc)) < 1e-3 and abs(float(fps) - round(float(fps))) > 1e-3:
        return fractions.Fraction(round(ntsc) * 1000, 1001)
    return fractions.Fraction(float(fps)).limit_denominator(1001)


def stream_rate(stream) -> fractions.Fraction | None:
    """The stream's frame rate: the exact nominal rate when it agrees with the average, else the average (VFR)."""
    average = stream.average_rate
    nominal = stream.base_rate or stream.guessed_rate
    if average and nominal and abs(float(average) - float(nominal)) <= 0.01 * float(nominal):
        return fractions.Fraction(nominal)
    if average:
        return exact_rate(float(average))
    return fractions.Fraction(nominal) if nominal else None


def output_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(W, H) after resizing so the short side is `short_side`, aspect kept, both even (>= 2)."""
    if short_side:
        scale = short_side / min(width, height)
        w, h = width * scale, height * scale
        w = short_side if width <= height else max(2, int(round(w / 2)) * 2)
        h = short_side if height < width else max(2, int(round(h / 2)) * 2)
        return w, h
    return max(2, width // 2 * 2), max(2, height // 2 * 2)


def _open_video(path):
    import av

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise ValueError(f"cannot open: {getattr(exc, 'strerror', None) or exc}") from None
    if not container.streams.video:
        container.close()
        raise ValueError("no video stream")
    return container, container.streams.video[0]


def probe(path) -> dict:
    """Codec, size, rate and counted frames (packets demuxed, no decode) of a video file."""
    container, stream = _open_video(path)
    with container:
        rate = stream_rate(stream)
        count = sum(1 for packet in container.demux(stream) if packet.size and packet.dts is not None)
        return {"codec": stream.codec_context.name, "width": stream.codec_context.width, "height": stream.codec_context.height,
                "fps": float(rate) if rate else None, "num_frames": count, "container_frames": stream.frames,
                "duration": count / float(rate) if rate else None}


def _check_not_truncated(count: int, promised: int, what: str) -> None:
    if promised and count < promised * (1 - TRUNCATION_SLACK) - 1:
        raise ValueError(f"truncated or corrupt: only {count} of the {promised} frames in the container index are {what}")


def remux(path, start: float | None = None, end: float | None = None) -> tuple[bytes, dict]:
    """Original compressed video packets in a fresh MP4 (no audio), optionally cut to [start, end) s.

    Cutting without re-encoding starts at the keyframe at or before `start`."""
    import av

    container, stream = _open_video(path)
    with container:
        rate = stream_rate(stream)
        codec_name = stream.codec_context.name
        fmt = COPY_CONTAINER
        buf = io.BytesIO()
        tb = stream.time_base
        count = 0
        first_dts = None
        if start:
            container.seek(int(start / tb), stream=stream, backward=True, any_frame=False)
        with av.open(buf, "w", format=fmt, options=MUX_OPTIONS) as out:
            try:
                out_stream = out.add_stream_from_template(stream)
            except (av.error.FFmpegError, ValueError) as exc:
                raise ValueError(f"cannot copy a {codec_name} stream into {fmt} ({exc}); use --codec h264 or vp9") from None
            try:
                for packet in container.demux(stream):
                    if packet.dts is None or not packet.size:
                        continue
                    t = float(packet.pts * tb) if packet.pts is not None else None
                    if first_dts is None:
                        if start and not packet.is_keyframe:
                            continue
                        first_dts = packet.dts
                    if end is not None and t is not None and t >= end:
                        break
                    # Shift so the clip starts at zero whatever the source offset was.
                    packet.dts -= first_dts
                    if packet.pts is not None:
                        packet.pts -= first_dts
                    packet.stream = out_stream
                    out.mux(packet)
                    count += 1
            except av.error.FFmpegError as exc:
                raise ValueError(f"corrupt stream after {count} frames ({exc})") from None
        if count == 0:
            raise ValueError("no video packets to copy")
        if start is None and end is None:
            _check_not_truncated(count, stream.frames, "readable")
        fps = float(rate) if rate else None
        meta = {"fps": fps, "num_frames": count, "width": stream.codec_context.width, "height": stream.codec_context.height,
                "codec": codec_name, "duration": count / fps if fps else None, "container": fmt}
    return buf.getvalue(), meta


def _decoded_frames(path, start: float | None, end: float | None, threads: int = 0) -> Iterator[tuple[float, object]]:
    """(time in s from clip start, av.VideoFrame) of a video file, cut to [start, end) when given."""
    import av

    container, stream = _open_video(path)
    with container:
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        rate = stream_rate(stream) or fractions.Fraction(25)
        if start:
            container.seek(int(start / stream.time_base), stream=stream, backward=True, any_frame=False)
        offset = None
        index = 0
        before_start = None  # the frame on screen at `start` when no frame starts exactly there
        try:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else index / float(rate)
                index += 1
                if start is not None and t < start - 1e-6:
                    before_start = frame
                    continue
                if end is not None and t >= end - 1e-6:
                    break
                if offset is None:
                    offset = t if start is None else start
                    if before_start is not None and t > start + 1e-6:
                        yield 0.0, before_start
                    before_start = None
                yield t - offset, frame
        except av.error.FFmpegError as exc:
            raise ValueError(f"corrupt stream after {index} decoded frames ({exc})") from None
        if start is None and end is None:
            _check_not_truncated(index, stream.frames, "decodable")


def _image_frames(folder, fps: float) -> Iterator[tuple[float, object]]:
    """(i / fps, av.VideoFrame) for the images of a frame folder in natural order."""
    import av

    for i, path in enumerate(list_frame_files(folder)):
        try:
            with av.open(str(path)) as c:
                frame = next(c.decode(video=0))
        except (av.error.FFmpegError, StopIteration) as exc:
            raise ValueError(f"unreadable frame image {path.name} ({exc})") from None
        yield i / fps, frame


def natural_key(name: str):
    """Sort key putting img_2 before img_10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def list_frame_files(folder) -> list[Path]:
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def resample_times(times: Iterator[tuple[float, object]], rate: fractions.Fraction, single_duration: float | None = None,
                   duration: float | None = None):
    """Constant-rate resampling: yield the source item on screen at each output time i/rate.

    Source item k is on screen from its timestamp until the next one (the last one as long as the
    gap before it; a lone item for `single_duration`, default one output step),
    so a source already at `rate` maps 1:1, a faster one drops frames and a slower or variable-rate
    one repeats frames. Output stops at `duration` s when given (a cut clip). A small tolerance absorbs
    timestamp rounding (e.g. 29.97 fps in ms)."""
    step = 1.0 / float(rate)
    eps = 1e-3 * step
    limit = float("inf") if duration is None else duration - eps
    out_index = 0
    prev_t, prev, gap = None, None, None
    for t, item in times:
        if prev is not None:
            while out_index * step < min(t - eps, limit):
                yield prev
                out_index += 1
            gap = t - prev_t
        prev_t, prev = t, item
    if prev is not None:
        end = prev_t + (gap if gap is not None else single_duration if single_duration is not None else step)
        while out_index * step < min(end - eps, limit):
            yield prev
            out_index += 1


def encode_frames(frames: Iterator[tuple[float, object]], src_rate: fractions.Fraction, options: TranscodeOptions,
                  duration: float | None = None) -> tuple[bytes, dict]:
    """Encode timed av.VideoFrames to options.codec at options.fps (or src_rate); returns (bytes, meta)."""
    import av

    encoder = ENCODERS[options.codec]
    fmt = CONTAINERS[options.codec]
    rate = exact_rate(options.fps) if options.fps else src_rate
    if options.codec == "h264":
        # No B-frames: decode order == display order, so a seek to any keyframe gives frame-exact clips.
        codec_options = {"crf": str(23 if options.crf is None else options.crf), "preset": options.preset,
                         "x264-params": f"keyint={options.gop}:min-keyint={options.gop}:scenecut=0:bframes=0"}
    else:
        # Realtime mode: no hidden alt-ref frames, so one WebM block per shown frame.
        codec_options = {"crf": str(32 if options.crf is None else options.crf), "b": "0", "deadline": "realtime",
                         "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0"}
    buf = io.BytesIO()
    count = 0
    source_size = None
    with av.open(buf, "w", format=fmt, options=MUX_OPTIONS) as out:
        stream = None
        time_base = fractions.Fraction(rate.denominator, rate.numerator)
        for frame in resample_times(frames, rate, single_duration=1.0 / float(src_rate), duration=duration):
            if stream is None:
                source_size = (frame.width, frame.height)
                width, height = output_size(frame.width, frame.height, options.short_side)
                stream = out.add_stream(encoder, rate=rate, options=codec_options)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.gop_size = options.gop
                if options.threads:
                    stream.codec_context.thread_count = options.threads
                shrinking = width * height < frame.width * frame.height
                interpolation = "AREA" if shrinking else "BICUBIC"
            # Convert full-range (JPEG, yuvj*) input to the limited range the encoders tag their output with.
            src_range = frame.color_range or (2 if frame.format.name.startswith("yuvj") else None)
            out_frame = frame.reformat(width=width, height=height, format="yuv420p", interpolation=interpolation,
                                       src_color_range=src_range, dst_color_range=1 if src_range else None)
            out_frame.pts = count
            # Decoded frames keep their source picture type and encoders honour an I there as a forced
            # keyframe; clear it so keyframes fall exactly every `gop` frames.
            out_frame.pict_type = 0
            out_frame.time_base = time_base
            for packet in stream.encode(out_frame):
                out.mux(packet)
            count += 1
        if stream is None:
            raise ValueError("no decodable video frames")
        for packet in stream.encode():
            out.mux(packet)
    fps = float(rate)
    meta = {"fps": fps, "num_frames": count, "width": width, "height": height, "codec": options.codec,
            "duration": count / fps, "container": fmt, "source_width": source_size[0], "source_height": source_size[1]}
    return buf.getvalue(), meta


def transcode(path, options: TranscodeOptions, start: float | None = None, end: float | None = None) -> tuple[bytes, dict]:
    """Re-encode a video file (cut to [start, end) s when given)."""
    container, stream = _open_video(path)
    with container:
        src_rate = stream_rate(stream) or fractions.Fraction(25)
        src_codec = stream.codec_context.name
    duration = end - (start or 0.0) if end is not None else None
    data, meta = encode_frames(_decoded_frames(path, start, end, options.threads), src_rate, options, duration=duration)
    meta.update(source_codec=src_codec, source_fps=float(src_rate))
    return data, meta


def transcode_frames(folder, options: TranscodeOptions) -> tuple[bytes, dict]:
    """Encode a folder of JPEG/PNG frames shown at options.frames_fps."""
    if options.codec == "copy":
        raise ValueError("--codec copy cannot be used for frame folders (there is no video stream to copy)")
    if not options.frames_fps:
        raise ValueError("frame folders need --fps (the rate the frames were taken at)")
    src_rate = exact_rate(options.frames_fps)
    data, meta = encode_frames(_image_frames(folder, float(src_rate)), src_rate, options)
    meta.update(source_codec="images", source_fps=float(src_rate))
    return data, meta


def encode_sample(item, options: TranscodeOptions) -> dict:
    """Writer `encode` for video items (see fastvid.video.sources.VideoItem): {video ext: bytes, cls, json}."""
    if getattr(item, "stamp", "") == "missing":
        raise FileNotFoundError("no such file or folder (a listed video that was not downloaded, or was deleted)")
    if item.is_frames:
        data, meta = transcode_frames(item.path, options)
    elif options.codec == "copy":
        data, meta = remux(item.path, item.start, item.end)
    else:
        data, meta = transcode(item.path, options, item.start, item.end)
    # `source` is the full relative path (iPER: person/cloth/action), kept for downstream tools.
    info = {"source": item.source, **meta}
    if item.label is not None:
        info = {"source": item.source, "label": int(item.label), "label_name": item.label_name, **meta}
    if item.start is not None or item.end is not None:
        info["time_start"], info["time_end"] = item.start, item.end
    if item.label is None:  # label-less set: no .cls member
        return {meta["container"]: data, "json": info}
    return {meta["container"]: data, "cls": str(int(item.label)), "json": info}
