"""torchvision weight names for --weights: `R3D_18_Weights.KINETICS400_V1` (or `.DEFAULT`, or plain
`DEFAULT` for the chosen model) -> the checkpoint file torchvision would have downloaded.

torchvision's `Weights.get_state_dict()` downloads `<url>` into `torch.hub.get_dir()/checkpoints/<file>`
(`$TORCH_HOME/hub/checkpoints`, by default `~/.cache/torch/hub/checkpoints`). fastvid reads that same
file, so weights fetched once by torchvision (or by hand, on a machine without network) are found;
fastvid never downloads. The table holds torchvision's published file names for the video models
fastvid builds with torchvision's parameter names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TorchvisionWeights:
    enum: str          # e.g. "R3D_18_Weights"
    member: str        # e.g. "KINETICS400_V1"
    model: str         # fastvid model name
    url: str

    @property
    def name(self) -> str:
        return f"{self.enum}.{self.member}"

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


_BASE = "https://download.pytorch.org/models/"
# torchvision.models.video: resnet.py (R3D_18, MC3_18, R2Plus1D_18) and s3d.py; DEFAULT is KINETICS400_V1 for all.
WEIGHTS = {
    w.name: w
    for w in (
        TorchvisionWeights("R3D_18_Weights", "KINETICS400_V1", "r3d_18", _BASE + "r3d_18-b3b3357e.pth"),
        TorchvisionWeights("MC3_18_Weights", "KINETICS400_V1", "mc3_18", _BASE + "mc3_18-a90a0ba3.pth"),
        TorchvisionWeights("R2Plus1D_18_Weights", "KINETICS400_V1", "r2plus1d_18", _BASE + "r2plus1d_18-91a641e6.pth"),
        TorchvisionWeights("S3D_Weights", "KINETICS400_V1", "s3d", _BASE + "s3d-d76dad2f.pth"),
    )
}
DEFAULTS = {w.enum: w for w in WEIGHTS.values() if w.member == "KINETICS400_V1"}
_BY_MODEL = {w.model: w for w in DEFAULTS.values()}


def checkpoint_dir() -> Path:
    """Where torchvision keeps downloaded weights: torch.hub.get_dir()/checkpoints."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def lookup(name: str, model: str | None = None) -> TorchvisionWeights | None:
    """The weights entry for an enum name (case-insensitive; `Enum.DEFAULT` and bare `DEFAULT`
    accepted), or None when `name` is not an enum name (then it is a file path)."""
    text = name.strip()
    if text.upper() == "DEFAULT":
        if model not in _BY_MODEL:
            raise ValueError(f"--weights DEFAULT: torchvision has no Kinetics weights for model {model!r}; "
                             f"models with weights: {', '.join(sorted(_BY_MODEL))}")
        return _BY_MODEL[model]
    if "." not in text or os.sep in text or text.endswith((".pth", ".pt")):
        return None
    enum, member = text.split(".", 1)
    by_enum = {k.lower(): v for k, v in DEFAULTS.items()}
    if enum.lower() not in by_enum:
        if enum.endswith("_Weights"):
            raise ValueError(f"--weights {name}: unknown torchvision weights; known: {', '.join(sorted(WEIGHTS))} (and .DEFAULT)")
        return None
    entry = by_enum[enum.lower()]
    if member.upper() not in ("DEFAULT", entry.member):
        raise ValueError(f"--weights {name}: {entry.enum} has {entry.member} and DEFAULT only")
    return entry


def resolve_weights(name: str, model: str | None = None) -> Path:
    """--weights value -> checkpoint file. Enum names map to torchvision's download location and must
    belong to `model`; a missing file is an error naming the file and the URL to fetch it from."""
    entry = lookup(name, model)
    if entry is None:
        if not Path(name).is_file():
            raise FileNotFoundError(f"--weights {name}: no such file, and not one of torchvision's weight names "
                                    f"({', '.join(sorted(WEIGHTS))}, Enum.DEFAULT or DEFAULT)")
        return Path(name)
    if model is not None and entry.model != model:
        raise ValueError(f"--weights {name} are torchvision's {entry.model} weights, but the model is {model}; "
                         f"use --model {entry.model} or {_BY_MODEL[model].name if model in _BY_MODEL else 'a weights file'}")
    path = checkpoint_dir() / entry.file_name
    if not path.is_file():
        raise FileNotFoundError(
            f"--weights {entry.name}: {path} does not exist. fastvid does not download; fetch {entry.url} to {path} "
            f"(e.g. `curl -L --create-dirs -o {path} {entry.url}`, or run torchvision's "
            f"`{entry.enum}.{entry.member}.get_state_dict()` once), or pass the file's path"
        )
    return path
