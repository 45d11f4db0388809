"""The interface between the one Trainer (fastvid.train.trainer) and what it trains: a `Task`.

The Trainer owns everything that is the same for every kind of data: the process group, the output
directory lock, DDP / SyncBN / compile / channels-last, AMP, the optimizer step with gradient clipping
and the per-iteration lr schedule, checkpoints and resume, preemption, the evaluation schedule,
metrics.jsonl, TensorBoard / W&B, the profiler and the log lines. A Task says what is specific to one
job: its loaders, its model (through the model registry, fastvid.train.models, under its `name`), how an
epoch is cut into training units, the loss of a unit, its evaluation, what else a checkpoint must hold
to resume exactly, and the names of its metrics.

A training unit is one optimizer step: a batch of clips (video classification) or a chunk of
`--tbptt-steps` event windows whose recurrent state the task carries to the next unit (event
detection). An epoch counts *steps* in the task's own measure (`Unit.steps`: 1 per batch; windows for
the detector), which is what --max-steps-per-epoch, "steps" in metrics.jsonl and a checkpoint's
resume_step count; the lr schedule counts units (optimizer steps).

Tasks live with their kind (fastvid.video.task, fastvid.events.detect.task); the core imports none.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


@dataclass
class Unit:
    """One optimizer step's worth of training data, as the task's `unit_loss` takes it."""

    data: Any                                   # a batch, a TBPTT chunk, ...
    steps: int = 1                              # the task's steps it covers (batches; windows)
    samples: int = 0                            # samples in it (clips, valid windows): the throughput
    keys: list[str] = field(default_factory=list)   # sample names (callbacks, key logs)
    clips: list[int] | None = None              # per key: which clip of the sample, where the task has clips


@dataclass
class Loaders:
    train: Any | None                           # None with --test-only
    val: Any


@dataclass(frozen=True)
class Columns:
    """How a task's numbers are named in metrics.jsonl, the log lines and TensorBoard."""

    throughput: str                             # metrics.jsonl column of the training rate, e.g. "clips_per_s"
    sample: str                                 # what a sample is, plural: "clips", "windows" (log lines, tags)
    batch: str                                  # what --batch-size counts: "clips", "streams"
    headline: tuple[tuple[str, str, str], ...] = ()   # (column, label, format) of the epoch summary line
    unevaluated: tuple[str, ...] = ()           # columns set to None in an epoch without evaluation
    tags: tuple[str, ...] = ()                  # more columns to plot per epoch (TensorBoard epoch/<column>)


@dataclass
class Run:
    """What the Trainer gives a task while it runs."""

    info: Any                                   # fastvid.train.distributed.DistInfo
    out_dir: Path
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    # progress(total, header) -> a context manager with update(n) (fastvid.train.logs.progress)
    progress: Callable[[int, str], Any] | None = None

    @property
    def device(self) -> torch.device:
        return self.info.device

    def autocast(self):
        """The run's autocast context (a no-op without --amp)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


class Task(abc.ABC):
    """A training job the Trainer runs. `cfg` is the task's config (a fastvid.train.config.TrainerConfig)."""

    name: str = ""        # the model registry's task: fastvid.train.models.get_model(cfg.model, task=name, ...)
    command: str = ""     # the command, for log lines and errors ("fastvid train")
    columns: Columns

    def __init__(self, cfg):
        self.cfg = cfg

    # ---- building ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def build_loaders(self, info) -> Loaders:
        """The training (None with --test-only) and validation loaders of this rank."""

    @abc.abstractmethod
    def build_model(self, info, loaders: Loaders) -> nn.Module:
        """The model, built through fastvid.train.models under this task's name (and --weights, if any)."""

    def describe(self, loaders: Loaders, model: nn.Module) -> list[str]:
        """Lines the main rank prints once the run is built (loaders, model, data)."""
        return []

    def training_module(self, model: nn.Module) -> nn.Module:
        """The module one training unit runs forward (what DDP wraps); the model itself unless a unit needs
        more (an unrolled recurrence). Evaluation uses the model (DDP-wrapped only when this is the model)."""
        return model

    def build_optimizer(self, params, device: torch.device):
        """(optimizer, implementation name); default: SGD as torchvision's reference (fastvid.train.optim)."""
        from fastvid.train.optim import build_optimizer

        return build_optimizer(params, self.cfg, device)

    # ---- training ---------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def steps_per_epoch(self, loader) -> int:
        """The task's steps in one epoch of `loader` (before --max-steps-per-epoch)."""

    def units_for(self, steps: int) -> int:
        """Training units (optimizer steps) covering `steps` task steps."""
        return steps

    @abc.abstractmethod
    def train_units(self, loader, epoch: int, start_step: int, num_steps: int, run: Run) -> Iterator[Unit]:
        """The units of epoch `epoch` from task step `start_step` up to `num_steps` (a resumed epoch starts
        later). The loader's set_epoch has been called."""

    @abc.abstractmethod
    def unit_loss(self, module: nn.Module, unit: Unit, run: Run) -> torch.Tensor:
        """The scalar loss of one unit (forward under `run.autocast()`); the Trainer runs backward and the step.
        Every rank must return a loss connected to every parameter DDP reduces (0 x output when nothing is
        labelled), so DDP's all-reduce stays in step."""

    # ---- evaluation -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def evaluate(self, model: nn.Module, loader, run: Run, header: str) -> dict:
        """Metrics over the validation loader (every rank calls it; collectives inside are the task's),
        as metrics.jsonl columns ("val_..."). Files of the evaluation (detections) are the task's to write."""

    def report_lines(self, metrics: dict) -> list[str]:
        """Lines printed after a --test-only evaluation."""
        return [" * " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())]

    def epoch_columns(self, loaders: Loaders) -> dict:
        """Columns of this epoch's metrics.jsonl row besides the Trainer's (loader statistics, ...)."""
        return {}

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def checkpoint_state(self, loaders: Loaders) -> dict:
        """Entries every checkpoint carries besides the Trainer's (the main rank's values)."""
        return {}

    def rank_state(self) -> dict:
        """This rank's state a mid-epoch checkpoint needs to continue exactly (plain data and tensors); the
        Trainer stores each entry as a list over ranks."""
        return {}

    def resume(self, ckpt: dict, info, loaders: Loaders) -> int:
        """Continue the epoch a mid-epoch checkpoint stopped in (`ckpt["resume_step"]` task steps done):
        restore what `checkpoint_state` / `rank_state` saved, return the step to start from. Raise where this
        rank cannot continue it (another world size, for state kept per rank)."""
        return int(ckpt["resume_step"])

    def close(self) -> None:
        """Release loaders and their workers (end of the run)."""
