"""Post-training INT8 quantization of a deploy RepVGG with onnxruntime (static, QDQ).

Weights are quantized per output channel (a fused RepVGG kernel has very uneven per-filter ranges,
which per-tensor scales would crush), activations per tensor (uint8), calibrated on un-augmented
training images. Plain RepVGG still loses accuracy here because its post-sum activations are
wide; the ``block="qa"`` (QARepVGG) variant is the architectural fix, measured in
benchmarks/deploy_int8.py.

``method="torch"`` is PyTorch's own PT2E/X86 Inductor flow instead (it lives in ``torchao`` in recent
releases; see quantize_pt2e.py), written as a safetensors file rather than an .onnx.
"""
from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..fileio import atomic_output
from ..optional import require
from .common import time_interleaved, top1
from .export import export_model

METHODS = ("ort", "torch")
CALIBRATION = ("minmax", "percentile", "entropy")


@dataclass
class QuantReport:
    path: Path
    fp32_top1: float | None = None
    int8_top1: float | None = None
    fp32_ms: float | None = None  # median ms per batch, onnxruntime CPU
    int8_ms: float | None = None
    batch_size: int = 0
    calib_images: int = 0
    method: str = "ort"
    per_channel: bool = True

    @property
    def speedup(self) -> float | None:
        return self.fp32_ms / self.int8_ms if self.fp32_ms and self.int8_ms else None

    def summary(self) -> str:
        what = ("INT8 QDQ ONNX" if self.method == "ort" else "INT8 PT2E/X86 program: fused weights + calibrated "
                "ranges, load with repvgg.deploy.quantize_pt2e.load_int8")
        runtime = "onnxruntime" if self.method == "ort" else "oneDNN"
        weights = "per-channel" if self.per_channel else "per-tensor"
        lines = [f"wrote {self.path} ({what}, {weights} weights; calibrated on {self.calib_images} images)"]
        if self.fp32_top1 is not None:
            lines.append(f"top-1  fp32 {self.fp32_top1:.2f}%  int8 {self.int8_top1:.2f}%  "
                         f"(drop {self.fp32_top1 - self.int8_top1:+.2f} points)")
        if self.fp32_ms is not None:
            lines.append(f"CPU ({runtime}, batch {self.batch_size}, median)  fp32 {self.fp32_ms:.2f} ms  "
                         f"int8 {self.int8_ms:.2f} ms  speed-up {self.speedup:.2f}x")
        return "\n".join(lines)


def calibration_batches(train_ds, batch_size: int, n_batches: int, seed: int = 0) -> list[torch.Tensor]:
    """``n_batches`` shuffled batches of *un-augmented* training images (augmentation would calibrate
    ranges the deployed model never sees)."""
    from ..data import build_loader

    if n_batches < 1:
        raise ValueError(f"--calib-batches must be >= 1, got {n_batches}")
    if len(train_ds) == 0:
        raise ValueError("calibration data is empty: the training split has no images")
    ds = copy.copy(train_ds)
    if hasattr(ds, "train"):
        ds.train = False
    out = []
    for x, _ in build_loader(ds, batch_size, train=True, seed=seed, drop_last=False):
        out.append(x)
        if len(out) == n_batches:
            break
    return out


