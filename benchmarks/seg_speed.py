"""Table 8's speed pairs on a CPU: PSPNet on fused RepVGG vs on dilated ResNets, same head, side by side.

    nice -n 10 python benchmarks/seg_speed.py --size 512 --threads 2

Every segmenter in its deploy form (RepVGG fused; then every remaining conv-BN pair folded with
torch.fx, the ResNets' and the heads' alike), fp32, batch 1, output stride 8, the aux head absent;
the pairs are timed interleaved (median of --repeats). Params and multiply-adds are counted for the
backbone and the head separately: at output stride 8 the head is a large share. Writes
benchmarks/results/seg_speed_cpu.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from repvgg.seg.bench import PAIRS, compare_speed  # noqa: E402


def _ratio(row: dict) -> str:
    return f"{row['speedup_vs_pair']:.2f}x" if "speedup_vs_pair" in row else "(baseline)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="seg_speed_cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for ours, theirs in PAIRS:
        pair = compare_speed([theirs, ours], size=args.size, batch=1, classes=args.classes, repeats=args.repeats)
        pair[1]["speedup_vs_pair"] = pair[1].pop("speed_vs_first")
        pair[0].pop("speed_vs_first")
        rows += [pair[1], pair[0]]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    cmd = "python " + " ".join(sys.argv)
    result = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu,
              "threads": args.threads, "torch": torch.__version__, "size": args.size, "rows": rows}
    out = Path(__file__).parent / "results"
    (out / f"{args.out}.json").write_text(json.dumps(result, indent=2))
    md = [f"# PSPNet speed pairs (paper Table 8 protocol, CPU): {args.size}x{args.size}, batch 1, fp32, "
          "deploy forms, conv-BN folded", "", f"- command: `{cmd}`",
          f"- {result['date']}; {cpu}, {args.threads} torch threads, torch {torch.__version__}; pairs timed "
          f"interleaved, median of {args.repeats}", "",
          "| segmenter | ms / image | speed-up vs its pair | params backbone / head (M) | GMACs backbone / head |",
          "|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['ms']:.0f} | {_ratio(r)} | "
           f"{r['params_backbone_m']:.1f} / {r['params_head_m']:.1f} | {r['gmacs_backbone']:.1f} / "
           f"{r['gmacs_head']:.1f} |" for r in rows]
    (out / f"{args.out}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
