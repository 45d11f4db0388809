"""`fastvid train` end to end: process group, loaders over shard sets, model (+SyncBN, DDP, compile),
optimizer/schedule, resume, the epoch loop, checkpoints, metrics.jsonl, profiling and preemption."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn

from fastvid.train.config import parse_step_range
from fastvid.video.config import TrainConfig, eval_views
from fastvid.video.models.pretrained import resolve_weights
from fastvid.train import distributed as D
from fastvid.train import logs
from fastvid.train.logs import append_jsonl, log
from fastvid.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from fastvid.video.engine import StepContext, evaluate, train_one_epoch
from fastvid.train.optim import build_lr_scheduler, build_optimizer, fast_forward_schedule
from fastvid.train.preempt import PREEMPTED_EXIT_CODE, StopFlag, StopVote
from fastvid.train.syncbn import convert_sync_batchnorm

MODEL_PRESETS = {"tsm_resnet50": "tsm", "s3d": "s3d"}


class StepProfiler:
    """torch.profiler over global steps [A, B), trace written to OUTPUT/profile/trace_rank<r>.json."""

    def __init__(self, step_range: str, out_dir: Path, rank: int, device: torch.device):
        self.start, self.stop = parse_step_range(step_range)
        self.path = out_dir / "profile" / f"trace_rank{rank}.json"
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(activities=acts, record_shapes=True)
        self.active = False
        self.done = False

    def before_step(self, step: int):
        if not self.active and not self.done and step == self.start:
            self.prof.start()
            self.active = True

    def after_step(self, step: int):
        if self.active:
            self.prof.step()
            if step + 1 >= self.stop:
                self.finish()

    def finish(self):
        if self.active:
            self.prof.stop()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            self.prof.export_chrome_trace(str(tmp))
            tmp.replace(self.path)
            self.active, self.done = False, True
            print(f"profiler trace written to {self.path}", flush=True)


def _size(v):
    """[h, w] -> (h, w); [n] -> n (a short side for resize sizes, as torchvision's Resize; a square for crops)."""
    return None if v is None else (tuple(v) if len(v) == 2 else int(v[0]))


def build_loader(cfg: TrainConfig, info: D.DistInfo, split_dir: str, train: bool, preset: str):
    from fastvid.pipeline.contract import LastBatch
    from fastvid.video.loader import Augmentation, ClipSampling, Execution, Output, VideoLoader

    if not cfg.data_path:
        raise ValueError("--data-path is required: the directory holding the shard sets made by `fastvid shard`")
    from fastvid.store import remote

    path = remote.join(cfg.data_path, split_dir)  # URLs (s3://...) stay intact; the reader fetches them
    if not remote.is_remote(path) and not (Path(remote.local_path(path)) / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a shard set (no manifest.json); --data-path/--{'train' if train else 'val'}-dir must name "
            "a directory written by `fastvid shard videos`"
        )
    temporal_views, spatial_views = eval_views(cfg)
    sampling = ClipSampling(
        clip_len=cfg.num_segments or cfg.clip_len, frame_stride=cfg.frame_stride,
        clips_per_video=cfg.clips_per_video if train else temporal_views, frame_rate=cfg.frame_rate,
        step_between_clips=cfg.step_between_clips, short_videos=cfg.short_videos, clip_sampling=cfg.clip_sampling,
        sampler="segments" if cfg.num_segments else "clips", spatial_views=1 if train else spatial_views)
    augmentation = Augmentation(preset, _size(cfg.train_crop_size if train else cfg.val_crop_size),
                                _size(cfg.train_resize_size if train else cfg.val_resize_size))
    # "cuda:<local_rank>": each rank decodes on its own GPU
    output = Output(device=str(info.device), channels_last=cfg.channels_last,
                    last_batch=LastBatch.DROP if train else LastBatch.WRAP)
    execution = Execution(backend=cfg.backend, rank=info.rank, world_size=info.world_size, num_threads=cfg.workers,
                          num_workers=cfg.workers, stream_window=cfg.stream_window)
    return VideoLoader(str(path), cfg.batch_size, sampling, train=train, seed=cfg.seed, augmentation=augmentation,
                       output=output, execution=execution)


def _warn_if_clips_exceed_videos(cfg: TrainConfig, info: D.DistInfo, loader, probes: int = 16) -> None:
    """A clip longer than the videos is padded by repeating frames: say so when it is longer than every
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
            return
    if longest:
        log(info, f"warning: --clip-len {cfg.clip_len} x --frame-stride {cfg.frame_stride}"
            f"{f' at --frame-rate {cfg.frame_rate:g}' if cfg.frame_rate else ''} spans more frames than any sampled video "
            f"of {Path(cfg.data_path) / (cfg.train_dir if loader.train else cfg.val_dir)} has (at most {longest}): clips are "
            "padded by repeating frames; use a shorter --clip-len or --frame-stride")


def _channels_last(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        elif p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def _autocast_dtype(cfg: TrainConfig, device: torch.device, info: D.DistInfo | None = None):
    """--amp: fp16 autocast + GradScaler (torchvision's meaning); --amp-dtype bf16: bf16 without a scaler,
    falling back to fp16 + GradScaler on a GPU without bf16."""
    if not cfg.amp:
        return None
    if cfg.amp_dtype == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            if info is not None:
                log(info, "note: this GPU has no bf16: --amp-dtype bf16 falls back to fp16 with a GradScaler")
            return torch.float16
        return torch.bfloat16
    return torch.float16


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _train_state(cfg, info, model_without_ddp, optimizer, lr_scheduler, scaler, train_loader, epoch: int) -> dict:
    return {
        "model": model_without_ddp.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": lr_scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": epoch,
        "args": cfg.to_dict(),
        "world_size": info.world_size,
        "loader": train_loader.state_dict() if hasattr(train_loader, "state_dict") else None,
    }


def _key_log_path(info: D.DistInfo) -> Path | None:
    """FASTVID_LOG_KEYS=PATH: every rank appends "epoch key clip" per training clip to PATH.rank<r> (tests, audits)."""
    base = os.environ.get("FASTVID_LOG_KEYS")
    return Path(f"{base}.rank{info.rank}") if base else None


def run_training(cfg: TrainConfig) -> int:
    info = D.init_distributed(cfg.device, cfg.dist_url)
    stop = StopFlag().install()
    lock = None
    try:
        if info.is_main:
            from fastvid.locks import lock_directory

            # Two runs writing one output directory would overwrite each other's checkpoints.
            lock = lock_directory(cfg.output_dir, "--output-dir")
        rc = _run(cfg, info, stop)
        # Leave together: a rank tearing down gloo while another still writes a checkpoint can abort it.
        D.barrier()
        return rc
    finally:
        stop.restore()
        # DDP's reducer and any collective's Work object keep the process group alive; inside reference
        # cycles they would be freed only at interpreter exit, where gloo's worker threads are torn down
        # too late (seen as "terminate called without an active exception", SIGABRT). Free them while
        # the interpreter is whole, then destroy the group.
        import gc

        gc.collect()
        D.cleanup()
        if lock is not None:
            lock.close()


def _run(cfg: TrainConfig, info: D.DistInfo, stop: StopFlag) -> int:
    from fastvid.train.models import get_model

    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    log(info, f"fastvid train: {cfg.model} on {info.device} x{info.world_size}"
        f"{' (' + info.backend + ')' if info.backend else ''}, output {out_dir}")
    if cfg.cache_dataset:
        log(info, "note: --cache-dataset is unnecessary with shards (there is no clip index to build) and is ignored")
    if cfg.use_deterministic_algorithms:
        torch.use_deterministic_algorithms(True)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = not cfg.use_deterministic_algorithms
    preset = cfg.preset or MODEL_PRESETS.get(cfg.model, "video_resnet")

    val_loader = build_loader(cfg, info, cfg.val_dir, train=False, preset=preset)
    train_loader = None if cfg.test_only else build_loader(cfg, info, cfg.train_dir, train=True, preset=preset)
    num_classes = (train_loader or val_loader).num_classes
    for name, loader in (("train", train_loader), ("val", val_loader)):
        if loader is not None:
            log(info, f"{name} loader: {loader!r}")
    for loader in (train_loader, val_loader):
        if loader is not None:
            _warn_if_clips_exceed_videos(cfg, info, loader)
    if train_loader is not None and val_loader.num_classes != num_classes:
        raise ValueError(f"train shards have {num_classes} classes but val shards {val_loader.num_classes}")
    if cfg.kinetics_version and int(cfg.kinetics_version) != num_classes:
        log(info, f"warning: --kinetics-version {cfg.kinetics_version} but the shard set has {num_classes} classes; using {num_classes}")

    torch.manual_seed(cfg.seed)
    model_kwargs = dict(cfg.model_kwargs)
    if cfg.model_width:
        model_kwargs["width"] = cfg.model_width
    model = get_model(cfg.model, num_classes=num_classes, **model_kwargs)
    if cfg.weights:
        fresh = load_weights(model, resolve_weights(cfg.weights, cfg.model), trust=cfg.trust_checkpoint)
        log(info, f"loaded weights {cfg.weights}" + (f" (new classifier: {', '.join(fresh)})" if fresh else ""))
    if cfg.sync_bn:
        model, n = convert_sync_batchnorm(model, info.device)
        kinds = sorted({type(m).__name__ for m in model.modules() if "SyncBatchNorm" in type(m).__name__})
        log(info, f"SyncBatchNorm: converted {n} BatchNorm layers ({', '.join(kinds)})" if n else "SyncBatchNorm: the model has no BatchNorm layers")
    model.to(info.device)
    if cfg.channels_last:
        _channels_last(model)
    model_without_ddp = model
    if info.distributed:
        # Gradients as views into the all-reduce buckets: one copy less per step.
        model = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                                    gradient_as_bucket_view=True)
    if cfg.compile:
        model = torch.compile(model)

    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    amp_dtype = _autocast_dtype(cfg, info.device, info)
    scaler = torch.amp.GradScaler(info.device.type) if amp_dtype == torch.float16 else None

    steps_per_epoch = len(train_loader) if train_loader is not None else 0
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    if train_loader is not None and steps_per_epoch == 0:
        raise ValueError(f"the training shard set {Path(cfg.data_path) / cfg.train_dir} gives 0 batches of {cfg.batch_size} "
                         f"per rank with {info.world_size} ranks; use a smaller --batch-size or more videos")
    optimizer, opt_name = build_optimizer(model_without_ddp.parameters(), cfg, info.device)
    lr_scheduler = build_lr_scheduler(optimizer, cfg, max(steps_per_epoch, 1))

    start_epoch, resume_step = cfg.start_epoch, 0
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume, trust=cfg.trust_checkpoint)
        saved_model = (ckpt.get("args") or {}).get("model") if isinstance(ckpt.get("args"), dict) else None
        if saved_model and saved_model != cfg.model:
            raise ValueError(f"--resume {cfg.resume}: this checkpoint is {saved_model}, not {cfg.model}; "
                             f"pass --model {saved_model} (or use --weights to start {cfg.model} from compatible weights)")
        model_without_ddp.load_state_dict(ckpt["model"])
        if not cfg.test_only:
            start_epoch = ckpt["epoch"] + 1
            if ckpt.get("resume_epoch") == start_epoch:
                resume_step = int(ckpt.get("resume_step", 0))
                if ckpt.get("loader") is not None and hasattr(train_loader, "load_state_dict"):
                    train_loader.load_state_dict(ckpt["loader"])
                    # The loader continues at the saved global clip position, whatever the world size now.
                    resume_step = min(max(len(train_loader) - train_loader.remaining_batches, 0), steps_per_epoch)
            elastic = (ckpt.get("world_size", info.world_size), ckpt.get("args", {}).get("batch_size", cfg.batch_size)) != \
                (info.world_size, cfg.batch_size)
            optimizer.load_state_dict(ckpt["optimizer"])
            if elastic:
                # Steps per epoch differ on another world size: rebuild the per-iteration schedule at the same
                # point of training (epoch + fraction done) instead of loading an iteration count of the old run.
                lrs = fast_forward_schedule(cfg, optimizer, steps_per_epoch, start_epoch * steps_per_epoch + resume_step)
                lr_scheduler = build_lr_scheduler(optimizer, cfg, max(steps_per_epoch, 1))
                lr_scheduler.load_state_dict(lrs["scheduler"])
                for group, lr in zip(optimizer.param_groups, lrs["lrs"]):
                    group["lr"] = lr
            else:
                lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
        log(info, f"resumed from {cfg.resume}: epoch {start_epoch}" + (f", step {resume_step}" if resume_step else ""))

    temporal_views, spatial_views = eval_views(cfg)
    eval_kwargs = dict(device=info.device, clips_per_video=temporal_views * spatial_views, autocast_dtype=amp_dtype,
                       channels_last=cfg.channels_last)
    if cfg.test_only:
        if info.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        val_loader.set_epoch(0)
        with logs.progress(len(val_loader), "Test:", bars=logs.use_bars(cfg.no_progress), print_freq=cfg.print_freq,
                           enabled=info.is_main) as bar:
            res = evaluate(model, val_loader, progress=bar, **eval_kwargs)
        log(info, f" * Clip Acc@1 {res['val_clip_acc1']:.3f} Clip Acc@5 {res['val_clip_acc5']:.3f}")
        log(info, f" * Video Acc@1 {res['val_acc1']:.3f} Video Acc@5 {res['val_acc5']:.3f} ({res['val_videos']} videos)")
        if info.is_main:
            tmp = out_dir / ".eval.json.tmp"
            tmp.write_text(json.dumps({**res, "model": cfg.model, "checkpoint": cfg.resume or cfg.weights,
                                       "world_size": info.world_size}, indent=2) + "\n")
            tmp.replace(out_dir / "eval.json")
        return 0

    log(info, f"optimizer: {opt_name}; {steps_per_epoch} steps/epoch x {cfg.batch_size} clips x {info.world_size} ranks; "
        f"AMP {({torch.float16: 'fp16 + GradScaler', torch.bfloat16: 'bf16'}[amp_dtype]) if amp_dtype else 'off'}; channels_last {cfg.channels_last}; compile {cfg.compile}")
    profiler = StepProfiler(cfg.profile_steps, out_dir, info.rank, info.device) if cfg.profile_steps else None
    ctx = StepContext(device=info.device, optimizer=optimizer, lr_scheduler=lr_scheduler, criterion=criterion,
                      autocast_dtype=amp_dtype, scaler=scaler, grad_clip=cfg.grad_clip, channels_last=cfg.channels_last,
                      print_freq=cfg.print_freq, profiler=profiler, stop_vote=StopVote(stop),
                      key_log=_key_log_path(info), save_every_steps=cfg.save_every_steps)
    sinks = logs.make_sinks(cfg, info.is_main, out_dir)
    if sinks.tb_dir is not None:
        log(info, f"TensorBoard: tensorboard --logdir {sinks.tb_dir}")
    try:
        return _epochs(cfg, info, stop, ctx, model, model_without_ddp, train_loader, val_loader, optimizer, lr_scheduler,
                       scaler, start_epoch, resume_step, steps_per_epoch, eval_kwargs, out_dir, sinks)
    finally:
        sinks.close()
        if profiler is not None:
            profiler.finish()  # also on errors: an active profiler at interpreter exit can crash it


class _KeyLog:
    """FASTVID_DEBUG_KEYS=FILE: append each training batch's sample keys (one JSON line per batch, per
    rank) as it is taken from the loader; the fault tests compare the clips seen across stop + resume."""

    def __init__(self, loader, epoch: int, path: str):
        self.loader, self.epoch, self.path = loader, epoch, path

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        rank = int(os.environ.get("RANK", "0"))
        with open(self.path, "a") as f:
            for batch in self.loader:
                f.write(json.dumps({"rank": rank, "epoch": self.epoch, "keys": list(batch["key"])}) + "\n")
                f.flush()
                yield batch


def _key_log(loader, epoch: int):
    path = os.environ.get("FASTVID_DEBUG_KEYS")
    return _KeyLog(loader, epoch, path) if path else loader


def _stop_agreed(stop: StopFlag, info: D.DistInfo) -> bool:
    flag = torch.tensor([float(stop())], device=info.device if info.backend == "nccl" else "cpu")
    return D.all_reduce(flag, op="max").item() > 0


def _epochs(cfg, info, stop, ctx, model, model_without_ddp, train_loader, val_loader, optimizer, lr_scheduler, scaler,
            start_epoch, resume_step, steps_per_epoch, eval_kwargs, out_dir, sinks) -> int:
    from fastvid.metrics import ResourceSampler

    profiler = ctx.profiler
    metrics_path = out_dir / "metrics.jsonl"
    t_train = time.time()
    bars = logs.use_bars(cfg.no_progress)
    device_stats = logs.DeviceStats(info.device)
    for epoch in range(start_epoch, cfg.epochs):
        # Seeding per (seed, epoch, rank) makes dropout etc. identical after a resume.
        torch.manual_seed(cfg.seed + 1000 * epoch + info.rank)
        train_loader.set_epoch(epoch)
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        sampler = ResourceSampler(interval=0.5, gpu_indices=[info.device.index] if info.device.type == "cuda" else None).start()
        cpu_t0, wall_t0 = _cpu_seconds(), time.perf_counter()
        def save_mid_epoch(steps_done: int, epoch=epoch, start=resume_step):
            # Every --save-every-steps: "epoch-1 done, continue `epoch` at the loader's global clip position".
            if info.is_main:
                state = _train_state(cfg, info, model_without_ddp, optimizer, lr_scheduler, scaler, train_loader, epoch - 1)
                state.update(resume_epoch=epoch, resume_step=start + steps_done)
                save_checkpoint(state, out_dir, epoch=None)

        ctx.save_checkpoint = save_mid_epoch
        with logs.progress(steps_per_epoch, f"Epoch: [{epoch}]", bars=bars, initial=resume_step, print_freq=cfg.print_freq,
                           enabled=info.is_main, sinks=sinks, step_offset=epoch * steps_per_epoch,
                           device_stats=device_stats) as bar:
            res = train_one_epoch(model, _key_log(train_loader, epoch), ctx, epoch=epoch, num_steps=steps_per_epoch, start_step=resume_step, progress=bar)
        usage = sampler.stop()
        if not usage["num_samples"]:
            # Epoch shorter than the sampling interval: fall back to this process's CPU time and peak RSS.
            usage["cpu_percent"] = 100.0 * (_cpu_seconds() - cpu_t0) / max(time.perf_counter() - wall_t0, 1e-9)
            usage["rss_max_bytes"] = _peak_rss_bytes()
        state = _train_state(cfg, info, model_without_ddp, optimizer, lr_scheduler, scaler, train_loader, epoch)
        if res.preempted:
            # Mid-epoch: the checkpoint says "epoch-1 done, continue epoch at step N".
            state.update(epoch=epoch - 1, resume_epoch=epoch, resume_step=resume_step + res.steps)
            if info.is_main:
                save_checkpoint(state, out_dir, epoch=None)
            D.barrier()
            if profiler is not None:
                profiler.finish()
            log(info, f"SIGTERM: saved {out_dir / 'checkpoint.pth'} at epoch {epoch} step {resume_step + res.steps}; "
                f"exiting with code {PREEMPTED_EXIT_CODE} (preempted); resume with --resume {out_dir / 'checkpoint.pth'}")
            return PREEMPTED_EXIT_CODE
        resume_step = 0
        # A stop that came during the epoch's last step: all ranks agree (one host sync per epoch), and
        # the evaluation is skipped so that the checkpoint is written within the grace period.
        preempted = _stop_agreed(stop, info)

        # Rank-summed throughput and CPU; rank-averaged loss, data wait and GPU utilization.
        max_mem = (torch.cuda.max_memory_allocated(info.device) if info.device.type == "cuda" else (usage["rss_max_bytes"] or 0)) / 2**20
        agg = torch.tensor([res.clips / max(res.wall_s, 1e-9), res.wait_s / max(res.wall_s, 1e-9), res.loss,
                            usage["cpu_percent"] or 0.0, usage["gpu_util_mean"] or 0.0, max_mem], dtype=torch.float64)
        if info.backend == "nccl":
            agg = agg.to(info.device)
        D.all_reduce(agg)
        agg = (agg / torch.tensor([1, info.world_size, info.world_size, 1, info.world_size, info.world_size], dtype=torch.float64, device=agg.device)).tolist()

        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": agg[2], "steps": res.steps}
        is_last = epoch + 1 == cfg.epochs
        if not preempted and ((epoch + 1) % cfg.eval_every == 0 or is_last):
            val_loader.set_epoch(0)
            with logs.progress(len(val_loader), f"Test: [{epoch}]", bars=bars, print_freq=cfg.print_freq,
                               enabled=info.is_main) as bar:
                row.update(evaluate(model, val_loader, progress=bar, **eval_kwargs))
        else:
            row.update(val_acc1=None, val_acc5=None)
        if preempted:
            row["preempted"] = True
        row.update(
            clips_per_s=round(agg[0], 2),
            data_wait_frac=round(agg[1], 4),
            gpu_util_mean=round(agg[4], 1) if usage["gpu_util_mean"] is not None else None,
            cpu_percent=round(agg[3], 1),
            max_mem=round(agg[5], 1),
            world_size=info.world_size,
            epoch_time_s=round(res.wall_s, 2),
            backend=train_loader.backend,
            decode_failures=train_loader.stats.get("decode_failures", 0),
        )
        if info.is_main:
            save_checkpoint(state, out_dir, epoch=epoch)
            append_jsonl(metrics_path, row)
            sinks.epoch(row, step=(epoch + 1) * steps_per_epoch)
        eta = (time.time() - t_train) / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
        log(info, logs.epoch_line(row, epoch, cfg.epochs, eta))
        # All ranks must agree before leaving, or one would wait forever in the next epoch's collectives.
        if preempted or _stop_agreed(stop, info):
            log(info, f"SIGTERM: epoch {epoch} checkpointed{' (evaluation skipped)' if preempted else ''}; "
                f"exiting with code {PREEMPTED_EXIT_CODE} (preempted); resume with --resume {out_dir / 'checkpoint.pth'}")
            if profiler is not None:
                profiler.finish()
            return PREEMPTED_EXIT_CODE
    if profiler is not None:
        profiler.finish()
    log(info, f"Training time {time.strftime('%H:%M:%S', time.gmtime(time.time() - t_train))}; metrics in {metrics_path}")
    return 0
