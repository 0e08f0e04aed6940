"""torchvision classifiers by name (``tv:resnet18``), adapted to small inputs, optionally repvggified.

So `repvgg train --model tv:resnet18 [--repvggify]` trains any torchvision ResNet or VGG-bn on the
same data and recipes as the zoo: the question of paper Sect. 4.2 (does re-parameterization help
a net that already has shortcuts?) asked on the user's own architectures. For 28-32 px images
(``small_input``) the ImageNet stems would leave nothing to classify: a ResNet gets a 3x3 stride-1
first conv and no max-pool (the usual CIFAR ResNet), a VGG keeps its first three max-pools only and
a single linear classifier on globally pooled features (its 4096-wide head is for 224 px inputs).
"""
from __future__ import annotations

import torch.nn as nn

PREFIX = "tv:"
FAMILIES = ("resnet", "vgg")


def is_tv_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def build_tv(name: str, num_classes: int = 1000, in_chans: int = 3, *, small_input: bool = False,
             repvggify: bool = False, drop_rate: float = 0.0) -> nn.Module:
    """A torchvision classifier; ``build_args`` record how to rebuild it (saved with checkpoints)."""
    import torchvision

    from .model import check_io_sizes

    check_io_sizes(num_classes, in_chans)
    arch = name[len(PREFIX):]
    builder = getattr(torchvision.models, arch, None)
    if builder is None or not arch.startswith(FAMILIES) or (arch.startswith("vgg") and not arch.endswith("_bn")):
        raise ValueError(f"unknown torchvision model {name!r}: tv: takes torchvision's resnet* and vgg*_bn "
                         "classifiers (e.g. tv:resnet18, tv:vgg11_bn)")
    model = builder(num_classes=num_classes)
    if arch.startswith("resnet"):
        _adapt_resnet(model, in_chans, small_input, drop_rate)
    else:
        _adapt_vgg(model, in_chans, small_input, num_classes, drop_rate)
    if repvggify:
        from .repvggify import repvggify as give_branches

        model, _ = give_branches(model, inplace=True, keep_function=False)   # a fresh net: the paper's init
    model.num_classes, model.in_chans = num_classes, in_chans
    model.build_args = dict(name=name, num_classes=num_classes, in_chans=in_chans, small_input=small_input,
                            repvggify=repvggify, drop_rate=drop_rate)
    return model


def _adapt_resnet(model, in_chans: int, small_input: bool, drop_rate: float) -> None:
    if small_input or in_chans != 3:
        k, s, p = (3, 1, 1) if small_input else (7, 2, 3)
        model.conv1 = nn.Conv2d(in_chans, 64, k, s, p, bias=False)
    if small_input:
        model.maxpool = nn.Identity()
    if drop_rate:
        model.fc = nn.Sequential(nn.Dropout(drop_rate), model.fc)


def _adapt_vgg(model, in_chans: int, small_input: bool, num_classes: int, drop_rate: float) -> None:
    first = model.features[0]
    if in_chans != 3:
        model.features[0] = nn.Conv2d(in_chans, first.out_channels, 3, padding=1)
    if small_input:
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        keep = [m for i, m in enumerate(model.features) if i not in pools[3:]]   # 28 px -> 14 -> 7 -> 3
        model.features = nn.Sequential(*keep)
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(drop_rate), nn.Linear(512, num_classes))
