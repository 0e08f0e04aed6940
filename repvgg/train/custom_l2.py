"""Weight decay on the kernel a block becomes, not on its branches (the official code's custom L2).

Plain L2 on each branch's kernel penalizes a 3x3 and a 1x1 kernel separately, although inference
only ever sees their BN-scaled sum. The official RepVGG trains with ``get_custom_L2``: ordinary L2
on the 8 outer taps of the 3x3 kernel, and L2 on the *equivalent* centre tap
``K3c * t3 + K1 * t1`` (``t = gamma / std`` of each branch's BN, held constant), normalized by
``t3^2 + t1^2`` so its strength matches ordinary L2. The official code leaves the identity branch
out (RepVGG issues #73, #99); here it is part of the equivalent kernel, as it is of the fused one:
``+ I * t_id`` on the identity positions, with ``t_id^2`` added to their normalizer. A block
without an identity branch gets exactly the official term.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..blocks import RepVGGBlock
from ..fusion import identity_kernel


def custom_l2_blocks(model: nn.Module) -> list[RepVGGBlock]:
    """Train-time blocks the term covers: a plain 3x3 conv+BN, optionally a 1x1 conv+BN and identity BN."""
    blocks = []
    for m in model.modules():
        if not isinstance(m, RepVGGBlock) or m.conv3x3 is None:
            continue
        s = m.spec
        if s.kernel == "plain" and s.branch_bn and s.bn_1x1 and not (s.post_bn or s.asymmetric or s.branch_relu) \
                and s.identity in (None, "bn"):
            blocks.append(m)
    return blocks


def _scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    return (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().reshape(-1, 1, 1, 1)


def custom_l2(blocks: list[RepVGGBlock]) -> torch.Tensor:
    """The sum over ``blocks`` of L2(outer 3x3 taps) + L2(equivalent centre tap) / normalizer."""
    total = None
    for b in blocks:
        k3 = b.conv3x3.conv.weight
        t3 = _scale(b.conv3x3.bn)
        centre = k3[:, :, 1:2, 1:2]
        term = k3.square().sum() - centre.square().sum()
        eq, norm = centre * t3, t3.square().expand_as(centre)
        if b.conv1x1 is not None:
            t1 = _scale(b.conv1x1.bn)
            eq, norm = eq + b.conv1x1.conv.weight * t1, norm + t1.square()
        if b.identity is not None:
            ident = identity_kernel(b.out_channels, b.groups, dtype=k3.dtype, device=k3.device)[:, :, 1:2, 1:2]
            t_id = _scale(b.identity.bn)
            eq, norm = eq + ident * t_id, norm + ident * t_id.square()
        term = term + (eq.square() / norm).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


def covered_kernels(blocks: list[RepVGGBlock]) -> set[int]:
    """ids of the kernels custom L2 regularizes: the optimizer must not decay them a second time."""
    ids = set()
    for b in blocks:
        ids.add(id(b.conv3x3.conv.weight))
        if b.conv1x1 is not None:
            ids.add(id(b.conv1x1.conv.weight))
    return ids
