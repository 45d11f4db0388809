"""`fastvid train-events`: train (or evaluate) the recurrent event detector, run by the one Trainer
(fastvid.train.trainer) with the event detection task (fastvid.events.detect.task); torchrun ready.

    fastvid train-events --config events/rnn_det_gen1 --data-path shards/gen1 --output-dir runs/det
    torchrun --nproc_per_node=8 -m fastvid train-events --config ... --sync-bn --amp

The flags are generated from fastvid.events.detect.config.DetectConfig.
"""

from __future__ import annotations

from fastvid.events.detect.config import DetectConfig
from fastvid.train import config as C

EPILOG = ("Exit status: 0 done; 1 error; 75 (EX_TEMPFAIL) preempted: SIGTERM stopped training after the current "
          "TBPTT chunk and saved OUTPUT/checkpoint.pth (every rank's recurrent state included); rerun with "
          "--resume OUTPUT/checkpoint.pth on the same number of processes to continue.")


def _task(cfg: DetectConfig):
    from fastvid.events.detect.task import EventDetection

    return EventDetection(cfg)


add_arguments, config_from_args, run = C.training_command(DetectConfig, "event detection options", EPILOG, _task)
