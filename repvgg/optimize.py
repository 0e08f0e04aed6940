"""``optimize_for_inference``: the fastest form of a model we can verify for one device and dtype.

Steps: fuse (RepVGG blocks re-parameterized, any remaining conv-BN folded with torch.fx), cast,
channels_last where it helps (oneDNN on CPU and tensor cores on GPU both prefer NHWC), then
``torch.compile`` with inductor freezing (weights become constants: oneDNN weight prepacking and
conv+ReLU fusion on CPU, constant folding on GPU). On CPU a plain RepVGG also gets an eager
oneDNN form (:class:`OneDNNPlain`), and in fp32 any model with 3x3 stride-1 convs a Winograd form
(:mod:`repvgg.winograd`, NNPACK; it pays on large maps: segmenters, big inputs). Each candidate is
checked against the plain fused fp32 model on a random batch, and the fastest that passes is returned.

Reduced precision (bf16/fp16) gets only a loose check here: a deep plain net with random weights
amplifies rounding, so a random-input tolerance says nothing about accuracy. Check top-1 on real
data before deploying reduced precision (benchmarks/bench_figures.py does this for a trained model).
"""
from __future__ import annotations

import copy
import time
import warnings

import torch
import torch.nn as nn

from .blocks import RepVGGBlock
from .model import chain_blocks
from .reparam import reparameterize
from .winograd import eligible, nnpack_ready, winograd_convs

FP32_TOL = 1e-4  # relative max error; TF32 convs on GPU get TF32_TOL
TF32_TOL = 5e-3
REDUCED_TOL = 0.1  # catches a broken transform, not an accuracy loss: see the module docstring


class InferenceModel(nn.Module):
    """Wraps the optimized module: casts the input to its device/dtype/layout, runs without autograd."""

    def __init__(self, impl: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool, info: dict):
        super().__init__()
        self.impl = impl
        self.device, self.dtype, self.channels_last = device, dtype, channels_last
        self.optimize_info = info

    def forward(self, x: torch.Tensor):
        fmt = torch.channels_last if self.channels_last and x.dim() == 4 else torch.contiguous_format
        x = x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=fmt)
        with torch.inference_mode():
            return self.impl(x)


class OneDNNPlain(nn.Module):
    """A fused RepVGG whose conv stack runs in oneDNN's blocked layout with prepacked weights (CPU).

    Why: in eager mode every conv reorders its input into oneDNN's blocked layout and back, and
    repacks its weights, on every call. A plain network is a single chain of conv + ReLU, so it can
    stay blocked from the stem to the last stage; only the head sees a dense tensor again. Models
    that are not a plain stem/stages/head chain (SE, residual networks) are refused.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        from torch.utils import mkldnn as mkldnn_utils

        if not _onednn_ok(model, dtype):
            raise TypeError(f"the oneDNN plain form needs a fused RepVGG without SE in fp32/bf16, got {dtype}")
        convs = [nn.Sequential(b.fused, nn.ReLU(inplace=True)) for b in chain_blocks(model)]
        self.features = mkldnn_utils.to_mkldnn(nn.Sequential(*convs), dtype)
        self.head, self.dtype = model.head.to(dtype), dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.to(self.dtype).to_mkldnn()).to_dense())


def fuse_model(model: nn.Module) -> nn.Module:
    """A fused eval copy: our blocks re-parameterized, other conv->BN pairs folded via torch.fx."""
    model = reparameterize(model)  # copies; a no-op for models without RepVGG blocks
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and not any(isinstance(m, RepVGGBlock) for m in model.modules()):
        from torch.fx.experimental.optimization import fuse

        try:
            model = fuse(model, inplace=True).eval()
        except Exception as e:  # not traceable by torch.fx: run unfused rather than fail
            warnings.warn(f"conv-BN fusion skipped, torch.fx could not trace the model: {e}", stacklevel=3)
    return model


def compile_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile with inductor freezing (call the result under no_grad/inference_mode)."""
    return torch.compile(model, dynamic=False, options={"freezing": True})


