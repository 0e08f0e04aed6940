"""The speed ceiling of a deploy model: its convolutions alone, timed layer by layer.

A deploy RepVGG is (almost) only 3x3 convs; the ReLUs, pooling and classifier add a little, and
framework overhead adds the rest. Timing the same convs (same shapes, dtype, memory layout and
weights) one at a time and summing gives the time the model could take if everything around the
convs were free; the model's throughput as a fraction of that is how close it gets.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from .timing import synchronize


def conv_layers(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Conv2d, torch.Tensor]]:
    """Every Conv2d the model runs on ``x``, with a fresh random input of the shape it saw."""
    seen: list[tuple[nn.Conv2d, torch.Size, torch.memory_format]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].shape, _layout(a[0]))))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [(m, torch.randn(s, device=x.device).to(x.dtype).contiguous(memory_format=f)) for m, s, f in seen]


def _layout(t: torch.Tensor) -> torch.memory_format:
    nhwc = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def ceiling_timer(model: nn.Module, x: torch.Tensor):
    """A callable returning the seconds the model's convs take on one batch, each timed alone."""
    layers = conv_layers(model, x)
    if not layers:
        raise ValueError("the model runs no Conv2d: there is no conv ceiling to measure")
    device = x.device

    def timer() -> float:
        total = 0.0
        for conv, inp in layers:
            synchronize(device)
            start = time.perf_counter()
            conv(inp)
            synchronize(device)
            total += time.perf_counter() - start
        return total

    return timer
