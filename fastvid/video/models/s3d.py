"""S3D (Xie et al., "Rethinking Spatiotemporal Feature Learning"): separable 3D Inception network.

The module tree mirrors torchvision.models.video.s3d (features.*, classifier.1.*) so torchvision's
Kinetics-400 checkpoint loads unchanged. torchvision pools with a fixed (2, 7, 7) window (sized for
16x224x224 input); here the window is clipped to the feature map so small test inputs work too,
which is the same computation for the input size the network was designed for.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvid.train.models import register_model


class ConvBNReLU3d(nn.Sequential):
    """Conv3d (no bias) -> norm -> ReLU; the layout of torchvision's Conv3dNormActivation."""

    def __init__(self, in_planes, out_planes, kernel_size, stride=1, padding=None, norm_layer=nn.BatchNorm3d):
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size,) * 3
        if padding is None:
            padding = tuple((k - 1) // 2 for k in kernel_size)
        super().__init__(
            nn.Conv3d(in_planes, out_planes, kernel_size, stride=stride, padding=padding, bias=False),
            norm_layer(out_planes),
            nn.ReLU(inplace=True),
        )


class TemporalSeparableConv(nn.Sequential):
    """k x k spatial conv followed by a k-tap temporal conv, each with BN + ReLU."""

    def __init__(self, in_planes, out_planes, kernel_size, stride, padding, norm_layer):
        super().__init__(
            ConvBNReLU3d(in_planes, out_planes, (1, kernel_size, kernel_size), (1, stride, stride), (0, padding, padding), norm_layer),
            ConvBNReLU3d(out_planes, out_planes, (kernel_size, 1, 1), (stride, 1, 1), (padding, 0, 0), norm_layer),
        )


class SepInceptionBlock3D(nn.Module):
    def __init__(self, in_planes, b0_out, b1_mid, b1_out, b2_mid, b2_out, b3_out, norm_layer):
        super().__init__()
        self.branch0 = ConvBNReLU3d(in_planes, b0_out, 1, norm_layer=norm_layer)
        self.branch1 = nn.Sequential(
            ConvBNReLU3d(in_planes, b1_mid, 1, norm_layer=norm_layer),
            TemporalSeparableConv(b1_mid, b1_out, 3, 1, 1, norm_layer),
        )
        self.branch2 = nn.Sequential(
            ConvBNReLU3d(in_planes, b2_mid, 1, norm_layer=norm_layer),
            TemporalSeparableConv(b2_mid, b2_out, 3, 1, 1, norm_layer),
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool3d(kernel_size=(3, 3, 3), stride=1, padding=1),
            ConvBNReLU3d(in_planes, b3_out, 1, norm_layer=norm_layer),
        )

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class S3D(nn.Module):
    POOL_WINDOW = (2, 7, 7)

    def __init__(self, num_classes: int = 400, dropout: float = 0.2, norm_layer=None):
        super().__init__()
        # The original TF model's BN settings (eps 1e-3, momentum 1e-3), as torchvision.
        norm_layer = norm_layer or partial(nn.BatchNorm3d, eps=0.001, momentum=0.001)
        inc = partial(SepInceptionBlock3D, norm_layer=norm_layer)
        self.features = nn.Sequential(
            TemporalSeparableConv(3, 64, 7, 2, 3, norm_layer),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            ConvBNReLU3d(64, 64, 1, norm_layer=norm_layer),
            TemporalSeparableConv(64, 192, 3, 1, 1, norm_layer),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            inc(192, 64, 96, 128, 16, 32, 32),
            inc(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool3d(kernel_size=(3, 3, 3), stride=(2, 2, 2), padding=(1, 1, 1)),
            inc(480, 192, 96, 208, 16, 48, 64),
            inc(512, 160, 112, 224, 24, 64, 64),
            inc(512, 128, 128, 256, 24, 64, 64),
            inc(512, 112, 144, 288, 32, 64, 64),
            inc(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool3d(kernel_size=(2, 2, 2), stride=(2, 2, 2), padding=(0, 0, 0)),
            inc(832, 256, 160, 320, 32, 128, 128),
            inc(832, 384, 192, 384, 48, 128, 128),
        )
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Conv3d(1024, num_classes, kernel_size=1, stride=1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        window = tuple(min(w, s) for w, s in zip(self.POOL_WINDOW, x.shape[2:]))
        x = F.avg_pool3d(x, kernel_size=window, stride=1)
        x = self.classifier(x)
        return x.mean(dim=(2, 3, 4))


@register_model()
def s3d(num_classes: int = 400, **kwargs) -> S3D:
    return S3D(num_classes=num_classes, **kwargs)
