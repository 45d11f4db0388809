"""Where training reports go: console lines that read well in a file, progress bars on a terminal,
TensorBoard event files and (optionally) Weights & Biases.

The trainer (fastvid.train.trainer) makes one `Sinks` per run and one `progress(...)` per loop (train
epoch, evaluation). It only calls `set_postfix(...)` at its `print_freq` host syncs and `update(1)` per
optimizer step (the tqdm interface), so the same loop drives a terminal bar or plain log lines:

- on a terminal (stderr is a TTY) and without `--no-progress`: a tqdm bar;
- otherwise: a line every `--print-freq` steps, torchvision MetricLogger style, e.g.
  `Epoch: [3]  [ 40/120]  eta: 0:00:51  loss: 1.0412  lr: 0.01  clips/s: 28.1  data: 12.0%  max mem: 812 MB`
  (windows/s for the event detector) and never a `\\r` frame.

The same print-freq steps go to TensorBoard/W&B as per-step scalars (global step = optimizer steps),
and every epoch's metrics.jsonl row goes there as per-epoch scalars.
"""

from __future__ import annotations

import datetime
import math
import sys
import time
from pathlib import Path

# Scalars per epoch of every task: metrics.jsonl key -> TensorBoard tag. A task adds its own columns
# (throughput, validation metrics) as epoch/<column> (Sinks.epoch's `extra`).
EPOCH_TAGS = {
    "train_loss": "epoch/train_loss",
    "lr": "epoch/lr",
    "data_wait_frac": "epoch/data_wait_frac",
    "gpu_util_mean": "epoch/gpu_util",
    "cpu_percent": "epoch/cpu_percent",
    "max_mem": "epoch/max_mem_mib",
    "epoch_time_s": "epoch/time_s",
}


