"""Checkpoints: atomic writes of OUTPUT/checkpoint.pth and OUTPUT/model_<epoch>.pth, loading for
--resume, and torchvision-format weights for --weights.

Loading never runs code from the file unless asked: `torch.load(weights_only=True)` unpickles only
tensors, plain containers and numbers, plus the allow-list SAFE_GLOBALS. fastvid's own checkpoints
hold only those (the config is saved as a dict, the schedule's milestones as a Counter, which torch
allows); torchvision's reference scripts save their flags as an argparse.Namespace, which is allowed
(unpickling one only sets attributes) and read like a dict (`checkpoint_args`). Anything else (a
legacy or foreign pickle) needs `--trust-checkpoint`.

`load_model_state` puts a checkpoint's weights into a model, or says in one line naming the file why
they do not fit (another model, --model-width or --model-kwarg)."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import torch
import torch.nn as nn

from fastvid.store.atomic import atomic_path


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save to a temp name in the same directory, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, hidden=True) as tmp:
            torch.save(obj, tmp)
    except Exception as exc:  # a full disk: torch's message names neither file
        raise RuntimeError(f"could not write {path}: {exc}") from exc
    return path


def save_checkpoint(state: dict, output_dir: str | os.PathLike, epoch: int | None) -> Path:
    """Write checkpoint.pth (always) and model_<epoch>.pth (for a completed epoch)."""
    out = Path(output_dir)
    if epoch is not None:
        atomic_save(state, out / f"model_{epoch}.pth")
    return atomic_save(state, out / "checkpoint.pth")


# Types besides tensors/containers/numbers that a checkpoint may hold: what fastvid saves is plain (see the
# module docstring); torchvision's reference saves its args as a Namespace, rebuilt by setting attributes
# (no code runs). Add a type here rather than widening the load.
SAFE_GLOBALS: list = [argparse.Namespace]


class UntrustedCheckpoint(ValueError):
    """The file needs full unpickling (it could run code); the user must say they trust it."""


def safe_load(path: str | os.PathLike, *, trust: bool = False, flag: str = "--resume"):
    """torch.load on CPU with weights_only=True (+ SAFE_GLOBALS); full unpickling only with trust=True."""
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc).lower() and "weights only" not in str(exc).lower():
            raise
        first = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line or "global" in line), "")
        raise UntrustedCheckpoint(
            f"{flag} {path}: refusing to unpickle it: the file holds objects other than tensors and plain data "
            f"({first[:200] or 'not a weights-only file'}); loading it could run code. If you made this file or trust "
            "its source, pass --trust-checkpoint") from None


def load_checkpoint(path: str | os.PathLike, trust: bool = False) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = safe_load(path, trust=trust, flag="--resume")
    except UntrustedCheckpoint:
        raise
    except Exception as exc:  # truncated / not a torch file
        raise ValueError(f"checkpoint {path} could not be read: {exc}") from exc
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a training checkpoint dict")
    missing = [k for k in ("model", "optimizer", "lr_scheduler", "epoch") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; is it a fastvid/torchvision training checkpoint?")
    return ckpt


def _shape(value) -> str:
    return str(list(value.shape)).replace(" ", "") if hasattr(value, "shape") else type(value).__name__


def _short(key: str, limit: int = 48) -> str:
    return key if len(key) <= limit else "..." + key[-(limit - 3):]


def load_model_state(model: nn.Module, state_dict, path: str | os.PathLike, description: str | None = None) -> None:
    """`model.load_state_dict(state_dict)` (strict) for a checkpoint's weights; weights that do not fit the model
    are one ValueError line naming the file and summing up the mismatch (load_state_dict's own error lists every
    tensor, a hundred lines for a model of another width), e.g. "runs/x/checkpoint.pth: does not fit model
    r3d_18 (width 8): 12 tensors differ in shape, e.g. stem.0.weight [16,3,3,7,7] in the file vs [8,3,3,7,7] in
    the model; 3 missing, 0 unexpected". `description` names the model (default: its class)."""
    what = description or type(model).__name__
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path}: its model weights are a {type(state_dict).__name__}, not a state_dict")
    own = model.state_dict()
    differ = [k for k in state_dict if k in own and _shape(state_dict[k]) != _shape(own[k])]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if differ or missing or unexpected:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected"
        if differ:
            k = differ[0]
            detail = (f"{len(differ)} tensors differ in shape, e.g. {_short(k)} {_shape(state_dict[k])} in the file vs "
                      f"{_shape(own[k])} in the model; {counts}")
        else:  # no shape to show: name a key
            detail = f"{counts} (e.g. {'missing' if missing else 'unexpected'} {_short((missing or unexpected)[0])})"
        raise ValueError(f"{path}: does not fit model {what}: {detail}")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:  # what the checks above do not see (e.g. a tensor of another type)
        raise ValueError(f"{path}: does not fit model {what}: {str(exc).strip().splitlines()[-1].strip()[:150]}") from None


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the final classifier layer (the one that depends on num_classes)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv3d)) and name:
            last = name
    return {k for k in model.state_dict() if last and k.startswith(last + ".")}


def load_weights(model: nn.Module, path: str | os.PathLike, trust: bool = False) -> list[str]:
    """Load a torchvision-format state_dict (bare, or under "model"/"state_dict"), tolerating a
    "module." prefix and a classifier of another size (kept fresh). Returns the keys left fresh."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"--weights {path}: not a file (torchvision's weight names, e.g. R2Plus1D_18_Weights.KINETICS400_V1, "
            "are resolved to files in $TORCH_HOME/hub/checkpoints by fastvid.video.models.pretrained before this)"
        )
    try:
        sd = safe_load(p, trust=trust, flag="--weights")
    except UntrustedCheckpoint:
        raise
    except Exception as exc:  # truncated / not a torch file
        raise ValueError(f"--weights {path} could not be read: {exc}") from exc
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    elif isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    sd = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in sd.items()}
    own = model.state_dict()
    fresh = sorted(k for k in classifier_keys(model) if k in sd and sd[k].shape != own[k].shape)
    for k in fresh:
        del sd[k]
    unexpected = [k for k in sd if k not in own]
    missing = [k for k in own if k not in sd and k not in fresh]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if unexpected or missing or wrong:
        def few(items):
            return f"{items[:3]}{'...' if len(items) > 3 else ''}"

        raise ValueError(f"--weights {path} does not fit this model: missing {few(missing)}, unexpected {few(unexpected)}, "
                         f"wrong shapes {few(wrong)}")
    model.load_state_dict(sd, strict=False)
    return fresh


def checkpoint_args(ckpt: dict) -> dict:
    """The flags a checkpoint was trained with, as a dict: fastvid saves a dict, torchvision's reference an
    argparse.Namespace; {} when the checkpoint has none."""
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else {}
