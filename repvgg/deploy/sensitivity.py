"""Which layers does INT8 hurt? Quantize one layer at a time, then keep the worst K in float.

``layer_sensitivity`` quantizes each conv/linear layer alone (onnxruntime QDQ, everything else in
float) and measures the top-1 drop of the exported file on the test set, beside each layer's
weight-range spread. ``keep_fp32_curve`` then quantizes everything but the K most sensitive layers
for K = 0..n, with top-1 and the onnxruntime latency against fp32: the usual way out of a collapse
that per-channel scales do not fix.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .quantize import compare, quantize_model, weight_range_spread


def layer_sensitivity(model: nn.Module, calib: list[torch.Tensor], test_loader, *, per_channel: bool = True,
                      log=print) -> list[dict]:
    """Rows ``{layer, drop, int8_top1, fp32_top1, spread}``, most sensitive first."""
    spread = {r["layer"]: r["spread"] for r in weight_range_spread(model)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        for i, layer in enumerate(spread):
            int8 = Path(tmp) / f"{i}.onnx"
            quantize_model(model, int8, calib, fp32_out=fp32, per_channel=per_channel, only=[layer], log=lambda s: None)
            res = compare(fp32, int8, test_loader)
            rows.append({"layer": layer, "drop": res["fp32_top1"] - res["int8_top1"], "int8_top1": res["int8_top1"],
                         "fp32_top1": res["fp32_top1"], "spread": spread[layer]})
            log(f"  {layer:<24} drop {rows[-1]['drop']:+.2f} points  (weight range spread {spread[layer]:.1f})")
    return sorted(rows, key=lambda r: -r["drop"])


def keep_fp32_curve(model: nn.Module, calib: list[torch.Tensor], test_loader, ranking: list[str],
                    bench_batch: torch.Tensor, *, per_channel: bool = True, repeats: int = 10) -> list[dict]:
    """Top-1 and ORT speed-up over fp32 with the first K layers of ``ranking`` left in float, K = 0..n."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        for k in range(len(ranking) + 1):
            int8 = Path(tmp) / f"k{k}.onnx"
            quantize_model(model, int8, calib, fp32_out=fp32, per_channel=per_channel, keep_fp32=ranking[:k],
                           log=lambda s: None)
            res = compare(fp32, int8, test_loader, bench_batch=bench_batch, repeats=repeats)
            rows.append({"keep_fp32": k, "layers": ranking[:k], "int8_top1": res["int8_top1"],
                         "fp32_top1": res["fp32_top1"], "speedup": res["fp32_ms"] / res["int8_ms"]})
    return rows


def write_sensitivity(rows: list[dict], curve: list[dict], csv_path, png_path, title: str) -> None:
    """Both tables in one CSV (per-layer drops, then the keep-K curve) and the per-layer bar plot."""
    import csv
    import io

    from ..fileio import atomic_write_text

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["layer", "drop_points", "int8_top1", "fp32_top1", "weight_range_spread"])
    w.writerows([[r["layer"], f"{r['drop']:.3f}", f"{r['int8_top1']:.2f}", f"{r['fp32_top1']:.2f}",
                  f"{r['spread']:.2f}"] for r in rows])
    w.writerows([[], ["keep_fp32_K", "int8_top1", "ort_speedup"]] +
                [[c["keep_fp32"], f"{c['int8_top1']:.2f}", f"{c['speedup']:.3f}"] for c in curve])
    atomic_write_text(csv_path, buf.getvalue())
    sensitivity_png(rows, png_path, title)


def sensitivity_png(rows: list[dict], path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..fileio import atomic_savefig

    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(rows) + 2), 3.8))
    ax.bar([r["layer"] for r in rows], [r["drop"] for r in rows], color="tab:red")
    ax.set_ylabel("top-1 drop (points), this layer alone in INT8")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=70, labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)
