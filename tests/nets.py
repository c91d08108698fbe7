"""Small hand-written networks with the patterns the engine must handle (shared by the tests)."""
import torch
from torch import nn


class ConcatNet(nn.Module):
    """Branches joined by torch.cat, a grouped conv, and a flatten into a linear layer."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.bn = nn.BatchNorm2d(10)
        self.c = nn.Conv2d(10, 8, 3, stride=2, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        y = self.g(torch.relu(self.c(y)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))


class SplitNet(nn.Module):
    """A conv output chunked in two (one half refined, CSP/ShuffleNet style) and a split re-ordered by cat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.p = nn.Conv2d(4, 6, 3, padding=1)
        self.c = nn.Conv2d(10, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        p, q = torch.relu(self.bn(self.a(x))).chunk(2, 1)
        first, second = torch.split(self.c(torch.cat([self.p(p), q], 1)), [3, 5], dim=1)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.cat([second, first], 1), 1), 1))


class GroupedNet(nn.Module):
    """A ResNeXt-like block: grouped 3x3 conv between 1x1 convs, with a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, padding=1)
        self.reduce = nn.Conv2d(12, 16, 1)
        self.bn1 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 24, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(24)
        self.expand = nn.Conv2d(24, 12, 1, groups=2)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = self.expand(torch.relu(self.bn2(self.grouped(torch.relu(self.bn1(self.reduce(s)))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(y + s), 1), 1))


TEST_NETS = {"concat": ConcatNet, "split": SplitNet, "grouped": GroupedNet}


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics so that wrong slicing shows up in outputs."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def random_kept(graph, frac=0.5, seed=0):
    """Random kept channel indices per prunable group name, the same number in each block (grouped convs)."""
    gen = torch.Generator().manual_seed(seed)
    kept = {}
    for g in graph.prunable:
        size = g.channels // g.blocks
        n = max(1, int(size * frac))
        kept[g.name] = torch.cat([b * size + torch.randperm(size, generator=gen)[:n] for b in range(g.blocks)]).sort().values
    return kept
