"""Every zoo model, fused, exported to ONNX / TorchScript / pt2 and checked against PyTorch.

Random weights with randomized BN statistics (what matters is that the exported file computes
what the PyTorch model computes, on random and real images). Writes
benchmarks/results/deploy_export_zoo.{json,md}.

    nice -n 10 python benchmarks/deploy_export_zoo.py [--image-size 224] [--models repvgg_a0 ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import onnx
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import this_command  # noqa: E402
import repvgg  # noqa: E402
from repvgg.bench.report import cpu_label  # noqa: E402
from repvgg.deploy.export import TOLERANCE, export_model  # noqa: E402
from tests.conftest import randomize_bn_  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def hardware() -> str:
    return (f"{cpu_label()}, {torch.get_num_threads()} torch threads, {platform.machine()}, CPU shared with other jobs, "
            "no GPU")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--models", nargs="*", default=repvgg.list_models())
    ap.add_argument("--formats", nargs="*", default=["onnx", "torchscript", "pt2"])
    args = ap.parse_args()
    rows, size = [], (args.image_size, args.image_size)
    for name in args.models:
        model = repvgg.reparameterize(randomize_bn_(repvgg.create_model(name)))
        for fmt in args.formats:
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                try:
                    r = export_model(model, Path(tmp) / f"m.{fmt}", fmt, dynamic_batch=True, image_size=size,
                                     log=lambda s: None)
                    row = dict(model=name, format=fmt, ok=True, rel_error=r.rel_error, **{f"max_abs_{k}": v for k, v in r.errors.items()},
                               ops=dict(r.ops) if r.ops else None)
                except Exception as e:  # record and go on: the table must show every model
                    row = dict(model=name, format=fmt, ok=False, error=f"{type(e).__name__}: {e}"[:300])
                row["seconds"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
            write(rows, args)  # after every row: a long run that is cut short still leaves its table
    return 0 if all(r["ok"] for r in rows) else 1


def write(rows, args) -> None:
    meta = dict(command=this_command(), hardware=hardware(), image_size=args.image_size,
                tolerance=TOLERANCE, torch=torch.__version__, onnx=onnx.__version__, onnxruntime=onnxruntime.__version__,
                weights="random, BN statistics randomized (tests/conftest.randomize_bn_)", date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "deploy_export_zoo" if set(args.models) == set(repvgg.list_models()) else "deploy_export_zoo_partial"
    done = len({r["model"] for r in rows})
    (RESULTS / f"{stem}.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    lines = [f"# Export check, zoo models ({done}/{len(args.models)} done; {args.image_size}px, batch 2-4, dynamic batch)", "",
             f"- command: `{meta['command']}`", f"- hardware: {meta['hardware']}",
             f"- torch {meta['torch']}, onnx {meta['onnx']}, onnxruntime {meta['onnxruntime']} (CPU EP); {meta['date']}",
             f"- weights: {meta['weights']}; pass = max|out - torch| / max|torch| <= {TOLERANCE:g} on random AND real "
             "(Fashion-MNIST, resized, channel-repeated) inputs; ONNX graph restricted to plain ops", "",
             "| model | format | pass | relative error | max abs (random) | max abs (real) | ONNX ops | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ok"]:
            ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items())) if r.get("ops") else ""
            lines.append(f"| {r['model']} | {r['format']} | yes | {r['rel_error']:.1e} | {r['max_abs_random']:.1e} | "
                         f"{r['max_abs_real']:.1e} | {ops} | {r['seconds']} |")
        else:
            lines.append(f"| {r['model']} | {r['format']} | **NO** | {r['error']} | | | | {r['seconds']} |")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
