"""Video classification training: torchvision-reference CLI (`fastvid train`), DDP + AMP + SyncBN loop,
checkpoints and metrics. Entry points: fastvid.video.train_cli (command), fastvid.video.trainer.run_training."""
