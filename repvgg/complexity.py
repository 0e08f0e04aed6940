"""Parameter and multiply-add counts, with torch's own FLOP counter (no hand-written formulas).

``count_macs`` is the pure multiply-add count of convs and linears (FlopCounterMode's FLOPs / 2).
Tables such as mmcls' count FLOPs with mmcv's convention, which also adds one op per conv bias and
per activation element; :func:`count_flops_mmcv` reproduces that to compare with published numbers.
Models may live on the meta device (``with torch.device("meta"): create_model(...)``): nothing is
allocated or computed, so counting even RepVGG-B3 takes well under a second.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass at ``input_shape`` (e.g. ``(1, 3, 224, 224)``), eval mode."""
    return _trace(model, input_shape)[0]


def count_flops_mmcv(model: nn.Module, input_shape: Sequence[int]) -> int:
    """mmcv's FLOPs: multiply-adds + one add per conv-bias output + one op per ReLU output element."""
    macs, extra = _trace(model, input_shape)
    return macs + extra


def _trace(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    p = next(iter(model.parameters()), None)
    x = torch.zeros(tuple(input_shape), device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    extra = [0]

    def hook(mod, _inp, out):
        if isinstance(mod, nn.Conv2d) and mod.bias is not None or isinstance(mod, nn.ReLU):
            extra[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ReLU))]
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counter.get_total_flops() // 2, extra[0]
