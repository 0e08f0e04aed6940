"""Which layers does INT8 hurt? Quantize one layer at a time, then keep the worst K in float.

``layer_sensitivity`` quantizes each conv/linear layer alone (onnxruntime QDQ, everything else in
float) and measures the top-1 drop of the exported file beside each layer's weight-range spread.
``keep_fp32_curve`` then quantizes everything but the K most sensitive layers for K = 0..n, with
top-1 and the onnxruntime latency against fp32: the usual way out of a collapse that per-channel
scales do not fix. Both are choices, so both run on a validation split (``held_out_split``: the
images training held out to pick its epoch), never on the test set; ``choose_keep_k`` picks K.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from .quantize import compare, quantize_model, weight_range_spread


def held_out_split(train_ds, test_ds, meta: dict) -> tuple:
    """``(train, val, note)``: the validation images a checkpoint's training held out, if its metadata
    says which (``val_split``: fraction and seed), else a 10% split (seed 0) with a note that those
    images may have been trained on."""
    from ..data.build import split_validation

    held = meta.get("val_split")
    held = json.loads(held) if isinstance(held, str) else held
    if isinstance(held, dict) and held.get("fraction"):
        fraction, seed = float(held["fraction"]), int(held["seed"])
        note = f"the {fraction:.0%} of the training set that training held out (seed {seed})"
    else:
        fraction, seed = 0.1, 0
        note = ("a 10% split of the training set (seed 0); the checkpoint does not say which images its training "
                "held out, so these may have been trained on")
    train, val = split_validation(train_ds, test_ds, fraction, seed)
    return train, val, note


def choose_keep_k(curve: list[dict], fp32_top1: float, tolerance: float = 0.1) -> int:
    """The smallest K whose top-1 is within ``tolerance`` points of fp32 (fewest float layers, most
    speed), else the K with the best top-1 (smallest such K)."""
    for c in curve:
        if c["int8_top1"] >= fp32_top1 - tolerance:
            return c["keep_fp32"]
    best = max(c["int8_top1"] for c in curve)
    return min(c["keep_fp32"] for c in curve if c["int8_top1"] == best)


def layer_sensitivity(model: nn.Module, calib: list[torch.Tensor], val_loader, *, per_channel: bool = True,
                      log=print) -> list[dict]:
    """Rows ``{layer, drop, int8_top1, fp32_top1, spread}`` on ``val_loader``, most sensitive first."""
    spread = {r["layer"]: r["spread"] for r in weight_range_spread(model)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        for i, layer in enumerate(spread):
            int8 = Path(tmp) / f"{i}.onnx"
            quantize_model(model, int8, calib, fp32_out=fp32, per_channel=per_channel, only=[layer], log=lambda s: None)
            res = compare(fp32, int8, val_loader)
            rows.append({"layer": layer, "drop": res["fp32_top1"] - res["int8_top1"], "int8_top1": res["int8_top1"],
                         "fp32_top1": res["fp32_top1"], "spread": spread[layer]})
            log(f"  {layer:<24} drop {rows[-1]['drop']:+.2f} points  (weight range spread {spread[layer]:.1f})")
    return sorted(rows, key=lambda r: -r["drop"])


def keep_fp32_curve(model: nn.Module, calib: list[torch.Tensor], val_loader, ranking: list[str],
                    bench_batch: torch.Tensor, *, per_channel: bool = True, repeats: int = 10) -> list[dict]:
    """Top-1 and ORT speed-up over fp32 with the first K layers of ``ranking`` left in float, K = 0..n."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        for k in range(len(ranking) + 1):
            int8 = Path(tmp) / f"k{k}.onnx"
            quantize_model(model, int8, calib, fp32_out=fp32, per_channel=per_channel, keep_fp32=ranking[:k],
                           log=lambda s: None)
            res = compare(fp32, int8, val_loader, bench_batch=bench_batch, repeats=repeats)
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
    w.writerow(["layer", "drop_points", "val_int8_top1", "val_fp32_top1", "weight_range_spread"])
    w.writerows([[r["layer"], f"{r['drop']:.3f}", f"{r['int8_top1']:.2f}", f"{r['fp32_top1']:.2f}",
                  f"{r['spread']:.2f}"] for r in rows])
    w.writerows([[], ["keep_fp32_K", "val_int8_top1", "ort_speedup"]] +
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
    ax.set_ylabel("validation top-1 drop (points),\nthis layer alone in INT8")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="x", rotation=70, labelsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)
