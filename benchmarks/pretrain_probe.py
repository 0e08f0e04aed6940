"""How fast each segmentation backbone learns at the start (issue 24): a short-schedule pretraining probe.

    python benchmarks/pretrain_probe.py --runs runs/pretrain_probe --threads 1 --parallel 2

At equal CPU time the segmenter whose backbone learns faster per step wins, whatever its steps cost. This
trains each (backbone, setting) pair as a classifier on a 12,000-image subset of fmnist-items for 3 epochs
(`repvgg train`, recipe `small` with the ImageNet stem and the model's own width and depths, as
seg_scenes.py's pretraining, bf16) and tabulates validation top-1 after each epoch (6,000 images held out of
the 60,000; the test split is not used). Settings: the recipe's lr / warm-up, lr halved, warm-up cut to
0.2 epochs, and RepVGG's identity branch without BN (paper Table 7) (the deploy network is the same plain one).
Writes benchmarks/results/pretrain_probe.{md,json}; --collect-only re-reads finished runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.results_md import this_command, write_keeping_story  # noqa: E402

SUBSET = 12000
BACKBONES = {"a0": ["--model", "repvgg_a0", "--width", "1", "--depths", "model"], "r18": ["--model", "tv:resnet18"]}
# name -> (backbones it applies to, the flags that differ from the recipe)
SETTINGS = {
    "w1_lr0.2": (("a0", "r18"), []),                                   # the recipe: warm-up 1 epoch, lr 0.2 per 256
    "w1_lr0.1": (("a0", "r18"), ["--lr", "0.1"]),
    "w0.2_lr0.2": (("a0", "r18"), ["--warmup-epochs", "0.2"]),
    "idnobn": (("a0",), ["--block", "identity_no_bn"]),               # paper Table 7: identity branch without BN
}


def recipe_file(runs: Path) -> Path:
    """The `small` recipe on a seeded 12,000-image subset (train_subset has no command-line flag)."""
    cfg = yaml.safe_load((ROOT / "repvgg" / "recipes" / "small.yaml").read_text())
    path = runs / "small_subset.yaml"
    path.write_text(yaml.safe_dump({**cfg, "train_subset": SUBSET}))
    return path


def jobs(runs: Path, threads: int) -> list[tuple[str, list[str]]]:
    recipe = recipe_file(runs)
    out = []
    for setting, (which, flags) in SETTINGS.items():
        for b in which:
            name = f"{b}_{setting}"
            out.append((name, [sys.executable, "-m", "repvgg", "train", *BACKBONES[b], "--recipe", str(recipe),
                               "--no-small-input", "--data", "fmnist-items", "--epochs", "3", "--seed", "0",
                               "--warmup-epochs", "1", "--lr", "0.2", *flags, "--threads", str(threads),
                               "--amp", "bf16", "--output", str(runs / name), "--overwrite", "--quiet"]))
    return out


def launch(todo, parallel: int, runs: Path) -> None:
    running, pending = [], list(todo)
    while pending or running:
        while pending and len(running) < parallel:
            name, cmd = pending.pop(0)
            running.append(subprocess.Popen(cmd, stdout=open(runs / f"{name}.log", "w"), stderr=subprocess.STDOUT,
                                            cwd=ROOT))
        time.sleep(2)
        running = [p for p in running if p.poll() is None]


def collect(runs: Path) -> dict:
    rows = []
    for setting, (which, flags) in SETTINGS.items():
        for b in which:
            f = runs / f"{b}_{setting}" / "metrics.jsonl"
            if not f.is_file():
                continue
            m = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
            rows.append({"backbone": b, "setting": setting, "flags": flags, "val_top1": [x["val_top1"] for x in m],
                         "train_acc": [x["train_acc"] for x in m], "epoch_s": [x["epoch_s"] for x in m]})
    from repvgg.bench.report import cpu_label
    return {"command": this_command(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": f"{cpu_label()}, {os.cpu_count()} logical cores", "torch": torch.__version__, "rows": rows}


def write(result: dict, out: Path = ROOT / "benchmarks" / "results") -> str:
    path = out / "pretrain_probe.json"
    path.write_text(json.dumps(result, indent=2))
    md = ["# How fast the segmentation backbones learn: 3 epochs on 12,000 fmnist-items images", "",
          f"- command: `{result['command']}`",
          f"- {result['date']}; {result['cpu']}; torch {result['torch']}; 1 torch thread per run, 2 runs side by side",
          f"- recipe `small` (ImageNet stem, the model's width and depths, batch 128, SGD, cosine, EMA) on a seeded "
          f"{SUBSET:,}-image subset, 64 px, bf16, seed 0; validation top-1 on 6,000 images held out of the 60,000 "
          "training images (the test split is not used)", "",
          "| backbone | setting | val top-1 after epoch 1 / 2 / 3 (%) | train acc epoch 3 | s per epoch |",
          "|---|---|---|---|---|"]
    for r in result["rows"]:
        md.append(f"| {'RepVGG-A0' if r['backbone'] == 'a0' else 'ResNet-18'} | {r['setting']} "
                  f"({' '.join(r['flags']) or 'the recipe'}) | {' / '.join(f'{v:.2f}' for v in r['val_top1'])} | "
                  f"{r['train_acc'][-1]:.1f} | {' / '.join(f'{s:.0f}' for s in r['epoch_s'])} |")
    return write_keeping_story(path.with_suffix(".md"), md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/pretrain_probe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--collect-only", action="store_true")
    args = ap.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not args.collect_only:
        launch(jobs(runs, args.threads), args.parallel, runs)
    result = collect(runs)
    if not result["rows"]:
        raise SystemExit(f"no finished runs in {runs}")
    print(write(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
