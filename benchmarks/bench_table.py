"""The paper's Table 4/5 comparison (and Fig. 1 scatter) on this machine: every torchvision baseline,
conv-BN fused, against RepVGG in deploy form, one interleaved run.

    python benchmarks/bench_table.py --device cpu --batch-size 8     # 2-core CPU: small batch
    python benchmarks/bench_table.py --device cuda                   # the paper's bs 128 on a GPU

Extra arguments go to ``repvgg bench`` (e.g. ``--dtype bf16 --channels-last``).
"""
import sys
from pathlib import Path

from repvgg.bench.baselines import BASELINES
from repvgg.cli import main

REPVGG = ["repvgg_a0", "repvgg_a1", "repvgg_a2", "repvgg_b0", "repvgg_b1g4", "repvgg_b1g2", "repvgg_b1",
          "repvgg_b2g4", "repvgg_b2", "repvgg_b3g4", "repvgg_b3"]

if __name__ == "__main__":
    argv = sys.argv[1:]
    device = argv[argv.index("--device") + 1] if "--device" in argv else "cpu"
    out = Path(__file__).resolve().parent / "results" / f"bench_table_{device.split(':')[0]}"
    defaults = ["--models", ",".join(REPVGG + list(BASELINES)), "--form", "deploy", "--out", str(out)]
    sys.exit(main(["bench", *defaults, *argv]))
