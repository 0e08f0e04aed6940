"""fmnist-scenes segmentation at the same CPU time for each model (issue 24): train, fuse, compare.

    python benchmarks/seg_scenes.py --models pspnet_repvgg_a0 pspnet_resnet18 pspnet_repvgg_a0_fast \\
        --seeds 0 1 --budget-min 6.5 --threads 2 --parallel 6 --tag 16core

Each run is `repvgg seg train --time-budget-min B --threads T` (the poly schedule fitted to B minutes
of training steps, best epoch picked on the validation split, both forms scored on the 1,000 test
scenes at the end). Runs started together share the machine alike; --parallel 1 runs them in turn.
Writes benchmarks/results/seg_scenes_<tag>.{json,md} from the runs' summary.json files
(--collect-only: only that, from existing runs).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.results_md import write_keeping_story  # noqa: E402


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")] \
        if info.is_file() else []
    return f"{names[0] if names else platform.processor()}, {len(names)} logical cores"


def pending_runs(models, seeds, runs: Path, keep_finished: bool) -> list[tuple[str, int]]:
    """(model, seed) pairs to train: all, or with --keep-finished those without a summary.json yet."""
    return [(m, s) for m in models for s in seeds
            if not (keep_finished and (runs / f"{m}_s{s}" / "summary.json").is_file())]


def launch(args, runs: Path) -> None:
    jobs, pending = [], pending_runs(args.models, args.seeds, runs, args.keep_finished)
    while pending or jobs:
        while pending and len(jobs) < args.parallel:
            m, s = pending.pop(0)
            out = runs / f"{m}_s{s}"
            cmd = [sys.executable, "-m", "repvgg", "seg", "train", "--model", m, "--seed", str(s), "--threads",
                   str(args.threads), "--time-budget-min", str(args.budget_min), "--output", str(out),
                   "--overwrite", "--quiet", "--recipe", args.recipe] + (["--data-dir", args.data_dir] if args.data_dir else [])
            log = open(runs / f"{m}_s{s}.log", "w")
            jobs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT), log))
        time.sleep(2)
        for job in [j for j in jobs if j[0].poll() is not None]:
            job[1].close()
            jobs.remove(job)


def collect(args, runs: Path) -> dict:
    rows = []
    for m in args.models:
        per_seed = []
        for s in args.seeds:
            f = runs / f"{m}_s{s}" / "summary.json"
            if not f.is_file():
                continue
            sm = json.loads(f.read_text())
            metrics = [json.loads(ln) for ln in (f.parent / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            per_seed.append({"seed": s, "test_miou": sm["deploy_miou"], "train_form_miou": sm["train_miou"],
                             "pixel_acc": sm["pixel_acc"], "val_miou": float(sm["val_miou"] or "nan"),
                             "agreement_pct": sm["pixel_agreement_pct"], "fusion_ok": sm["fusion_ok"],
                             "train_min": sm["train_time_s"] / 60 if sm.get("train_time_s") else None,
                             "steps": metrics[-1]["step"] if metrics else None, "best_epoch": sm["best_epoch"],
                             "test_images": sm.get("test_images"),
                             "per_class_iou": sm["per_class_iou"]})
        if per_seed:
            mious = [r["test_miou"] for r in per_seed]
            rows.append({"model": m, "runs": per_seed, "test_miou_mean": statistics.mean(mious),
                         "test_miou_sd": statistics.stdev(mious) if len(mious) > 1 else 0.0})
    return {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": _cpu(), "torch": torch.__version__, "budget_min": args.budget_min, "threads": args.threads,
            "parallel": args.parallel, "recipe": args.recipe, "rows": rows}


def write(result: dict, tag: str) -> str:
    out = ROOT / "benchmarks" / "results"
    name = f"seg_scenes_{tag}"
    n_test = next((x["test_images"] for r in result["rows"] for x in r["runs"] if x.get("test_images")), "?")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    md = [f"# fmnist-scenes: PSPNet segmenters at the same CPU time ({result['budget_min']:g} min of training steps each)",
          "", f"- command: `{result['command']}`",
          f"- {result['date']}; {result['cpu']}; {result['threads']} torch threads per run, {result['parallel']} runs "
          f"side by side; torch {result['torch']}; recipe `{result['recipe']}`",
          f"- test mIoU of the fused deploy model on the {n_test} test scenes (built from Fashion-MNIST's test split), "
          "checkpoint picked on a validation split of the training scenes", "",
          "| segmenter | test mIoU (mean +- sd) | per seed | pixel acc | steps in the budget | fused = train-time |",
          "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        seeds = ", ".join(f"{x['test_miou']:.2f}" for x in r["runs"])
        acc = statistics.mean(x["pixel_acc"] for x in r["runs"])
        steps = "/".join(str(x["steps"]) for x in r["runs"])
        same = all(x["fusion_ok"] for x in r["runs"])
        agree = min(x["agreement_pct"] for x in r["runs"])
        md.append(f"| {r['model']} | {r['test_miou_mean']:.2f} +- {r['test_miou_sd']:.2f} | {seeds} | {acc:.2f} | "
                  f"{steps} | {'yes' if same else 'NO'} (labels {agree:.3f}% identical) |")
    write_keeping_story(out / f"{name}.md", md)
    return "\n".join(md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["pspnet_repvgg_a0", "pspnet_resnet18", "pspnet_repvgg_a0_fast"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget-min", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--recipe", default="scenes")
    ap.add_argument("--data-dir", help="Fashion-MNIST files the scenes are built from (default: the system's)")
    ap.add_argument("--runs", default="runs/seg_scenes")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--keep-finished", action="store_true",
                    help="train only the (model, seed) runs without a summary.json (add seeds to an earlier run)")
    args = ap.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not args.collect_only:
        launch(args, runs)
    result = collect(args, runs)
    if not result["rows"]:
        print(f"no finished runs in {runs}", file=sys.stderr)
        return 1
    print(write(result, args.tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
