"""Model-step variants for `fastvid bench train --variants`: the same training step (forward, loss,
backward, SGD) under eager mode, torch.compile, CUDA graphs, cuDNN autotuning, memory formats, AMP
dtypes and batch sizes, from synthetic on-device clips, each with a numerics check.

Numerics: every variant first trains `check_steps` steps from the same initial weights on the same
fixed batches (seeded) and its loss after those steps is compared with plain eager fp32 at the same
batch size: |loss - reference| <= atol + rtol * reference, with (rtol, atol) = (1e-3, 1e-4) for fp32
variants and (5e-2, 5e-2) under fp16/bf16 autocast (their rounding, not a bug, moves the loss that
much over a few steps). Then it is timed like the rest of `bench train` (warmup, best of `repeats`).
CUDA graphs are torch.compile's "reduce-overhead" mode (it captures the compiled forward and backward
into graphs); the optimizer step stays outside.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn as nn

FP32_TOL = (1e-3, 1e-4)
AMP_TOL = (5e-2, 5e-2)


@dataclass(frozen=True)
class Variant:
    name: str
    amp: str | None = None            # None (fp32) | "bf16" | "fp16" (with a GradScaler)
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: str | None = None        # None | torch.compile mode: "default", "max-autotune-no-cudagraphs", "reduce-overhead"
    batch_size: int | None = None     # None: the benchmark's batch size


GPU_VARIANTS = (
    Variant("eager_bf16_cl", amp="bf16", channels_last=True),  # the baseline configuration
    Variant("eager_bf16_cl_cudnn_benchmark", amp="bf16", channels_last=True, cudnn_benchmark=True),
    Variant("eager_bf16_cudnn_benchmark", amp="bf16", cudnn_benchmark=True),
    Variant("eager_fp16_scaler_cl_cudnn_benchmark", amp="fp16", channels_last=True, cudnn_benchmark=True),
    Variant("compile_bf16_cl", amp="bf16", channels_last=True, cudnn_benchmark=True, compile="default"),
    Variant("compile_max_autotune_bf16_cl", amp="bf16", channels_last=True, cudnn_benchmark=True,
            compile="max-autotune-no-cudagraphs"),
    Variant("cuda_graphs_bf16_cl", amp="bf16", channels_last=True, cudnn_benchmark=True, compile="reduce-overhead"),
    Variant("cuda_graphs_bf16_cl_b64", amp="bf16", channels_last=True, cudnn_benchmark=True, compile="reduce-overhead",
            batch_size=64),
    Variant("eager_bf16_cl_cudnn_benchmark_b64", amp="bf16", channels_last=True, cudnn_benchmark=True, batch_size=64),
)
CPU_VARIANTS = (Variant("eager"), Variant("eager_channels_last", channels_last=True), Variant("eager_bf16", amp="bf16"))


def variants_by_name(names: list[str] | None, device: torch.device) -> list[Variant]:
    table = {v.name: v for v in GPU_VARIANTS + CPU_VARIANTS}
    if not names:
        return list(GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown step variant(s) {unknown}; choose from {sorted(table)}")
    return [table[n] for n in names]


def _to_format(model: nn.Module, channels_last: bool) -> nn.Module:
    if channels_last:
        for p in model.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return model


def _fresh(build, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)  # every variant starts from the same weights
    return _to_format(build(), channels_last)


def _step_fn(model, device, v: Variant, lr: float):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4,
                          **({"fused": True} if device.type == "cuda" else {}))
    run = torch.compile(model, mode=v.compile) if v.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(v.amp)
    scaler = torch.amp.GradScaler(device.type) if v.amp == "fp16" else None
    criterion = nn.CrossEntropyLoss()

    def step(video, label):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = criterion(run(video).float(), label)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    return step


def _batches(n: int, batch_size: int, clip_len: int, crop: int, num_classes: int, device, channels_last: bool, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for _ in range(n):
        video = torch.randn(batch_size, 3, clip_len, crop, crop, generator=g).to(device)
        if channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        out.append((video, torch.randint(0, num_classes, (batch_size,), generator=g).to(device)))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_after(build, device, v: Variant, batch_size: int, steps: int, shape: dict, lr: float) -> float:
    """Loss of the last of `steps` training steps from a fresh model on fixed batches (2 batches, cycled)."""
    model = _fresh(build, v.channels_last)
    step = _step_fn(model, device, v, lr)
    data = _batches(2, batch_size, shape["clip_len"], shape["crop"], shape["num_classes"], device, v.channels_last, seed=1)
    loss = None
    for i in range(steps):
        loss = step(*data[i % 2])
    _sync(device)
    return float(loss)


@dataclass(frozen=True)
class StepVariantsBench:
    """Options of `measure_variants`: the synthetic input and the timing."""

    batch_size: int        # the default batch size (a Variant may set its own)
    clip_len: int
    crop: int              # square crop size
    num_classes: int
    steps: int             # timed steps per repeat
    warmup: int            # untimed steps first
    repeats: int           # timed windows; the best is reported
    check_steps: int = 8   # steps trained before the loss is compared with eager fp32
    lr: float = 0.01


def measure_variants(build, device: torch.device, variants: list[Variant], options: StepVariantsBench) -> dict:
    """{variant name: {clips_per_s, loss, reference_loss, tolerance, numerics_ok, config}} plus "best"."""
    previous = torch.backends.cudnn.benchmark
    references: dict[int, float] = {}
    out = {}
    try:
        for v in variants:
            bs = v.batch_size or options.batch_size
            entry, loss, ref = _check_numerics(build, device, v, bs, options, references)
            entry.update(_time_variant(build, device, v, bs, options))
            out[v.name] = entry
            print(f"  step variant {v.name}: {entry['clips_per_s']:.1f} clips/s, loss {loss:.4f} vs eager fp32 {ref:.4f} "
                  f"({'ok' if entry['numerics_ok'] else 'OUT OF TOLERANCE'})", flush=True)
    finally:
        torch.backends.cudnn.benchmark = previous
    good = {k: e for k, e in out.items() if e["numerics_ok"]}
    return {"variants": out, "best": max(good, key=lambda k: good[k]["clips_per_s"]) if good else None}


def _check_numerics(build, device, v: Variant, bs: int, o: StepVariantsBench,
                    references: dict[int, float]) -> tuple[dict, float, float]:
    """The variant's loss after `check_steps` steps against eager fp32's at the same batch size (cached in
    `references`): the result entry so far, the loss and the reference loss."""
    shape = dict(clip_len=o.clip_len, crop=o.crop, num_classes=o.num_classes)
    if bs not in references:
        torch.backends.cudnn.benchmark = False
        references[bs] = loss_after(build, device, Variant("eager_fp32"), bs, o.check_steps, shape, o.lr)
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    loss = loss_after(build, device, v, bs, o.check_steps, shape, o.lr)
    rtol, atol = AMP_TOL if v.amp else FP32_TOL
    ref = references[bs]
    entry = {"config": dataclasses.asdict(v), "batch_size": bs, "loss": round(loss, 5), "reference_loss": round(ref, 5),
             "tolerance": {"rtol": rtol, "atol": atol, "steps": o.check_steps},
             "numerics_ok": bool(abs(loss - ref) <= atol + rtol * abs(ref))}
    return entry, loss, ref


def _time_variant(build, device, v: Variant, bs: int, o: StepVariantsBench) -> dict:
    """clips/s of the variant's step from a fresh model: warm-up, then the best of `repeats` windows of `steps` steps."""
    model = _fresh(build, v.channels_last)
    step = _step_fn(model, device, v, o.lr)
    data = _batches(2, bs, o.clip_len, o.crop, o.num_classes, device, v.channels_last, seed=2)
    for i in range(o.warmup):
        step(*data[i % 2])
    _sync(device)
    rates = []
    for _ in range(o.repeats):
        t0 = time.perf_counter()
        for i in range(o.steps):
            step(*data[i % 2])
        _sync(device)
        rates.append(bs * o.steps / (time.perf_counter() - t0))
    out = {"clips_per_s": round(max(rates), 2), "all_clips_per_s": [round(r, 2) for r in rates]}
    if device.type == "cuda":
        out["max_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return out
