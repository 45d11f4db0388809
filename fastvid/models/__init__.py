"""Video classification models with torchvision-compatible parameter names, behind one registry.

`get_model("r2plus1d_18", num_classes=400)`; every model takes (B, 3, T, H, W) clips.
"""

from fastvid.models.registry import get_model, list_models, register_model

__all__ = ["get_model", "list_models", "register_model"]
