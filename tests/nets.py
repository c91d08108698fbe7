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


# ---------------------------------------------------------------- patterns of deployed networks (tests/test_patterns.py)
def stochastic_depth(x, p: float, training: bool):
    """torchvision.ops.stochastic_depth's contract (mode "row"): identity in eval, per-sample drop in training."""
    if not training or p == 0.0:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


torch.fx.wrap("stochastic_depth")  # a leaf call in fx graphs, as torchvision registers it


class SqueezeExcite(nn.Module):
    """MobileNetV3/EfficientNet SE: pool, reduce conv, ReLU, expand conv, gate, multiply."""

    def __init__(self, channels, reduced, gate=nn.Hardsigmoid):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x):
        return x * self.gate(self.fc2(torch.relu(self.fc1(self.pool(x)))))


class LinearSqueezeExcite(nn.Module):
    """SE written with Linear layers: x.mean((2, 3)) -> fc -> fc -> view(N, C, 1, 1) -> scale * x."""

    def __init__(self, channels, reduced):
        super().__init__()
        self.fc1 = nn.Linear(channels, reduced)
        self.fc2 = nn.Linear(reduced, channels)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(nn.functional.silu(self.fc1(x.mean((2, 3))))))
        return s.view(x.size(0), x.size(1), 1, 1).expand_as(x) * x


class SENet(nn.Module):
    """An inverted residual with SE (expand, depthwise, SE, project, residual), a head conv and a classifier."""

    def __init__(self, linear_se=False):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(16)
        self.expand = nn.Conv2d(16, 32, 1)
        self.expand_bn = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.dw_bn = nn.BatchNorm2d(32)
        self.se = LinearSqueezeExcite(32, 8) if linear_se else SqueezeExcite(32, 8)
        self.project = nn.Conv2d(32, 16, 1)
        self.project_bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        s = nn.functional.hardswish(self.stem_bn(self.stem(x)))
        y = torch.relu(self.dw_bn(self.dw(torch.relu(self.expand_bn(self.expand(s))))))
        y = self.project_bn(self.project(self.se(y)))
        y = torch.relu(self.head(s + y))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class ConvNeXtNet(nn.Module):
    """A ConvNeXt block: dwconv 7x7, permute to channels-last, LayerNorm, Linear, GELU, Linear, layer scale,
    permute back, stochastic depth, residual; a conv stem, a downsampling conv and a classifier."""

    def __init__(self, dim=16):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 2, stride=2)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.down = nn.Conv2d(dim, 2 * dim, 2, stride=2)
        self.fc = nn.Linear(2 * dim, 5)

    def forward(self, x):
        s = self.stem(x)
        y = self.dwconv(s).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        s = s + stochastic_depth(y.permute(0, 3, 1, 2), 0.1, self.training)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.down(s), 1), 1))


class LayerNorm2d(nn.LayerNorm):
    """torchvision's LayerNorm2d: an nn.LayerNorm subclass (so fx traces through it) normalizing dim 1."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    """torchvision's ConvNeXt block: its layer scale is a (C, 1, 1) parameter of the block, applied channels-first."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute((0, 2, 3, 1)),
                                   nn.LayerNorm(dim, eps=1e-6), nn.Linear(dim, 4 * dim), nn.GELU(),
                                   nn.Linear(4 * dim, dim), Permute((0, 3, 1, 2)))
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1) + 0.5)

    def forward(self, x):
        return x + stochastic_depth(self.layer_scale * self.block(x), 0.1, self.training)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


