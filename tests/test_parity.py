"""Step-for-step parity of fastvid's training loop with torchvision's reference `train_one_epoch`.

The reference side is re-implemented here from torchvision's references/video_classification
(train.py: per-iteration lr schedule = linear warmup from lr_warmup_decay x lr over lr_warmup_epochs,
then x lr_gamma at each milestone epoch; SGD with momentum and weight decay; CrossEntropyLoss without
label smoothing; zero_grad -> backward -> step -> lr_scheduler.step() every iteration; the logged lr is
the one the step used). SGD and the schedule are written out by hand (not torch.optim), so the test
checks fastvid's optimizer and scheduler construction too. Same seed, same initial weights, same
batches: losses and learning rates must agree step by step.

fastvid's side is the one Trainer (fastvid.train.trainer) running an in-memory classification Task with
the kind-free TrainerConfig: the same loop `fastvid train` and `fastvid train-events` run.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn

from fastvid.train.config import TrainerConfig, build_config
from fastvid.train.task import Columns, Loaders, Task, Unit
from fastvid.train.trainer import Trainer

ITERS, EPOCHS, BATCH, CLASSES = 4, 4, 3, 3
LR, MOMENTUM, WD, WARMUP, DECAY, MILESTONES, GAMMA = 0.05, 0.9, 1e-3, 1, 0.1, [2, 3], 0.1


def reference_lr(it: int) -> float:
    warmup_iters = ITERS * WARMUP
    if it < warmup_iters:
        return LR * (DECAY + (1.0 - DECAY) * it / warmup_iters)
    return LR * GAMMA ** sum(it >= ITERS * m for m in MILESTONES)


def reference_train(model, batches) -> tuple[list[float], list[float]]:
    """torchvision's train_one_epoch loop over all epochs, with SGD written out (torch.optim.SGD's update rule)."""
    params = [p for p in model.parameters() if p.requires_grad]
    bufs = [None] * len(params)
    criterion = nn.CrossEntropyLoss()
    losses, lrs = [], []
    it = 0
    for epoch in range(EPOCHS):
        model.train()
        for video, target in batches[epoch]:
            output = model(video)
            loss = criterion(output, target)
            for p in params:
                p.grad = None
            loss.backward()
            lr = reference_lr(it)
            with torch.no_grad():
                for i, p in enumerate(params):
                    d = p.grad + WD * p
                    bufs[i] = d.clone() if bufs[i] is None else bufs[i].mul_(MOMENTUM).add_(d)
                    p.add_(bufs[i], alpha=-lr)
            losses.append(loss.item())
            lrs.append(lr)
            it += 1
    return losses, lrs


class ListLoader:
    """Fixed batches per epoch (the loader interface the Trainer uses: set_epoch, len, iteration)."""

    def __init__(self, batches):
        self.batches, self.epoch = batches, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.batches[self.epoch])

    def __iter__(self):
        return iter(self.batches[self.epoch])


class RecordingClassification(Task):
    """Cross-entropy on in-memory batches; records each step's loss and the lr that step uses."""

    name = "classification"
    command = "parity"
    columns = Columns(throughput="clips_per_s", sample="clips", batch="clips")

    def __init__(self, cfg, model, batches):
        super().__init__(cfg)
        self.model, self.batches = model, batches
        self.criterion = nn.CrossEntropyLoss(label_smoothing=0.0)
        self.losses, self.lrs = [], []

    def build_loaders(self, info):
        return Loaders(ListLoader(self.batches), ListLoader(self.batches))

    def build_model(self, info, loaders):
        return self.model

    def build_optimizer(self, params, device):
        self.optimizer, name = super().build_optimizer(params, device)
        return self.optimizer, name

    def steps_per_epoch(self, loader):
        return len(loader)

    def train_units(self, loader, epoch, start_step, num_steps, run):
        for video, target in list(loader)[start_step:num_steps]:
            yield Unit((video, target), samples=len(target))

    def unit_loss(self, module, unit, run):
        video, target = unit.data
        loss = self.criterion(module(video), target)
        self.losses.append(loss.item())
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        return loss

    def evaluate(self, model, loader, run, header):
        return {}


def test_fastvid_loop_matches_torchvision_train_one_epoch_step_for_step(tmp_path):
    torch.manual_seed(0)
    # A small conv3d + BatchNorm net: the loop, optimizer and schedule are under test, and a shallow model
    # keeps rounding differences (fused vs textbook SGD) from being amplified into chaos over 16 steps.
    model = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.BatchNorm3d(8), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
                          nn.Linear(8, CLASSES))
    ref_model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batches = [[(torch.randn(BATCH, 3, 4, 16, 16, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g))
                for _ in range(ITERS)] for _ in range(EPOCHS)]

    cfg = build_config(TrainerConfig, {"lr": LR, "momentum": MOMENTUM, "weight_decay": WD, "lr_warmup_epochs": WARMUP,
                                       "lr_warmup_decay": DECAY, "lr_milestones": MILESTONES, "lr_gamma": GAMMA,
                                       "epochs": EPOCHS, "print_freq": ITERS, "device": "cpu", "tensorboard": "none",
                                       "eval_every": EPOCHS, "output_dir": str(tmp_path)})
    task = RecordingClassification(cfg, model, batches)
    assert Trainer(task).run() == 0

    ref_losses, ref_lrs = reference_train(ref_model, batches)
    assert len(task.losses) == len(ref_losses) == ITERS * EPOCHS
    assert task.lrs == pytest.approx(ref_lrs, rel=1e-9, abs=1e-12)
    # the schedule really warms up and decays over these steps
    assert ref_lrs[0] == pytest.approx(LR * DECAY) and ref_lrs[ITERS] == pytest.approx(LR) and ref_lrs[-1] == pytest.approx(LR * GAMMA ** 2)
    # fp32 on CPU: fastvid uses torch's fused SGD kernel, the reference the textbook update; rounding only
    assert task.losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
    for (name, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=f"{name} differs")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["steps"] for row in rows] == [ITERS] * EPOCHS
