"""Construction alone: a zoo name and shape arguments in, a model with its ``build_args`` out.

Kept apart from :mod:`repvgg.factory` (which also loads checkpoints and pretrained weights) so
that :mod:`repvgg.checkpoint` can rebuild models without importing the factory that imports it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

from .archs import ARCHS, canonical_name, resize_arch
from .model import RepVGG
from .reorg import ResidualReorg
from .tvmodels import build_tv, is_tv_name


def build_model(name: str, num_classes: int = 1000, in_chans: int = 3, deploy: bool = False, *,
                width: float = 1.0, channels: Sequence[int] | None = None, depths: Sequence[int] | None = None,
                **kwargs) -> nn.Module:
    """The model ``create_model`` builds, without weights: see its docstring for the arguments.

    ``tv:NAME`` builds a torchvision classifier instead (see :mod:`repvgg.tvmodels`); the RepVGG
    shape arguments do not apply to it.
    """
    if is_tv_name(name):
        if width != 1 or channels is not None or depths is not None or kwargs.get("block", "repvgg") != "repvgg":
            raise ValueError(f"{name}: width/channels/depths/block are RepVGG zoo settings, not torchvision's")
        kwargs.pop("block", None)
        return build_tv(name, num_classes, in_chans, **kwargs)
    canonical = canonical_name(name)
    arch = resize_arch(ARCHS[canonical], width, channels, depths)
    cls = ResidualReorg if kwargs.get("block") == "residual_reorg" else RepVGG  # a network, not a block
    model = cls(arch, num_classes=num_classes, in_chans=in_chans, deploy=bool(deploy), **kwargs)
    # What rebuilds this model: saved in checkpoint metadata so a file says what it holds.
    resized = {"width": width} if width != 1 else {}
    if channels is not None:
        resized = {"channels": [int(c) for c in channels]}
    if depths is not None:
        resized["depths"] = list(arch.depths)
    model.build_args = dict(name=canonical, num_classes=num_classes, in_chans=in_chans, **resized, **kwargs)
    return model
