"""INT8 post-training quantization: standard RepVGG block vs QA block, same recipe, Fashion-MNIST.

For each trained checkpoint: onnxruntime static QDQ quantization (per-channel weights, uint8
activations) calibrated on un-augmented training images, then fp32 vs INT8 top-1 on the test split
and CPU speed (onnxruntime, sessions timed interleaved, median). With `--methods ort torch` also
PyTorch's PT2E/X86 Inductor flow (torchao), fp32 through torch.compile (freezing), INT8 lowered
to oneDNN kernels by torchao. Writes
benchmarks/results/deploy_int8.{json,md}.

    nice -n 10 python benchmarks/deploy_int8.py --checkpoints runs/deploy_a0_repvgg/deploy.safetensors \
        runs/deploy_a0_qa/deploy.safetensors --data fashion-mnist-builtin
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import this_command  # noqa: E402
from benchmarks.deploy_export_zoo import hardware  # noqa: E402
from repvgg.data import build_datasets, build_loader  # noqa: E402
from repvgg.deploy.common import load_model  # noqa: E402
from repvgg.deploy.quantize import calibration_batches, compare, quantize_model  # noqa: E402
from repvgg.deploy.quantize_pt2e import compare_pt2e, torchao_version  # noqa: E402

RESULTS = Path(__file__).parent / "results"
nan = float("nan")  # speed not measured (no working torch.compile / INT8 lowering)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--data", default="fashion-mnist-builtin")
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--calibrate", nargs="+", default=["minmax", "percentile"], help="onnxruntime calibrations")
    ap.add_argument("--methods", nargs="+", default=["ort"], choices=["ort", "torch"],
                    help="ort: onnxruntime QDQ (one row per --calibrate); torch: PT2E X86 Inductor (torchao)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default="deploy_int8")
    args = ap.parse_args()
    rows = []
    for ckpt in args.checkpoints:
        model = load_model(ckpt, log=lambda s: None)
        meta = model.checkpoint_meta
        train_ds, test_ds, info = build_datasets(args.data, image_size=int(meta.get("image_size", 28)))
        calib = calibration_batches(train_ds, args.batch_size, args.calib_batches)
        variants = [("ort", c) for c in args.calibrate if "ort" in args.methods]
        variants += [("torch", "histogram")] if "torch" in args.methods else []
        for method, calibration in variants:
            with tempfile.TemporaryDirectory() as tmp:
                loader = build_loader(test_ds, args.batch_size, train=False)
                if method == "ort":
                    fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
                    quantize_model(model, int8, calib, calibrate=calibration, fp32_out=fp32, log=lambda s: None)
                    res = compare(fp32, int8, loader, bench_batch=calib[0], repeats=args.repeats)
                    one = compare(fp32, int8, bench_batch=calib[0][:1], repeats=args.repeats)
                else:
                    int8 = Path(tmp) / "int8.safetensors"
                    quantize_model(model, int8, calib, method="torch")
                    res = compare_pt2e(model, int8, calib[0], loader, repeats=args.repeats)
                    one = compare_pt2e(model, int8, calib[0][:1], repeats=args.repeats)
            row = dict(checkpoint=str(ckpt), block=model.build_args.get("block", "repvgg"), method=method,
                       runtime="onnxruntime" if method == "ort" else "oneDNN", calibration=calibration,
                       trained_top1=float(meta.get("top1", "nan")), **{"fp32_ms": nan, "int8_ms": nan, **res},
                       fp32_ms_b1=one.get("fp32_ms", nan), int8_ms_b1=one.get("int8_ms", nan))
            row["drop"] = row["fp32_top1"] - row["int8_top1"]
            row["speedup"] = row["fp32_ms"] / row["int8_ms"]
            row["speedup_b1"] = row["fp32_ms_b1"] / row["int8_ms_b1"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = dict(command=this_command(), hardware=hardware(), data=args.data,
                test_images=len(test_ds), calib_images=sum(len(b) for b in calib), batch_size=args.batch_size,
                torch=torch.__version__, onnxruntime=onnxruntime.__version__, torchao=torchao_version(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [f"# INT8 (per-channel weights; onnxruntime QDQ / PT2E X86 Inductor) vs fp32 on {args.data}", "",
             f"- command: `{meta['command']}`", f"- hardware: {meta['hardware']}",
             f"- torch {meta['torch']}, onnxruntime {meta['onnxruntime']} (CPU EP), torchao {meta['torchao']}; "
             f"{meta['date']}",
             "- speed compares fp32 and INT8 in the same runtime: onnxruntime sessions for `ort`, "
             "torch.compile (inductor, freezing) of the fused model vs the INT8 program lowered to oneDNN INT8 kernels by torchao's lower_pt2e_quantized_to_x86 for `torch`",
             f"- calibration: {meta['calib_images']} un-augmented training images; test: {meta['test_images']} images; "
             f"speed: median of {args.repeats} interleaved runs, batch {args.batch_size} and batch 1", "",
             "| checkpoint | block | runtime | calibration | fp32 top-1 | INT8 top-1 | drop (points) | fp32 ms/batch | "
             "INT8 ms/batch | speed-up | speed-up (batch 1) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['checkpoint']} | {r['block']} | {r['runtime']} | {r['calibration']} | {r['fp32_top1']:.2f} | {r['int8_top1']:.2f} | "
                     f"{r['drop']:+.2f} | {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | {r['speedup']:.2f}x | {r['speedup_b1']:.2f}x |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
