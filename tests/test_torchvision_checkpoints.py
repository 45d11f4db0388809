"""torchvision users at home (issue 20): a checkpoint of torchvision's references/video_classification
resumes *training* in `fastvid train`, and a fastvid checkpoint resumes in the reference.

The reference's saving and loading code is re-implemented here from its train.py (not imported): SGD
with momentum and weight decay, the per-iteration schedule (LinearLR warmup then MultiStepLR in a
SequentialLR, iters_per_epoch = len(data_loader)), `checkpoint = {"model", "optimizer", "lr_scheduler",
"epoch", "args": argparse.Namespace}` saved with torch.save, and on --resume
`torch.load(path, map_location="cpu")` (weights-only by default since torch 2.6), load_state_dict of
model, optimizer and schedule, start_epoch = epoch + 1. torchvision's r3d_18 has fastvid's parameter
names; the test builds it through fastvid's registry (torchvision is not a dependency), at width 8 to
fit a CPU run."""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn

from fastvid.train.models import get_model
from test_train_cli import rows, run_train, tiny_args

ITERS = 8  # 8 training videos x 2 clips / batch 2: the reference's len(data_loader) on this set


def reference_args(**kw) -> argparse.Namespace:
    """The reference's parsed flags (get_args_parser defaults, with tiny_args' values)."""
    args = dict(data_path="shards", kinetics_version="400", model="r3d_18", device="cpu", clip_len=4, frame_rate=15,
                clips_per_video=2, batch_size=2, epochs=2, workers=0, lr=0.01, momentum=0.9, weight_decay=1e-4,
                lr_milestones=[2], lr_gamma=0.1, lr_warmup_epochs=1, lr_warmup_method="linear", lr_warmup_decay=0.001,
                print_freq=1, output_dir=".", resume="", start_epoch=0, cache_dataset=False, sync_bn=False,
                test_only=False, use_deterministic_algorithms=False, world_size=1, dist_url="env://",
                val_resize_size=(36, 48), val_crop_size=(32, 32), train_resize_size=(36, 48), train_crop_size=(32, 32),
                weights=None, amp=False, distributed=False)
    args.update(kw)
    return argparse.Namespace(**args)


def reference_objects(args: argparse.Namespace, model: nn.Module, iters_per_epoch: int):
    """The reference's optimizer and lr schedule, as its main() builds them."""
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    lr_milestones = [iters_per_epoch * (m - args.lr_warmup_epochs) for m in args.lr_milestones]
    main_lr_scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=lr_milestones, gamma=args.lr_gamma)
    warmup_iters = iters_per_epoch * args.lr_warmup_epochs
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=args.lr_warmup_decay, total_iters=warmup_iters)
    lr_scheduler = torch.optim.lr_scheduler.SequentialLR(optimizer, schedulers=[warmup, main_lr_scheduler],
                                                         milestones=[warmup_iters])
    return optimizer, lr_scheduler


def test_a_torchvision_reference_checkpoint_resumes_training_in_fastvid(shard_root, tmp_path):
    args = reference_args()
    torch.manual_seed(0)
    model = get_model(args.model, num_classes=2, width=8)
    optimizer, lr_scheduler = reference_objects(args, model, ITERS)
    criterion = nn.CrossEntropyLoss()
    for _ in range(ITERS):  # the reference's train_one_epoch, on random clips (the checkpoint's contents matter here)
        loss = criterion(model(torch.randn(2, 3, 4, 32, 32)), torch.randint(0, 2, (2,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_scheduler.step()
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "lr_scheduler": lr_scheduler.state_dict(), "epoch": 0, "args": args}
    path = tmp_path / "checkpoint.pth"
    torch.save(checkpoint, path)  # utils.save_on_master

    out = tmp_path / "fastvid"
    r = run_train(tiny_args(shard_root, out, "--epochs", "2", "--resume", str(path)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {path}: epoch 1 (the checkpoint finished epoch 0)" in r.stdout
    assert [g["epoch"] for g in rows(out)] == [1] and rows(out)[0]["steps"] == ITERS
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    # the schedule went on from the reference's iteration 8: warmup over, milestone 2 reached at iteration 16
    assert ckpt["lr_scheduler"]["last_epoch"] == 2 * ITERS and ckpt["optimizer"]["param_groups"][0]["lr"] == 0.001
    assert rows(out)[0]["lr"] == 0.001
    assert any(not torch.equal(ckpt["model"][k], v) for k, v in checkpoint["model"].items() if v.is_floating_point())

    # --test-only --resume states the checkpoint's epoch (it said "epoch 0" for any checkpoint)
    r = run_train(tiny_args(shard_root, tmp_path / "eval", "--test-only", "--resume", str(out / "checkpoint.pth")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"loaded {out / 'checkpoint.pth'}: the model after epoch 1" in r.stdout
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["val_videos"] == 6


def test_a_fastvid_checkpoint_resumes_in_the_torchvision_reference(shard_root, tmp_path):
    out = tmp_path / "fastvid"
    r = run_train(tiny_args(shard_root, out, "--epochs", "1"))
    assert r.returncode == 0, r.stderr[-3000:]

    # the reference's --resume, as its main() does it after building model, optimizer and schedule
    args = reference_args(resume=str(out / "checkpoint.pth"))
    model = get_model(args.model, num_classes=2, width=8)
    optimizer, lr_scheduler = reference_objects(args, model, ITERS)
    checkpoint = torch.load(args.resume, map_location="cpu")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
    args.start_epoch = checkpoint["epoch"] + 1
    assert args.start_epoch == 1
    # the reference's iteration count per epoch is fastvid's (the last partial batch is kept by both)
    assert lr_scheduler.last_epoch == ITERS and optimizer.param_groups[0]["lr"] == args.lr
    # and its training goes on: one step of train_one_epoch
    weight = model.fc.weight.detach().clone()
    loss = nn.CrossEntropyLoss()(model(torch.randn(2, 3, 4, 32, 32)), torch.tensor([0, 1]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    lr_scheduler.step()
    assert torch.isfinite(loss) and not torch.equal(model.fc.weight, weight)
