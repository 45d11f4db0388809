"""One training epoch and one video-level evaluation pass.

The training step runs under autocast (bf16 by default, fp16 with a GradScaler), clips gradients on
request and steps the lr schedule every iteration, like torchvision's reference. Host syncs are
limited to every `print_freq` steps, where the loss is read, the NaN flag is agreed on by all ranks,
and the progress bar is updated. The preemption flag is polled every step (fastvid.train.preempt.StopVote:
free in one process, a one-step-lagged async all-reduce under DDP). Data wait = time blocked in the
loader's `next()`.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fastvid.train import distributed as D


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class StepContext:
    """What the train step needs besides model and data."""

    device: torch.device
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    criterion: torch.nn.Module
    autocast_dtype: torch.dtype | None = None
    scaler: object | None = None
    grad_clip: float | None = None
    channels_last: bool = False
    print_freq: int = 10
    profiler: object | None = None        # fastvid.video.trainer.StepProfiler
    stop_vote: object | None = None       # fastvid.train.preempt.StopVote, polled after every step
    global_step: int = 0
    key_log: object | None = None          # Path: append "epoch key clip" per training clip (FASTVID_LOG_KEYS)
    save_every_steps: int | None = None    # call save_checkpoint(steps done this call) every N steps
    save_checkpoint: callable = None


@dataclass
class EpochResult:
    steps: int = 0
    clips: int = 0
    loss_sum: float = 0.0
    wall_s: float = 0.0
    wait_s: float = 0.0
    preempted: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def prepare_input(batch: dict, ctx_device: torch.device, channels_last: bool):
    video = batch["video"].to(ctx_device, non_blocking=True)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    label = batch["label"].to(ctx_device, non_blocking=True)
    return video, label


def train_one_epoch(model, loader, ctx: StepContext, *, epoch: int, num_steps: int, start_step: int = 0, progress=None) -> EpochResult:
    """Run steps [start_step, num_steps) of `epoch`. Stops early (preempted=True) when every rank
    agrees a stop was requested; raises NonFiniteLoss when any rank's loss is NaN/inf."""
    model.train()
    res = EpochResult()
    dev = ctx.device
    loss_acc = torch.zeros((), device=dev)
    bad = torch.zeros((), device=dev, dtype=torch.bool)
    it = iter(loader)
    t_start = time.perf_counter()
    last_loss = float("nan")
    for step in range(start_step, num_steps):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            raise RuntimeError(f"the training loader ended after {step} of {num_steps} batches in epoch {epoch}") from None
        res.wait_s += time.perf_counter() - t0
        video, label = prepare_input(batch, dev, ctx.channels_last)

        if ctx.profiler is not None:
            ctx.profiler.before_step(ctx.global_step)
        with autocast(dev, ctx.autocast_dtype):
            output = model(video)
            loss = ctx.criterion(output.float(), label)
        ctx.optimizer.zero_grad(set_to_none=True)
        if ctx.scaler is not None:
            ctx.scaler.scale(loss).backward()
            if ctx.grad_clip:
                ctx.scaler.unscale_(ctx.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
            ctx.scaler.step(ctx.optimizer)
            ctx.scaler.update()
        else:
            loss.backward()
            if ctx.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip)
            ctx.optimizer.step()
        ctx.lr_scheduler.step()
        if ctx.profiler is not None:
            ctx.profiler.after_step(ctx.global_step)

        if ctx.key_log is not None:
            with open(ctx.key_log, "a") as f:
                f.writelines(f"{epoch} {k} {c}\n" for k, c in zip(batch["key"], batch.get("clip", [-1] * len(batch["key"]))))
        if ctx.save_every_steps and ctx.save_checkpoint is not None and (step + 1) % ctx.save_every_steps == 0 \
                and step + 1 < num_steps:
            ctx.save_checkpoint(res.steps + 1)

        detached = loss.detach()
        loss_acc += detached
        bad |= ~torch.isfinite(detached)
        res.steps += 1
        res.clips += int(video.shape[0])
        ctx.global_step += 1

        last = step + 1 == num_steps
        if (res.steps % ctx.print_freq == 0) or last:
            # The one host sync per print_freq steps: agree on NaN across ranks.
            flags = bad.float().reshape(1)
            D.all_reduce(flags, op="max")
            last_loss = float(detached)
            if flags[0] > 0:
                raise NonFiniteLoss(
                    f"loss is {last_loss if not math.isfinite(last_loss) else 'non-finite on another rank'} at epoch {epoch}, "
                    f"step {step} (lr {ctx.optimizer.param_groups[0]['lr']:.4g}): training diverged and was stopped; "
                    "the last good checkpoint is kept. Try a lower --lr or --grad-clip"
                    + (", or --amp-dtype bf16 (fp16 overflows more easily)" if ctx.autocast_dtype == torch.float16 else "")
                    + (", or no --amp (CPU bf16 autocast can give non-finite conv gradients)" if ctx.autocast_dtype is not None and dev.type == "cpu" else "")
                    + "."
                )
            if progress is not None:
                elapsed = time.perf_counter() - t_start
                progress.set_postfix(
                    loss=f"{last_loss:.4f}",
                    lr=f"{ctx.optimizer.param_groups[0]['lr']:.4g}",
                    clips_s=f"{res.clips / max(elapsed, 1e-9):.1f}",
                    wait=f"{100 * res.wait_s / max(elapsed, 1e-9):.1f}%",
                    refresh=False,
                )
        if progress is not None:
            progress.update(1)
        if ctx.stop_vote is not None and ctx.stop_vote.poll() and not last:
            res.preempted = True
            break
    if ctx.stop_vote is not None:
        ctx.stop_vote.drain()
    res.loss_sum = float(loss_acc)
    res.wall_s = time.perf_counter() - t_start
    return res


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
    clip_top1 = clip_top5 = clips = 0
    loss_sum = 0.0
    steps = len(loader) if num_steps is None else min(num_steps, len(loader))
    t0 = time.perf_counter()
    decoded_clips = 0
    it = iter(loader)
    for _ in range(steps):
        batch = next(it)
        video, label = prepare_input(batch, device, channels_last)
        decoded_clips += int(video.shape[0])
        with autocast(device, autocast_dtype):
            output = model(video)
        output = output.float()
        probs = F.softmax(output, dim=1).cpu()
        losses = F.cross_entropy(output, label, reduction="none").cpu()
        labels = label.cpu().tolist()
        k = min(5, probs.shape[1])
        topk = probs.topk(k, dim=1).indices
        for i, key in enumerate(batch["key"]):
            entry = per_key.get(key)
            if entry is None:
                entry = per_key[key] = [torch.zeros_like(probs[i]), 0, labels[i]]
            if entry[1] >= clips_per_video:
                continue  # a wrapped repeat of a clip already counted
            entry[0] += probs[i]
            entry[1] += 1
            clips += 1
            loss_sum += float(losses[i])
            clip_top1 += int(topk[i, 0] == labels[i])
            clip_top5 += int(labels[i] in topk[i].tolist())
        if progress is not None:
            progress.update(1)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    gathered = D.all_gather_objects(
        {"videos": {key: (e[0].numpy(), e[1], e[2]) for key, e in per_key.items()},
         "clips": clips, "clip_top1": clip_top1, "clip_top5": clip_top5, "loss_sum": loss_sum,
         "views_per_s": decoded_clips / max(wall, 1e-9)}
    )
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