def check_device_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """Clear errors for a device or dtype this machine cannot run."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA GPU is available here; use device='cpu'")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError("this GPU does not support bf16; use torch.float16")
    elif device.type == "cpu":
        mkldnn = torch.backends.mkldnn.is_available()
        if dtype == torch.bfloat16 and not (mkldnn and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            raise ValueError("this CPU has no fast bf16 (needs oneDNN with AVX512-BF16/AMX); use torch.float32")
        if dtype == torch.float16 and not (mkldnn and torch.ops.mkldnn._is_mkldnn_fp16_supported()):
            raise ValueError("this CPU has no fast fp16 (needs AVX512-FP16/AMX-FP16); use torch.bfloat16 "
                             "where supported, or torch.float32")
    else:
        raise ValueError(f"unsupported device {device}; use 'cpu' or 'cuda'")


def _flat(out) -> torch.Tensor:
    if isinstance(out, (list, tuple)):
        return torch.cat([o.float().flatten() for o in out])
    return out.float().flatten()


def _rel_err(out, ref) -> float:
    a, b = _flat(out).cpu(), _flat(ref).cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@torch.no_grad()
def optimize_for_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    channels_last: bool | None = None,
    compile: bool | None = None,
    example_shape: tuple[int, ...] = (2, 3, 224, 224),
) -> InferenceModel:
    """The fastest verified inference form of ``model`` (left untouched) for ``device`` and ``dtype``.

    Candidates (compiled NHWC, eager NHWC, eager NCHW; ``channels_last``/``compile`` pin a choice)
    are each checked against the fused fp32 model on a random ``example_shape`` batch, and the
    fastest that passes on that batch is returned. It takes inputs of any float dtype/layout and
    converts them; ``result.optimize_info`` says what was applied and the error measured.
    Raises ValueError for an unusable device/dtype, RuntimeError if no candidate passes.
    """
    device = torch.device(device)
    check_device_dtype(device, dtype)
    ref = fuse_model(model).to(device=device, dtype=torch.float32).eval()
    compile = hasattr(torch, "compile") if compile is None else compile
    x = torch.randn(example_shape, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        expected = ref(x)
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    tol = (TF32_TOL if tf32 else FP32_TOL) if dtype == torch.float32 else REDUCED_TOL

    failures, passed = [], []
    cpu = device.type == "cpu"
    for kind, cl in _candidates(channels_last, compile, onednn=cpu and _onednn_ok(ref, dtype),
                                winograd=cpu and _winograd_ok(ref, dtype)):
        info = dict(device=str(device), dtype=str(dtype).removeprefix("torch."), channels_last=cl,
                    compiled=kind == "compiled", freezing=kind == "compiled", onednn_plain=kind == "onednn",
                    winograd=kind == "winograd", tolerance=tol)
        name = {"onednn": "eager oneDNN blocked", "winograd": "eager, Winograd convs (NNPACK)"}.get(
            kind, f"{kind}{', channels_last' if cl else ''}")
        try:
            if kind == "onednn":
                impl = OneDNNPlain(copy.deepcopy(ref), dtype)
            elif kind == "winograd":
                impl, report = winograd_convs(ref, x)  # copies; autotuned per conv on the example batch
                used = sum(r["used"] for r in report)
                if not used:  # no conv is faster by NNPACK here: the same as the eager NCHW candidate
                    continue
                info["winograd_convs"] = f"{used}/{len(report)}"
            else:
                layout = torch.channels_last if cl else torch.contiguous_format
                impl = copy.deepcopy(ref).to(dtype=dtype, memory_format=layout)
                if kind == "compiled":
                    impl = compile_for_inference(impl, device)
            candidate = InferenceModel(impl, device, dtype, cl, info)
            err = _rel_err(candidate(x), expected)
        except Exception as e:  # e.g. no C++ compiler for inductor: fall back to eager
            failures.append(f"{name}: {type(e).__name__}: {e}"[:500])
            continue
        info["max_rel_err"] = err
        if err <= tol:
            passed.append(candidate)
        else:
            failures.append(f"{name}: relative error {err:.2e} > {tol:.0e}")
    if not passed:
        raise RuntimeError("no optimized form matched the fused model: " + "; ".join(failures))
    if failures:
        warnings.warn("optimize_for_inference skipped: " + "; ".join(failures), stacklevel=2)
    return _fastest(passed, x, device, fp32_ref=ref if dtype != torch.float32 else None)


def _candidates(channels_last: bool | None, compile: bool, onednn: bool = False,
                winograd: bool = False) -> list[tuple[str, bool]]:
    """(kind, channels_last) pairs to try, kind in compiled/eager/onednn/winograd. NHWC is what oneDNN
    and tensor cores prefer, so a compiled NCHW form is not worth its compile time; eager NCHW stays
    as a safe fallback; the oneDNN blocked form has a layout of its own; NNPACK takes NCHW."""
    layouts = [True, False] if channels_last is None else [channels_last]
    return ([("compiled", layouts[0])] if compile else []) + [("eager", cl) for cl in layouts] + (
        [("onednn", False)] if onednn and channels_last is None else []) + (
        [("winograd", False)] if winograd and not channels_last else [])


def _winograd_ok(model: nn.Module, dtype: torch.dtype) -> bool:
    """Whether the Winograd candidate applies: fp32, NNPACK built in, some eligible 3x3 conv."""
    return dtype == torch.float32 and nnpack_ready() and any(eligible(m) for m in model.modules())


def _onednn_ok(model: nn.Module, dtype: torch.dtype) -> bool:
    """Whether :class:`OneDNNPlain` applies: a plain fused RepVGG without SE, dtype oneDNN runs."""
    if not torch.backends.mkldnn.is_available() or dtype not in (torch.float32, torch.bfloat16):
        return False
    blocks = chain_blocks(model)
    return bool(blocks) and hasattr(model, "head") and all(
        isinstance(b, RepVGGBlock) and b.deploy and isinstance(b.se, nn.Identity) for b in blocks)


def _best_times(fns: list, x: torch.Tensor, device: torch.device, batches: int = 3) -> list[float]:
    """Best-of-``batches`` seconds of each ``fn(x)``, rounds interleaved so load hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(batches):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _fastest(candidates: list[InferenceModel], x: torch.Tensor, device: torch.device,
             fp32_ref: nn.Module | None = None, batches: int = 3):
    """The candidate with the lowest best-of-``batches`` time on ``x`` (rounds interleaved).

    With ``fp32_ref`` (reduced precision was asked for, to be faster) the plain fp32 model is timed
    in the same rounds: some CPUs report bf16 support yet run it slower than fp32 (a 2-core Intel
    Xeon without AMX: 0.64x the optimized fp32 form), and a slower pick is said out loud.
    """
    fns = candidates + ([fp32_ref] if fp32_ref is not None else [])
    if len(fns) == 1:
        return candidates[0]
    best = _best_times(fns, x, device, batches)
    i = min(range(len(candidates)), key=best.__getitem__)
    chosen = candidates[i]
    chosen.optimize_info["seconds"] = best[i]
    if len(candidates) > 1:
        chosen.optimize_info["selected_from"] = [
            dict(c.optimize_info, seconds=t) for c, t in zip(candidates, best) if c is not chosen]
    if fp32_ref is not None:
        t_low, t_fp32 = best[i], best[-1]
        chosen.optimize_info.update(seconds=t_low, fp32_eager_seconds=t_fp32)
        if t_low > t_fp32:
            warnings.warn(f"optimize_for_inference: {chosen.optimize_info['dtype']} runs slower than the plain "
                          f"fp32 model on this {device.type} ({t_low * 1e3:.1f} vs {t_fp32 * 1e3:.1f} ms on the "
                          "example batch); dtype=torch.float32 is the faster choice here", stacklevel=3)
    return chosen
