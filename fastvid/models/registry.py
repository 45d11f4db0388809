"""The model registry: one name -> one builder, so the trainer and benchmarks pick models by string."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None):
    """Decorator: `@register_model()` registers a builder under its function name (or `name`)."""

    def wrap(builder):
        key = name or builder.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is registered twice")
        _MODELS[key] = builder
        return builder

    return wrap


def _load_builders():
    # Importing the modules runs their @register_model decorators.
    from fastvid.models import s3d, tsm, video_resnet  # noqa: F401


def list_models() -> list[str]:
    _load_builders()
    return sorted(_MODELS)


def get_model(name: str, num_classes: int = 400, **kwargs) -> nn.Module:
    """Build model `name` with a fresh classifier of `num_classes` outputs; kwargs go to the builder."""
    _load_builders()
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    try:
        return _MODELS[name](num_classes=num_classes, **kwargs)
    except TypeError as exc:  # e.g. --model-width / --model-kwarg for a model without that option
        if kwargs and "unexpected keyword argument" in str(exc):
            raise ValueError(f"model {name!r} does not accept the options {sorted(kwargs)}: {exc}") from None
        raise
