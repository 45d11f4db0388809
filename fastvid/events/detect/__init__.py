"""Event-camera object detection: Prophesee's COCO evaluation protocol (evaluate, eval_cli: `fastvid
eval-events`), a recurrent detector (model, loss, augment, postprocess) and the TBPTT task (task:
EventDetection, config: DetectConfig) that the one Trainer (fastvid.train.trainer) runs for `fastvid
train-events` (train_cli)."""
