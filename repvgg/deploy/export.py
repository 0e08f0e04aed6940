"""Export a deploy RepVGG to ONNX, TorchScript or torch.export (.pt2), verified before it is kept.

Every export is checked against PyTorch on random and real (Fashion-MNIST) images and written
atomically: a file that fails a check is never left at the output path.

ONNX: opsets 18+ use torch's torch.export-based exporter (the default in torch 2.9+), which gives
the cleanest graph (Conv, Relu, ReduceMean, Gemm; SE adds Sigmoid, Mul). Opsets 13-17 use the
legacy TorchScript exporter, then onnxscript's optimizer folds its Identity nodes away.
TorchScript (``torch.jit.trace``) is deprecated in torch 2.15; it still works and we warn, and
``pt2`` (torch.export) is the supported successor.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..fileio import atomic_output
from ..optional import require
from .common import default_image_size, real_images

FORMATS = ("onnx", "torchscript", "pt2")
ONNX_OPSETS = tuple(range(13, 24))  # 13-17: legacy exporter; 18-23: torch.export-based exporter
DEFAULT_OPSET = 18
TOLERANCE = 1e-4  # max |ours - torch| / max |torch|, fp32
# What a deploy RepVGG may contain once exported: a plain network and nothing else.
PLAIN_OPS = frozenset({"Conv", "Relu", "GlobalAveragePool", "ReduceMean", "Flatten", "Reshape", "Gemm"})
SE_OPS = frozenset({"Sigmoid", "Mul"})
# A segmenter's PSP head: pyramid pooling (AveragePool), upsampling (Resize) and the concatenation
SEG_HEAD_OPS = frozenset({"AveragePool", "Concat", "Resize"})


class ExportCheckError(ValueError):
    """The exported file does not compute what the PyTorch model computes (or is not plain)."""


@dataclass
class ExportReport:
    path: Path
    format: str
    errors: dict[str, float] = field(default_factory=dict)  # check name -> max abs error
    rel_error: float = 0.0  # worst max-abs error relative to the largest |output|
    ops: Counter | None = None  # ONNX op histogram
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        errs = ", ".join(f"{k}: max abs err {v:.2e}" for k, v in self.errors.items())
        ops = f"; ops {dict(self.ops)}" if self.ops else ""
        return f"wrote {self.path} ({self.format}); {errs}; relative {self.rel_error:.2e}{ops}"


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    return fmt


def check_opset(opset: int) -> int:
    if opset not in ONNX_OPSETS:
        raise ValueError(f"unsupported ONNX opset {opset}; supported: {ONNX_OPSETS[0]}-{ONNX_OPSETS[-1]} "
                         f"(18+ use the torch.export-based exporter, 13-17 the legacy one)")
    return opset


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str = "onnx", *, opset: int = DEFAULT_OPSET,
                 dynamic_batch: bool = False, image_size: tuple[int, int] | None = None,
                 tol: float = TOLERANCE, log=print) -> ExportReport:
    """Export a *deployed* model to ``path`` in ``fmt`` and verify it; raises on any mismatch."""
    check_format(fmt)
    if fmt == "onnx":
        check_opset(opset)
    if not getattr(model, "is_deployed", True):
        raise ValueError("export takes a re-parameterized model: call repvgg.reparameterize(model) first")
    model = model.eval()
    size = tuple(image_size) if image_size else default_image_size(model)
    in_chans = getattr(model, "in_chans", 3)
    example = torch.randn(2, in_chans, *size, generator=torch.Generator().manual_seed(0))
    checks = {
        "random": torch.randn(3 if dynamic_batch else 2, in_chans, *size, generator=torch.Generator().manual_seed(1)),
        "real": real_images(4 if dynamic_batch else 2, in_chans, size),
    }
    if not dynamic_batch:  # a static graph takes the batch size it was exported with
        checks = {k: v[: len(example)] for k, v in checks.items()}
    exporter = {"onnx": _export_onnx, "torchscript": _export_torchscript, "pt2": _export_pt2}[fmt]
    with atomic_output(path) as tmp:
        run, report = exporter(model, tmp, example, opset=opset, dynamic_batch=dynamic_batch)
        with torch.no_grad():
            for name, x in checks.items():
                ref = model(x)
                out = torch.as_tensor(run(x))
                err = (out - ref).abs().max().item()
                report.errors[name] = err
                report.rel_error = max(report.rel_error, err / max(ref.abs().max().item(), 1e-12))
        if not report.rel_error <= tol:
            raise ExportCheckError(f"{fmt} output differs from PyTorch: relative error {report.rel_error:.2e} > "
                                   f"tolerance {tol:.0e} ({report.errors}); nothing written")
    report.path = Path(path)
    for note in report.notes:
        log(f"note: {note}")
    return report


def _dim_batch():
    return torch.export.Dim("batch", min=1, max=4096)


def onnx_proto(model: nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET,
               dynamic_batch: bool = False) -> tuple:
    """``(ModelProto, notes)``: ``model`` traced on ``example`` by torch's exporter, opset checked and
    ``onnx.checker`` passed; no claim about which ops it holds (export_model adds that check)."""
    onnx = require("onnx")
    onnxscript_optimizer = require("onnxscript.optimizer")   # both exporters need onnxscript

    notes = []
    quiet = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
        if opset >= 18:
            dyn = {"x": {0: _dim_batch()}} if dynamic_batch else None
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=dyn, verbose=False)
            proto = program.model_proto
        else:
            buf = io.BytesIO()
            axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"], dynamic_axes=axes)
            proto = onnxscript_optimizer.optimize(onnx.load_from_string(buf.getvalue()))
            notes.append(f"opset {opset} < 18 uses torch's legacy (TorchScript-based) ONNX exporter")
    got = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if got != [opset]:
        raise ExportCheckError(f"the exporter produced opset {got}, not the requested {opset}")
    onnx.checker.check_model(proto, full_check=True)
    return proto, notes


def _export_onnx(model, tmp: Path, example, *, opset, dynamic_batch):
    ort = require("onnxruntime")
    report = ExportReport(tmp, "onnx")
    proto, report.notes = onnx_proto(model, example, opset=opset, dynamic_batch=dynamic_batch)
    report.ops = Counter(n.op_type for n in proto.graph.node)
    segmenter = hasattr(model, "head") and hasattr(model.head, "bins")
    allowed = (PLAIN_OPS | (SE_OPS if _has_se(model) else frozenset()) | _residual_ops(model)
               | (SEG_HEAD_OPS if segmenter else frozenset()))
    extra = set(report.ops) - allowed
    if extra:
        hint = ""
        if segmenter:
            hint = (f"; the pyramid pooling (bins {model.head.bins}) exports as plain AveragePool only when the "
                    f"feature map (input / 8) is a multiple of every bin: use an input size such as 96, 480 or 713")
        raise ExportCheckError(f"exported graph is not plain: unexpected ops {sorted(extra)}{hint}")
    data = proto.SerializeToString()
    tmp.write_bytes(data)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return (lambda x: sess.run(None, {"input": x.numpy()})[0]), report


def _residual_ops(model: nn.Module) -> frozenset:
    """The Residual Reorg baseline keeps its shortcuts after fusion: Add is expected there only."""
    from ..reorg import ResidualReorg

    return frozenset({"Add"}) if isinstance(model, ResidualReorg) else frozenset()


def _has_se(model: nn.Module) -> bool:
    from ..blocks import SqueezeExcite

    return any(isinstance(m, SqueezeExcite) for m in model.modules())


def _export_torchscript(model, tmp: Path, example, **_):
    report = ExportReport(tmp, "torchscript")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(tmp), map_location="cpu")
    if any("deprecated" in str(w.message) for w in caught):
        report.notes.append("torch.jit (TorchScript) is deprecated in this torch version; it still works, "
                            "but prefer --format pt2 (torch.export) for new deployments")
    return (lambda x: loaded(x)), report


def _export_pt2(model, tmp: Path, example, *, dynamic_batch, **_):
    report = ExportReport(tmp, "pt2")
    dyn = {"x": {0: _dim_batch()}} if dynamic_batch else None
    program = torch.export.export(model, (example,), dynamic_shapes=dyn)
    torch.export.save(program, str(tmp))
    loaded = torch.export.load(str(tmp)).module()
    return (lambda x: loaded(x)), report
