"""MobileNet-V1 (Howard et al. 2017) and MobileNet-V2 (Sandler et al. 2018).

``stem="cifar"`` keeps 32x32 inputs large enough (first conv stride 1 and, for V2, the first two
stride-2 stages at stride 1); ``stem="imagenet"`` is the original 224x224 layout.
"""
from __future__ import annotations

import torch
from torch import nn


def _conv_bn(in_c: int, out_c: int, k: int, stride: int, groups: int = 1, act: type = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_c, out_c, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out_c), act(inplace=True))


class MobileNetV1(nn.Module):
    # (out_channels, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes: int = 10, stem: str = "cifar", width: float = 1.0):
        super().__init__()
        first_stride = 1 if stem == "cifar" else 2
        c = int(32 * width)
        layers = [_conv_bn(3, c, 3, first_stride)]
        for out, stride in self.BLOCKS:
            out = int(out * width)
            layers += [_conv_bn(c, c, 3, stride, groups=c), _conv_bn(c, out, 1, 1)]
            c = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    def __init__(self, in_c: int, out_c: int, stride: int, expand: int):
        super().__init__()
        hidden = in_c * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(in_c, hidden, 1, 1, act=nn.ReLU6))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, out_c, 1, bias=False), nn.BatchNorm2d(out_c)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_c == out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, stride s) as in the paper's Table 2
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 10, stem: str = "cifar", width: float = 1.0):
        super().__init__()
        cifar = stem == "cifar"
        c = int(32 * width)
        layers: list[nn.Module] = [_conv_bn(3, c, 3, 1 if cifar else 2, act=nn.ReLU6)]
        for i, (t, ch, n, s) in enumerate(self.SETTINGS):
            out = int(ch * width)
            if cifar and i in (1, 2):  # keep resolution for 32x32 inputs
                s = 1
            for j in range(n):
                layers.append(InvertedResidual(c, out, s if j == 0 else 1, t))
                c = out
        last = max(1280, int(1280 * width))
        layers.append(_conv_bn(c, last, 1, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))
