"""Reusing a first conv trained on another number of input channels (gray <-> RGB), as timm does.

A backbone pretrained on gray Fashion-MNIST starts an RGB segmenter, an ImageNet one a gray
classifier. 1 -> 3: the kernel is repeated over R, G, B and divided by 3, so an RGB picture whose
three channels are equal gives exactly the gray network's output; 3 -> 1: summed over R, G, B (the
same identity read backwards). Other counts: repeated cyclically and scaled by old / new (timm's
``adapt_input_conv`` rule). The conv is linear in its input and BN follows it, so the identity holds
for a RepVGG stem in either form (each branch, or the fused kernel) and for a ResNet's conv1.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch


class InputChannelsAdaptedWarning(UserWarning):
    """A checkpoint's first conv was adapted to another number of input channels."""


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """``weight`` [out, old, k, k] for ``in_chans`` inputs (see the module docstring)."""
    if weight.ndim != 4:
        raise ValueError(f"expected a conv kernel [out, in, k, k], got shape {tuple(weight.shape)}")
    old = weight.shape[1]
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if old == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(1, keepdim=True)
    reps = math.ceil(in_chans / old)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (old / in_chans)


def adapt_first_convs(state: Mapping[str, torch.Tensor], in_chans: int, keys, source: str) -> dict:
    """``state`` with the kernels at ``keys`` (those present) adapted to ``in_chans``; warns once when
    anything changed, naming the file and both channel counts (a wrong file should not pass unseen)."""
    out, old = dict(state), None
    for k in keys:
        w = out.get(k)
        if w is not None and w.ndim == 4 and w.shape[1] != in_chans:
            old = w.shape[1]
            out[k] = adapt_input_conv(w, in_chans)
    if old is not None:
        warnings.warn(f"{source}: its first conv takes {old}-channel images; adapted to {in_chans} channels "
                      f"({'summed over' if in_chans == 1 else 'repeated across'} the channels, as timm does)",
                      InputChannelsAdaptedWarning, stacklevel=3)
    return out


def stem_kernel_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The RepVGG stem's conv kernels in our naming: its branches' or its fused one."""
    return [k for k, v in state.items() if k.startswith("stem.") and k.endswith("weight") and v.ndim == 4]


__all__ = ["InputChannelsAdaptedWarning", "adapt_first_convs", "adapt_input_conv", "stem_kernel_keys"]
