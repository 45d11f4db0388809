"""Event detection as a fastvid.train Task (`fastvid train-events`): event loaders, the recurrent
detector from the registry, TBPTT training units and Prophesee evaluation.

TBPTT: the loader's steps (one window per stream) are cut into chunks of `--tbptt-steps` windows; one
chunk is one training unit: one forward unrolled over its windows (`Unrolled`, what DDP wraps; a
stream's state is reset where the loader's `reset` says), one backward and one optimizer step. The
recurrent state is carried to the next unit, detached. The task's steps are windows (--max-steps-per-epoch,
"steps", resume_step). A mid-epoch checkpoint stores every rank's recurrent state and augmentation
transforms, so a resumed run (same number of ranks) continues from the same state at the same window.

Event data is consumed through the adapter of fastvid.events.detect.data (`DetectionStep`s from
`detection_steps(loader)`, whatever the sampler); loaders are built by `build_loader` only.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from fastvid.events.detect.config import DetectConfig
from fastvid.events.detect.data import DetectionStep, detection_steps, targets_from_boxes
from fastvid.events.detect.state import detach_state, reset_state, state_to
from fastvid.events.io import BOX_DTYPE
from fastvid.train import distributed as D
from fastvid.train.task import Columns, Loaders, Run, Task, Unit


class Unrolled(nn.Module):
    """The detector over T windows in one forward (one DDP forward per TBPTT chunk)."""

    def __init__(self, model: nn.Module, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, xs: torch.Tensor, resets: torch.Tensor, state):
        if hasattr(self.model, "forward_sequence"):
            return self.model.forward_sequence(xs, resets, state, channels_last=self.channels_last)
        outs = []  # a registered detector without a sequence forward: window by window
        for t in range(xs.shape[0]):
            x = xs[t].contiguous(memory_format=torch.channels_last) if self.channels_last else xs[t]
            out, state = self.model(x, reset_state(state, resets[t]))
            outs.append(out)
        return torch.stack(outs), state


def build_loader(cfg: DetectConfig, info: D.DistInfo, split: str, train: bool):
    """The one place event loaders are made: an EventSequenceLoader over `split` under --data-path, whose
    windows (--window-mode, --label-times, --fill-windows) and sampler (--sampling: streamed recordings, or
    RVT's random sequences in training) are the config's."""
    from fastvid.events.sequence import Encoding, EventExecution, EventSequenceLoader, Windowing

    if not cfg.data_path:
        raise ValueError("--data-path is required: the directory holding the event shard sets (fastvid shard events)")
    path = Path(cfg.data_path) / split
    if not (path / "manifest.json").is_file():
        raise FileNotFoundError(f"{path} is not an event shard set (no manifest.json)")
    windowing = Windowing(window_ms=cfg.window_ms, mode=cfg.window_mode, labels=cfg.label_times, fill=cfg.fill_windows,
                          sampler=cfg.sampling if train else "stream", seq_len=cfg.seq_len, shuffle=train, train=train)
    execution = EventExecution(device=str(info.device), rank=info.rank, world_size=info.world_size,
                               num_workers=cfg.workers)
    return EventSequenceLoader(str(path), cfg.batch_size, windowing, Encoding(cfg.representation, bins=cfg.bins),
                               execution, seed=cfg.seed)


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


def detections_array(dets: torch.Tensor, t: int) -> np.ndarray:
    """(K, 6) [x, y, w, h, score, class] of one window -> BOX_DTYPE stamped with time t."""
    d = dets.detach().float().cpu().numpy()
    out = np.zeros(len(d), BOX_DTYPE)
    out["t"] = t
    out["x"], out["y"], out["w"], out["h"] = d[:, 0], d[:, 1], d[:, 2], d[:, 3]
    out["class_confidence"], out["class_id"], out["track_id"] = d[:, 4], d[:, 5].astype(np.int32), 0
    return out


def keep_threads(steps):
    """Re-apply this process's torch thread count after every loader step: the loader's Numba kernels
    set the OpenMP thread count they share with torch (to all cores), which oversubscribes a busy
    machine when torch was limited (OMP_NUM_THREADS / torch.set_num_threads / the trainer's choice)."""
    threads = torch.get_num_threads()
    for step in steps:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        yield step


def _chunks(steps, size: int, limit: int):
    """Lists of up to `size` consecutive steps, over the first `limit` steps."""
    chunk = []
    for i, step in enumerate(keep_threads(steps)):
        if i >= limit:
            break
        chunk.append(step)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class EventDetection(Task):
    name = "detection"
    command = "fastvid train-events"
    columns = Columns(
        throughput="train_windows_per_s", sample="windows", batch="streams",
        headline=(("val_mAP", "mAP", "{:.4f}"), ("val_AP50", "AP50", "{:.4f}")),
        tags=("val_mAP", "val_AP50", "val_AP75", "val_windows_per_s"))

    def __init__(self, cfg: DetectConfig):
        super().__init__(cfg)
        self.loaders: Loaders | None = None
        self.state = None                   # the recurrent state carried across units
        self.augment = None
        self.labelled = 0                   # labelled windows trained this epoch
        self.detector: nn.Module | None = None
        self._resume_state = self._resume_aug = None

    def build_loaders(self, info) -> Loaders:
        from fastvid.events.representations import REPRESENTATIONS

        cfg = self.cfg
        val = build_loader(cfg, info, cfg.val_dir, train=False)
        train = None if cfg.test_only else build_loader(cfg, info, cfg.train_dir, train=True)
        self.loaders = Loaders(train, val)
        self.classes = class_names(cfg, Path(cfg.data_path) / (cfg.val_dir if cfg.test_only else cfg.train_dir))
        self.sensor = val.sensor_size
        if REPRESENTATIONS.get(cfg.representation) is None:
            raise ValueError(f"unknown representation {cfg.representation!r}; choose from {sorted(REPRESENTATIONS)}")
        self.in_channels = REPRESENTATIONS[cfg.representation].channels(cfg.bins)
        self.eval_cfg = eval_config_of(cfg, self.classes, self.sensor)
        return self.loaders

    def build_model(self, info, loaders: Loaders) -> nn.Module:
        from fastvid.events.detect.augment import SequenceAugment
        from fastvid.train.models import get_model

        cfg = self.cfg
        kwargs = cfg.model_arguments()
        self.augment = SequenceAugment(cfg.batch_size, self.sensor, cfg.flip_p, cfg.max_zoom, cfg.seed, info.rank)
        return get_model(cfg.model, task=self.name, in_channels=self.in_channels, num_classes=len(self.classes), **kwargs)

    def describe(self, loaders: Loaders, model: nn.Module) -> list[str]:
        params = sum(p.numel() for p in model.parameters()) / 1e6
        return [f"detector: {self.cfg.model} ({params:.2f} M params), {len(self.classes)} classes, sensor "
                f"{self.sensor[0]}x{self.sensor[1]}, {self.cfg.representation}x{self.in_channels}"]

    def training_module(self, model: nn.Module) -> nn.Module:
        self.detector = model
        return Unrolled(model, self.cfg.channels_last)

    def build_optimizer(self, params, device: torch.device):
        if self.cfg.opt == "sgd":
            return super().build_optimizer(params, device)
        return torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay), "AdamW"

    # ---- training ---------------------------------------------------------------------------------------------
    def steps_per_epoch(self, loader) -> int:
        return len(loader)

    def units_for(self, steps: int) -> int:
        return -(-steps // self.cfg.tbptt_steps)

    def train_units(self, loader, epoch: int, start_step: int, num_steps: int, run: Run):
        from fastvid.events.detect.augment import Transform

        self.augment.set_epoch(epoch)
        self.state = state_to(self._resume_state, run.device)
        if self._resume_aug is not None:
            self.augment.transforms = [Transform(**t) for t in self._resume_aug]
        self._resume_state = self._resume_aug = None
        self.labelled = 0
        steps = detection_steps(loader)
        index = 0
        try:
            for chunk in _chunks(steps, self.cfg.tbptt_steps, num_steps):
                if index < start_step:  # replay the loader up to the checkpointed step
                    index += len(chunk)
                    continue
                keys = [name for step in chunk for name, ok in zip(step.recording, step.valid.tolist()) if ok]
                yield Unit((chunk, index), steps=len(chunk), samples=sum(int(s.valid.sum()) for s in chunk), keys=keys)
                index += len(chunk)
        finally:
            if hasattr(steps, "close"):
                steps.close()  # stops the loader's read-ahead thread when the epoch was cut short

    def unit_loss(self, module: nn.Module, unit: Unit, run: Run) -> torch.Tensor:
        """Unrolled forward over the chunk, loss on its labelled valid windows; the state leaves detached."""
        from fastvid.events.detect.loss import detection_loss

        chunk, first = unit.data
        device = run.device
        xs, labels = [], []
        for i, step in enumerate(chunk):
            x, lab = self.augment(step.x.to(device, non_blocking=True), step.labels, step.reset, first + i)
            xs.append(x)
            labels.append(lab)
        xs = torch.stack(xs)
        resets = torch.stack([s.reset for s in chunk]).to(device)
        cells, strides = self.detector.grid(xs.shape[-2], xs.shape[-1], device)
        with run.autocast():
            out, state = module(xs, resets, self.state)
        self.state = detach_state(state)
        picks, targets = [], []
        for t, step in enumerate(chunk):
            for b in range(len(step.labels)):
                if bool(step.valid[b]) and step.label_t[b] >= 0:
                    picks.append((t, b))
                    targets.append(targets_from_boxes(labels[t][b], self.sensor).to(device))
        self.labelled += len(picks)
        if not picks:
            return out.float().sum() * 0.0  # every rank still runs backward: DDP's all-reduce stays in step
        ti, bi = zip(*picks)
        return detection_loss(out[list(ti), list(bi)], targets, cells, strides, len(self.classes)).total

    # ---- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, loader, run: Run, header: str) -> dict:
        """Prophesee mAP of the val recordings (saved as OUTPUT/val_detections.npz by the main rank)."""
        from fastvid.events.detect.boxsets import save_box_sets

        res = evaluate(model, loader, self.cfg, run, self.eval_cfg, speed_only=self.cfg.test_only and self.cfg.speed_test)
        detections = res.pop("detections", None)
        if run.info.is_main and detections is not None:
            save_box_sets(run.out_dir / "val_detections.npz", detections)
        return res

    def epoch_columns(self, loaders: Loaders) -> dict:
        return {"labelled_windows": self.labelled}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_state(self, loaders: Loaders) -> dict:
        return {"classes": list(self.classes)}

    def rank_state(self) -> dict:
        # plain dicts: checkpoints hold only what torch.load(weights_only=True) reads back
        return {"rnn_state": state_to(self.state, "cpu"),
                "augment": [dataclasses.asdict(t) for t in self.augment.transforms]}

    def resume(self, ckpt: dict, info, loaders: Loaders) -> int:
        if ckpt.get("world_size") != info.world_size:
            raise ValueError(f"{self.cfg.resume} was saved mid-epoch by {ckpt.get('world_size')} processes; "
                             f"resume it with the same number (got {info.world_size})")
        self._resume_state = ckpt["rnn_state"][info.rank]
        self._resume_aug = ckpt["augment"][info.rank]
        return int(ckpt["resume_step"])

    def close(self) -> None:
        for loader in (self.loaders.train, self.loaders.val) if self.loaders is not None else ():
            close = getattr(loader, "close", None)
            if close is not None:
                close()


@torch.no_grad()
def evaluate(model: nn.Module, loader, cfg: DetectConfig, run: Run, eval_cfg, speed_only: bool = False) -> dict:
    """Stream the val recordings, detect at every labelled window (stamped with its label time), gather
    over ranks and score with Prophesee's protocol (main rank). Returns val_* metrics (and "detections")."""
    info, device = run.info, run.device
    model.eval()
    dets: dict[str, list] = {}
    gts: dict[str, list] = {}
    state, windows, t_model = None, 0, 0.0
    cells = strides = None
    t_start = time.perf_counter()
    for step in keep_threads(detection_steps(loader)):
        x = step.x.to(device, non_blocking=True)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if cells is None:
            cells, strides = model.grid(x.shape[-2], x.shape[-1], device)
        t0 = time.perf_counter()
        state = reset_state(state, step.reset.to(device))
        with run.autocast():
            out, state = model(x, state)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t_model += time.perf_counter() - t0
        valid = step.valid.tolist()
        windows += int(sum(valid))
        if not speed_only:
            _collect(step, out, valid, cells, strides, cfg, dets, gts)
    wall = time.perf_counter() - t_start
    model.train()
    speed = torch.tensor([windows / max(t_model, 1e-9), windows / max(wall, 1e-9)], dtype=torch.float64)
    D.all_reduce(speed.to(device) if info.backend == "nccl" else speed)
    res = {"val_windows_per_s": round(float(speed[1]), 1), "val_model_windows_per_s": round(float(speed[0]), 1)}
    if speed_only:
        return res
    return {**res, **_score(dets, gts, eval_cfg, info)}


def _collect(step: DetectionStep, out, valid, cells, strides, cfg: DetectConfig, dets: dict, gts: dict) -> None:
    """Detections at the step's labelled windows and the ground truth of its valid windows, per recording."""
    from fastvid.events.detect.postprocess import postprocess

    labelled = [b for b in range(len(valid)) if valid[b] and step.label_t[b] >= 0]
    if labelled:
        results = postprocess(out[labelled], cells, strides, cfg.score_threshold, cfg.nms_iou)
        for b, res in zip(labelled, results):
            dets.setdefault(step.recording[b], []).append(detections_array(res, int(step.label_t[b])))
    for b in range(len(valid)):
        if valid[b]:
            gts.setdefault(step.recording[b], []).append(step.window_boxes[b])


def _score(dets: dict, gts: dict, eval_cfg, info) -> dict:
    """Gather detections and labels over ranks; the main rank scores them (Prophesee COCO mAP)."""
    from fastvid.events.detect.evaluate import evaluate_detections

    merged_d: dict[str, list] = {}
    merged_g: dict[str, list] = {}
    for part_d, part_g in D.all_gather_objects((dets, gts)):
        for k, v in part_d.items():
            merged_d.setdefault(k, []).extend(v)
        for k, v in part_g.items():
            merged_g.setdefault(k, []).extend(v)
    detections = {k: np.concatenate(v) for k, v in merged_d.items()}
    labels = {k: np.concatenate(v) for k, v in merged_g.items()}
    res = {"detections": detections}
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
