"""Optimizer and lr schedule as torchvision's video reference: SGD (fused where available), linear or
constant warmup for `lr_warmup_epochs`, then MultiStepLR, stepped every iteration; `fast_forward_schedule` puts a
schedule at iteration N (a resume on another world size, where the steps per epoch changed)."""

from __future__ import annotations

import warnings

import torch


def build_optimizer(params, cfg, device: torch.device):
    """SGD with torch's fused kernel where torch has one for the device, else apex's FusedSGD on CUDA if
    installed, else the default (foreach) implementation. Returns (optimizer, implementation name)."""
    kw = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    params = list(params)
    try:
        return torch.optim.SGD(params, fused=True, **kw), "torch fused SGD"
    except (TypeError, RuntimeError, ValueError):
        if device.type == "cuda":
            try:
                from apex.optimizers import FusedSGD

                return FusedSGD(params, **kw), "apex FusedSGD"
            except ImportError:
                pass
    return torch.optim.SGD(params, **kw), "torch SGD"


def build_lr_scheduler(optimizer, cfg, iters_per_epoch: int):
    """Per-iteration schedule: warmup over lr_warmup_epochs, then x lr_gamma at each milestone epoch."""
    warmup_iters = iters_per_epoch * cfg.lr_warmup_epochs
    # SequentialLR restarts the main scheduler's count after warmup, hence the shifted milestones.
    milestones = [iters_per_epoch * (m - cfg.lr_warmup_epochs) for m in cfg.lr_milestones]
    main = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.lr_gamma)
    if warmup_iters <= 0:
        return main
    if cfg.lr_warmup_method == "linear":
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=cfg.lr_warmup_decay, total_iters=warmup_iters)
    elif cfg.lr_warmup_method == "constant":
        warmup = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=cfg.lr_warmup_decay, total_iters=warmup_iters)
    else:
        raise ValueError(f"Invalid warmup lr method '{cfg.lr_warmup_method}'. Only linear and constant are supported.")
    return torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers=[warmup, main], milestones=[warmup_iters])


def fast_forward_schedule(cfg, optimizer, steps_per_epoch: int, steps: int) -> dict:
    """Scheduler state and lrs after `steps` iterations of a fresh schedule (for a resume on another world size)."""
    saved = [dict(g) for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = g.get("initial_lr", cfg.lr)
        g.pop("initial_lr", None)
    sched = build_lr_scheduler(optimizer, cfg, max(steps_per_epoch, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": intended here
        for _ in range(steps):
            sched.step()
    out = {"scheduler": sched.state_dict(), "lrs": [g["lr"] for g in optimizer.param_groups]}
    for g, old in zip(optimizer.param_groups, saved):
        g["initial_lr"] = old.get("initial_lr", cfg.lr)
    return out
