"""timm-style entry points: ``create_model`` and ``list_models``.

The top of the core's one-way flow: build (construction) <- checkpoint <- rebuild, hub <- factory.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from os import PathLike

import torch.nn as nn

from .archs import ARCHS, canonical_name
from .build import build_model
from .checkpoint import load_state_dict, read_checkpoint
from .hub import load_pretrained
from .input_adapt import adapt_first_convs, stem_kernel_keys
from .model import RepVGGFeatures
from .tvmodels import is_tv_name
from .rebuild import saved_shape, state_in_our_naming


def list_models(pattern: str | None = None) -> list[str]:
    """Canonical model names, optionally filtered by a shell-style pattern ("repvgg_b*")."""
    names = sorted(ARCHS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    deploy: bool | None = None,
    checkpoint: str | PathLike | None = None,
    *,
    pretrained: bool = False,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3, 4),
    width: float = 1.0,
    channels: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    **kwargs,
) -> nn.Module:
    """Build a RepVGG by name ("repvgg_a0" or the paper's "RepVGG-A0").

    kwargs go to :class:`repvgg.model.RepVGG`: ``block`` (a variant from ``list_blocks()``),
    ``small_input`` (stride-1 stem for 28-32 px images), ``output_stride`` (8/16 dilate the last
    stages), ``drop_rate``. ``width`` scales every stage's channels (0.5 = a quarter of the
    compute, for small data on a CPU); ``channels`` sets (stem, stage 1..4) widths outright, as a
    pruned model has them; ``depths`` sets the blocks per stage (e.g. (1, 2, 4, 1): fewer of the
    A-series' 14 blocks at 4x4 px when 28 px images train on a CPU). ``checkpoint`` loads weights
    in any supported format and naming; a train-time checkpoint loaded into ``deploy=True`` is
    fused on the way in; with ``deploy=None`` (the default) the model takes the checkpoint's form, and
    a checkpoint that records other widths or depths (a pruned model) is built at those unless
    ``width``/``channels``/``depths`` are given. ``pretrained=True`` loads the official ImageNet weights (downloaded once,
    see :mod:`repvgg.hub`); with another ``num_classes`` the head is left untrained.
    """
    canonical = name if is_tv_name(name) else canonical_name(name)
    if pretrained and checkpoint is not None:
        raise ValueError("give either pretrained=True or checkpoint=..., not both")
    if pretrained and (width != 1 or channels is not None or depths is not None):
        raise ValueError("pretrained weights exist only for the zoo shapes; drop width/channels/depths")
    state = None
    if checkpoint is not None:
        state, meta = read_checkpoint(checkpoint)
        state, naming = state_in_our_naming(state, meta, str(checkpoint))
        width, channels, depths, deploy = saved_shape(state, meta, canonical, width, channels, depths, deploy)
        if naming != "torchvision":     # a gray-trained stem starts an RGB model and back (warns)
            state = adapt_first_convs(state, in_chans, stem_kernel_keys(state), str(checkpoint))
    model = build_model(canonical, num_classes, in_chans, bool(deploy), width=width, channels=channels,
                        depths=depths, **kwargs)
    if pretrained:
        model = load_pretrained(model, canonical)
    if state is not None:
        model = load_state_dict(model, state, source=str(checkpoint))
    if features_only:
        return RepVGGFeatures(model, out_indices)
    return model
