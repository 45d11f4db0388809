"""--profile-steps A-B: a torch.profiler trace of the trainer's global steps [A, B), written to
OUTPUT/profile/trace_rank<r>.json (atomically: a temp name, then rename)."""

from __future__ import annotations

from pathlib import Path

import torch

from fastvid.store.atomic import atomic_path
from fastvid.train.config import parse_step_range


class StepProfiler:
    """torch.profiler over global steps [A, B); call before_step/after_step around every optimizer step."""

    def __init__(self, step_range: str, out_dir: Path, rank: int, device: torch.device):
        self.start, self.stop = parse_step_range(step_range)
        self.path = Path(out_dir) / "profile" / f"trace_rank{rank}.json"
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
        """Stop and write the trace (also on errors: an active profiler at interpreter exit can crash it)."""
        if self.active:
            self.prof.stop()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.path) as tmp:
                self.prof.export_chrome_trace(str(tmp))
            self.active, self.done = False, True
            print(f"profiler trace written to {self.path}", flush=True)
