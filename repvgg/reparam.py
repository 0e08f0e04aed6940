"""Fuse every RepVGG block in any module tree (a classifier, a detector with our backbone)."""
from __future__ import annotations

import copy

import torch.nn as nn

from .blocks import RepVGGBlock
from .reorg import ConvNormAct
from .repvggify import fold_back

# modules whose fuse() returns their deploy form (Residual Reorg's conv-BN layers keep their shortcuts)
FUSABLE = (RepVGGBlock, ConvNormAct)


class TrainOnly(nn.Module):
    """A part used only in training (a segmenter's auxiliary head): absent from the deploy form."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return ``model`` with every train-time block folded into one 3x3 conv, in eval mode.

    The result computes what ``model.eval()`` computes (BN uses its running statistics; a model
    still in train mode would use batch statistics, which no fixed conv can reproduce). The input
    is left untouched unless ``inplace=True``. Calling it again on the result changes nothing. A model
    given branches by :func:`repvgg.repvggify` comes back in its original architecture.
    Raises :class:`repvgg.NotConvertibleError` for branches that are not linear.
    """
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, FUSABLE):
        return model.fuse().eval()
    _fuse_children(model)
    fold_back(model)       # repvggified user models: back into their own conv + BN slots (warns in train mode)
    return model.eval()


def _fuse_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if isinstance(child, TrainOnly):
            setattr(module, name, None)
        elif isinstance(child, FUSABLE):
            setattr(module, name, child.fuse())
        else:
            _fuse_children(child)
