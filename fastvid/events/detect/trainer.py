"""`fastvid train-events` end to end: event loaders, the recurrent detector (+SyncBN, DDP, AMP), TBPTT
training, Prophesee evaluation per epoch, atomic checkpoints, exact SIGTERM-safe resume, metrics.jsonl.

TBPTT: the loader's steps are cut into chunks of `tbptt_steps` windows; one chunk is one forward
(unrolled over its windows, state reset per stream where `reset` says), one backward and one optimizer
step; the state leaves the chunk detached. A mid-epoch checkpoint stores every rank's state, so a
resumed run continues from the same state and the same loader step.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastvid.events.detect.augment import Transform
from fastvid.events.detect.config import DetectConfig
from fastvid.events.detect.data import DetectionStep, detection_steps, targets_from_boxes
from fastvid.events.detect.state import detach_state, reset_state, state_to
from fastvid.events.io import BOX_DTYPE
from fastvid.train import distributed as D
from fastvid.train.checkpoint import load_checkpoint, load_model_state, save_checkpoint
from fastvid.train.logs import append_jsonl, log
from fastvid.train.preempt import PREEMPTED_EXIT_CODE, StopFlag


class Unrolled(nn.Module):
    """The detector over T windows in one forward (one DDP forward per TBPTT chunk)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, xs: torch.Tensor, resets: torch.Tensor, state):
        outs = []
        for t in range(xs.shape[0]):
            state = reset_state(state, resets[t])
            out, state = self.model(xs[t], state)
            outs.append(out)
        return torch.stack(outs), state


def build_loader(cfg: DetectConfig, info: D.DistInfo, split: str, train: bool):
    from fastvid.events.sequence import Encoding, EventExecution, EventSequenceLoader, Windowing

    if not cfg.data_path:
        raise ValueError("--data-path is required: the directory holding the event shard sets (fastvid shard events)")
    path = Path(cfg.data_path) / split
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{path} is not an event shard set (no manifest.json)")
    windowing = Windowing(window_ms=cfg.window_ms, mode=cfg.window_mode, labels=cfg.label_times, fill=cfg.fill_windows,
                          sampler=cfg.sampling if train else "stream", seq_len=cfg.seq_len, shuffle=train, train=train)
    encoding = Encoding(cfg.representation, bins=cfg.bins)
    execution = EventExecution(device=str(info.device), rank=info.rank, world_size=info.world_size,
                               num_workers=cfg.workers)
    return EventSequenceLoader(str(path), cfg.batch_size, windowing, encoding, execution, seed=cfg.seed)


def _steps(loader):
    return detection_steps(loader)


def _base(loader):
    return loader


def class_names(cfg: DetectConfig, shard_dir: Path) -> list[str]:
    if cfg.classes:
        return [c.strip() for c in cfg.classes.split(",")]
    from fastvid.store.manifest import read_manifest

    classes = read_manifest(shard_dir).get("classes") or []
    if not classes:
        raise ValueError(f"{shard_dir}: the manifest names no classes; pass --classes")
    return list(classes)


def eval_config_of(cfg: DetectConfig, classes, sensor_size):
    from fastvid.events.detect.evaluate import eval_config

    def us(ms):
        return None if ms is None else int(round(ms * 1000))

    return eval_config(cfg.eval_preset, skip_us=us(cfg.skip_ms), min_box_diag=cfg.min_box_diag,
                       min_box_side=cfg.min_box_side, time_tol_us=us(cfg.time_tol_ms), classes=tuple(classes),
                       sensor_size=tuple(sensor_size))


def _autocast(cfg: DetectConfig, device: torch.device):
    if not cfg.amp:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16)