def calibration_images(train_ds, n_images: int, batch_size: int = 128, seed: int = 0) -> torch.Tensor:
    """The first ``n_images`` of :func:`calibration_batches` as one tensor (e.g. for repairing a pruned model)."""
    return torch.cat(calibration_batches(train_ds, batch_size, -(-n_images // batch_size), seed))[:n_images]


class _Reader:
    """onnxruntime's CalibrationDataReader over a list of batches."""

    def __init__(self, batches, input_name: str):
        self._it = iter([{input_name: b.numpy()} for b in batches])

    def get_next(self):
        return next(self._it, None)


def ort_session(model_bytes_or_path, threads: int | None = None):
    ort = require("onnxruntime")

    opts = ort.SessionOptions()
    # no busy-waiting between ops: on a shared CPU a spinning pool steals time from whatever runs next
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    src = str(model_bytes_or_path) if isinstance(model_bytes_or_path, (str, os.PathLike)) else model_bytes_or_path
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def quantize_model(model: nn.Module, out: str | os.PathLike, calib: list[torch.Tensor], *,
                   method: str = "ort", calibrate: str = "minmax", fp32_out: str | os.PathLike | None = None,
                   per_channel: bool = True, keep_fp32=(), only=None, input_ranges=None, log=print) -> QuantReport:
    """Write an INT8 model of a deploy ``model`` calibrated on ``calib`` batches: a QDQ .onnx
    (``method="ort"``) or a PT2E file run on oneDNN INT8 kernels (``method="torch"``, see quantize_pt2e.py).

    ``per_channel=False`` (ort only) quantizes each weight tensor with one symmetric scale, as
    TensorRT and many NPUs do: where a fused kernel's channels differ widely in range (see
    :func:`weight_range_spread`), the small ones lose their precision. ``keep_fp32`` (ort): layer names
    (our module names, e.g. ``stem.fused``) left in float; ``only``: quantize just these layers;
    ``input_ranges`` (ort): ``{layer: (lo, hi)}`` fixes the uint8 range of a layer's input instead of
    calibrating it (the ranges QAT trained with, from ``deploy.qat.finish_qat``)."""
    if method not in METHODS:
        raise ValueError(f"unknown quantization method {method!r}; supported: {', '.join(METHODS)}")
    if calibrate not in CALIBRATION:
        raise ValueError(f"unknown calibration {calibrate!r}; supported: {', '.join(CALIBRATION)}")
    if not calib:
        raise ValueError("no calibration batches: give --data with training images and --calib-batches >= 1")
    if method == "torch":
        if fp32_out is not None or not per_channel or keep_fp32 or only or input_ranges:
            raise ValueError("--fp32-out, --per-tensor, --keep-fp32 and --sensitivity apply to --method ort only")
        from .quantize_pt2e import quantize_pt2e

        return QuantReport(Path(out), calib_images=quantize_pt2e(model, out, calib), method="torch")
    require("onnxruntime.quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    size = tuple(calib[0].shape[-2:])
    with tempfile.TemporaryDirectory() as tmpdir:
        fp32 = Path(fp32_out) if fp32_out else Path(tmpdir) / "fp32.onnx"
        export_model(model, fp32, "onnx", dynamic_batch=True, image_size=size, log=log)
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        nodes = onnx_layer_nodes(pre, model)
        chosen = {"nodes_to_exclude": [nodes[n] for n in check_layers(keep_fp32, nodes)]}
        if only is not None:
            chosen["nodes_to_quantize"] = [nodes[n] for n in check_layers(only, nodes)]
        overrides = _range_overrides(pre, nodes, input_ranges) if input_ranges else {}
        with atomic_output(out) as tmp:
            quantize_static(
                str(pre), str(tmp), _Reader(calib, "input"), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                **chosen,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[calibrate],
                extra_options={"CalibMovingAverage": False, **overrides},
            )
            ort_session(str(tmp))  # must load before it replaces anything
    return QuantReport(Path(out), calib_images=sum(len(b) for b in calib), per_channel=per_channel)


def _range_overrides(onnx_path, nodes: dict[str, str], input_ranges: dict) -> dict:
    """onnxruntime's ``TensorQuantOverrides`` fixing the input range of each named layer's node."""
    import numpy as np

    onnx = require("onnx")
    inputs = {n.name: n.input[0] for n in onnx.load(str(onnx_path)).graph.node}
    over = {}
    for layer in check_layers(list(input_ranges), nodes):
        lo, hi = input_ranges[layer]
        over[inputs[nodes[layer]]] = [{"rmin": np.float32(min(lo, 0.0)), "rmax": np.float32(max(hi, 0.0))}]
    return {"TensorQuantOverrides": over}


def onnx_layer_nodes(onnx_path, model: nn.Module) -> dict[str, str]:
    """Our conv/linear module names -> the ONNX nodes computing them (the graph runs them in module order)."""
    onnx = require("onnx")
    nodes = [n.name for n in onnx.load(str(onnx_path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    layers = layer_names(model)
    if len(nodes) != len(layers):
        raise ValueError(f"the exported graph has {len(nodes)} conv/linear nodes for {len(layers)} layers; "
                         "per-layer choices need a one-to-one match")
    return dict(zip(layers, nodes))


def layer_names(model: nn.Module) -> list[str]:
    """The module names of the conv and linear layers INT8 choices are made for (e.g. ``stem.fused``)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_layers(names, layers) -> list[str]:
    """``names`` as a list, or a ValueError naming the unknown ones and the model's ``layers``."""
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; this model's layers: {', '.join(layers)}")
    return list(names)


@torch.no_grad()
def weight_range_spread(model: nn.Module) -> list[dict]:
    """Per conv/linear layer: max / median of its per-output-channel weight ranges (max |w|).

    A per-tensor INT8 scale is set by the widest channel; a spread of s leaves the median channel
    about 127 / s quantization levels. Fused RepVGG kernels are where this grows (the identity and
    1x1 branches land on the centre tap with BN-dependent scales).
    """
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            ranges = m.weight.detach().abs().flatten(1).amax(1).double()
            med = ranges.median().clamp_min(1e-12)
            rows.append({"layer": name, "channels": len(ranges), "spread": float(ranges.max() / med),
                         "levels_median_channel": float(127 * med / ranges.max().clamp_min(1e-12))})
    return rows


def compare(fp32_path, int8_path, test_loader=None, *, bench_batch: torch.Tensor | None = None,
            repeats: int = 20, threads: int | None = None) -> dict:
    """fp32 vs INT8 onnxruntime sessions: top-1 on ``test_loader`` and median CPU ms per batch,
    the two sessions timed interleaved."""
    s32, s8 = ort_session(fp32_path, threads), ort_session(int8_path, threads)
    res = {}
    if test_loader is not None:
        res["fp32_top1"] = top1(lambda x: s32.run(None, {"input": x.numpy()})[0], test_loader)
        res["int8_top1"] = top1(lambda x: s8.run(None, {"input": x.numpy()})[0], test_loader)
    if bench_batch is not None:
        x = np.ascontiguousarray(bench_batch.numpy())
        t = time_interleaved({"fp32": lambda: s32.run(None, {"input": x}),
                              "int8": lambda: s8.run(None, {"input": x})}, repeats=repeats)
        res["fp32_ms"], res["int8_ms"] = t["fp32"] * 1e3, t["int8"] * 1e3
    return res