class TorchvisionConvNeXtNet(nn.Module):
    """torchvision's ConvNeXt layout: conv + LayerNorm2d stem, two CNBlocks, LayerNorm2d + conv downsampling."""

    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 2, stride=2), LayerNorm2d(dim, eps=1e-6))
        self.stage = nn.Sequential(CNBlock(dim), CNBlock(dim))
        self.down = nn.Sequential(LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, 2 * dim, 2, stride=2))
        self.fc = nn.Linear(2 * dim, 5)

    def forward(self, x):
        x = self.down(self.stage(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def channel_shuffle(x, groups: int):
    """ShuffleNetV2's shuffle, written as torchvision writes it."""
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleNet(nn.Module):
    """A ShuffleNetV2 unit (chunk, branch of 1x1 / depthwise 3x3 / 1x1, cat, channel shuffle) between stem and head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.Conv2d(8, 8, 1)
        self.b1_bn = nn.BatchNorm2d(8)
        self.b2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.b2_bn = nn.BatchNorm2d(8)
        self.b3 = nn.Conv2d(8, 8, 1)
        self.b3_bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x1, x2 = torch.relu(self.stem(x)).chunk(2, dim=1)
        y = torch.relu(self.b1_bn(self.b1(x2)))
        y = torch.relu(self.b3_bn(self.b3(self.b2_bn(self.b2(y)))))
        y = channel_shuffle(torch.cat((x1, y), dim=1), 2)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.head(y)), 1), 1))


class ShuffleV1Net(nn.Module):
    """A ShuffleNet V1 unit: grouped 1x1 conv, channel shuffle, depthwise 3x3, grouped 1x1 conv, residual."""

    def __init__(self, channels=8, mid=12, groups=2):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.g1 = nn.Conv2d(channels, mid, 1, groups=groups)
        self.g1_bn = nn.BatchNorm2d(mid)
        self.dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid)
        self.dw_bn = nn.BatchNorm2d(mid)
        self.g2 = nn.Conv2d(mid, channels, 1, groups=groups)
        self.g2_bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, 5)
        self.groups = groups

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = channel_shuffle(torch.relu(self.g1_bn(self.g1(s))), self.groups)
        y = self.g2_bn(self.g2(self.dw_bn(self.dw(y))))
        return self.fc(torch.relu(s + y).mean((2, 3)))


class ViewFlattenNet(nn.Module):
    """The hand-written flatten x.view(x.size(0), -1) before a classifier, behind a dropout."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        y = nn.functional.adaptive_avg_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
        return self.fc(self.drop(y.view(y.size(0), -1)))


class GroupedConcatNet(nn.Module):
    """A grouped conv reading a concatenation: its input is pinned, its output stays prunable."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(12)
        self.c = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.g(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.c(y)), 1), 1))


class TwiceNet(nn.Module):
    """A conv module called twice (shared weights), then a conv of its own."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 10, 3, padding=1)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        y = torch.relu(self.shared(torch.relu(self.shared(torch.relu(self.c1(x))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(self.c2(y)), 1), 1))


class StochasticDepthNet(nn.Module):
    """Residual blocks whose branch goes through stochastic depth (a wrapped function) and nn.Dropout."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.c2 = nn.Conv2d(12, 8, 3, padding=1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        y = self.c2(self.drop(torch.relu(self.bn1(self.c1(s)))))
        s = torch.relu(s + stochastic_depth(y, 0.2, self.training))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(s, 1), 1))


PATTERN_NETS = {"se": SENet, "se_linear": lambda: SENet(linear_se=True), "convnext": ConvNeXtNet,
                "convnext_tv": TorchvisionConvNeXtNet,
                "shuffle": ShuffleNet, "shuffle_v1": ShuffleV1Net, "view_flatten": ViewFlattenNet, "grouped_concat": GroupedConcatNet,
                "twice": TwiceNet, "stochastic_depth": StochasticDepthNet}


def seven_class_factory(num_classes: int = 7, width: int = 4) -> nn.Module:
    """A user's ``package.module:factory`` whose own default is 7 classes (tests/test_models_data.py)."""
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))


def mean_logit_score(model: nn.Module) -> float:
    """A user's evaluator for tests: a score in (0, 1) of the model's outputs on fixed images (not accuracy)."""
    x = torch.linspace(-1, 1, 2 * 3 * 16 * 16).view(2, 3, 16, 16)
    with torch.no_grad():
        return float(torch.sigmoid(model(x).mean()))


def broken_evaluator(model: nn.Module) -> str:
    return "good"


def fixed_224_factory(num_classes: int = 10) -> nn.Module:
    """A user's factory whose classifier only fits 224-px inputs (amc's default input for factories is 32 px)."""
    return nn.Sequential(nn.Conv2d(3, 4, 32, stride=32), nn.Flatten(), nn.Linear(4 * 7 * 7, num_classes))