def detections_array(dets: torch.Tensor, t: int) -> np.ndarray:
    """(K, 6) [x, y, w, h, score, class] of one window -> BOX_DTYPE stamped with time t."""
    d = dets.detach().float().cpu().numpy()
    out = np.zeros(len(d), BOX_DTYPE)
    out["t"] = t
    out["x"], out["y"], out["w"], out["h"] = d[:, 0], d[:, 1], d[:, 2], d[:, 3]
    out["class_confidence"], out["class_id"], out["track_id"] = d[:, 4], d[:, 5].astype(np.int32), 0
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: DetectConfig, info: D.DistInfo, eval_cfg, speed_only: bool = False) -> dict:
    """Stream the val recordings, detect at every labelled window (stamped with its label time), gather
    over ranks and score with Prophesee's protocol (rank 0). Returns val_* metrics."""
    from fastvid.events.detect.evaluate import evaluate_detections
    from fastvid.events.detect.postprocess import postprocess

    model.eval()
    dets: dict[str, list] = {}
    gts: dict[str, list] = {}
    state, windows, t_model = None, 0, 0.0
    cells = strides = None
    t_start = time.perf_counter()
    for step in _keep_threads(_steps(loader)):
        x = step.x.to(info.device, non_blocking=True)
        if cells is None:
            cells, strides = model.grid(x.shape[-2], x.shape[-1], info.device)
        t0 = time.perf_counter()
        state = reset_state(state, step.reset.to(info.device))
        with _autocast(cfg, info.device):
            out, state = model(x, state)
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        t_model += time.perf_counter() - t0
        valid = step.valid.tolist()
        windows += int(sum(valid))
        if speed_only:
            continue
        labelled = [b for b in range(len(valid)) if valid[b] and step.label_t[b] >= 0]
        if labelled:
            results = postprocess(out[labelled], cells, strides, cfg.score_threshold, cfg.nms_iou)
            for b, res in zip(labelled, results):
                dets.setdefault(step.recording[b], []).append(detections_array(res, int(step.label_t[b])))
        for b in range(len(valid)):
            if valid[b]:
                gts.setdefault(step.recording[b], []).append(step.window_boxes[b])
    wall = time.perf_counter() - t_start
    model.train()
    speed = torch.tensor([windows / max(t_model, 1e-9), windows / max(wall, 1e-9)], dtype=torch.float64)
    D.all_reduce(speed.to(info.device) if info.backend == "nccl" else speed)
    res = {"val_windows_per_s": round(float(speed[1]), 1), "val_model_windows_per_s": round(float(speed[0]), 1)}
    if speed_only:
        return res
    merged_d: dict[str, list] = {}
    merged_g: dict[str, list] = {}
    for part_d, part_g in D.all_gather_objects((dets, gts)):
        for k, v in part_d.items():
            merged_d.setdefault(k, []).extend(v)
        for k, v in part_g.items():
            merged_g.setdefault(k, []).extend(v)
    detections = {k: np.concatenate(v) for k, v in merged_d.items()}
    labels = {k: np.concatenate(v) for k, v in merged_g.items()}
    res["detections"] = detections
    if info.is_main:
        try:
            m = evaluate_detections(labels, detections, eval_cfg)
        except ValueError as exc:  # e.g. every val label filtered out: report, keep training
            print(f"warning: validation not scored: {exc}", flush=True)
            res.update(val_mAP=None, val_AP50=None, val_AP75=None)
            return res
        res.update(val_mAP=m.mAP, val_AP50=m.AP50, val_AP75=m.AP75, val_labels=m.num_labels,
                   val_detections=m.num_detections)
    return res


def _keep_threads(steps):
    """Re-apply this process's torch thread count after every loader step: the loader's Numba kernels
    set the OpenMP thread count they share with torch (to all cores), which oversubscribes a busy
    machine when torch was limited (OMP_NUM_THREADS / torch.set_num_threads)."""
    threads = torch.get_num_threads()
    for step in steps:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        yield step


def _chunks(steps, size: int):
    chunk = []
    for step in _keep_threads(steps):
        chunk.append(step)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def train_chunk(unrolled, model, chunk: list[DetectionStep], state, augment, step_index: int, ctx: dict):
    """One TBPTT chunk: unrolled forward, loss on labelled valid windows, backward, optimizer step.
    Returns (detached state, loss value, labelled windows)."""
    from fastvid.events.detect.loss import detection_loss

    device, cfg = ctx["device"], ctx["cfg"]
    xs, labels = [], []
    for i, step in enumerate(chunk):
        x, lab = augment(step.x.to(device, non_blocking=True), step.labels, step.reset, step_index + i)
        xs.append(x)
        labels.append(lab)
    xs = torch.stack(xs)
    resets = torch.stack([s.reset for s in chunk]).to(device)
    cells, strides = model.grid(xs.shape[-2], xs.shape[-1], device)
    with _autocast(cfg, device):
        out, state = unrolled(xs, resets, state)
    picks, targets = [], []
    for t, step in enumerate(chunk):
        for b in range(len(step.labels)):
            if bool(step.valid[b]) and step.label_t[b] >= 0:
                picks.append((t, b))
                targets.append(targets_from_boxes(labels[t][b], ctx["sensor_size"]).to(device))
    if picks:
        ti, bi = zip(*picks)
        parts = detection_loss(out[list(ti), list(bi)], targets, cells, strides, ctx["num_classes"])
        loss = parts.total
    else:
        loss = out.float().sum() * 0.0  # every rank still runs backward: DDP's all-reduce stays in step
    opt, scaler = ctx["optimizer"], ctx["scaler"]
    opt.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    if cfg.grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    ctx["lr_scheduler"].step()
    return detach_state(state), float(loss.detach()), len(picks)


