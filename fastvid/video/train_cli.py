"""`fastvid train`: video classification with torchvision-reference flags (+ --config YAML), run by the one
Trainer (fastvid.train.trainer) with the video task (fastvid.video.task).

Works run directly (one process) and under `torchrun --nproc_per_node=N -m fastvid train ...`
(or `torchrun $(which fastvid) train ...`): torchrun's env:// variables select DDP. The flags are
generated from fastvid.video.config.TrainConfig.
"""

from __future__ import annotations

from fastvid.train import config as C
from fastvid.video.config import TrainConfig

EPILOG = ("Exit status: 0 done; 1 error; 75 (EX_TEMPFAIL) preempted: SIGTERM stopped training after the current "
          "step, skipped evaluation and saved OUTPUT/checkpoint.pth; rerun with --resume OUTPUT/checkpoint.pth to continue.")


def _task(cfg: TrainConfig):
    from fastvid.video.task import VideoClassification

    return VideoClassification(cfg)


add_arguments, config_from_args, run = C.training_command(TrainConfig, "video classification options", EPILOG, _task)
