"""INT8 with PyTorch's own PT2E flow (torchao's X86InductorQuantizer), stored without pickle.

Flow: ``torch.export`` (batch dimension dynamic) -> ``prepare_pt2e`` with the X86 Inductor quantizer
(INT8 per-channel weights, uint8 per-tensor activations from histogram observers) -> calibration ->
``convert_pt2e``. torchao's ``lower_pt2e_quantized_to_x86`` then folds the quantize/dequantize
pattern around each conv into oneDNN INT8 kernels (inductor's freezing passes, run once, no code
generation); unlowered, the program only simulates INT8 in fp32 (right answers, no speed).

Why not a ``torch.export`` .pt2 file: loading one unpickles parts of it, and a checkpoint must never
run code when loaded. The INT8 file is a safetensors checkpoint of the fused fp32 model plus the
calibrated observer statistics; :func:`load_int8` re-runs export -> prepare -> (statistics) -> convert,
which is deterministic and gives the same INT8 program the calibration produced.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn as nn

from ..optional import require

FORMAT = "pt2e-x86-inductor"
OBSERVERS = "pt2e_observers."  # key prefix of the calibrated statistics in the file


def require_torchao():
    """The torchao PT2E modules, or a clear error saying how to get them."""
    quantize_pt2e = require("torchao.quantization.pt2e.quantize_pt2e")
    return quantize_pt2e, require("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")


def _prepared(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The exported, observer-instrumented form of a fused ``model`` (any batch size)."""
    quantize_pt2e, xiq = require_torchao()
    if not getattr(model, "is_deployed", True):
        raise ValueError("PT2E quantization takes a fused (deploy) model; call repvgg.reparameterize first")
    batch = torch.export.Dim("batch", min=1)
    graph = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    return quantize_pt2e.prepare_pt2e(graph, quantizer)


def quantize_pt2e(model: nn.Module, out: str | os.PathLike, calib: list[torch.Tensor]) -> int:
    """Calibrate a fused ``model`` on ``calib`` batches and write the INT8 file atomically (it must
    load back into an INT8 program before it replaces anything). Returns the calibration image count."""
    from ..checkpoint import save_checkpoint
    from ..fileio import atomic_output

    if "name" not in getattr(model, "build_args", {}):
        raise ValueError("the INT8 file rebuilds the model from its build_args: make it with repvgg.create_model "
                         "(or load it with repvgg.model_from_checkpoint)")
    model = model.eval()
    prepared = _prepared(model, calib[0])
    with torch.no_grad():
        for batch in calib:
            prepared(batch)
    weights = model.state_dict()
    stats = {OBSERVERS + k: v for k, v in prepared.state_dict().items() if k not in weights}
    meta = {"build_args": getattr(model, "build_args", {}),
            "int8": {"method": FORMAT, "input": list(calib[0].shape[1:]), "torch": torch.__version__,
                     "torchao": torchao_version()}}
    for key in ("image_size", "classes", "data"):
        if key in getattr(model, "checkpoint_meta", {}):
            meta[key] = model.checkpoint_meta[key]
    with atomic_output(out) as tmp:
        save_checkpoint({**weights, **stats}, tmp, metadata=meta, fmt="safetensors")
        load_int8(tmp)
    return sum(len(b) for b in calib)


def load_int8(path: str | os.PathLike) -> nn.Module:
    """The INT8 program a :func:`quantize_pt2e` file holds (a ``torch.fx.GraphModule``; run it
    through :func:`lower_int8` for INT8 speed)."""
    from ..checkpoint import CheckpointError, load_state_dict, read_checkpoint
    from ..factory import create_model

    sd, meta = read_checkpoint(path)
    info = meta.get("int8")
    if not isinstance(info, dict) or info.get("method") != FORMAT:
        raise CheckpointError(f"{path} is not an INT8 file written by `repvgg quantize --method torch`")
    args = meta.get("build_args")
    if not isinstance(args, dict) or "name" not in args:
        raise CheckpointError(f"{path}: no build_args in its metadata; cannot rebuild the model")
    weights = {k: v for k, v in sd.items() if not k.startswith(OBSERVERS)}
    stats = {k[len(OBSERVERS):]: v for k, v in sd.items() if k.startswith(OBSERVERS)}
    model = load_state_dict(create_model(**args, deploy=True), weights, source=str(path)).eval()
    prepared = _prepared(model, torch.zeros(2, *info["input"]))
    expected = {k for k in prepared.state_dict() if k not in weights}
    try:
        if set(stats) != expected:  # observers' own loading forgives missing keys: check the set first
            diff = sorted(set(stats) ^ expected)
            raise RuntimeError(f"{len(diff)} statistics differ, e.g. {', '.join(diff[:3])}")
        prepared.load_state_dict({**weights, **stats}, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: its calibration statistics do not match the quantizer of this torch/torchao "
            f"(written with torch {info.get('torch')}, torchao {info.get('torchao')}; running torch "
            f"{torch.__version__}, torchao {torchao_version()}); quantize again ({str(e)[:200]})") from None
    quantize_pt2e, _ = require_torchao()
    program = quantize_pt2e.convert_pt2e(prepared)
    program.build_args, program.checkpoint_meta = args, meta
    return program


