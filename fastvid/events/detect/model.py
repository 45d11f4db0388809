"""Recurrent event-camera detector, in the spirit of RVT: a small convolutional backbone whose every
stage ends in a ConvLSTM (the memory across windows), a top-down feature pyramid and a YOLOX-style
decoupled head (box offsets, objectness, class logits per grid cell) on strides 8, 16 and 32.

`model(x, state) -> (out, state)`: x (B, C, H, W) one window per stream; out (B, N, 5 + num_classes)
raw predictions over the N cells of all levels ([dx, dy, log w, log h, obj, cls...]); state: one
(h, c) pair per stage (None before the first window). `model.forward_sequence(xs, resets, state)` runs T
consecutive windows at once (what TBPTT training uses). Builders register in the one model registry
(fastvid.train.models, task "detection").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastvid.events.detect.state import reset_state
from fastvid.train.models import register_model


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True))


class ConvLSTM(nn.Module):
    """LSTM over feature maps: the four gates from one convolution of [input, hidden]."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        self.gates = nn.Conv2d(2 * channels, 4 * channels, kernel, padding=kernel // 2)

    def forward(self, x, state):
        if state is None:
            h = c = torch.zeros_like(x)
        else:
            h, c = state
        i, f, g, o = self.gates(torch.cat([x, h.to(x.dtype)], 1)).chunk(4, 1)
        # The cell state stays float32 under autocast: it integrates over hundreds of windows.
        c = torch.sigmoid(f).float() * c.float() + (torch.sigmoid(i) * torch.tanh(g)).float()
        h = torch.sigmoid(o) * torch.tanh(c).to(o.dtype)
        return h, (h, c)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.down = conv_bn(cin, cout, 3, 2)
        self.block = conv_bn(cout, cout)
        self.lstm = ConvLSTM(cout)

    def forward(self, x, state):
        return self.lstm(self.block(self.down(x)), state)


class Head(nn.Module):
    """YOLOX-style decoupled head of one level: [dx, dy, log w, log h, objectness, class logits...]."""

    def __init__(self, hw: int, num_classes: int):
        super().__init__()
        self.stem = conv_bn(hw, hw, 1)
        self.cls_branch = nn.Sequential(conv_bn(hw, hw), conv_bn(hw, hw), nn.Conv2d(hw, num_classes, 1))
        self.reg_branch = nn.Sequential(conv_bn(hw, hw), conv_bn(hw, hw))
        self.reg_out = nn.Conv2d(hw, 4, 1)
        self.obj_out = nn.Conv2d(hw, 1, 1)
        prior = -math.log((1 - 0.01) / 0.01)  # start at p=0.01: most cells are background
        nn.init.constant_(self.cls_branch[-1].bias, prior)
        nn.init.constant_(self.obj_out.bias, prior)

    def forward(self, p):
        p = self.stem(p)
        reg = self.reg_branch(p)
        return torch.cat([self.reg_out(reg), self.obj_out(reg), self.cls_branch(p)], 1)


