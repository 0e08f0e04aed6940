"""Quantization-aware fine-tuning that ends in the fused INT8 model (RepVGG issues #91, #98).

``prepare_qat(model)`` wraps every RepVGG block in :class:`QATBlock`. Its forward computes the
block's fused 3x3 kernel and bias *from the branches* (BN folded with its running statistics, as
fusion does), fake-quantizes that kernel the way onnxruntime's QDQ weights are quantized (int8,
symmetric, scale = absmax / 127 per output channel or per tensor) and the conv's input as uint8
with a running range, then runs one conv. So the branches (3x3, 1x1 and identity BN) keep training
while the loss sees the rounding of the kernel that will be deployed; the BN statistics are frozen
(standard for QAT fine-tuning: the running statistics are what the fusion uses). On a fused model
the same wrapper fake-quantizes the fused conv directly: "QAT on the fused model".

``finish_qat`` unwraps and fuses: the deploy model's kernel is exactly the one QAT quantized, so
its weight scales in the ONNX QDQ file are the ones QAT trained against. It also returns the input
range each fused conv was trained with; ``quantize_model(..., input_ranges=...)`` writes those into
the QDQ file instead of re-calibrating them, so the file rounds activations as QAT did. (The head
and any tensor QAT did not quantize are calibrated as usual.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import RepVGGBlock
from ..reparam import reparameterize


def fake_quant_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """int8 symmetric fake quantization (ORT's QDQ weights: [-127, 127], scale absmax / 127);
    the gradient passes straight through (STE)."""
    amax = w.detach().abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) if per_channel else w.detach().abs().max()
    scale = (amax / 127).clamp(min=1e-12)
    q = torch.round(w / scale).clamp(-127, 127) * scale
    return w + (q - w).detach()


class ActQuant(nn.Module):
    """uint8 asymmetric fake quantization of activations with a range tracked as a running average
    of batch min/max while training (frozen in eval); straight-through gradient."""

    def __init__(self, momentum: float = 0.05):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
            if not bool(self.seen):
                self.lo.copy_(lo)
                self.hi.copy_(hi)
                self.seen.fill_(True)
            else:
                self.lo.lerp_(lo, self.momentum)
                self.hi.lerp_(hi, self.momentum)
        if not bool(self.seen):
            return x
        scale = ((self.hi - self.lo) / 255).clamp(min=1e-8)
        zero = torch.round(-self.lo / scale)
        q = (torch.round(x / scale) + zero).clamp(0, 255)
        return x + ((q - zero) * scale - x).detach()


class QATBlock(nn.Module):
    """A RepVGG block (either form) run as one fake-quantized conv of its fused kernel."""

    def __init__(self, block: RepVGGBlock, per_channel: bool = True):
        super().__init__()
        self.block, self.per_channel = block, per_channel
        self.input_quant = ActQuant()
        self.quantize = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        kernel, bias = b.fused_kernel_bias()
        if self.quantize:
            x, kernel = self.input_quant(x), fake_quant_weight(kernel, self.per_channel)
        y = F.conv2d(x, kernel, bias, b.stride, b.dilation, b.dilation, b.groups)
        return b.act(b.se(y))


def prepare_qat(model: nn.Module, per_channel: bool = True) -> nn.Module:
    """Wrap every RepVGG block of ``model`` (in place) in a :class:`QATBlock`; return the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, RepVGGBlock):
            setattr(model, name, QATBlock(child, per_channel))
        else:
            prepare_qat(child, per_channel)
    return model


def qat_blocks(model: nn.Module) -> list[QATBlock]:
    return [m for m in model.modules() if isinstance(m, QATBlock)]


def set_quantize(model: nn.Module, on: bool) -> None:
    """Switch fake quantization on or off (off: the float model QAT is training)."""
    for m in qat_blocks(model):
        m.quantize = on


def finish_qat(model: nn.Module) -> tuple[nn.Module, dict[str, tuple[float, float]]]:
    """Unwrap the blocks and fuse: ``(deploy model in eval mode, {fused conv name: (lo, hi)})``, the
    kernels being the ones QAT quantized and the ranges the ones its inputs were quantized with."""
    ranges = {f"{name}.fused": (float(m.input_quant.lo), float(m.input_quant.hi))
              for name, m in model.named_modules() if isinstance(m, QATBlock) and bool(m.input_quant.seen)}

    def unwrap(module: nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, QATBlock):
                setattr(module, name, child.block)
            else:
                unwrap(child)

    unwrap(model)
    return reparameterize(model.eval()), ranges


def qat_finetune(model: nn.Module, train_ds, epochs: int, *, per_channel: bool = True, lr: float = 0.01,
                 batch_size: int = 128, seed: int = 0, log=print) -> tuple[nn.Module, dict[str, tuple[float, float]]]:
    """QAT: wrap, fine-tune with the fake-quantized fused kernels (fp32, no autocast: bf16 would blur the
    rounding QAT must see), then unwrap and fuse. Works on either form of the model. Returns
    :func:`finish_qat`'s ``(deploy model, input ranges)``: give both to ``quantize_model``."""
    from .finetune import finetune

    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1 for QAT, got {epochs}")
    form = "fused" if all(getattr(m, "deploy", True) for m in model.modules() if isinstance(m, RepVGGBlock)) \
        else "train-time"
    n = len(qat_blocks(prepare_qat(model, per_channel)))
    if n == 0:
        raise ValueError("QAT needs RepVGG blocks; this model has none")
    log(f"QAT on the {form} form: {n} blocks, {'per-channel' if per_channel else 'per-tensor'} int8 weights, "
        f"uint8 activations, {epochs} epoch(s), lr {lr:g}")
    finetune(model, train_ds, epochs, lr=lr, batch_size=batch_size, seed=seed, log=log, allow_bf16=False)
    return finish_qat(model)
