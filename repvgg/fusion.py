"""Pure tensor math of structural re-parameterization (paper Sect. 3.3).

Every function takes and returns plain tensors, keeps the dtype and device of its inputs and
holds no module state, so the algebra can be read and tested on its own. A *branch* in this
file is a pair ``(kernel, bias)`` that computes ``conv(x, kernel) + bias`` with the block's
stride, dilation and groups; fusing a block is summing its branches once they all have the
same 3x3 shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

Branch = tuple[torch.Tensor, torch.Tensor]


def fold_bn(
    kernel: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float,
    conv_bias: torch.Tensor | None = None,
) -> Branch:
    """Fold an inference-time BN into the conv before it (Eq. 3), conv bias included.

    ``bn(conv(x, W) + c) = conv(x, W * t) + (beta + (c - mean) * t)`` with ``t = gamma / std``.
    A conv bias before BN is easy to drop by mistake; here it is part of the formula.
    """
    std = torch.sqrt(running_var + eps)
    scale = (gamma if gamma is not None else torch.ones_like(std)) / std
    shift = beta if beta is not None else torch.zeros_like(std)
    c = conv_bias if conv_bias is not None else torch.zeros_like(std)
    return kernel * scale.reshape(-1, 1, 1, 1), shift + (c - running_mean) * scale


def pad_to_3x3(kernel: torch.Tensor) -> torch.Tensor:
    """Zero-pad a (kh, kw) kernel with odd sides <= 3 to 3x3, centred.

    Centring keeps the spatial alignment when the smaller conv uses (k - 1) // 2 * dilation
    padding less than the 3x3 conv: a 1x1 lands on the centre tap, a 3x1 on the centre column.
    """
    kh, kw = kernel.shape[-2:]
    if kh > 3 or kw > 3 or kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"can only pad odd kernels up to 3x3, got {kh}x{kw}")
    ph, pw = (3 - kh) // 2, (3 - kw) // 2
    return F.pad(kernel, (pw, pw, ph, ph))


def identity_kernel(
    channels: int, groups: int = 1, *, dtype: torch.dtype | None = None, device=None
) -> torch.Tensor:
    """The 3x3 kernel of ``y = x`` for a conv with ``groups``: shape (C, C // groups, 3, 3).

    In a grouped conv, output channel i sees only the inputs of its own group, where input i is
    at position ``i mod (C // groups)``; that is where its centre tap goes.
    """
    if channels % groups:
        raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
    per_group = channels // groups
    kernel = torch.zeros(channels, per_group, 3, 3, dtype=dtype, device=device)
    idx = torch.arange(channels, device=device)
    kernel[idx, idx % per_group, 1, 1] = 1
    return kernel


def add_branches(branches: list[Branch]) -> Branch:
    """Sum branches that already share the 3x3 shape: conv is linear in its kernel and bias."""
    if not branches:
        raise ValueError("nothing to fuse: the block has no linear branch")
    kernel = sum(k for k, _ in branches)
    bias = sum(b for _, b in branches)
    return kernel, bias


def dirac_kernel(
    weight: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, groups: int = 1
) -> torch.Tensor:
    """DiracNet's kernel ``diag(alpha) I + diag(beta) W_norm`` (W normalized per output filter)."""
    flat = weight.flatten(1)
    w_norm = (flat / torch.linalg.vector_norm(flat, dim=1, keepdim=True).clamp_min(1e-12)).view_as(weight)
    ident = identity_kernel(weight.shape[0], groups, dtype=weight.dtype, device=weight.device)
    return alpha.reshape(-1, 1, 1, 1) * ident + beta.reshape(-1, 1, 1, 1) * w_norm
