"""INT8 paths side by side on trained RepVGGs: PTQ vs QAT on the fused model vs QAT on the train-time form.

    nice -n 10 python benchmarks/int8_qat.py --checkpoints runs/int8_base/best.safetensors \\
        --data fashion-mnist-builtin --epochs 2 --seeds 0 1 2

For each train-time checkpoint: fp32 (the fused model exported to ONNX), PTQ (onnxruntime static QDQ,
min/max) with per-channel and per-tensor weights, and QAT fine-tunes (``repvgg.deploy.qat``) on the
fused model and on the train-time form, each per-channel and per-tensor and at every seed, all
exported through the same ORT QDQ path. Top-1 is the exported file's on the full test split;
latency is ORT's, INT8 vs fp32 timed interleaved (median). Writes benchmarks/results/int8_qat.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import write_keeping_story  # noqa: E402
from benchmarks.deploy_export_zoo import hardware  # noqa: E402
from repvgg.checkpoint import read_metadata  # noqa: E402
from repvgg.data import build_datasets, build_loader  # noqa: E402
from repvgg.deploy.qat import qat_finetune  # noqa: E402
from repvgg.deploy.quantize import calibration_batches, compare, quantize_model  # noqa: E402
from repvgg.rebuild import model_from_checkpoint  # noqa: E402
from repvgg.reparam import reparameterize  # noqa: E402
from repvgg.train.config import training_augmentation  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _int8(model, calib, test_loader, per_channel: bool, tmp: Path, tag: str, input_ranges=None) -> dict:
    fp32, out = tmp / f"{tag}.fp32.onnx", tmp / f"{tag}.int8.onnx"
    quantize_model(model, out, calib, per_channel=per_channel, fp32_out=fp32, input_ranges=input_ranges,
                   log=lambda *_: None)
    res = compare(fp32, out, test_loader, bench_batch=calib[0], repeats=10)
    return {"fp32_top1": res["fp32_top1"], "int8_top1": res["int8_top1"], "speedup": res["fp32_ms"] / res["int8_ms"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoints", nargs="+", required=True, help="train-time checkpoints (best.safetensors)")
    ap.add_argument("--data", default="fashion-mnist-builtin")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default="int8_qat")
    ap.add_argument("--from-json", action="store_true", help="only rewrite the .md from the saved .json")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads((RESULTS / f"{args.out}.json").read_text())
        print(render(result, args))
        return 0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    torch.set_num_threads(2)
    rows = []
    for ckpt in args.checkpoints:
        trained = model_from_checkpoint(ckpt).eval()
        meta = read_metadata(ckpt)
        size = int(meta["image_size"]) if str(meta.get("image_size", "")).isdigit() else None
        train_ds, test_ds, _ = build_datasets(args.data, None, size, **training_augmentation(meta))
        calib = calibration_batches(train_ds, args.batch_size, args.calib_batches)
        test_loader = build_loader(test_ds, 256, train=False)
        fused = reparameterize(trained)
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            for per_channel in (True, False):
                w = "per-channel" if per_channel else "per-tensor"
                r = _int8(fused, calib, test_loader, per_channel, tmp, "ptq")
                rows.append({"checkpoint": ckpt, "method": f"PTQ {w}", "seed": None, **r})
                print(rows[-1], flush=True)
                for form in ("fused", "train-time"):
                    for seed in args.seeds:
                        start = copy.deepcopy(fused if form == "fused" else trained)
                        t0 = time.perf_counter()
                        model, ranges = qat_finetune(start, train_ds, args.epochs, per_channel=per_channel,
                                                     lr=args.lr, batch_size=128, seed=seed, log=lambda *_: None)
                        r = _int8(model, calib, test_loader, per_channel, tmp, f"qat{seed}", ranges)
                        rows.append({"checkpoint": ckpt, "method": f"QAT on the {form} form, {w}", "seed": seed,
                                     "qat_s": time.perf_counter() - t0, **r})
                        print(rows[-1], flush=True)
    result = {"command": "python " + " ".join(sys.argv), "started": started, "hardware": hardware(),
              "torch": torch.__version__, "epochs": args.epochs, "lr": args.lr, "rows": rows}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    print(render(result, args))
    return 0


def render(result: dict, args) -> str:
    rows, started = result["rows"], result["started"]
    md = [f"# INT8 on trained RepVGGs: PTQ vs QAT (fused / train-time form), onnxruntime QDQ, {args.data}", "",
          f"- command: `{result['command']}`", f"- started {started}; {result['hardware']}; torch {result['torch']}",
          f"- QAT: {result['epochs']} epoch(s), one-cycle peak lr {result['lr']:g}; top-1 of the exported "
          "INT8 .onnx on the full test split; speed-up = ORT fp32 / ORT INT8 latency, interleaved, median", "",
          "| checkpoint | method | fp32 top-1 (trained model) | INT8 top-1 (mean +- sd over seeds) | drop vs that fp32 "
          "(points) | ORT speed-up |",
          "|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["checkpoint"], r["method"]), []).append(r)
    base = {r["checkpoint"]: r["fp32_top1"] for r in rows if r["seed"] is None}   # the trained model, unchanged
    for (ck, method), rs in groups.items():
        accs = [r["int8_top1"] for r in rs]
        fp = base[ck]
        sd = f" +- {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        md.append(f"| {ck} | {method} | {fp:.2f} | {statistics.mean(accs):.2f}{sd} | "
                  f"{statistics.mean(accs) - fp:+.2f} | {statistics.median(r['speedup'] for r in rs):.2f}x |")
    return write_keeping_story(RESULTS / f"{args.out}.md", md)


if __name__ == "__main__":
    sys.exit(main())
