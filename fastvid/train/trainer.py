"""The one trainer: `Trainer(task).run()` trains any fastvid.train.task.Task (`fastvid train`: video
classification; `fastvid train-events`: event detection with TBPTT), under torchrun or in one process.

What it does, the same for every task:
- process group from torchrun's env:// (NCCL on CUDA, gloo on CPU), and one run per output directory
  (a flock on OUTPUT/.fastvid.lock, fastvid.locks);
- the model from the task (built through the model registry), SyncBN, DDP, torch.compile, channels-last;
- AMP (fp16 + GradScaler as torchvision's --amp, or bf16), gradient clipping, the optimizer and the
  per-iteration lr schedule (fastvid.train.optim), stepped once per training unit;
- checkpoints loaded weights-only (--trust-checkpoint for foreign pickles), written atomically as
  OUTPUT/checkpoint.pth and OUTPUT/model_<epoch>.pth, and mid-epoch (--save-every-steps, SIGTERM);
- preemption: SIGTERM stops every rank after the same step (fastvid.train.preempt), checkpoints mid-epoch
  and exits 75; resume continues the epoch exactly (the task restores its loader position, or its
  per-rank recurrent and augmentation state); a resume on another number of ranks or batch size moves
  the lr schedule to the same point of training;
- evaluation every --eval-every epochs, metrics.jsonl, TensorBoard / W&B, torch.profiler, progress
  lines or bars, and one summary line per epoch with the ETA;
- callbacks (fastvid.train.callbacks: `on_batch`), e.g. the key log of the hidden --log-keys flag;
- on CPU, torch's thread count leaves a core to the decoders unless OMP_NUM_THREADS or
  torch.set_num_threads chose one.
"""

from __future__ import annotations

import gc
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from fastvid.train import distributed as D
from fastvid.train import logs
from fastvid.train.callbacks import Callback, KeyLog
from fastvid.train.checkpoint import checkpoint_args, load_checkpoint, load_model_state, save_checkpoint
from fastvid.train.logs import append_jsonl, log
from fastvid.train.optim import build_lr_scheduler, fast_forward_schedule
from fastvid.train.preempt import PREEMPTED_EXIT_CODE, StopFlag, StopVote
from fastvid.train.task import Run, Task, Unit


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class EpochResult:
    steps: int = 0          # task steps trained in this run of the epoch
    units: int = 0          # optimizer steps
    samples: int = 0
    loss_sum: float = 0.0
    wall_s: float = 0.0
    wait_s: float = 0.0
    preempted: bool = False
    usage: dict = field(default_factory=dict)
    loader_stage_s: dict = field(default_factory=dict)  # the training loader's seconds per stage this epoch

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.units, 1)


def autocast_dtype(cfg, device: torch.device, info=None):
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


