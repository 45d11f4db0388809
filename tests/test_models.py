"""Model registry, output shapes, torchvision-compatible parameter names/shapes and counts."""

from __future__ import annotations

import pytest
import torch

from fastvid.train.models import get_model, list_models
from fastvid.video.models.tsm import temporal_shift
from fastvid.video.models.video_resnet import midplanes_for

# torchvision's published parameter counts (weights meta "num_params") for 400 classes, and
# resnet50's for 1000 (the TSM backbone).
TORCHVISION_PARAMS = {"r3d_18": 33_371_472, "mc3_18": 11_695_440, "r2plus1d_18": 31_505_325, "s3d": 8_320_048}

# A few keys and shapes from torchvision state_dicts, per model.
TORCHVISION_KEYS = {
    "r3d_18": {
        "stem.0.weight": (64, 3, 3, 7, 7),
        "layer1.0.conv1.0.weight": (64, 64, 3, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1),
        "layer4.1.conv2.1.running_var": (512,),
        "fc.weight": (400, 512),
    },
    "mc3_18": {
        "layer1.0.conv1.0.weight": (64, 64, 3, 3, 3),
        "layer2.0.conv1.0.weight": (128, 64, 1, 3, 3),
        "layer3.0.downsample.0.weight": (256, 128, 1, 1, 1),
        "fc.bias": (400,),
    },
    "r2plus1d_18": {
        "stem.0.weight": (45, 3, 1, 7, 7),
        "stem.3.weight": (64, 45, 3, 1, 1),
        "layer1.0.conv1.0.0.weight": (144, 64, 1, 3, 3),
        "layer1.0.conv1.0.1.weight": (144,),
        "layer1.0.conv1.0.3.weight": (64, 144, 3, 1, 1),
        "layer2.0.conv1.0.0.weight": (230, 64, 1, 3, 3),
        "layer4.1.conv2.0.3.weight": (512, 1152, 3, 1, 1),
        "fc.weight": (400, 512),
    },
    "s3d": {
        "features.0.0.0.weight": (64, 3, 1, 7, 7),
        "features.0.1.0.weight": (64, 64, 7, 1, 1),
        "features.0.0.1.running_mean": (64,),
        "features.2.0.weight": (64, 64, 1, 1, 1),
        "features.5.branch0.0.weight": (64, 192, 1, 1, 1),
        "features.5.branch1.1.0.0.weight": (128, 96, 1, 3, 3),
        "features.5.branch3.1.0.weight": (32, 192, 1, 1, 1),
        "features.15.branch2.1.1.0.weight": (128, 128, 3, 1, 1),
        "classifier.1.weight": (400, 1024, 1, 1, 1),
        "classifier.1.bias": (400,),
    },
    "tsm_resnet50": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer3.5.conv3.weight": (1024, 256, 1, 1),
        "layer4.2.bn3.weight": (2048,),
        "fc.weight": (400, 2048),
    },
}


def test_registry_lists_all_models_and_rejects_unknown():
    assert list_models("classification") == ["mc3_18", "r2plus1d_18", "r3d_18", "s3d", "tsm_resnet50"]
    assert list_models("detection") == ["rnn_det_small", "rnn_det_tiny"]
    with pytest.raises(ValueError, match="unknown model 'r50'"):
        get_model("r50")


def test_unknown_builder_option_is_a_clear_value_error():
    # `fastvid train --model s3d --model-width 16`: one clear message, not a TypeError traceback.
    with pytest.raises(ValueError, match="s3d.*width"):
        get_model("s3d", num_classes=3, width=16)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_matches_torchvision(name):
    model = get_model(name, num_classes=400)
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMS[name]


