"""The paper's Wino MULs, counted with torch.utils.flop_counter; params and multiply-adds come
from :mod:`repvgg.complexity` (one implementation of each count in the package).

Theoretical FLOPs in the paper are multiply-adds (footnote 2). Wino MULs (Sect. 2.4): a stride-1
3x3 conv computed with F(2x2, 3x3) Winograd needs 4/9 of its multiplications; every other op
(strided or dilated convs, 1x1 convs, the classifier) counts in full.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..complexity import count_macs, count_params

WINOGRAD_FACTOR = 4 / 9  # F(2x2, 3x3): 16 MULs per 2x2 output tile instead of 36
_CONV_OPS = (torch.ops.aten.convolution, torch.ops.aten._convolution)


def _wino_conv_flop(x_shape, w_shape, _bias, stride, _padding, dilation, transposed, *args, out_shape=None, **kw):
    flops = conv_flop_count(x_shape, w_shape, out_shape, transposed=transposed)
    winograd = (
        not transposed and tuple(w_shape[2:]) == (3, 3)
        and all(s == 1 for s in stride) and all(d == 1 for d in dilation)
    )
    return int(flops * WINOGRAD_FACTOR) if winograd else flops


def count_wino_muls(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> int:
    """Multiplications with stride-1 3x3 convs at 4/9 (paper Sect. 2.4, "Wino MULs")."""
    p = next(model.parameters(), None)
    x = torch.zeros(tuple(input_shape), device=p.device if p is not None else "cpu",
                    dtype=p.dtype if p is not None else torch.float32)
    counter = FlopCounterMode(display=False, custom_mapping={op: _wino_conv_flop for op in _CONV_OPS})
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2  # flop_counter counts a multiply-add as 2 FLOPs


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int
    wino_muls: int


def complexity(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> Complexity:
    return Complexity(count_params(model), count_macs(model, input_shape), count_wino_muls(model, input_shape))
