"""torchvision baselines of the paper's Tables 4-5, conv-BN fused with torch.fx for a fair race.

The paper converts every conv-BN pair of its baselines into one conv with bias (Sect. 4.1), so a
baseline is timed in its own deploy form, as RepVGG is. ``vgg16`` is torchvision's ``vgg16_bn``
with BN fused: the paper's VGG-16 was trained "with modern components like BN", and once fused
it has the plain VGG-16's structure and parameter count.
"""
from __future__ import annotations

import difflib

import torch.nn as nn
from torch.fx.experimental.optimization import fuse as fx_fuse

# name -> torchvision builder name
BASELINES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnet152": "resnet152",
    "resnext50_32x4d": "resnext50_32x4d",
    "resnext101_32x8d": "resnext101_32x8d",
    "vgg16": "vgg16_bn",
    "efficientnet_b0": "efficientnet_b0",
    "efficientnet_b3": "efficientnet_b3",
    "regnet_x_3_2gf": "regnet_x_3_2gf",
    "regnet_x_16gf": "regnet_x_16gf",
}


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every conv->BN pair folded into one conv with bias.

    torch.fx traces the graph, so a BN is folded only where it directly consumes a conv output
    used nowhere else: the same rule as the paper's Eq. 3, found by the graph rather than by
    guessing from module order.
    """
    return fx_fuse(model.eval(), inplace=False).eval()


def create_baseline(name: str, num_classes: int = 1000, fused: bool = True) -> nn.Module:
    """A randomly initialized torchvision baseline (no download), conv-BN fused unless ``fused=False``."""
    import torchvision.models as tvm

    if name not in BASELINES:
        close = difflib.get_close_matches(name, BASELINES, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown baseline {name!r}.{hint} Known baselines: {', '.join(BASELINES)}")
    model = getattr(tvm, BASELINES[name])(weights=None, num_classes=num_classes).eval()
    return fuse_conv_bn(model) if fused else model