def choose_cpu_threads(device: torch.device) -> int | None:
    """Torch threads for CPU training: the cores minus one (per local rank), leaving a core to the decoder
    workers beside it (two OpenMP threads contending with them measured 4-7x slower per step than one on a
    busy 2-core machine). Left alone when OMP_NUM_THREADS / MKL_NUM_THREADS is set (torchrun sets 1) or
    torch's count is not its default (the user called torch.set_num_threads). Returns the count set."""
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return None
    import psutil

    from fastvid.pipeline.backends import cpu_count

    cores = cpu_count()
    if torch.get_num_threads() not in {cores, os.cpu_count(), psutil.cpu_count(logical=False)}:
        return None
    threads = max(1, cores // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1) - 1)
    torch.set_num_threads(threads)
    return threads


def channels_last(model: nn.Module) -> nn.Module:
    """Parameters in channels-last memory format (3D convs: channels_last_3d)."""
    for p in model.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
        elif p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Trainer:
    """Trains `task` (a fastvid.train.task.Task) as its config (task.cfg) says; `callbacks` run at the hooks
    of fastvid.train.callbacks.Callback. `run()` returns the exit status: 0, or 75 when preempted."""

    def __init__(self, task: Task, callbacks: Sequence[Callback] = ()):
        self.task = task
        self.cfg = task.cfg
        self.callbacks = list(callbacks)
        self.global_step = 0

    # ---- the run ----------------------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        threads = torch.get_num_threads()
        info = D.init_distributed(cfg.device, cfg.dist_url)
        stop = StopFlag().install()
        lock = None
        try:
            if info.is_main:
                from fastvid.locks import lock_directory

                # Two runs writing one output directory would interleave metrics.jsonl and overwrite checkpoints.
                lock = lock_directory(cfg.output_dir, "--output-dir")
            rc = self._run(info, stop)
            # Leave together: a rank tearing down gloo while another still writes a checkpoint can abort it.
            D.barrier()
            return rc
        finally:
            stop.restore()
            self.task.close()
            # DDP's reducer and any collective's Work object keep the process group alive; inside reference
            # cycles they would be freed only at interpreter exit, where gloo's worker threads are torn down
            # too late (seen as "terminate called without an active exception", SIGABRT). Free them while
            # the interpreter is whole, then destroy the group.
            self.__dict__.pop("module", None)
            self.__dict__.pop("eval_model", None)
            gc.collect()
            D.cleanup()
            if lock is not None:
                lock.close()
            torch.set_num_threads(threads)  # the trainer may run inside another program (quickstart, tests)

    def _run(self, info, stop: StopFlag) -> int:
        cfg, task = self.cfg, self.task
        self.info, self.stop = info, stop
        self.out_dir = Path(cfg.output_dir)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        log(info, f"{task.command}: {cfg.model} on {info.device} x{info.world_size}"
            f"{' (' + info.backend + ')' if info.backend else ''}, output {self.out_dir}")
        threads = choose_cpu_threads(info.device)
        if threads is not None:
            log(info, f"CPU: {threads} torch thread(s), a core left to the decoders (OMP_NUM_THREADS overrides)")
        if cfg.log_keys:
            self.callbacks.append(KeyLog(cfg.log_keys, info.rank))
        if cfg.use_deterministic_algorithms:
            torch.use_deterministic_algorithms(True)
        if info.device.type == "cuda":
            torch.backends.cudnn.benchmark = not cfg.use_deterministic_algorithms
        self.loaders = task.build_loaders(info)
        torch.manual_seed(cfg.seed)
        model = task.build_model(info, self.loaders)
        for line in task.describe(self.loaders, model):
            log(info, line)
        self._place_model(model)
        amp = autocast_dtype(cfg, info.device, info)
        self.run_ctx = Run(info, self.out_dir, amp, cfg.channels_last, progress=self._progress)
        self.scaler = torch.amp.GradScaler(info.device.type) if amp == torch.float16 else None
        self._plan_epochs()
        self.optimizer, opt_name = task.build_optimizer(self.model.parameters(), info.device)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg, max(self.units_per_epoch, 1))
        start_epoch, resume_step = self._resume() if cfg.resume else (cfg.start_epoch, 0)
        if cfg.test_only:
            return self._test_only()
        log(info, f"optimizer: {opt_name}; {self.units_per_epoch} steps/epoch x {cfg.batch_size} {task.columns.batch} x "
            f"{info.world_size} ranks; AMP {({torch.float16: 'fp16 + GradScaler', torch.bfloat16: 'bf16'}[amp]) if amp else 'off'}; "
            f"channels_last {cfg.channels_last}; compile {cfg.compile}")
        return self._train(start_epoch, resume_step)

    def _place_model(self, model: nn.Module) -> None:
        """SyncBN, device, channels-last, then DDP and compile around the task's training module."""
        cfg, info = self.cfg, self.info
        if cfg.sync_bn:
            from fastvid.train.syncbn import convert_sync_batchnorm

            model, n = convert_sync_batchnorm(model, info.device)
            kinds = sorted({type(m).__name__ for m in model.modules() if "SyncBatchNorm" in type(m).__name__})
            log(info, f"SyncBatchNorm: converted {n} BatchNorm layers ({', '.join(kinds)})" if n
                else "SyncBatchNorm: the model has no BatchNorm layers")
        model.to(info.device)
        if cfg.channels_last:
            channels_last(model)
        self.model = model  # what checkpoints hold: no DDP, no compile wrapper
        part = self.task.training_module(model)
        module = part
        if info.distributed:
            # Gradients as views into the all-reduce buckets: one copy less per step.
            module = nn.parallel.DistributedDataParallel(
                part, device_ids=[info.device.index] if info.device.type == "cuda" else None, gradient_as_bucket_view=True)
        if cfg.compile:
            module = torch.compile(module)
        self.module = module
        self.eval_model = module if part is model else model

    def _plan_epochs(self) -> None:
        cfg, train = self.cfg, self.loaders.train
        steps = self.task.steps_per_epoch(train) if train is not None else 0
        if cfg.max_steps_per_epoch:
            steps = min(steps, cfg.max_steps_per_epoch)
        if train is not None and steps == 0:
            raise ValueError(f"the training set {Path(cfg.data_path or '') / cfg.train_dir} gives no training step per epoch "
                             f"with --batch-size {cfg.batch_size} on {self.info.world_size} rank(s); use a smaller "
                             "--batch-size or more data")
        self.steps_per_epoch = steps
        self.units_per_epoch = self.task.units_for(steps)

    def _progress(self, total: int, header: str, **kw):
        return logs.progress(total, header, bars=logs.use_bars(self.cfg.no_progress), print_freq=self.cfg.print_freq,
                             enabled=self.info.is_main, **kw)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def _resume(self) -> tuple[int, int]:
        """Load --resume: weights always; for training also optimizer, schedule, scaler and the epoch position."""
        cfg, info = self.cfg, self.info
        ckpt = load_checkpoint(cfg.resume, trust=cfg.trust_checkpoint)
        self._check_saved_model(checkpoint_args(ckpt))
        load_model_state(self.model, ckpt["model"], cfg.resume, f"{cfg.model} (width {cfg.model_width or 'default'})")
        epoch = int(ckpt["epoch"])
        mid_epoch = ckpt.get("resume_epoch") == epoch + 1
        if cfg.test_only:
            where = f"epoch {epoch + 1} at step {ckpt['resume_step']} (saved mid-epoch)" if mid_epoch else f"epoch {epoch}"
            log(info, f"loaded {cfg.resume}: the model after {where}")
            return cfg.start_epoch, 0
        start_epoch, resume_step = epoch + 1, 0
        if mid_epoch:
            resume_step = min(self.task.resume(ckpt, info, self.loaders), self.steps_per_epoch)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self._resume_schedule(ckpt, start_epoch, resume_step)
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        log(info, f"resumed from {cfg.resume}: epoch {start_epoch}" +
            (f", step {resume_step}" if resume_step else f" (the checkpoint finished epoch {epoch})"))
        return start_epoch, resume_step

    def _check_saved_model(self, args: dict) -> None:
        """A checkpoint of another model is one clear line (not a state_dict dump)."""
        from fastvid.train.models import list_models, model_spec

        cfg, task = self.cfg, self.task
        saved = args.get("model")
        if not saved or saved == cfg.model:
            return
        try:
            other_task = model_spec(saved).task
        except ValueError:  # a model this installation does not have
            other_task = None
        if other_task is not None and other_task != task.name:
            raise ValueError(f"--resume {cfg.resume}: this checkpoint is {saved}, a {other_task} model; {task.command} "
                             f"trains {task.name} models ({', '.join(list_models(task.name))})")
        hint = f" (or use --weights to start {cfg.model} from compatible weights)" if hasattr(cfg, "weights") else ""
        raise ValueError(f"--resume {cfg.resume}: this checkpoint is {saved}, not {cfg.model}; pass --model {saved}{hint}")

    def _resume_schedule(self, ckpt: dict, start_epoch: int, resume_step: int) -> None:
        cfg, info = self.cfg, self.info
        args = checkpoint_args(ckpt)
        saved = (ckpt.get("world_size", args.get("world_size", info.world_size)), args.get("batch_size", cfg.batch_size))
        if saved == (info.world_size, cfg.batch_size):
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
            return
        # Steps per epoch differ on another world size or batch size: rebuild the per-iteration schedule at the
        # same point of training (epoch + fraction done) instead of loading an iteration count of the old run.
        done = start_epoch * self.units_per_epoch + self.task.units_for(resume_step)
        lrs = fast_forward_schedule(cfg, self.optimizer, self.units_per_epoch, done)
        self.lr_scheduler = build_lr_scheduler(self.optimizer, cfg, max(self.units_per_epoch, 1))
        self.lr_scheduler.load_state_dict(lrs["scheduler"])
        for group, lr in zip(self.optimizer.param_groups, lrs["lrs"]):
            group["lr"] = lr

    def _state(self, epoch: int, resume_at: tuple[int, int] | None = None) -> dict:
        """The checkpoint: `epoch` finished; with `resume_at` (epoch, step) also where to continue (every rank
        must call it then: the task's per-rank state is gathered)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": epoch,
            "args": self.cfg.to_dict(),
            "world_size": self.info.world_size,
            **self.task.checkpoint_state(self.loaders),
        }
        if resume_at is not None:
            state.update(resume_epoch=resume_at[0], resume_step=resume_at[1])
            per_rank = D.all_gather_objects(self.task.rank_state())
            for key in per_rank[0]:
                state[key] = [part[key] for part in per_rank]
        return state

    def _save_mid_epoch(self, epoch: int, step: int) -> None:
        """"epoch-1 done, continue `epoch` at task step `step`" (every rank calls it; the main rank writes)."""
        state = self._state(epoch - 1, (epoch, step))
        if self.info.is_main:
            save_checkpoint(state, self.out_dir, epoch=None)

    # ---- evaluation -------------------------------------------------------------------------------------------
    def _evaluate(self, header: str) -> dict:
        return self.task.evaluate(self.eval_model, self.loaders.val, self.run_ctx, header)

    def _test_only(self) -> int:
        cfg, info = self.cfg, self.info
        if info.device.type == "cuda":
            # as torchvision's reference: cudnn autotuning can noticeably change the accuracy
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        res = self._evaluate("Test:")
        for line in self.task.report_lines(res):
            log(info, line)
        if info.is_main:
            from fastvid.store.manifest import write_json_atomic

            write_json_atomic({**res, "model": cfg.model, "checkpoint": cfg.resume or getattr(cfg, "weights", None),
                               "world_size": info.world_size}, self.out_dir / "eval.json")
        return 0

    # ---- training ---------------------------------------------------------------------------------------------
    def _train(self, start_epoch: int, resume_step: int) -> int:
        from fastvid.train.profiler import StepProfiler

        cfg, info = self.cfg, self.info
        self.profiler = StepProfiler(cfg.profile_steps, self.out_dir, info.rank, info.device) if cfg.profile_steps else None
        self.sinks = logs.make_sinks(cfg, info.is_main, self.out_dir)
        if self.sinks.tb_dir is not None:
            log(info, f"TensorBoard: tensorboard --logdir {self.sinks.tb_dir}")
        self.stop_vote = StopVote(self.stop)
        self.device_stats = logs.DeviceStats(info.device)
        try:
            return self._epochs(start_epoch, resume_step)
        finally:
            self.sinks.close()
            if self.profiler is not None:
                self.profiler.finish()  # also on errors: an active profiler at interpreter exit can crash it

    def _epochs(self, start_epoch: int, resume_step: int) -> int:
        cfg, info = self.cfg, self.info
        metrics_path = self.out_dir / "metrics.jsonl"
        checkpoint = self.out_dir / "checkpoint.pth"
        t_train = time.time()
        for epoch in range(start_epoch, cfg.epochs):
            # Seeding per (seed, epoch, rank) makes dropout etc. identical after a resume.
            torch.manual_seed(cfg.seed + 1000 * epoch + info.rank)
            self.loaders.train.set_epoch(epoch)
            stages = self._loader_stages()
            res = self._train_epoch(epoch, resume_step)
            res.loader_stage_s = {k: v - stages.get(k, 0.0) for k, v in self._loader_stages().items()}
            if res.preempted:
                return self._preempted(epoch, resume_step + res.steps)
            resume_step = 0
            # A stop that came during the epoch's last step: all ranks agree (one host sync per epoch), and
            # the evaluation is skipped so that the checkpoint is written within the grace period.
            preempted = self._stop_agreed()
            evaluate = not preempted and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
            row = self._epoch_row(epoch, res, evaluate, preempted)
            state = self._state(epoch)
            if info.is_main:
                save_checkpoint(state, self.out_dir, epoch=epoch)
                append_jsonl(metrics_path, row)
                self.sinks.epoch(row, step=(epoch + 1) * self.units_per_epoch,
                                 extra=(self.task.columns.throughput, *self.task.columns.tags))
            eta = (time.time() - t_train) / (epoch + 1 - start_epoch) * (cfg.epochs - epoch - 1)
            c = self.task.columns
            log(info, logs.epoch_line(row, epoch, cfg.epochs, eta, throughput=c.throughput, sample=c.sample,
                                      headline=c.headline))
            # All ranks must agree before leaving, or one would wait forever in the next epoch's collectives.
            if preempted or self._stop_agreed():
                log(info, f"SIGTERM: epoch {epoch} checkpointed{' (evaluation skipped)' if preempted else ''}; "
                    f"exiting with code {PREEMPTED_EXIT_CODE} (preempted); resume with --resume {checkpoint}")
                return PREEMPTED_EXIT_CODE
        log(info, f"Training time {time.strftime('%H:%M:%S', time.gmtime(time.time() - t_train))}; metrics in {metrics_path}")
        return 0

    def _loader_stages(self) -> dict:
        """The training loader's stage seconds so far (the pipeline's StageStats, the hook doctor and bench read)."""
        stats = getattr(self.loaders.train, "stage_stats", None)
        return stats.seconds() if stats is not None else {}

    def _preempted(self, epoch: int, step: int) -> int:
        """Mid-epoch stop: the checkpoint says "epoch-1 done, continue `epoch` at `step`"."""
        self._save_mid_epoch(epoch, step)
        D.barrier()
        if self.profiler is not None:
            self.profiler.finish()
        checkpoint = self.out_dir / "checkpoint.pth"
        log(self.info, f"SIGTERM: saved {checkpoint} at epoch {epoch} step {step}; exiting with code "
            f"{PREEMPTED_EXIT_CODE} (preempted); resume with --resume {checkpoint}")
        return PREEMPTED_EXIT_CODE

    def _stop_agreed(self) -> bool:
        info = self.info
        flag = torch.tensor([float(self.stop())], device=info.device if info.backend == "nccl" else "cpu")
        return D.all_reduce(flag, op="max").item() > 0

    def _train_epoch(self, epoch: int, start_step: int) -> EpochResult:
        """Steps [start_step, steps_per_epoch) of `epoch`, with resource sampling around them."""
        from fastvid.metrics import ResourceSampler

        info = self.info
        if info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(info.device)
        sampler = ResourceSampler(interval=0.5, gpu_indices=[info.device.index] if info.device.type == "cuda" else None).start()
        cpu_t0, wall_t0 = _cpu_seconds(), time.perf_counter()
        with self._progress(self.units_per_epoch, f"Epoch: [{epoch}]", initial=self.task.units_for(start_step),
                            sinks=self.sinks, step_offset=epoch * self.units_per_epoch, device_stats=self.device_stats) as bar:
            res = self._loop(epoch, start_step, bar)
        res.usage = sampler.stop()
        if not res.usage["num_samples"]:
            # Epoch shorter than the sampling interval: fall back to this process's CPU time and peak RSS.
            res.usage["cpu_percent"] = 100.0 * (_cpu_seconds() - cpu_t0) / max(time.perf_counter() - wall_t0, 1e-9)
            res.usage["rss_max_bytes"] = _peak_rss_bytes()
        return res

    def _loop(self, epoch: int, start_step: int, bar) -> EpochResult:
        """The training units of one epoch. Host syncs only every --print-freq units (loss, NaN agreement);
        the stop vote is polled every unit (fastvid.train.preempt.StopVote)."""
        cfg = self.cfg
        self.module.train()
        res = EpochResult()
        acc = _LossAccumulator(self.info.device)
        num_steps, step = self.steps_per_epoch, start_step
        units = self.task.train_units(self.loaders.train, epoch, start_step, num_steps, self.run_ctx)
        t_start = time.perf_counter()
        try:
            while step < num_steps:
                t0 = time.perf_counter()
                unit = next(units, None)
                if unit is None:
                    raise RuntimeError(f"the training loader ended after {step} of {num_steps} steps in epoch {epoch}")
                res.wait_s += time.perf_counter() - t0
                for callback in self.callbacks:
                    callback.on_batch(epoch, step, unit)
                acc.add(self._update(unit))
                step += unit.steps
                res.steps, res.units, res.samples = res.steps + unit.steps, res.units + 1, res.samples + unit.samples
                last = step >= num_steps
                if cfg.save_every_steps and self.task.units_for(step) % cfg.save_every_steps == 0 and not last:
                    self._save_mid_epoch(epoch, step)
                if res.units % cfg.print_freq == 0 or last:
                    self._report(acc, epoch, step, res, bar, time.perf_counter() - t_start)
                bar.update(1)
                if self.stop_vote.poll() and not last:
                    res.preempted = True
                    break
        finally:
            close = getattr(units, "close", None)
            if close is not None:
                close()  # stops a loader's read-ahead when the epoch was cut short
        self.stop_vote.drain()
        res.loss_sum = acc.total()
        res.wall_s = time.perf_counter() - t_start
        return res

    def _update(self, unit: Unit) -> torch.Tensor:
        """One optimizer step: the task's loss, backward (scaled with fp16), clipping, step, lr schedule."""
        cfg, opt, scaler = self.cfg, self.optimizer, self.scaler
        if self.profiler is not None:
            self.profiler.before_step(self.global_step)
        loss = self.task.unit_loss(self.module, unit, self.run_ctx)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            opt.step()
        self.lr_scheduler.step()
        if self.profiler is not None:
            self.profiler.after_step(self.global_step)
        self.global_step += 1
        return loss.detach()

    def _report(self, acc: "_LossAccumulator", epoch: int, step: int, res: EpochResult, bar, elapsed: float) -> None:
        """The one host sync per --print-freq units: agree on a non-finite loss across ranks, update the progress."""
        last_loss = acc.last_value()
        if acc.any_bad_anywhere():
            cpu_bf16 = self.run_ctx.autocast_dtype is not None and self.info.device.type == "cpu"
            raise NonFiniteLoss(
                f"loss is {last_loss if not math.isfinite(last_loss) else 'non-finite on another rank'} at epoch {epoch}, "
                f"step {step} (lr {self.optimizer.param_groups[0]['lr']:.4g}): training diverged and was stopped; "
                "the last good checkpoint is kept. Try a lower --lr or --grad-clip"
                + (", or --amp-dtype bf16 (fp16 overflows more easily)" if self.run_ctx.autocast_dtype == torch.float16 else "")
                + (", or no --amp (CPU bf16 autocast can give non-finite conv gradients)" if cpu_bf16 else "") + ".")
        rate = {f"{self.task.columns.sample}_s": f"{res.samples / max(elapsed, 1e-9):.1f}"}
        bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.4g}", **rate,
                        wait=f"{100 * res.wait_s / max(elapsed, 1e-9):.1f}%", refresh=False)

    def _epoch_row(self, epoch: int, res: EpochResult, evaluate: bool, preempted: bool) -> dict:
        """The epoch's metrics.jsonl row: rank-summed throughput and CPU; rank-averaged loss, data wait, GPU
        utilization and memory; the evaluation (or its columns empty); the task's columns."""
        info, usage, columns = self.info, res.usage, self.task.columns
        max_mem = (torch.cuda.max_memory_allocated(info.device) if info.device.type == "cuda"
                   else (usage["rss_max_bytes"] or 0)) / 2**20
        agg = torch.tensor([res.samples / max(res.wall_s, 1e-9), res.wait_s / max(res.wall_s, 1e-9), res.loss,
                            usage["cpu_percent"] or 0.0, usage["gpu_util_mean"] or 0.0, max_mem], dtype=torch.float64)
        D.all_reduce(agg.to(info.device) if info.backend == "nccl" else agg)
        n = info.world_size
        rate, wait, loss, cpu, gpu, mem = (agg.cpu() / torch.tensor([1, n, n, 1, n, n], dtype=torch.float64)).tolist()
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": loss, "steps": res.steps}
        if evaluate:
            row.update(self._evaluate(f"Test: [{epoch}]"))
        else:
            row.update({name: None for name in columns.unevaluated})
        if preempted:
            row["preempted"] = True
        row.update({columns.throughput: round(rate, 2), "data_wait_frac": round(wait, 4),
                    "gpu_util_mean": round(gpu, 1) if usage["gpu_util_mean"] is not None else None,
                    "cpu_percent": round(cpu, 1), "max_mem": round(mem, 1), "world_size": n,
                    "epoch_time_s": round(res.wall_s, 2),
                    # rank 0's loader, seconds per stage summed over its threads and processes
                    "loader_stage_s": {k: round(v, 3) for k, v in res.loader_stage_s.items()}})
        row.update(self.task.epoch_columns(self.loaders))
        return row


class _LossAccumulator:
    """Per-unit losses summed on the device (no host sync), and a NaN/inf flag agreed on at report time."""

    def __init__(self, device: torch.device):
        self.sum = torch.zeros((), device=device)
        self.bad = torch.zeros((), device=device, dtype=torch.bool)
        self.last = None

    def add(self, loss: torch.Tensor) -> None:
        loss = loss.float()
        self.sum += loss
        self.bad |= ~torch.isfinite(loss)
        self.last = loss

    def last_value(self) -> float:
        return float(self.last) if self.last is not None else float("nan")

    def any_bad_anywhere(self) -> bool:
        flags = self.bad.float().reshape(1)
        D.all_reduce(flags, op="max")
        return bool(flags[0] > 0)

    def total(self) -> float:
        return float(self.sum)
