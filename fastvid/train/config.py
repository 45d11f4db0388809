"""Typed configuration from YAML files and command-line flags, for any config dataclass: dataclass
defaults <- YAML file (--config, a path or a shipped recipe name) <- flags. A YAML file may spell keys
with dashes or underscores; unknown keys and wrong types are errors naming the file.

The task configs (fastvid.video.config.TrainConfig, fastvid.events.detect.config.DetectConfig) are
dataclasses; `field_types(cls)` gives the types `coerce` and `load_yaml` check against.
"""

from __future__ import annotations

import argparse
import os
import typing
from pathlib import Path


def field_types(cls) -> dict:
    return typing.get_type_hints(cls)


def coerce(name: str, value, source: str, types: dict):
    """Check/convert `value` for field `name` of a config whose field types are `types` (ints accepted
    for floats, sequences for lists)."""
    hint = types[name]
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise ValueError(f"{source}: {name} must not be null")
    base = hint
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        base = next(a for a in typing.get_args(hint) if a is not type(None))
    origin = typing.get_origin(base) or base
    try:
        if origin is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if origin is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError
            return value
        if origin is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError
            return float(value)
        if origin is str:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)  # kinetics_version: 400
            if not isinstance(value, str):
                raise TypeError
            return value
        if origin is list:
            items = [value] if isinstance(value, int) else list(value)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise TypeError
            return items
        if origin is dict:
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except TypeError:
        pass
    raise ValueError(f"{source}: {name} must be {_type_name(base)}, got {value!r}")


def _type_name(t) -> str:
    origin = typing.get_origin(t)
    if origin is list:
        return "a list of integers"
    if origin is dict or t is dict:
        return "a mapping"
    return getattr(t, "__name__", str(t))


PIPE_OPT_IN = "FASTVID_ALLOW_PIPE"


def allow_pipe() -> None:
    """Let recipes name `pipe:` commands in this process (what --allow-pipe does)."""
    os.environ[PIPE_OPT_IN] = "1"


def _check_no_pipe(name: str, value, path) -> None:
    """A recipe is a file anyone may hand over: a `pipe:` data address in it would run a shell command, so it
    needs an opt-in outside the file (--allow-pipe or FASTVID_ALLOW_PIPE=1)."""
    values = value if isinstance(value, list) else [value]
    for v in values:
        if isinstance(v, str) and v.lstrip().startswith("pipe:") and os.environ.get(PIPE_OPT_IN) != "1":
            raise ValueError(f"config file {path}: {name} is a pipe: command ({v[:60]!r}), which would run a shell "
                             f"command; a recipe runs none unless allowed outside it: pass --allow-pipe or set "
                             f"{PIPE_OPT_IN}=1")


def load_yaml(path: str | Path, types: dict) -> dict:
    """Read a YAML config into {field: value} (for a config whose field types are `types`) with dashed
    keys normalized; clear errors on bad files. A `pipe:` value is refused unless FASTVID_ALLOW_PIPE=1."""
    import yaml

    from fastvid.configs import resolve

    path = resolve(path)  # a file path, or the name of a shipped recipe
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must be a mapping of option: value, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "wd":
            name = "weight_decay"
        if name not in types:
            raise ValueError(f"config file {path}: unknown option {key!r}")
        _check_no_pipe(name, value, path)
        out[name] = coerce(name, value, f"config file {path}", types)
    return out


def parse_step_range(text: str) -> tuple[int, int]:
    """'A-B' -> (A, B) with 0 <= A < B."""
    try:
        a, b = (int(x) for x in str(text).split("-"))
    except ValueError:
        raise ValueError(f"profile_steps must look like A-B (e.g. 10-20), got {text!r}") from None
    if not 0 <= a < b:
        raise ValueError(f"profile_steps {text!r}: need 0 <= A < B")
    return a, b


def key_value(text: str):
    """KEY=VALUE with VALUE parsed as YAML (so width=16 is an int)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with KEY a parameter name, got {text!r}")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE is not a YAML value ({str(exc).splitlines()[0]})") from None
