"""Table 8's speed pairs on a CPU: PSPNet on fused RepVGG vs on dilated ResNets, same head, side by side.

    nice -n 10 python benchmarks/seg_speed.py --size 512 --threads 2
    python benchmarks/seg_speed.py --device cuda --size 713 --batch-size 16 --table8   # the paper's protocol

Every segmenter in its deploy form (RepVGG fused; then every remaining conv-BN pair folded with
torch.fx, the ResNets' and the heads' alike), fp32, batch 1, output stride 8, the aux head absent;
the pairs are timed interleaved (median of --repeats). A further pair, pspnet_repvgg_a0_fast vs
pspnet_repvgg_a0, measures what the paper's "fast" variants buy (dilation only in the last 5 blocks).
Params and multiply-adds are counted for the backbone and the head separately: at output stride 8
the head is a large share. Writes benchmarks/results/seg_speed_cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import this_command, write_keeping_story  # noqa: E402
from repvgg.bench.report import cpu_label  # noqa: E402
from repvgg.seg.bench import FAST_PAIR, PAIRS, RUNTIMES, compare_speed  # noqa: E402


def _ratio(row: dict) -> str:
    return f"{row['speedup_vs_pair']:.2f}x" if "speedup_vs_pair" in row else "(baseline)"


def _ort_version() -> str:
    try:
        import onnxruntime
        return onnxruntime.__version__
    except ImportError:
        return "not installed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--table8", action="store_true", help="also Table 8's third pair, B2 vs ResNet-101")
    ap.add_argument("--no-fast-pair", action="store_true",
                    help="leave out the _fast vs full-dilated pair (pspnet_repvgg_a0_fast vs pspnet_repvgg_a0)")
    ap.add_argument("--runtime", nargs="+", choices=RUNTIMES, default=["torch"],
                    help="one or more, timed interleaved: PyTorch eager; PyTorch with eligible 3x3 convs as "
                         "Winograd by NNPACK (CPU); the exported ONNX files in onnxruntime (CPU)")
    ap.add_argument("--out", help="results name (default seg_speed_cpu / seg_speed_cuda_<gpu>)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pairs = PAIRS + ([("pspnet_repvgg_b2", "pspnet_resnet101")] if args.table8 else []) \
        + ([] if args.no_fast_pair else [FAST_PAIR])
    rows = []
    for ours, theirs in pairs:
        pair = compare_speed([theirs, ours], size=args.size, batch=args.batch_size, classes=args.classes,
                             repeats=args.repeats, device=args.device, runtime=tuple(args.runtime), threads=args.threads)
        for rt in args.runtime:
            theirs_row, ours_row = [r for r in pair if r["runtime"] == rt]
            ours_row["speedup_vs_pair"] = ours_row.pop("speed_vs_first")
            theirs_row.pop("speed_vs_first")
            rows += [ours_row, theirs_row]
    hw = f"{cpu_label()}, {args.threads} torch threads"
    name = args.out or "seg_speed_cpu"
    if args.device.startswith("cuda"):
        gpu = torch.cuda.get_device_name()
        hw = f"{gpu} (CUDA {torch.version.cuda})"
        name = args.out or "seg_speed_cuda_" + gpu.split()[-1].lower()
    cmd = this_command()
    result = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "hardware": hw,
              "device": args.device, "batch_size": args.batch_size, "torch": torch.__version__, "size": args.size, "rows": rows}
    out = Path(__file__).parent / "results"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = [f"# PSPNet speed pairs (paper Table 8 protocol, {args.device}): {args.size}x{args.size}, batch "
          f"{args.batch_size}, fp32, deploy forms, conv-BN folded", "", f"- command: `{cmd}`",
          f"- {result['date']}; {hw}, torch {torch.__version__}, onnxruntime {_ort_version()}; pairs and runtimes "
          f"timed interleaved, median of {args.repeats}", "",
          f"| segmenter | runtime | ms / batch of {args.batch_size} | speed-up vs its pair | vs itself in torch eager | "
          "Winograd convs | params backbone / head (M) | GMACs per image backbone / head |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['runtime']} | {r['ms']:.0f} | {_ratio(r)} | "
           + (f"{r['speed_vs_torch']:.2f}x | " if "speed_vs_torch" in r else "- | ")
           + f"{r.get('winograd_convs', '-')} | "
           f"{r['params_backbone_m']:.1f} / {r['params_head_m']:.1f} | {r['gmacs_backbone']:.1f} / "
           f"{r['gmacs_head']:.1f} |" for r in rows]
    write_keeping_story(out / f"{name}.md", md)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
