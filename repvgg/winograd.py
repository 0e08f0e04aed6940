"""Winograd 3x3 convolutions on the CPU through NNPACK: where a plain 3x3 stack pays off.

Why: the paper's speed argument (Sect. 3.1) is that a 3x3 stride-1 conv runs as Winograd, with
far fewer multiplications than its multiply-adds. cuDNN does that on GPUs; PyTorch on the CPU runs
batch-1 convs through oneDNN's direct kernels instead. NNPACK, which PyTorch's x86 and ARM wheels
ship, has Winograd kernels, but PyTorch picks it only for batches of 16 and more and never for a
dilated conv. :func:`winograd_convs` swaps each eligible conv of an eval model for
:class:`WinogradConv2d` where it is measured faster on the input it will see, and leaves the rest.

Dilated convs (output stride 8 segmenters) run through space-to-batch: a 3x3 conv with dilation d
on x equals a plain 3x3 conv on each of the d*d interleaved sub-images x[..., i::d, j::d].

Equal to ``F.conv2d`` up to fp32 rounding of the Winograd transforms (about 1e-5 relative per conv,
tested). NNPACK sizes its thread pool from ``torch.get_num_threads()`` on its first use.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F


def nnpack_ready() -> bool:
    """Whether this PyTorch build has NNPACK (the call also initializes it, which its convs need)."""
    return torch.backends.nnpack.is_available()


def eligible(conv: nn.Module) -> bool:
    """A plain fp32 3x3 stride-1 conv padded to keep its size ('same'), any dilation and groups."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation[0] == conv.dilation[1] and conv.padding == conv.dilation
            and conv.padding_mode == "zeros" and conv.weight.dtype == torch.float32)