def format_eta(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def _number(text) -> float | None:
    """A set_postfix value ('1.2345', '12.5%', 0.01) -> float; the trainer formats them for tqdm."""
    if isinstance(text, (int, float)):
        return float(text)
    try:
        return float(str(text).rstrip("%"))
    except ValueError:
        return None


class DeviceStats:
    """Memory (and GPU utilization through NVML) of this process's device, read at log steps only."""

    def __init__(self, device):
        self.device = device
        self._nvml = None
        if getattr(device, "type", "cpu") == "cuda":
            from fastvid.metrics import _nvml_handles

            pynvml, handles = _nvml_handles([device.index or 0])
            if handles:
                self._nvml = (pynvml, handles[0])

    def read(self) -> dict:
        out = {}
        if getattr(self.device, "type", "cpu") == "cuda":
            import torch

            out["gpu_mem_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            if self._nvml is not None:
                try:
                    out["gpu_util"] = float(self._nvml[0].nvmlDeviceGetUtilizationRates(self._nvml[1]).gpu)
                except Exception:  # driver hiccup: skip the point rather than stop training
                    pass
        else:
            import psutil

            out["rss_mib"] = psutil.Process().memory_info().rss / 2**20
        return out


class Sinks:
    """TensorBoard and W&B writers of the main rank (other ranks get an inert instance)."""

    def __init__(self, tb_dir: str | Path | None = None, wandb_run=None):
        self.tb = None
        self.wandb = wandb_run
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(tb_dir))
        self.tb_dir = Path(tb_dir) if tb_dir is not None else None

    def scalars(self, step: int, values: dict) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        if not values:
            return
        if self.tb is not None:
            for tag, value in values.items():
                self.tb.add_scalar(tag, value, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def epoch(self, row: dict, step: int, extra: tuple[str, ...] = ()) -> None:
        """One metrics.jsonl row; `step` is the global optimizer step at the end of the epoch, so
        per-step and per-epoch curves share an x axis (W&B requires increasing steps). `extra`: more
        columns of the row to plot (a task's own, as epoch/<column>)."""
        tags = {**EPOCH_TAGS, **{key: f"epoch/{key}" for key in extra if key not in EPOCH_TAGS}}
        self.scalars(step, {tag: row.get(key) for key, tag in tags.items()} | {"epoch/epoch": row.get("epoch")})
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def tensorboard_dir(setting: str | None, output_dir: str | Path) -> Path | None:
    """--tensorboard value -> directory or None. 'auto' (default): OUTPUT/tb when tensorboard is
    installed; 'none'/'off': disabled; anything else: that directory (tensorboard required)."""
    if setting is None or str(setting).lower() in ("none", "off", "false", ""):
        return None
    if str(setting).lower() == "auto":
        from fastvid._gpu import has_module

        return Path(output_dir) / "tb" if has_module("tensorboard") else None
    from fastvid._gpu import require

    require("tensorboard", "--tensorboard")
    return Path(setting)


def make_sinks(cfg, is_main: bool, out_dir: Path) -> Sinks:
    """The run's sinks from its config (tensorboard, wandb, wandb_project)."""
    if not is_main:
        return Sinks()
    run = None
    if cfg.wandb:
        from fastvid._gpu import require

        wandb = require("wandb", "--wandb (pip install 'fastvid[wandb]')")
        # WANDB_MODE=offline works without network: the run is written under OUTPUT/wandb for `wandb sync`.
        run = wandb.init(project=cfg.wandb_project, dir=str(out_dir), config=cfg.to_dict(),
                         name=Path(cfg.output_dir).resolve().name)
    return Sinks(tensorboard_dir(cfg.tensorboard, out_dir), run)


def use_bars(no_progress: bool, stream=None) -> bool:
    """Progress bars only on a terminal: redirected logs get lines, not `\\r` frames."""
    stream = stream if stream is not None else sys.stderr
    return not no_progress and hasattr(stream, "isatty") and stream.isatty()


class LineProgress:
    """The tqdm calls the trainer makes, written as one line every `print_freq` steps."""

    def __init__(self, total: int, header: str, *, print_freq: int, initial: int = 0, enabled: bool = True,
                 sinks: Sinks | None = None, step_offset: int = 0, device_stats: DeviceStats | None = None,
                 stream=None, tag_prefix: str = "train"):
        self.total, self.header, self.print_freq = total, header, max(int(print_freq), 1)
        self.n = self.start = initial
        self.enabled = enabled
        self.sinks = sinks
        self.step_offset = step_offset
        self.device_stats = device_stats
        self.stream = stream if stream is not None else sys.stdout
        self.tag_prefix = tag_prefix
        self.t0 = time.perf_counter()
        self.postfix: dict = {}
        self._postfix_fresh = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self.postfix = values
        self._postfix_fresh = True

    def update(self, n: int = 1) -> None:
        self.n += n
        done = self.n - self.start
        if self._postfix_fresh or (not self.postfix and (done % self.print_freq == 0 or self.n == self.total)):
            self._report()
            self._postfix_fresh = False

    def _report(self) -> None:
        elapsed = time.perf_counter() - self.t0
        done = max(self.n - self.start, 1)
        eta = elapsed / done * max(self.total - self.n, 0)
        stats = self.device_stats.read() if self.device_stats is not None else {}
        values = {k: _number(v) for k, v in self.postfix.items()}
        if self.sinks is not None and values:
            step = self.step_offset + self.n
            rates = {f"{self.tag_prefix}/{key[:-2]}_per_s": v for key, v in values.items() if key.endswith("_s")}
            scalars = {
                f"{self.tag_prefix}/loss": values.get("loss"),
                f"{self.tag_prefix}/lr": values.get("lr"),
                **rates,
                f"{self.tag_prefix}/data_wait_frac": None if values.get("wait") is None else values["wait"] / 100.0,
                "device/gpu_util": stats.get("gpu_util"),
                "device/gpu_mem_mib": stats.get("gpu_mem_mib"),
                "device/rss_mib": stats.get("rss_mib"),
            }
            self.sinks.scalars(step, scalars)
        if not self.enabled:
            return
        width = len(str(self.total))
        parts = [f"{self.header}  [{self.n:>{width}}/{self.total}]  eta: {format_eta(eta)}"]
        for key, value in self.postfix.items():  # loss, lr, <samples>_s (a rate: clips/s, windows/s), wait
            label = {"wait": "data"}.get(key, key[:-2] + "/s" if key.endswith("_s") else key)
            parts.append(f"{label}: {value}")
        mem = stats.get("gpu_mem_mib", stats.get("rss_mib"))
        if mem is not None:
            parts.append(f"max mem: {mem:.0f} MB" if "gpu_mem_mib" in stats else f"rss: {mem:.0f} MB")
        if "gpu_util" in stats:
            parts.append(f"gpu: {stats['gpu_util']:.0f}%")
        print("  ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        pass


class BarProgress(LineProgress):
    """A tqdm bar on the terminal that still feeds the sinks at print-freq steps."""

    def __init__(self, total: int, header: str, **kw):
        from tqdm import tqdm

        super().__init__(total, header, **kw)
        self.bar = tqdm(total=total, initial=self.start, desc=header, disable=not self.enabled, dynamic_ncols=True,
                        file=sys.stderr)

    def set_postfix(self, refresh: bool = True, **values) -> None:
        super().set_postfix(**values)
        self.bar.set_postfix(refresh=refresh, **values)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._postfix_fresh:
            saved, self.enabled = self.enabled, False  # sinks only: the bar shows the values
            self._report()
            self.enabled = saved
            self._postfix_fresh = False
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def progress(total: int, header: str, *, bars: bool, **kw) -> LineProgress:
    """A progress reporter for one loop: a bar on a terminal, lines otherwise (see the module doc)."""
    return (BarProgress if bars else LineProgress)(total, header, **kw)


def epoch_line(row: dict, epoch: int, epochs: int, eta_s: float | None, *, throughput: str, sample: str,
               headline: tuple = ()) -> str:
    """The one summary line per epoch: loss, the task's headline metrics (column, label, format) where
    evaluated, throughput (column `throughput`, in `sample`/s), data wait, lr, time and the ETA."""
    shown = [f"{label} {fmt.format(row[key])}" for key, label, fmt in headline if row.get(key) is not None]
    evaluated = " ".join(shown) + " | " if shown else ""
    eta = f" | eta {format_eta(eta_s)}" if eta_s is not None and epoch + 1 < epochs else ""
    return (f"Epoch {epoch}: train_loss {row['train_loss']:.4f} | {evaluated}{row[throughput]:.1f} {sample}/s | "
            f"data wait {100 * row['data_wait_frac']:.1f}% | lr {row['lr']:.4g} | {row.get('epoch_time_s', 0):.1f} s{eta}")


def log(info, *parts) -> None:
    """print on the main rank only (`info`: fastvid.train.distributed.DistInfo)."""
    if info.is_main:
        print(*parts, flush=True)


def append_jsonl(path, row: dict) -> None:
    """One JSON row appended to a metrics file (flushed, so a killed run keeps every finished epoch)."""
    import json

    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
