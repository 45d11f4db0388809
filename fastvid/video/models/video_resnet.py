"""R3D-18, MC3-18 and R(2+1)D-18 (Tran et al., "A Closer Look at Spatiotemporal Convolutions").

The module tree mirrors torchvision.models.video.resnet so that state_dict keys and shapes are
identical (stem.0.weight, layer1.0.conv1.0.weight, ..., fc.weight) and a torchvision checkpoint
loads with `load_state_dict`. `width` (default 64, torchvision's) scales every layer's channel count
so tests can run the same code path on a tiny network.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fastvid.train.models import register_model


class Conv3DSimple(nn.Conv3d):
    """Full 3x3x3 convolution (R3D)."""

    def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
        super().__init__(in_planes, out_planes, kernel_size=(3, 3, 3), stride=stride, padding=padding, bias=False)

    @staticmethod
    def get_downsample_stride(stride):
        return stride, stride, stride


class Conv3DNoTemporal(nn.Conv3d):
    """Spatial-only 1x3x3 convolution (the 2D layers of MC3)."""

    def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
        super().__init__(
            in_planes, out_planes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, padding, padding), bias=False
        )

    @staticmethod
    def get_downsample_stride(stride):
        return 1, stride, stride


class Conv2Plus1D(nn.Sequential):
    """A 3x3x3 convolution factored into 1x3x3 spatial then 3x1x1 temporal with BN+ReLU between."""

    def __init__(self, in_planes, out_planes, midplanes, stride=1, padding=1):
        super().__init__(
            nn.Conv3d(in_planes, midplanes, kernel_size=(1, 3, 3), stride=(1, stride, stride), padding=(0, padding, padding), bias=False),
            nn.BatchNorm3d(midplanes),
            nn.ReLU(inplace=True),
            nn.Conv3d(midplanes, out_planes, kernel_size=(3, 1, 1), stride=(stride, 1, 1), padding=(padding, 0, 0), bias=False),
        )

    @staticmethod
    def get_downsample_stride(stride):
        return stride, stride, stride


def midplanes_for(inplanes: int, planes: int) -> int:
    """Hidden width that gives the (2+1)D factorization the parameter count of a full 3x3x3 conv."""
    return (inplanes * planes * 3 * 3 * 3) // (inplanes * 3 * 3 + 3 * planes)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, conv_builder, stride=1, downsample=None):
        super().__init__()
        midplanes = midplanes_for(inplanes, planes)
        self.conv1 = nn.Sequential(conv_builder(inplanes, planes, midplanes, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv_builder(planes, planes, midplanes), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        return self.relu(out + identity)


class BasicStem(nn.Sequential):
    """R3D/MC3 stem: one 3x7x7 conv, spatial stride 2."""

    def __init__(self, width: int = 64):
        super().__init__(
            nn.Conv3d(3, width, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class R2Plus1dStem(nn.Sequential):
    """R(2+1)D stem: 1x7x7 spatial conv to 45 channels, then 3x1x1 temporal conv."""

    def __init__(self, width: int = 64):
        mid = max(1, 45 * width // 64)
        super().__init__(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )


class VideoResNet(nn.Module):
    def __init__(self, block, conv_makers, layers, stem, num_classes=400, zero_init_residual=False, width=64):
        super().__init__()
        self.inplanes = width
        self.stem = stem(width)
        self.layer1 = self._make_layer(block, conv_makers[0], width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, conv_makers[1], width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, conv_makers[2], width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, conv_makers[3], width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as identity: the last BN of every block scales by 0.
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2[1].weight)

    def _make_layer(self, block, conv_builder, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            ds_stride = conv_builder.get_downsample_stride(stride)
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * block.expansion, kernel_size=1, stride=ds_stride, bias=False),
                nn.BatchNorm3d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, conv_builder, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, conv_builder) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(x)


@register_model()
def r3d_18(num_classes: int = 400, **kwargs) -> VideoResNet:
    """R3D-18: 3x3x3 convolutions everywhere."""
    return VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], BasicStem, num_classes=num_classes, **kwargs)


@register_model()
def mc3_18(num_classes: int = 400, **kwargs) -> VideoResNet:
    """MC3-18: 3D convolutions in the stem and layer1, 2D (1x3x3) in layers 2-4."""
    return VideoResNet(
        BasicBlock, [Conv3DSimple] + [Conv3DNoTemporal] * 3, [2, 2, 2, 2], BasicStem, num_classes=num_classes, **kwargs
    )


@register_model()
def r2plus1d_18(num_classes: int = 400, **kwargs) -> VideoResNet:
    """R(2+1)D-18: every 3x3x3 convolution factored into (2+1)D."""
    return VideoResNet(BasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem, num_classes=num_classes, **kwargs)
