"""Does INT8 collapse on our fused models? Per-tensor vs per-channel weight scales, with the weight ranges.

For each trained checkpoint: the per-layer weight range spread of the fused model (max / median of
its per-output-channel max |w|), then onnxruntime static QDQ INT8 with per-channel and with
per-tensor symmetric weights (what TensorRT and many NPUs use), top-1 of the exported files on the
full test split beside fp32. Writes benchmarks/results/int8_per_tensor.{json,md}.

    nice -n 10 python benchmarks/int8_per_tensor.py --checkpoints runs/demo/deploy.safetensors \
        --data fashion-mnist-builtin
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import this_command  # noqa: E402
from benchmarks.deploy_export_zoo import hardware  # noqa: E402
from repvgg.data import build_datasets, build_loader  # noqa: E402
from repvgg.deploy.common import load_model  # noqa: E402
from repvgg.deploy.quantize import calibration_batches, compare, quantize_model, weight_range_spread  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", required=True)
    ap.add_argument("--data", default="fashion-mnist-builtin")
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="int8_per_tensor")
    args = ap.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    for ckpt in args.checkpoints:
        model = load_model(ckpt, log=lambda s: None)
        meta = model.checkpoint_meta
        spreads = weight_range_spread(model)
        train_ds, test_ds, _ = build_datasets(args.data, image_size=int(meta.get("image_size", 28)))
        calib = calibration_batches(train_ds, args.batch_size, args.calib_batches)
        row = {"checkpoint": ckpt, "layers": spreads,
               "spread_median": statistics.median(s["spread"] for s in spreads),
               "spread_max": max(s["spread"] for s in spreads)}
        for per_channel in (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
                quantize_model(model, int8, calib, fp32_out=fp32, per_channel=per_channel, log=lambda s: None)
                res = compare(fp32, int8, build_loader(test_ds, args.batch_size, train=False))
            key = "per_channel" if per_channel else "per_tensor"
            row["fp32_top1"], row[f"{key}_top1"] = res["fp32_top1"], res["int8_top1"]
        rows.append(row)
        print(f"{ckpt}: fp32 {row['fp32_top1']:.2f}%  per-channel {row['per_channel_top1']:.2f}%  "
              f"per-tensor {row['per_tensor_top1']:.2f}%  spread median {row['spread_median']:.1f} "
              f"max {row['spread_max']:.1f}", flush=True)
    hw = hardware()
    result = {"command": this_command(), "started": started, "hardware": hw, "rows": rows}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    md = ["# INT8 per-tensor vs per-channel weights on fused RepVGG models (onnxruntime QDQ, minmax)", "",
          f"- command: `{result['command']}`", f"- started {started}; {hw}", "",
          "| checkpoint | fp32 top-1 | INT8 per-channel | INT8 per-tensor | drop per-tensor | weight range spread "
          "(median / max over layers) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['checkpoint']} | {r['fp32_top1']:.2f} | {r['per_channel_top1']:.2f} | {r['per_tensor_top1']:.2f} | "
           f"{r['fp32_top1'] - r['per_tensor_top1']:+.2f} | {r['spread_median']:.1f} / {r['spread_max']:.1f} |"
           for r in rows]
    md += ["", "Widest-spread layers (max / median of per-output-channel max |w|; 127 / spread = INT8 levels "
           "left to the median channel under a per-tensor scale):", ""]
    for r in rows:
        worst = sorted(r["layers"], key=lambda s: -s["spread"])[:5]
        md.append(f"- {r['checkpoint']}: " + ", ".join(f"{s['layer']} {s['spread']:.1f} "
                                                      f"({s['levels_median_channel']:.0f} levels)" for s in worst))
    (RESULTS / f"{args.out}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
