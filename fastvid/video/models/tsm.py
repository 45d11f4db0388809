"""TSM-ResNet50 (Lin et al., "TSM: Temporal Shift Module"): a 2D ResNet-50 whose bottlenecks shift
1/8 of the channels one frame back and 1/8 one frame forward before their first convolution.

Parameter names are torchvision's resnet50 (conv1, bn1, layer1.0.conv1, ..., fc), so ImageNet
torchvision weights load directly (with a new fc). Frames are the segments: a (B, 3, T, H, W) clip
runs as B*T images and the class scores are averaged over the T segments (TSN consensus), as in
PaddleVideo's TSM recipe.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvid.train.models import register_model


def temporal_shift(x: torch.Tensor, segments: int, fold_div: int = 8) -> torch.Tensor:
    """x: (N*segments, C, H, W). Channels [0, C/8) take the next frame's values, [C/8, 2C/8) the
    previous frame's, the rest stay; frames shifted in from outside the clip are zeros."""
    nt, c, h, w = x.shape
    v = x.view(nt // segments, segments, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]
    out[:, 1:, fold : 2 * fold] = v[:, :-1, fold : 2 * fold]
    out[:, :, 2 * fold :] = v[:, :, 2 * fold :]
    return out.view(nt, c, h, w)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride on the 3x3 conv (ResNet v1.5), as torchvision.
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x, segments: int):
        identity = x if self.downsample is None else self.downsample(x)
        # Residual shift: only the branch sees shifted features; the identity path keeps the frame's own.
        out = self.relu(self.bn1(self.conv1(temporal_shift(x, segments))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class TSMResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 400, dropout: float = 0.5, width: int = 64):
        super().__init__()
        self.dropout = dropout
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # PaddleVideo's TSM head: fc weights ~ normal(0, 0.001), zero bias (also what a new classifier gets
        # when ImageNet weights are loaded with --weights).
        nn.init.normal_(self.fc.weight, 0.0, 0.001)
        nn.init.zeros_(self.fc.bias)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        x = x.transpose(1, 2).reshape(b * t, c, h, w)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x, t)
        x = self.avgpool(x).flatten(1)
        x = F.dropout(x, self.dropout, self.training)
        return self.fc(x).view(b, t, -1).mean(dim=1)


@register_model()
def tsm_resnet50(num_classes: int = 400, **kwargs) -> TSMResNet:
    return TSMResNet((3, 4, 6, 3), num_classes=num_classes, **kwargs)