def space_to_batch(x: torch.Tensor, d: int) -> torch.Tensor:
    """(N, C, H, W) -> (d*d*N, C, ceil(H/d), ceil(W/d)): sub-image (i, j) is x[..., i::d, j::d],
    zero-filled at the end where H or W is not a multiple of d (which acts as the conv's padding)."""
    n, c, h, w = x.shape
    hb, wb = -(-h // d), -(-w // d)
    x = F.pad(x, (0, wb * d - w, 0, hb * d - h))
    return x.view(n, c, hb, d, wb, d).permute(3, 5, 0, 1, 2, 4).reshape(d * d * n, c, hb, wb)


def batch_to_space(y: torch.Tensor, d: int, n: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`space_to_batch`, cropped back to (N, C, h, w)."""
    c, hb, wb = y.shape[1:]
    y = y.view(d, d, n, c, hb, wb).permute(2, 3, 4, 0, 5, 1).reshape(n, c, hb * d, wb * d)
    return y[:, :, :h, :w].contiguous()


def nnpack_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   dilation: int = 1, groups: int = 1, per_image: bool = False) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=dilation, dilation=dilation, groups=groups)`` by NNPACK.

    ``per_image``: one NNPACK call per image (and per sub-image of a dilated conv). NNPACK runs a
    batch of one with its inference algorithm, which is faster on mid-sized maps than its batched
    one (192 channels, 32x32: 55 vs 73 ms on a 2-core EPYC) and slower on small ones."""
    if groups > 1:
        xs, ws = x.chunk(groups, dim=1), weight.chunk(groups, dim=0)
        bs = bias.chunk(groups) if bias is not None else [None] * groups
        return torch.cat([nnpack_conv3x3(a, b, c, dilation, 1, per_image) for a, b, c in zip(xs, ws, bs)], dim=1)
    n, _, h, w = x.shape
    xb = space_to_batch(x, dilation) if dilation > 1 else x.contiguous()
    if per_image and xb.shape[0] > 1:
        y = torch.cat([torch._nnpack_spatial_convolution(xi, weight, bias, [1, 1], [1, 1]) for xi in xb.split(1)])
    else:
        y = torch._nnpack_spatial_convolution(xb, weight, bias, [1, 1], [1, 1])
    return batch_to_space(y, dilation, n, h, w) if dilation > 1 else y


class WinogradConv2d(nn.Module):
    """An eligible ``nn.Conv2d`` run by NNPACK; the same parameters, names and state-dict keys.

    Falls back to ``F.conv2d`` off the CPU, outside fp32, while autograd records, or (with one
    warning) where NNPACK refuses a shape, so the module is never less correct than the conv."""

    def __init__(self, conv: nn.Conv2d, per_image: bool = False):
        super().__init__()
        if not eligible(conv):
            raise ValueError(f"WinogradConv2d takes an fp32 3x3 stride-1 conv with padding == dilation, got {conv}")
        self.weight, self.bias = conv.weight, conv.bias
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.dilation, self.groups, self.per_image = conv.dilation[0], conv.groups, per_image
        self._warned = False

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, dilation={self.dilation}, groups={self.groups}, "
                f"per_image={self.per_image}")

    def _exact(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.dilation, dilation=self.dilation, groups=self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recording = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        if not x.is_cpu or x.dtype != torch.float32 or recording:
            return self._exact(x)
        try:
            return nnpack_conv3x3(x, self.weight, self.bias, self.dilation, self.groups, self.per_image)
        except RuntimeError as e:
            if not self._warned:
                warnings.warn(f"NNPACK refused input {tuple(x.shape)} ({e}); running F.conv2d", stacklevel=2)
                self._warned = True
            return self._exact(x)


def _median_ms(fns: list, repeats: int) -> list[float]:
    """Median milliseconds of each function, rounds interleaved so load hits all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for ts, fn in zip(times, fns):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) * 1e3 for ts in times]


@torch.inference_mode()
def winograd_convs(model: nn.Module, example: torch.Tensor, *, autotune: bool = True,
                   repeats: int = 3) -> tuple[nn.Module, list[dict]]:
    """A copy of the eval ``model`` with eligible convs run by NNPACK, and one report row per conv.

    With ``autotune`` each eligible conv is timed both ways (oneDNN via ``F.conv2d`` and NNPACK)
    on the input shape it sees when the model runs ``example``, and swapped only where NNPACK is
    faster: Winograd wins on large maps and loses on 7x7 ones. ``autotune=False`` swaps all.
    Set the thread count before calling: NNPACK's pool is sized on its first use.
    """
    if not nnpack_ready():
        raise RuntimeError("this PyTorch build has no NNPACK (torch.backends.nnpack.is_available() is False); "
                           "Winograd convs are not available here")
    if model.training:
        raise ValueError("winograd_convs takes an eval model (call .eval(); fuse it first for a deploy form)")
    model = copy.deepcopy(model)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, args):
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if eligible(m)]
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
    report = []
    for name, shape in shapes.items():
        conv = model.get_submodule(name)
        options = [WinogradConv2d(conv)]
        if shape[0] > 1 or options[0].dilation > 1:  # the batch NNPACK sees has more than one image
            options.append(WinogradConv2d(conv, per_image=True))
        row = {"name": name, "input": shape, "dilation": options[0].dilation, "groups": options[0].groups}
        chosen = options[0]
        if autotune:
            x = torch.randn(shape)
            try:
                ms = _median_ms([lambda: conv(x)] + [lambda m=m: m(x) for m in options], repeats)
            except RuntimeError as e:  # NNPACK refused this shape
                ms, row["error"] = None, str(e)[:200]
            if ms is not None:
                best = min(range(len(options)), key=lambda i: ms[i + 1])
                chosen = options[best] if ms[best + 1] < ms[0] else None
                row.update(onednn_ms=ms[0], winograd_ms=ms[best + 1])
            else:
                chosen = None
        row["used"] = chosen is not None
        row["per_image"] = chosen is not None and chosen.per_image
        if chosen is not None:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, chosen)
        report.append(row)
    return model, report
