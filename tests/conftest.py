"""Shared pytest fixtures: GPU skipping and small generated clips with known content."""

from __future__ import annotations

import pytest

from fastvid import _gpu


def pytest_collection_modifyitems(config, items):
    if _gpu.cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
