"""Mixed precision: which autocast dtype a run trains in.

On CUDA: bf16 where supported, else fp16. On a CPU, bf16 pays off on some chips only: the
small recipe trained about 1.7x faster in bf16 than in fp32 on a 2-core AMD EPYC with
AVX512-BF16, but at 0.8-0.9x the fp32 speed on a 2-core Intel Xeon with AVX512-BF16 and no AMX
(same model and batch). The CPU flags do not tell the two apart, so `amp: auto` on a CPU times
a few training steps of the run's own model in both precisions and keeps bf16 only where it is
clearly faster (`BF16_MIN_SPEEDUP`); the choice is logged and saved in the run's config.yaml,
so `--resume` keeps it.
"""
from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cpu_backend import cpu_training_backend

BF16_MIN_SPEEDUP = 1.1    # a near tie is not worth bf16 rounding
PROBE_BATCH = 64          # bounds the probe's cost on big models; the ratio held from batch 32 to 256


def cpu_has_bf16() -> bool:
    """Native bf16 matmul/conv on this CPU (AVX512-BF16 or AMX); else bf16 autocast is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(amp, device: torch.device):
    """None (fp32) or the autocast dtype named by the config's `amp`, without timing anything.

    `auto` here means: bf16 on CPUs with native bf16, bf16/fp16 on CUDA. A run resolves `auto` on
    a CPU with `probe_cpu_amp` instead (see the module docstring).
    """
    if amp is False or amp is None:
        return None
    if amp == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def time_train_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtypes, rounds: int = 5) -> dict:
    """Median seconds of one forward+backward per dtype (None = fp32), interleaved so that load
    changes on a shared machine hit every dtype alike; one warm-up step each."""
    times = {d: [] for d in dtypes}
    with cpu_training_backend(x.device) as kernels:      # timed like training: same kernels, same oneDNN guard
        for r in range(rounds + 1):
            for d in dtypes:
                t = time.perf_counter()
                with torch.autocast("cpu", dtype=d or torch.float32, enabled=d is not None):
                    out = model(x)
                    outs = out if isinstance(out, (tuple, list)) else (out,)    # a segmenter's (main, aux)
                    loss = sum(F.cross_entropy(o.float(), y) for o in outs)
                with kernels.backward():
                    loss.backward()
                model.zero_grad(set_to_none=True)
                if r:
                    times[d].append(time.perf_counter() - t)
    return {d: statistics.median(v) for d, v in times.items()}


def probe_cpu_amp(model: nn.Module, input_shape: tuple, num_classes: int, *, channels_last: bool = False,
                  rounds: int = 5, dense: bool = False) -> tuple[torch.dtype | None, float, dict]:
    """(dtype to train in, bf16 speed-up over fp32, seconds per image per dtype) on this CPU.

    Times a copy of `model` in train mode (its weights, BN statistics and the global RNG are left
    untouched) on a synthetic batch of `input_shape` (batch capped at PROBE_BATCH). ``dense``: the
    model labels every pixel (a segmenter), so the targets are [N, H, W] label maps.
    """
    if not cpu_has_bf16():
        return None, 0.0, {}
    with torch.random.fork_rng(devices=[]):     # dropout in the probe must not shift the run's RNG
        return _probe(model, input_shape, num_classes, channels_last, rounds, dense)


def _probe(model, input_shape, num_classes, channels_last, rounds, dense=False):
    probe = copy.deepcopy(model).train()
    gen = torch.Generator().manual_seed(0)
    n = max(2, min(int(input_shape[0]), PROBE_BATCH))
    x = torch.randn((n, *input_shape[1:]), generator=gen)
    y = torch.randint(0, num_classes, (n, *input_shape[2:]) if dense else (n,), generator=gen)
    if channels_last:
        probe, x = probe.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    t = time_train_steps(probe, x, y, (None, torch.bfloat16), rounds)
    speedup = t[None] / t[torch.bfloat16]
    per_image = {"fp32": t[None] / n, "bf16": t[torch.bfloat16] / n}
    return (torch.bfloat16 if speedup >= BF16_MIN_SPEEDUP else None), speedup, per_image


def settle_auto(cfg: dict, dtype: torch.dtype | None, speedup: float) -> str:
    """Write what the probe settled `amp: auto` to into ``cfg`` (saved, so a resume keeps it); the log line."""
    cfg["amp"] = "bf16" if dtype is not None else False
    if not speedup:
        return "amp auto: no native bf16 on this CPU, training in fp32"
    return (f"amp auto: bf16 training steps ran {speedup:.2f}x the fp32 speed on this CPU -> "
            f"{'bf16' if dtype is not None else 'fp32'} (saved as amp: {cfg['amp']})")


__all__ = ["BF16_MIN_SPEEDUP", "amp_dtype", "cpu_has_bf16", "probe_cpu_amp", "settle_auto", "time_train_steps"]
