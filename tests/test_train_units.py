"""Trainer pieces on their own: config precedence, flags, lr schedule, CPU SyncBN across two gloo
processes, checkpoints/weights and video-level evaluation."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.nn as nn

from fastvid.video.config import FIELD_TYPES, build_config
from fastvid.train.config import load_yaml
from fastvid.video.config import parse_config
from fastvid.train.checkpoint import atomic_save, load_checkpoint, load_weights
from fastvid.video.task import evaluate
from fastvid.train.optim import build_lr_scheduler, build_optimizer


def test_torchvision_flags_parse_to_reference_names_and_defaults():
    cfg = parse_config([])
    # torchvision reference defaults
    assert (cfg.clip_len, cfg.clips_per_video, cfg.batch_size, cfg.epochs, cfg.workers) == (16, 5, 24, 45, 10)
    assert (cfg.momentum, cfg.weight_decay, cfg.lr_milestones, cfg.lr_gamma) == (0.9, 1e-4, [20, 30, 40], 0.1)
    assert (cfg.lr_warmup_epochs, cfg.lr_warmup_method, cfg.lr_warmup_decay, cfg.frame_rate) == (10, "linear", 0.001, 15.0)
    cfg = parse_config(["--wd", "0.5", "-b", "3", "-j", "2", "--lr-milestones", "5", "7", "--train-crop-size", "64", "64",
                        "--cache-dataset", "--sync-bn", "--amp", "--amp-dtype", "fp16", "--model-kwarg", "width=8",
                        "--profile-steps", "2-4", "--frame-rate", "none"])
    assert cfg.weight_decay == 0.5 and cfg.batch_size == 3 and cfg.workers == 2
    assert cfg.lr_milestones == [5, 7] and cfg.train_crop_size == [64, 64]
    assert cfg.cache_dataset and cfg.sync_bn and cfg.amp and cfg.amp_dtype == "fp16"
    assert cfg.model_kwargs == {"width": 8} and cfg.profile_steps == "2-4" and cfg.frame_rate is None


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: mc3_18\nlr: 0.1\nweight-decay: 0.001\nlr_milestones: [3, 4]\nkinetics_version: 600\n"
                    "model_kwargs: {width: 16}\n")
    cfg = parse_config(["--config", str(path), "--lr", "0.2", "--model-kwarg", "zero_init_residual=true"])
    assert cfg.model == "mc3_18" and cfg.weight_decay == 0.001 and cfg.lr_milestones == [3, 4]
    assert cfg.lr == 0.2  # flag wins
    assert cfg.kinetics_version == "600"
    assert cfg.model_kwargs == {"width": 16, "zero_init_residual": True}
    assert cfg.config == str(path)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: r3d_18\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown option 'modle'"):
        load_yaml(bad, FIELD_TYPES)
    bad.write_text("lr: fast\n")
    with pytest.raises(ValueError, match=r"bad.yaml: lr must be float"):
        load_yaml(bad, FIELD_TYPES)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        build_config(config_path=tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="profile_steps"):
        build_config({"profile_steps": "5-2"})


def test_negative_frame_rate_is_rejected_up_front():
    # Otherwise every sample's clip plan fails inside the loader (DALI's python callback) and is skipped.
    with pytest.raises(ValueError, match="frame_rate must be > 0"):
        build_config({"frame_rate": -15.0})


def test_shipped_configs_load_by_name_and_path(tmp_path):
    from fastvid.configs import recipe_names, resolve

    names = recipe_names()
    assert {"r2plus1d_18_k400", "s3d_k400", "quickstart"} <= set(names)
    models = {build_config({"config": name}).model for name in names}
    assert {"r2plus1d_18", "r3d_18", "mc3_18", "s3d", "tsm_resnet50"} <= models
    # The README's older spelling and an explicit .yaml name find the same recipe.
    assert resolve("configs/r3d_18_k400.yaml") == resolve("r3d_18_k400.yaml") == resolve("r3d_18_k400")
    # A file path wins over a recipe name; an unknown name lists the recipes.
    own = tmp_path / "r3d_18_k400.yaml"
    own.write_text("model: mc3_18\n")
    assert build_config({"config": str(own)}).model == "mc3_18"
    with pytest.raises(FileNotFoundError, match="r2plus1d_18_k400"):
        build_config({"config": "no_such_recipe"})


def test_s3d_eval_recipe_and_k600_starting_points():
    from fastvid.configs import recipe_names, resolve

    cfg = build_config({"config": "s3d_k400_eval"})
    assert (cfg.model, cfg.test_only, cfg.clip_len, cfg.clips_per_video, cfg.batch_size, cfg.frame_rate) == ("s3d", True, 128, 1, 16, 15.0)
    assert (cfg.val_resize_size, cfg.val_crop_size) == ([256, 256], [224, 224])
    # torchvision publishes no Kinetics-600 recipes: those files must say they are starting points.
    k600 = [n for n in recipe_names() if n.endswith("_k600")]
    assert k600 and all("STARTING POINT" in resolve(n).read_text() for n in k600)


def _lrs(cfg, iters_per_epoch, epochs):
    p = nn.Parameter(torch.zeros(1))
    opt, _ = build_optimizer([p], cfg, torch.device("cpu"))
    sched = build_lr_scheduler(opt, cfg, iters_per_epoch)
    out = []
    for _ in range(iters_per_epoch * epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_lr_schedule_is_linear_warmup_then_multistep():
    cfg = build_config({"lr": 1.0, "lr_warmup_epochs": 2, "lr_warmup_decay": 0.1, "lr_milestones": [3, 5], "lr_gamma": 0.5})
    lrs = _lrs(cfg, iters_per_epoch=4, epochs=6)
    warm = lrs[:8]
    # linear from 0.1 to 1.0 over 8 iterations
    assert warm == pytest.approx([0.1 + 0.9 * i / 8 for i in range(8)])
    assert lrs[8:12] == pytest.approx([1.0] * 4)   # epoch 2
    assert lrs[12:20] == pytest.approx([0.5] * 8)  # epochs 3-4 (after milestone 3)
    assert lrs[20:24] == pytest.approx([0.25] * 4)  # epoch 5


def test_constant_warmup():
    cfg = build_config({"lr": 1.0, "lr_warmup_epochs": 1, "lr_warmup_method": "constant", "lr_warmup_decay": 0.01, "lr_milestones": [9]})
    assert _lrs(cfg, 3, 2) == pytest.approx([0.01] * 3 + [1.0] * 3)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _syncbn_worker(rank, world, port, x_full, result_q):
    import torch.distributed as dist

    from fastvid.train.syncbn import convert_sync_batchnorm

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        bn = nn.Sequential(nn.BatchNorm3d(3))
        with torch.no_grad():
            bn[0].weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            bn[0].bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        model, n = convert_sync_batchnorm(bn, torch.device("cpu"))
        ddp = nn.parallel.DistributedDataParallel(model)
        x = x_full.chunk(world)[rank].clone().requires_grad_(True)
        out = ddp(x)
        out.pow(3).sum().backward()
        # numpy arrays are pickled by value (tensors would be shared memory that dies with this process)
        result_q.put((rank, n, type(model[0]).__name__, out.detach().numpy(), x.grad.numpy(), model[0].weight.grad.numpy(),
                      model[0].running_mean.numpy(), model[0].running_var.numpy()))
        # Leave together: destroying gloo while the peer's DDP work is still in flight can SIGABRT a worker.
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # As fastvid.train.distributed.exit_process: skip interpreter shutdown, where gloo can abort the process.
    result_q.close()
    result_q.join_thread()
    os._exit(0)


def test_cpu_syncbn_matches_full_batch_batchnorm():
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    x_full = torch.randn(4, 3, 2, 3, 3) * 2 + 1
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_syncbn_worker, args=(r, 2, port, x_full, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted([q.get(timeout=120) for _ in procs], key=lambda r: r[0])
    results = [tuple(torch.from_numpy(v) if hasattr(v, "dtype") else v for v in r) for r in results]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    ref = nn.BatchNorm3d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        ref.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    xr = x_full.clone().requires_grad_(True)
    out = ref(xr)
    out.pow(3).sum().backward()

    assert results[0][1] == 1 and results[0][2] == "CPUSyncBatchNorm"
    torch.testing.assert_close(torch.cat([r[3] for r in results]), out.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([r[4] for r in results]), xr.grad, rtol=1e-3, atol=1e-3)
    # DDP averages parameter gradients over 2 ranks; the full-batch loss is the sum of both halves.
    torch.testing.assert_close(results[0][5] * 2, ref.weight.grad, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(results[0][6], ref.running_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][7], ref.running_var, rtol=1e-5, atol=1e-5)


def test_atomic_checkpoint_and_clear_errors(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "optimizer": {}, "lr_scheduler": {}, "epoch": 3}
    atomic_save(state, tmp_path / "checkpoint.pth")
    assert load_checkpoint(tmp_path / "checkpoint.pth")["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # no temp left behind
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="trunc.pth could not be read"):
        load_checkpoint(tmp_path / "trunc.pth")
    atomic_save({"model": {}}, tmp_path / "weights_only.pth")
    with pytest.raises(ValueError, match="lacks"):
        load_checkpoint(tmp_path / "weights_only.pth")


def test_load_torchvision_format_weights_with_new_classifier(tmp_path):
    from fastvid.train.models import get_model

    src = get_model("r3d_18", num_classes=400, width=8)
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    dst = get_model("r3d_18", num_classes=5, width=8)
    fresh = load_weights(dst, tmp_path / "w.pth")
    assert fresh == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(dst.state_dict()["layer3.1.conv2.0.weight"], src.state_dict()["layer3.1.conv2.0.weight"])
    other = get_model("mc3_18", num_classes=400, width=8)
    with pytest.raises(ValueError, match="does not fit"):
        load_weights(other, tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError, match="KINETICS400"):
        load_weights(dst, "R2Plus1D_18_Weights.KINETICS400_V1")


class _Logits(nn.Module):
    """Reads the class scores straight from the clip: logits = video[:, 0, 0, 0, :C]."""

    def forward(self, video):
        return video[:, 0, 0, 0, :3]


def _batch(rows, keys, labels):
    video = torch.zeros(len(rows), 3, 1, 1, 3)
    video[:, 0, 0, 0, :] = torch.tensor(rows, dtype=torch.float32)
    return {"video": video, "label": torch.tensor(labels), "key": keys}


def test_video_level_eval_averages_clips_and_ignores_wrapped_repeats():
    big = 20.0
    # video a (label 0): clip 1 says class 1 mildly, clip 2 says class 0 strongly -> video right, clip acc 1/2.
    # video b (label 2): both clips say class 2.
    # then the loader wraps around: a's first clip again (padding) must not count.
    batches = [
        _batch([[0, 1, 0], [big, 0, 0]], ["a", "a"], [0, 0]),
        _batch([[0, 0, 5], [0, 0, 5]], ["b", "b"], [2, 2]),
        _batch([[0, 1, 0], [0, 1, 0]], ["a", "a"], [0, 0]),
    ]

    class Loader(list):
        pass

    res = evaluate(_Logits(), Loader(batches), device=torch.device("cpu"), clips_per_video=2)
    assert res["val_videos"] == 2 and res["val_clips"] == 4
    assert res["val_acc1"] == 100.0
    assert res["val_clip_acc1"] == 75.0
    assert res["val_acc5"] == 100.0


def test_tsm_recipe_has_paddlevideos_documented_values():
    cfg = build_config(config_path="tsm_resnet50_k400")  # a shipped recipe, by name
    assert cfg.model == "tsm_resnet50" and cfg.num_segments == 8 and cfg.preset == "tsm"
    assert cfg.batch_size * 8 == 128 and cfg.lr == 0.02 and cfg.momentum == 0.9 and cfg.weight_decay == 1e-4
    assert cfg.epochs == 50 and cfg.lr_milestones == [20, 40] and cfg.lr_gamma == 0.1 and cfg.lr_warmup_epochs == 0
    assert cfg.val_resize_size == [256] and cfg.val_crop_size == [224, 224] and cfg.train_crop_size == [224, 224]
    from fastvid.video.presets import IMAGENET_MEAN, get_preset

    p = get_preset("tsm")
    assert p.scales == (1.0, 0.875, 0.75, 0.66) and p.mean == IMAGENET_MEAN and p.train_crop == "multiscale"


def test_amp_means_fp16_with_grad_scaler_and_bf16_is_opt_in():
    from fastvid.train.trainer import autocast_dtype as _autocast_dtype

    assert build_config({}).amp_dtype == "fp16"
    cpu = torch.device("cpu")
    assert _autocast_dtype(build_config({"amp": True}), cpu) == torch.float16
    assert _autocast_dtype(build_config({"amp": True, "amp_dtype": "bf16"}), cpu) == torch.bfloat16
    assert _autocast_dtype(build_config({}), cpu) is None


def test_fast_forward_schedule_lands_on_the_fresh_schedules_lr():
    from fastvid.train.optim import fast_forward_schedule

    cfg = build_config({"lr": 1.0, "lr_warmup_epochs": 2, "lr_warmup_decay": 0.1, "lr_milestones": [3, 5], "lr_gamma": 0.5})
    fresh = _lrs(cfg, iters_per_epoch=4, epochs=6)
    p = nn.Parameter(torch.zeros(1))
    opt, _ = build_optimizer([p], cfg, torch.device("cpu"))
    build_lr_scheduler(opt, cfg, 7)  # the old run's schedule (7 steps per epoch), then moved to 4 per epoch
    opt.param_groups[0]["lr"] = 0.123
    for steps in (0, 5, 8, 13, 21):
        out = fast_forward_schedule(cfg, opt, 4, steps)
        assert out["lrs"][0] == pytest.approx(fresh[steps]) and out["scheduler"]["last_epoch"] == steps
        assert opt.param_groups[0]["initial_lr"] == 1.0
