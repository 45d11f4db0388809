"""--weights with torchvision's enum names: resolved to the file torchvision downloads into
$TORCH_HOME/hub/checkpoints, loaded like any torchvision checkpoint, clear errors otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from test_train_cli import env, tiny_args

from fastvid.train.models import get_model
from fastvid.video.models.pretrained import WEIGHTS, checkpoint_dir, lookup, resolve_weights
from fastvid.train.checkpoint import load_weights


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_enum_names_map_to_torchvision_files(torch_home):
    assert checkpoint_dir() == torch_home / "hub" / "checkpoints"
    files = {name: w.file_name for name, w in WEIGHTS.items()}
    assert files == {
        "R3D_18_Weights.KINETICS400_V1": "r3d_18-b3b3357e.pth",
        "MC3_18_Weights.KINETICS400_V1": "mc3_18-a90a0ba3.pth",
        "R2Plus1D_18_Weights.KINETICS400_V1": "r2plus1d_18-91a641e6.pth",
        "S3D_Weights.KINETICS400_V1": "s3d-d76dad2f.pth",
    }
    assert all(w.url == "https://download.pytorch.org/models/" + w.file_name for w in WEIGHTS.values())
    assert lookup("R2Plus1D_18_Weights.DEFAULT") is lookup("r2plus1d_18_weights.kinetics400_v1") is lookup("DEFAULT", "r2plus1d_18")
    assert lookup("runs/x/model_3.pth") is None and lookup("weights.pth") is None


def test_absent_file_names_file_and_url(torch_home):
    with pytest.raises(FileNotFoundError) as err:
        resolve_weights("S3D_Weights.KINETICS400_V1", "s3d")
    msg = str(err.value)
    assert str(torch_home / "hub" / "checkpoints" / "s3d-d76dad2f.pth") in msg
    assert "https://download.pytorch.org/models/s3d-d76dad2f.pth" in msg
    with pytest.raises(ValueError, match="r3d_18 weights, but the model is mc3_18"):
        resolve_weights("R3D_18_Weights.KINETICS400_V1", "mc3_18")
    with pytest.raises(ValueError, match="has KINETICS400_V1 and DEFAULT only"):
        resolve_weights("R3D_18_Weights.KINETICS600_V1", "r3d_18")
    with pytest.raises(ValueError, match="no Kinetics weights for model 'tsm_resnet50'"):
        resolve_weights("DEFAULT", "tsm_resnet50")
    with pytest.raises(FileNotFoundError, match="no such file, and not one of torchvision's weight names"):
        resolve_weights("missing.pth", "r3d_18")


def test_enum_name_loads_the_cached_file(torch_home):
    src = get_model("mc3_18", num_classes=400, width=8)
    path = torch_home / "hub" / "checkpoints" / "mc3_18-a90a0ba3.pth"
    path.parent.mkdir(parents=True)
    torch.save(src.state_dict(), path)  # torchvision's files are bare state_dicts
    assert resolve_weights("MC3_18_Weights.DEFAULT", "mc3_18") == path
    dst = get_model("mc3_18", num_classes=7, width=8)
    fresh = load_weights(dst, resolve_weights("MC3_18_Weights.KINETICS400_V1", "mc3_18"))
    assert fresh == ["fc.bias", "fc.weight"]
    assert torch.equal(dst.state_dict()["layer2.0.conv1.0.weight"], src.state_dict()["layer2.0.conv1.0.weight"])


def test_train_cli_reports_missing_enum_weights(shard_root, tmp_path):
    e = dict(env(), TORCH_HOME=str(tmp_path / "th"))
    r = subprocess.run([sys.executable, "-m", "fastvid", "train", *tiny_args(shard_root, tmp_path / "o"), "--test-only",
                        "--weights", "R3D_18_Weights.KINETICS400_V1"], capture_output=True, text=True, timeout=300, env=e)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "r3d_18-b3b3357e.pth does not exist" in r.stderr and "https://download.pytorch.org/models/r3d_18-b3b3357e.pth" in r.stderr
    assert "Traceback" not in r.stderr
