"""Video classification as a fastvid.train Task (`fastvid train`): VideoLoaders over shard sets, a video
model from the registry (+ --weights), cross-entropy per batch of clips, and video-level evaluation.

A training unit is one batch of clips. The epoch plan is global (fastvid.video.sampling): every rank takes
its part of each round of world_size x batch_size clips, so a checkpoint only needs the loader's global
clip position to resume mid-epoch, on any number of ranks. The last batch follows torchvision by default
(--last-batch partial: a smaller last batch, the same size on every rank); --last-batch drop keeps whole
rounds only.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvid.train import distributed as D
from fastvid.train.logs import log
from fastvid.train.task import Columns, Loaders, Run, Task, Unit
from fastvid.video.config import TrainConfig, eval_views

MODEL_PRESETS = {"tsm_resnet50": "tsm", "s3d": "s3d"}


def _size(v):
    """[h, w] -> (h, w); [n] -> n (a short side for resize sizes, as torchvision's Resize; a square for crops)."""
    return None if v is None else (tuple(v) if len(v) == 2 else int(v[0]))


def build_loader(cfg: TrainConfig, info: D.DistInfo, split_dir: str, train: bool, preset: str):
    """The VideoLoader of one split (`split_dir` under --data-path) for this rank."""
    from fastvid.pipeline.contract import LastBatch
    from fastvid.store import remote
    from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader

    if not cfg.data_path:
        raise ValueError("--data-path is required: the directory holding the shard sets made by `fastvid shard`")
    path = remote.join(cfg.data_path, split_dir)  # URLs (s3://...) stay intact; the reader fetches them
    if not remote.is_remote(path) and not (Path(remote.local_path(path)) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a shard set (no manifest.json); --data-path/--{'train' if train else 'val'}-dir must name "
            "a directory written by `fastvid shard videos`")
    temporal_views, spatial_views = eval_views(cfg)
    sampling = ClipSampling(
        clip_len=cfg.num_segments or cfg.clip_len, frame_stride=cfg.frame_stride,
        clips_per_video=cfg.clips_per_video if train else temporal_views, frame_rate=cfg.frame_rate,
        step_between_clips=cfg.step_between_clips, short_videos=cfg.short_videos, clip_sampling=cfg.clip_sampling,
        sampler="segments" if cfg.num_segments else "clips", spatial_views=1 if train else spatial_views)
    augmentation = Augmentation(preset, _size(cfg.train_crop_size if train else cfg.val_crop_size),
                                _size(cfg.train_resize_size if train else cfg.val_resize_size))
    last_batch = (LastBatch.PARTIAL if cfg.last_batch == "partial" else LastBatch.DROP) if train else LastBatch.WRAP
    # "cuda:<local_rank>": each rank decodes on its own GPU
    output = Output(device=str(info.device), channels_last=cfg.channels_last, last_batch=last_batch)
    execution = Execution(backend=cfg.backend, rank=info.rank, world_size=info.world_size, num_threads=cfg.workers,
                          num_workers=cfg.workers, stream_window=cfg.stream_window)
    return VideoLoader(str(path), cfg.batch_size, sampling, train=train, seed=cfg.seed, augmentation=augmentation,
                       output=output, execution=execution)


def _clips_exceed_videos(cfg: TrainConfig, loader, probes: int = 16) -> str | None:
    """A clip longer than the videos is padded by repeating frames: a warning when it is longer than every
    video of a sample spread over the set (the metadata of `probes` videos; reading all would be slow)."""
    from fastvid.video.reader import sample_metadata

    shard_set = loader.shard_set
    spots = [(i, j) for i, s in enumerate(shard_set.shards) for j in range(len(s))]
    longest = 0
    for i, j in spots[:: max(1, len(spots) // probes)][:probes]:
        meta = sample_metadata(shard_set, i, j)
        fps = meta.get("fps") or cfg.frame_rate or 1.0
        stride = cfg.frame_stride * (fps / cfg.frame_rate if cfg.frame_rate else 1.0)
        span = (cfg.clip_len - 1) * stride + 1
        longest = max(longest, int(meta.get("num_frames") or 0))
        if span <= int(meta.get("num_frames") or 0):
            return None
    if not longest:
        return None
    return (f"warning: --clip-len {cfg.clip_len} x --frame-stride {cfg.frame_stride}"
            f"{f' at --frame-rate {cfg.frame_rate:g}' if cfg.frame_rate else ''} spans more frames than any sampled video "
            f"of {Path(cfg.data_path) / (cfg.train_dir if loader.train else cfg.val_dir)} has (at most {longest}): clips are "
            "padded by repeating frames; use a shorter --clip-len or --frame-stride")


def prepare_input(batch: dict, device: torch.device, channels_last: bool):
    video = batch["video"].to(device, non_blocking=True)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    return video, batch["label"].to(device, non_blocking=True)


class VideoClassification(Task):
    name = "classification"
    command = "fastvid train"
    columns = Columns(
        throughput="clips_per_s", sample="clips", batch="clips",
        headline=(("val_acc1", "video acc@1", "{:.2f}"), ("val_acc5", "acc@5", "{:.2f}")),
        unevaluated=("val_acc1", "val_acc5"),
        tags=("val_acc1", "val_acc5", "val_clip_acc1", "val_clip_acc5", "val_loss"))

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.preset = cfg.preset or MODEL_PRESETS.get(cfg.model, "video_resnet")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.loaders: Loaders | None = None

    def build_loaders(self, info) -> Loaders:
        cfg = self.cfg
        val = build_loader(cfg, info, cfg.val_dir, train=False, preset=self.preset)
        train = None if cfg.test_only else build_loader(cfg, info, cfg.train_dir, train=True, preset=self.preset)
        self.loaders = Loaders(train, val)
        if train is not None and val.num_classes != train.num_classes:
            raise ValueError(f"train shards have {train.num_classes} classes but val shards {val.num_classes}")
        return self.loaders

    def build_model(self, info, loaders: Loaders) -> nn.Module:
        from fastvid.train.checkpoint import load_weights
        from fastvid.train.models import get_model
        from fastvid.video.models.pretrained import resolve_weights

        cfg = self.cfg
        kwargs = cfg.model_arguments()
        model = get_model(cfg.model, task=self.name, num_classes=(loaders.train or loaders.val).num_classes, **kwargs)
        if cfg.weights:
            fresh = load_weights(model, resolve_weights(cfg.weights, cfg.model), trust=cfg.trust_checkpoint)
            log(info, f"loaded weights {cfg.weights}" + (f" (new classifier: {', '.join(fresh)})" if fresh else ""))
        return model

    def describe(self, loaders: Loaders, model: nn.Module) -> list[str]:
        cfg = self.cfg
        lines = []
        if cfg.cache_dataset:
            lines.append("note: --cache-dataset is unnecessary with shards (there is no clip index to build) and is ignored")
        for name, loader in (("train", loaders.train), ("val", loaders.val)):
            if loader is not None:
                lines.append(f"{name} loader: {loader!r}")
        lines += [w for w in (_clips_exceed_videos(cfg, ld) for ld in (loaders.train, loaders.val) if ld is not None) if w]
        num_classes = (loaders.train or loaders.val).num_classes
        if cfg.kinetics_version and int(cfg.kinetics_version) != num_classes:
            lines.append(f"warning: --kinetics-version {cfg.kinetics_version} but the shard set has {num_classes} classes; "
                         f"using {num_classes}")
        return lines

    # ---- training ---------------------------------------------------------------------------------------------
    def steps_per_epoch(self, loader) -> int:
        return len(loader)

    def train_units(self, loader, epoch: int, start_step: int, num_steps: int, run: Run):
        # The loader starts where a resume put it (load_state_dict): its batches are the epoch's from start_step.
        batches = iter(loader)
        try:
            for _ in range(start_step, num_steps):
                batch = next(batches, None)
                if batch is None:
                    return
                clips = batch.get("clip")
                yield Unit(batch, steps=1, samples=len(batch["key"]), keys=list(batch["key"]),
                           clips=[int(c) for c in clips] if clips is not None else None)
        finally:
            getattr(batches, "close", lambda: None)()  # the loader stops reading ahead when the epoch is cut short

    def unit_loss(self, module: nn.Module, unit: Unit, run: Run) -> torch.Tensor:
        video, label = prepare_input(unit.data, run.device, run.channels_last)
        with run.autocast():
            output = module(video)
            return self.criterion(output.float(), label)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader, run: Run, header: str) -> dict:
        temporal_views, spatial_views = eval_views(self.cfg)
        loader.set_epoch(0)
        with run.progress(len(loader), header) as bar:
            return evaluate(model, loader, device=run.device, clips_per_video=temporal_views * spatial_views,
                            autocast_dtype=run.autocast_dtype, channels_last=run.channels_last, progress=bar)

    def report_lines(self, res: dict) -> list[str]:
        return [f" * Clip Acc@1 {res['val_clip_acc1']:.3f} Clip Acc@5 {res['val_clip_acc5']:.3f}",
                f" * Video Acc@1 {res['val_acc1']:.3f} Video Acc@5 {res['val_acc5']:.3f} ({res['val_videos']} videos)"]

    def epoch_columns(self, loaders: Loaders) -> dict:
        return {"backend": loaders.train.backend, "decode_failures": loaders.train.stats.get("decode_failures", 0)}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_state(self, loaders: Loaders) -> dict:
        train = loaders.train
        return {"loader": train.state_dict() if train is not None else None}

    def resume(self, ckpt: dict, info, loaders: Loaders) -> int:
        train = loaders.train
        if ckpt.get("loader") is None:
            return int(ckpt.get("resume_step", 0))
        # The loader continues at the saved global clip position, whatever the world size now.
        train.load_state_dict(ckpt["loader"])
        return max(len(train) - train.remaining_batches, 0)

    def close(self) -> None:
        for loader in (self.loaders.train, self.loaders.val) if self.loaders is not None else ():
            if loader is not None:
                loader.close()


@torch.inference_mode()
def evaluate(model, loader, *, device: torch.device, clips_per_video: int, autocast_dtype=None, channels_last=False,
             num_steps: int | None = None, progress=None) -> dict:
    """Clip- and video-level accuracy; a video's score is the mean softmax of its clips (all T x S views).

    Each rank keeps at most `clips_per_video` clips per key (the loader pads the last batches by
    wrapping around, which repeats clips); keys are merged across ranks keeping one entry per key, so
    padded or wrapped samples are never counted twice.
    """
    model.eval()
    per_key: dict[str, list] = {}  # key -> [prob sum (C,), clips, label]
    counts = {"clips": 0, "clip_top1": 0, "clip_top5": 0, "loss_sum": 0.0, "decoded": 0}
    steps = len(loader) if num_steps is None else min(num_steps, len(loader))
    t0 = time.perf_counter()
    it = iter(loader)
    for _ in range(steps):
        batch = next(it)
        video, label = prepare_input(batch, device, channels_last)
        counts["decoded"] += int(video.shape[0])
        with torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
            output = model(video)
        _score_batch(output.float(), label, batch["key"], per_key, counts, clips_per_video)
        if progress is not None:
            progress.update(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    gathered = D.all_gather_objects(
        {"videos": {key: (e[0].numpy(), e[1], e[2]) for key, e in per_key.items()},
         "views_per_s": counts["decoded"] / max(wall, 1e-9), **{k: counts[k] for k in ("clips", "clip_top1", "clip_top5", "loss_sum")}})
    return _video_metrics(gathered)


def _score_batch(output, label, keys, per_key: dict, counts: dict, clips_per_video: int) -> None:
    probs = F.softmax(output, dim=1).cpu()
    losses = F.cross_entropy(output, label, reduction="none").cpu()
    labels = label.cpu().tolist()
    topk = probs.topk(min(5, probs.shape[1]), dim=1).indices
    for i, key in enumerate(keys):
        entry = per_key.get(key)
        if entry is None:
            entry = per_key[key] = [torch.zeros_like(probs[i]), 0, labels[i]]
        if entry[1] >= clips_per_video:
            continue  # a wrapped repeat of a clip already counted
        entry[0] += probs[i]
        entry[1] += 1
        counts["clips"] += 1
        counts["loss_sum"] += float(losses[i])
        counts["clip_top1"] += int(topk[i, 0] == labels[i])
        counts["clip_top5"] += int(labels[i] in topk[i].tolist())


def _video_metrics(gathered: list[dict]) -> dict:
    videos: dict = {}
    for part in gathered:
        for key, value in part["videos"].items():
            videos.setdefault(key, value)  # first rank's copy wins; duplicates are padding
    n_clips = sum(p["clips"] for p in gathered)
    v_top1 = v_top5 = 0
    for prob_sum, _, label in videos.values():
        order = torch.from_numpy(prob_sum).topk(min(5, prob_sum.shape[0])).indices.tolist()
        v_top1 += int(order[0] == label)
        v_top5 += int(label in order)
    n_videos = len(videos)
    return {
        "val_acc1": 100.0 * v_top1 / n_videos if n_videos else None,
        "val_acc5": 100.0 * v_top5 / n_videos if n_videos else None,
        "val_clip_acc1": 100.0 * sum(p["clip_top1"] for p in gathered) / n_clips if n_clips else None,
        "val_clip_acc5": 100.0 * sum(p["clip_top5"] for p in gathered) / n_clips if n_clips else None,
        "val_loss": sum(p["loss_sum"] for p in gathered) / n_clips if n_clips else None,
        "val_videos": n_videos,
        "val_clips": n_clips,
        # views (clips x crops) through the model per second, summed over ranks: decode + cut + forward
        "val_clips_per_s": round(sum(p["views_per_s"] for p in gathered), 2),
    }