def lower_int8(int8: nn.Module, example: torch.Tensor) -> nn.Module:
    """The INT8 program with oneDNN INT8 conv/linear kernels, specialised to ``example``'s shape.

    torchao's own x86 lowering: ``torch.compile`` of a converted PT2E program stopped working with
    torch 2.14 + torchao 0.18 (inductor has no fake kernel for ``onednn.qconv_prepack``)."""
    lower_pt2e_quantized_to_x86 = require("torchao.quantization.pt2e.lowering").lower_pt2e_quantized_to_x86

    with torch.no_grad():
        return lower_pt2e_quantized_to_x86(int8, (example,))


def deployed_pair(fp32: nn.Module, int8: nn.Module, example: torch.Tensor,
                  log: Callable[[str], None] = print) -> tuple[Callable, Callable, bool]:
    """(fp32, int8, compiled): both models as deployed, specialised to ``example``'s batch size:
    fp32 through ``torch.compile`` with inductor freezing, INT8 lowered to oneDNN kernels.

    Where that fails (no C++ compiler, a torch/torchao pair that does not lower) the INT8 program still
    runs, simulated in fp32: accuracy is then right but speed meaningless, so ``compiled`` is False.
    """
    from ..optimize import compile_for_inference

    try:
        f32, i8 = compile_for_inference(fp32, torch.device("cpu")), lower_int8(int8, example)
        with torch.no_grad():
            f32(example), i8(example)
        return f32, i8, True
    except Exception as e:  # pragma: no cover - depends on the machine's compiler
        log(f"note: INT8 lowering or torch.compile failed ({type(e).__name__}: {str(e)[:120]}); INT8 runs "
            "simulated in fp32, speed not measured")
        return fp32, int8, False


def torchao_version() -> str:
    try:
        import torchao
        return torchao.__version__
    except ImportError:
        return "not installed"


def static_batches(predict: Callable[[torch.Tensor], torch.Tensor], batch_size: int):
    """``predict`` wrapped to always see ``batch_size`` images (batches are split, a short one is
    zero-padded and the padding's outputs dropped), so a compiled program is specialised once."""
    def run(x: torch.Tensor) -> torch.Tensor:
        outs = []
        for part in x.split(batch_size):
            n = len(part)
            if n < batch_size:
                part = torch.cat([part, part.new_zeros(batch_size - n, *part.shape[1:])])
            outs.append(predict(part)[:n])
        return torch.cat(outs)
    return run


def compare_pt2e(fp32: nn.Module, int8_path: str | os.PathLike, bench_batch: torch.Tensor,
                 test_loader=None, *, repeats: int = 20, log: Callable[[str], None] = print) -> dict:
    """fp32 (the fused model) vs the INT8 program, both compiled for ``bench_batch``'s size: top-1
    on ``test_loader`` (batches up to that size) and median CPU ms per batch, timed interleaved."""
    from .common import time_interleaved, top1

    x = bench_batch.contiguous()
    f32, i8, compiled = deployed_pair(fp32.eval(), load_int8(int8_path), x, log)
    res = {"compiled": compiled}
    with torch.no_grad():
        if test_loader is not None:
            res["fp32_top1"] = top1(static_batches(f32, len(x)), test_loader)
            res["int8_top1"] = top1(static_batches(i8, len(x)), test_loader)
        if compiled:
            t = time_interleaved({"fp32": lambda: f32(x), "int8": lambda: i8(x)}, repeats=repeats)
            res["fp32_ms"], res["int8_ms"] = t["fp32"] * 1e3, t["int8"] * 1e3
    return res


