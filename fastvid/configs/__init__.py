"""The training recipes shipped with fastvid (YAML files in this package), selectable by name.

`fastvid train --config r2plus1d_18_k400` finds `r2plus1d_18_k400.yaml` here (`fastvid train-events
--config events/rnn_det_gen1` finds `events/rnn_det_gen1.yaml`); a path to any YAML file works as
well (a path that exists wins over a recipe of the same name).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def recipe_names() -> list[str]:
    """Names of the shipped recipes (file names without .yaml), sorted."""
    return sorted(p.name[:-5] for p in importlib.resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def resolve(config: str | Path) -> Path:
    """A --config value -> the YAML file: an existing path as given, else a shipped recipe by name
    (with or without .yaml, or as the old `configs/<name>.yaml` spelling). Unknown names are an
    error listing the recipes."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    parts = path.parts[1:] if path.parts[:1] == ("configs",) else path.parts
    if len(parts) == 1 or (len(parts) == 2 and parts[0] == "events"):  # video recipes; events/<name>: detectors
        shipped = importlib.resources.files(__name__).joinpath(*parts[:-1], name + ".yaml")
        if shipped.is_file():
            return Path(str(shipped))  # a real file: setuptools installs package data unzipped
    raise FileNotFoundError(f"config {str(config)!r} is neither a file nor a shipped recipe; recipes: {', '.join(recipe_names())}")
