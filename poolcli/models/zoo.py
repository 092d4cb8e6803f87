"""poolcli's own small architectures (the fixtures are trained instances of these).

``convnet4`` is the 4-layer ConvNet of seed 001 §6.3: a 3×3 conv with ``width`` channels and ReLU,
then three stride-2 3×3 convs that double the channels, each followed by BatchNorm and ReLU, global
average pooling and a linear classifier. ``resnet_small`` is a CIFAR-style ResNet with one
BasicBlock per stage and three resolution-halving stages, like the paper's ResNet on 32×32 inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class ConvNet4(nn.Module):
    default_input_size = (1, 32, 32)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.ReLU(inplace=True))
        self.stage1 = _conv_bn_relu(width, 2 * width, 2)
        self.stage2 = _conv_bn_relu(2 * width, 4 * width, 2)
        self.stage3 = _conv_bn_relu(4 * width, 8 * width, 2)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.global_pool(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNetSmall(nn.Module):
    default_input_size = (1, 32, 32)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            layers.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.global_pool(x), 1))


ZOO: dict[str, Callable[..., nn.Module]] = {"convnet4": ConvNet4, "resnet_small": ResNetSmall}