def test_tsm_backbone_has_resnet50_parameter_count():
    model = get_model("tsm_resnet50", num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_keys_and_shapes(name):
    sd = get_model(name, num_classes=400).state_dict()
    for key, shape in TORCHVISION_KEYS[name].items():
        assert key in sd, f"{name}: missing {key}"
        assert tuple(sd[key].shape) == shape, f"{name}: {key} {tuple(sd[key].shape)} != {shape}"


def test_midplanes_formula():
    # (2+1)D hidden width keeps the parameter count of a full 3x3x3 conv: 64->64 gives 144.
    assert midplanes_for(64, 64) == 144
    assert midplanes_for(256, 512) == 921


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "s3d", "tsm_resnet50"])
def test_forward_shape_and_backward(name):
    torch.manual_seed(0)
    kw = {"width": 8} if name != "s3d" else {}
    model = get_model(name, num_classes=7, **kw)
    x = torch.randn(2, 3, 8, 32, 32)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_width_keeps_key_names():
    full = get_model("r2plus1d_18").state_dict()
    tiny = get_model("r2plus1d_18", width=8).state_dict()
    assert list(full) == list(tiny)
    assert tiny["layer1.0.conv1.0.0.weight"].shape[1] == 8


def test_state_dict_roundtrip_reproduces_outputs():
    torch.manual_seed(0)
    a = get_model("r3d_18", num_classes=5, width=8).eval()
    b = get_model("r3d_18", num_classes=5, width=8).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x))


def test_temporal_shift_moves_one_eighth_each_way():
    segments, c = 4, 16
    # value = frame index + 1 in every channel
    x = torch.arange(1, segments + 1, dtype=torch.float32).view(segments, 1, 1, 1).expand(segments, c, 2, 2).contiguous()
    y = temporal_shift(x, segments)
    per_frame = y[:, :, 0, 0]  # (T, C)
    # channels 0,1 (1/8): from the next frame, last frame zero
    assert per_frame[:, 0].tolist() == [2, 3, 4, 0]
    # channels 2,3: from the previous frame, first frame zero
    assert per_frame[:, 2].tolist() == [0, 1, 2, 3]
    # the rest unchanged
    assert per_frame[:, 4].tolist() == [1, 2, 3, 4]
    assert per_frame[:, 15].tolist() == [1, 2, 3, 4]


def test_tsm_segments_interact_but_batch_items_do_not():
    torch.manual_seed(0)
    model = get_model("tsm_resnet50", num_classes=3, width=8, dropout=0.0).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    base = model(x)
    x2 = x.clone()
    x2[0, :, 3] += 1.0  # change the last frame of clip 0 only
    out = model(x2)
    assert not torch.allclose(out[0], base[0])
    torch.testing.assert_close(out[1], base[1])


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "s3d"])
def test_matches_torchvision_when_installed(name, torchvision):
    tvm = torchvision.models.video
    ours = get_model(name, num_classes=400).eval()
    theirs = getattr(tvm, name)(num_classes=400).eval()
    ref = theirs.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: tuple(v.shape) for k, v in ref.items()}
    ours.load_state_dict(ref)
    x = torch.randn(1, 3, 16, 112, 112) if name != "s3d" else torch.randn(1, 3, 16, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_tsm_loads_torchvision_resnet50_when_installed(torchvision):
    tvm = torchvision.models
    ref = tvm.resnet50(num_classes=400).state_dict()
    model = get_model("tsm_resnet50", num_classes=400)
    model.load_state_dict(ref)


def test_tsm_matches_paddlevideo_description():
    """Temporal shift right before the first conv of every bottleneck; fc ~ normal(0, 0.001), zero bias."""
    torch.manual_seed(0)
    model = get_model("tsm_resnet50", num_classes=400).eval()
    assert model.fc.bias.abs().max() == 0
    assert abs(model.fc.weight.std().item() - 0.001) < 5e-5 and abs(model.fc.weight.mean().item()) < 5e-5
    small = get_model("tsm_resnet50", num_classes=3, width=8, dropout=0.0).eval()
    blocks = [b for layer in (small.layer1, small.layer2, small.layer3, small.layer4) for b in layer]
    seen = {}
    hooks = []

    def keep(name):
        def hook(module, args):
            seen[name] = args[0].clone()  # returns None: the input is left as it is
        return hook

    for i, block in enumerate(blocks):
        hooks.append(block.register_forward_pre_hook(keep(("in", i))))
        hooks.append(block.conv1.register_forward_pre_hook(keep(("conv1", i))))
    with torch.no_grad():
        small(torch.randn(2, 3, 4, 32, 32))
    for h in hooks:
        h.remove()
    assert len(seen) == 2 * len(blocks) == 2 * 16
    for i in range(len(blocks)):
        torch.testing.assert_close(seen[("conv1", i)], temporal_shift(seen[("in", i)], 4))
