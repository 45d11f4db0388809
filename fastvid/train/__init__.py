"""Video classification training: torchvision-reference CLI (`fastvid train`), DDP + AMP + SyncBN loop,
checkpoints and metrics. Entry points: fastvid.train.cli (command), fastvid.train.trainer.run_training."""
