"""Training, kind-free: the one Trainer (trainer.py) and the Task interface it runs (task.py), the config
schema and argument layer (config.py), the model registry (models.py), checkpoints, DDP helpers, SyncBN,
optimizer and schedule, preemption, callbacks, the profiler and the logs. The tasks live with their kinds
(fastvid.video.task, fastvid.events.detect.task); the commands are fastvid.video.train_cli (`fastvid train`)
and fastvid.events.detect.train_cli (`fastvid train-events`)."""