class RecurrentDetector(nn.Module):
    """Stem (/2), `stages` recurrent stages (/4, /8, ...), FPN over the last three, shared decoupled head.
    Four stages give strides 8/16/32 (GEN1-sized sensors); three give 4/8/16 for small sensors."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, head_width: int | None = None,
                 stages: int = 4):
        super().__init__()
        if stages < 3:
            raise ValueError(f"the detector needs at least 3 stages, got {stages}")
        self.num_classes = num_classes
        widths = [width * 2 ** i for i in range(stages)]
        hw = head_width or 2 * width
        self.stem = conv_bn(in_channels, width, 3, 2)
        self.stages = nn.ModuleList(Stage(a, b) for a, b in zip([width] + widths[:-1], widths))
        self.strides = tuple(2 ** (i + 2) for i in range(stages - 3, stages))
        self.lateral = nn.ModuleList(nn.Conv2d(c, hw, 1) for c in widths[-3:])
        self.smooth = nn.ModuleList(conv_bn(hw, hw) for _ in widths[-3:])
        # One head per level, as YOLOX: a head shared over levels would share BatchNorm statistics of
        # differently distributed inputs, so evaluation (running statistics) would not match training.
        self.heads = nn.ModuleList(Head(hw, num_classes) for _ in widths[-3:])
        self._grid_cache: dict = {}

    def forward(self, x, state=None):
        """One window per stream: x (B, C, H, W) -> ((B, N, 5 + classes), new state)."""
        feats, state = self._recurrent(self._stem(x), state)
        return self._heads(feats), state

    def forward_sequence(self, xs, resets, state=None, channels_last: bool = False):
        """T consecutive windows per stream in one call: xs (T, B, C, H, W), resets (T, B) bool (zero a
        stream's state before its window) -> ((T, B, N, 5 + classes), state after the last window).
        Equal to T calls of forward; only the recurrent stages run window by window: the stem and the
        pyramid + heads (most of the layers) run once over all T x B windows, which on a CPU, where
        these small layers cost their per-call overhead, is most of the time."""
        T, B = xs.shape[:2]
        x = xs.flatten(0, 1)
        x = self._stem(x.contiguous(memory_format=torch.channels_last) if channels_last else x)
        x = x.view(T, B, *x.shape[1:])
        per_window = []
        for t in range(T):
            state = reset_state(state, resets[t])
            feats, state = self._recurrent(x[t], state)
            per_window.append(feats)
        feats = [torch.cat(level) for level in zip(*per_window)]  # each (T * B, C, h, w), time-major
        out = self._heads(feats)
        return out.view(T, B, *out.shape[1:]), state

    def _stem(self, x):
        # Event counts span orders of magnitude: a signed log keeps the input scale tame for any representation.
        return self.stem(torch.sign(x) * torch.log1p(x.abs()))

    def _recurrent(self, x, state):
        """The recurrent stages over one window: (the last three stages' features, the new state)."""
        state = state if state is not None else [None] * len(self.stages)
        feats, new_state = [], []
        for stage, s in zip(self.stages, state):
            x, s = stage(x, s)
            feats.append(x)
            new_state.append(s)
        return feats[-3:], new_state

    def _heads(self, feats):
        """Top-down pyramid and the per-level heads -> (batch, N, 5 + classes) over the cells of all levels."""
        laterals = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + F.interpolate(laterals[i + 1], size=laterals[i].shape[-2:], mode="nearest")
        outs = []
        for smooth, head, p in zip(self.smooth, self.heads, laterals):
            outs.append(head(smooth(p)).flatten(2).transpose(1, 2))
        return torch.cat(outs, 1)

    def grid(self, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(cell x/y indices (N, 2), cell strides (N,)) of the levels for an input of height x width."""
        key = (height, width, str(device))
        if key not in self._grid_cache:
            cells, strides = [], []
            h, w = height, width
            h, w = -(-h // 2), -(-w // 2)  # the stem and each stage halve, rounding up (padding k // 2)
            first = len(self.stages) - 3
            for i in range(len(self.stages)):
                h, w = -(-h // 2), -(-w // 2)
                if i >= first:
                    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                    cells.append(torch.stack([xs.flatten(), ys.flatten()], 1).float())
                    strides.append(torch.full((h * w,), float(self.strides[i - first])))
            self._grid_cache[key] = (torch.cat(cells).to(device), torch.cat(strides).to(device))
        return self._grid_cache[key]


def decode_boxes(out: torch.Tensor, cells: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Raw (..., N, 4) offsets -> (..., N, 4) boxes (cx, cy, w, h) in input pixels (YOLOX's parametrization)."""
    s = strides[:, None]
    xy = (out[..., :2] + cells) * s
    wh = torch.exp(out[..., 2:4].clamp(max=10.0)) * s
    return torch.cat([xy, wh], -1)


@register_model("rnn_det_tiny", task="detection")
def rnn_det_tiny(in_channels: int, num_classes: int, **kw) -> RecurrentDetector:
    return RecurrentDetector(in_channels, num_classes, width=kw.pop("width", 16), **kw)


@register_model("rnn_det_small", task="detection")
def rnn_det_small(in_channels: int, num_classes: int, **kw) -> RecurrentDetector:
    return RecurrentDetector(in_channels, num_classes, width=kw.pop("width", 32), **kw)
