"""Architectures for the pruning tests, defined here (no torchvision): small, 32x32 inputs, fast on 2 cores."""

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=True, bias=False):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=bias), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class PaddleResidualNet(nn.Module):
    """PaddleSlim tests/test_prune.py: conv1->conv2->sum1->conv3->conv4->sum2->conv5->conv6(->conv_transpose).
    conv_bn_layer = conv (no bias) + batch_norm; input 3x16x16, 8 filters."""

    def __init__(self, with_transpose=True):
        super().__init__()
        self.conv1 = conv_bn(3, 8, act=False)
        self.conv2 = conv_bn(8, 8, act=False)
        self.conv3 = conv_bn(8, 8, act=False)
        self.conv4 = conv_bn(8, 8, act=False)
        self.conv5 = conv_bn(8, 8, act=False)
        self.conv6 = conv_bn(8, 8, act=False)
        self.transpose = nn.ConvTranspose2d(8, 16, 2, stride=2) if with_transpose else None

    def forward(self, x):
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        sum1 = c1 + c2
        c3 = self.conv3(sum1)
        c4 = self.conv4(c3)
        sum2 = c4 + sum1
        c6 = self.conv6(self.conv5(sum2))
        return self.transpose(c6) if self.transpose is not None else c6


class ConvFlattenLinear(nn.Module):
    """PaddleSlim tests/dygraph/test_prune_walker.py: conv(3->8, k3) -> flatten -> Linear(8*30*30, 5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.linear = nn.Linear(8 * 30 * 30, 5)

    def forward(self, x):
        return self.linear(torch.flatten(self.conv(x), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, widths, blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(cin, w, stride))
                cin = w * (4 if block is Bottleneck else 1)
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18_style():
    return ResNet(BasicBlock, [16, 32, 64, 128], [2, 2, 2, 2])


def resnet50_style():
    return ResNet(Bottleneck, [8, 16, 32, 64], [2, 2, 2, 1])


class MobileNetV1(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        cfg = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1)]
        layers = [conv_bn(3, 32, 3, 2)]
        for cin, cout, s in cfg:
            layers += [conv_bn(cin, cin, 3, s, groups=cin), conv_bn(cin, cout, 1)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return x + self.block(x) if self.use_res else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        cfg = [(16, 16, 1, 1), (16, 24, 2, 6), (24, 24, 1, 6), (24, 32, 2, 6), (32, 32, 1, 6), (32, 64, 1, 6)]
        layers = [conv_bn(3, 16, 3, 1)]
        layers += [InvertedResidual(*c) for c in cfg]
        layers += [conv_bn(64, 256, 1)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(256, num_classes))

    def forward(self, x):
        x = self.features(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], 1)


class DenseNetStyle(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block = nn.Sequential(DenseLayer(16, 12), DenseLayer(28, 12), DenseLayer(40, 12))
        self.trans = nn.Sequential(nn.BatchNorm2d(52), nn.ReLU(), nn.Conv2d(52, 32, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = nn.Sequential(DenseLayer(32, 12), DenseLayer(44, 12))
        self.norm = nn.BatchNorm2d(56)
        self.fc = nn.Linear(56, num_classes)

    def forward(self, x):
        x = self.block2(self.trans(self.block(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(x)), 1).flatten(1))


class UNetStyle(nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        self.enc1 = nn.Sequential(conv_bn(3, 16), conv_bn(16, 16))
        self.enc2 = nn.Sequential(conv_bn(16, 32), conv_bn(32, 32))
        self.bottom = nn.Sequential(conv_bn(32, 64), conv_bn(64, 64))
        self.up2 = nn.ConvTranspose2d(64, 32, 2, stride=2)
        self.dec2 = nn.Sequential(conv_bn(64, 32), conv_bn(32, 32))
        self.dec1 = nn.Sequential(conv_bn(48, 16), conv_bn(16, 16))
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        up1 = F.interpolate(d2, scale_factor=2.0, mode="nearest")
        d1 = self.dec1(torch.cat([up1, e1], dim=1))
        return self.head(d1)


class ConvTransposeDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 32, 3, 2))
        self.dec1 = nn.ConvTranspose2d(32, 24, 2, stride=2)
        self.bn1 = nn.BatchNorm2d(24)
        self.dec2 = nn.ConvTranspose2d(24, 16, 2, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.out = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        x = self.enc(x)
        x = F.relu(self.bn1(self.dec1(x)))
        x = F.relu(self.bn2(self.dec2(x)))
        return self.out(x)


def randomize(model, seed=0):
    """Non-trivial BatchNorm scales and statistics, so BN-scale criteria and eval outputs mean something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.05)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return model.eval()


ZOO = {
    "resnet18": (resnet18_style, (1, 3, 32, 32)),
    "resnet50": (resnet50_style, (1, 3, 32, 32)),
    "mobilenet_v1": (MobileNetV1, (1, 3, 32, 32)),
    "mobilenet_v2": (MobileNetV2, (1, 3, 32, 32)),
    "densenet": (DenseNetStyle, (1, 3, 32, 32)),
    "unet": (UNetStyle, (1, 3, 32, 32)),
    "convt_decoder": (ConvTransposeDecoder, (1, 3, 32, 32)),
}




class ChunkBranches(nn.Module):
    """x -> conv -> chunk(2, dim=1) -> two branches -> cat -> head (chunk count needs no rewrite)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.left = conv_bn(8, 8)
        self.right = conv_bn(8, 12)
        self.head = nn.Conv2d(20, 4, 1)

    def forward(self, x):
        a, b = torch.chunk(self.stem(x), 2, dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], dim=1))


class SplitSizes(nn.Module):
    """x -> conv -> split([6, 10], dim=1) -> two branches -> cat -> head (literal sizes: rewritten when
    the model is an fx.GraphModule, blocked otherwise)."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.left = conv_bn(6, 8)
        self.right = conv_bn(10, 8)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        a, b = self.stem(x).split([6, 10], dim=1)
        return self.head(torch.cat([self.left(a), self.right(b)], dim=1))


class ResNeXtBlock(nn.Module):
    """1x1 reduce -> grouped 3x3 (cardinality ``groups``) -> 1x1 expand, with an identity shortcut."""

    def __init__(self, cin=32, width=32, groups=8):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cin, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cin)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + x)


class ResNeXtNet(nn.Module):
    def __init__(self, groups=8):
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.block = ResNeXtBlock(32, 32, groups)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.block(self.stem(x)), 1).flatten(1))
