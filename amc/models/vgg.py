"""VGG-16 with BatchNorm for 32x32 inputs (13 conv layers, 5 max-pools, one linear classifier)."""
from __future__ import annotations

import torch
from torch import nn

VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, config=VGG16_CONFIG, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_c = 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(in_c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
