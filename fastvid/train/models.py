"""The one model registry: name -> builder and the task it serves, so trainers, benchmarks and `doctor`
pick models by string.

Kinds register where their models come from (`add_model_source`: a function importing the modules
whose `@register_model` decorators fill the registry); sources are loaded on the first lookup, so
importing fastvid does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: str                  # "classification" (video clips) | "detection" (event windows)
    builder: Callable


_MODELS: dict[str, ModelSpec] = {}
_SOURCES: list[Callable[[], None]] = []


def register_model(name: str | None = None, task: str = "classification"):
    """Decorator: `@register_model()` registers a builder under its function name (or `name`)."""

    def wrap(builder):
        key = name or builder.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = ModelSpec(key, task, builder)
        return builder

    return wrap


def add_model_source(load: Callable[[], None]) -> None:
    """`load()` imports a kind's model modules (their decorators register the builders); run on first lookup."""
    _SOURCES.append(load)


def _load_sources() -> None:
    while _SOURCES:
        _SOURCES.pop(0)()


def list_models(task: str | None = None) -> list[str]:
    _load_sources()
    return sorted(name for name, spec in _MODELS.items() if task is None or spec.task == task)


def model_spec(name: str, task: str | None = None) -> ModelSpec:
    _load_sources()
    spec = _MODELS.get(name)
    if spec is None or (task is not None and spec.task != task):
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models(task))}")
    return spec


def get_model(name: str, task: str | None = None, **kwargs):
    """Build model `name` (kwargs go to its builder: num_classes for classifiers; in_channels,
    num_classes for detectors)."""
    builder = model_spec(name, task).builder
    try:
        return builder(**kwargs)
    except TypeError as exc:  # e.g. --model-width / --model-kwarg for a model without that option
        if kwargs and "unexpected keyword argument" in str(exc):
            import inspect

            named = inspect.signature(builder).parameters  # num_classes etc. are the builder's own, not options
            options = sorted(k for k in kwargs if k not in named)
            raise ValueError(f"model {name!r} does not accept the options {options}: {exc}") from None
        raise