def run_training(cfg: DetectConfig) -> int:
    info = D.init_distributed(cfg.device, cfg.dist_url)
    stop = StopFlag().install()
    try:
        rc = _run(cfg, info, stop)
        D.barrier()
        return rc
    finally:
        stop.restore()
        D.cleanup()


def _run(cfg: DetectConfig, info: D.DistInfo, stop: StopFlag) -> int:
    from fastvid.events.detect.augment import SequenceAugment
    from fastvid.events.detect.boxsets import save_box_sets
    from fastvid.train.models import get_model
    from fastvid.events.representations import REPRESENTATIONS
    from fastvid.train.optim import build_lr_scheduler, build_optimizer
    from fastvid.train.syncbn import convert_sync_batchnorm

    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    val_loader = build_loader(cfg, info, cfg.val_dir, train=False)
    train_loader = None if cfg.test_only else build_loader(cfg, info, cfg.train_dir, train=True)
    classes = class_names(cfg, Path(cfg.data_path) / (cfg.val_dir if cfg.test_only else cfg.train_dir))
    sensor = _base(val_loader).sensor_size
    if REPRESENTATIONS.get(cfg.representation) is None:
        raise ValueError(f"unknown representation {cfg.representation!r}; choose from {sorted(REPRESENTATIONS)}")
    in_ch = REPRESENTATIONS[cfg.representation].channels(cfg.bins)
    eval_cfg = eval_config_of(cfg, classes, sensor)

    torch.manual_seed(cfg.seed)
    kwargs = dict(cfg.model_kwargs)
    if cfg.model_width:
        kwargs["width"] = cfg.model_width
    model = get_model(cfg.model, task="detection", in_channels=in_ch, num_classes=len(classes), **kwargs)
    if cfg.sync_bn:
        model, n = convert_sync_batchnorm(model, info.device)
        log(info, f"SyncBatchNorm: converted {n} BatchNorm layers")
    model.to(info.device)
    unrolled = Unrolled(model)
    if info.distributed:
        unrolled = nn.parallel.DistributedDataParallel(
            unrolled, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    log(info, f"fastvid train-events: {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params), "
        f"{len(classes)} classes, sensor {sensor[0]}x{sensor[1]}, {cfg.representation}x{in_ch}, on {info.device} "
        f"x{info.world_size}, output {out_dir}")

    steps_per_epoch = 0 if train_loader is None else len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    chunks_per_epoch = max(1, -(-steps_per_epoch // cfg.tbptt_steps))
    if cfg.opt == "sgd":
        optimizer, _ = build_optimizer(model.parameters(), cfg, info.device)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = build_lr_scheduler(optimizer, cfg, chunks_per_epoch)
    scaler = torch.amp.GradScaler(info.device.type) if cfg.amp and cfg.amp_dtype == "fp16" else None

    start_epoch, resume_step, resume_state, resume_aug = cfg.start_epoch, 0, None, None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        load_model_state(model, ckpt["model"], cfg.resume, f"{cfg.model} (width {cfg.model_width or 'default'})")
        if not cfg.test_only:
            optimizer.load_state_dict(ckpt["optimizer"])
            lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start_epoch = ckpt["epoch"] + 1
            if ckpt.get("resume_epoch") == start_epoch:
                if ckpt.get("world_size") != info.world_size:
                    raise ValueError(f"{cfg.resume} was saved mid-epoch by {ckpt.get('world_size')} processes; "
                                     f"resume it with the same number (got {info.world_size})")
                resume_step = int(ckpt["resume_step"])
                resume_state = ckpt["rnn_state"][info.rank]
                resume_aug = [Transform(**t) for t in ckpt["augment"][info.rank]]
        log(info, f"resumed from {cfg.resume}: epoch {start_epoch}" + (f", window step {resume_step}" if resume_step else ""))

    if cfg.test_only:
        res = evaluate(model, val_loader, cfg, info, eval_cfg, speed_only=cfg.speed_test)
        detections = res.pop("detections", None)
        if info.is_main and detections is not None:
            save_box_sets(out_dir / "val_detections.npz", detections)
        log(info, " * " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
        if info.is_main:
            from fastvid.store.manifest import write_json_atomic

            write_json_atomic({**res, "checkpoint": cfg.resume, "world_size": info.world_size}, out_dir / "eval.json")
        return 0

    augment = SequenceAugment(cfg.batch_size, sensor, cfg.flip_p, cfg.max_zoom, cfg.seed, info.rank)
    ctx = {"device": info.device, "cfg": cfg, "optimizer": optimizer, "scaler": scaler, "lr_scheduler": lr_scheduler,
           "sensor_size": sensor, "num_classes": len(classes)}
    metrics_path = out_dir / "metrics.jsonl"
    for epoch in range(start_epoch, cfg.epochs):
        torch.manual_seed(cfg.seed + 1000 * epoch + info.rank)
        train_loader.set_epoch(epoch)
        augment.set_epoch(epoch)
        state = state_to(resume_state, info.device)
        if resume_aug is not None:
            augment.transforms = resume_aug
        t0, wait, losses, labelled, windows = time.perf_counter(), 0.0, [], 0, 0
        step_index, preempted = 0, False
        steps = _steps(train_loader)
        t_wait = time.perf_counter()
        for chunk in _chunks(_limit(steps, steps_per_epoch), cfg.tbptt_steps):
            wait += time.perf_counter() - t_wait
            if step_index < resume_step:  # replay the loader up to the checkpointed step
                step_index += len(chunk)
                t_wait = time.perf_counter()
                continue
            state, loss, n_lab = train_chunk(unrolled, model, chunk, state, augment, step_index, ctx)
            step_index += len(chunk)
            losses.append(loss)
            labelled += n_lab
            windows += sum(int(s.valid.sum()) for s in chunk)
            if info.is_main and cfg.print_freq and len(losses) % cfg.print_freq == 0:
                print(f"Epoch [{epoch}] step {step_index}/{steps_per_epoch}: loss {np.mean(losses[-cfg.print_freq:]):.4f}",
                      flush=True)
            flag = D.all_reduce(torch.tensor([float(stop())], device=info.device if info.backend == "nccl" else "cpu"), op="max")
            if flag.item() > 0 and step_index < steps_per_epoch:
                preempted = True
                break
            t_wait = time.perf_counter()
        if hasattr(steps, "close"):
            steps.close()  # stops the loader's read-ahead thread when the epoch was cut short
        wall = time.perf_counter() - t0
        resume_state, resume_aug = None, None
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "epoch": epoch, "args": cfg.to_dict(),
                "world_size": info.world_size, "classes": classes}
        if preempted:
            states = D.all_gather_objects(state_to(state, "cpu"))
            # plain dicts: checkpoints hold only what torch.load(weights_only=True) reads back
            augs = D.all_gather_objects([dataclasses.asdict(t) for t in augment.transforms])
            ckpt.update(epoch=epoch - 1, resume_epoch=epoch, resume_step=step_index, rnn_state=states, augment=augs)
            if info.is_main:
                save_checkpoint(ckpt, out_dir, epoch=None)
            D.barrier()
            log(info, f"SIGTERM: saved {out_dir / 'checkpoint.pth'} at epoch {epoch} window step {step_index}; "
                f"resume with --resume {out_dir / 'checkpoint.pth'}")
            return PREEMPTED_EXIT_CODE
        agg = torch.tensor([float(np.mean(losses)) if losses else 0.0, windows / max(wall, 1e-9), wait / max(wall, 1e-9)],
                           dtype=torch.float64)
        D.all_reduce(agg.to(info.device) if info.backend == "nccl" else agg)
        agg = agg.cpu().tolist()
        row = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"], "train_loss": agg[0] / info.world_size,
               "steps": step_index, "train_windows_per_s": round(agg[1], 1),
               "data_wait_frac": round(agg[2] / info.world_size, 4), "labelled_windows": labelled,
               "world_size": info.world_size, "epoch_time_s": round(wall, 2)}
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            res = evaluate(model, val_loader, cfg, info, eval_cfg)
            detections = res.pop("detections")
            row.update(res)
            if info.is_main:
                save_box_sets(out_dir / "val_detections.npz", detections)
        if info.device.type == "cuda":
            row["max_mem"] = round(torch.cuda.max_memory_allocated(info.device) / 2**20, 1)
        if info.is_main:
            save_checkpoint(ckpt, out_dir, epoch=epoch)
            append_jsonl(metrics_path, row)
        log(info, f"Epoch {epoch}: " + json.dumps({k: v for k, v in row.items() if k != "epoch"}))
        flag = D.all_reduce(torch.tensor([float(stop())], device=info.device if info.backend == "nccl" else "cpu"), op="max")
        if flag.item() > 0:
            log(info, f"SIGTERM: epoch {epoch} checkpointed; exiting with code {PREEMPTED_EXIT_CODE} (preempted)")
            return PREEMPTED_EXIT_CODE
    return 0


def _limit(steps, n: int):
    for i, step in enumerate(steps):
        if i >= n:
            return
        yield step
