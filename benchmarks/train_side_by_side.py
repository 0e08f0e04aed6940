"""Side by side: RepVGG blocks vs plain blocks on the same recipe, from train_fashion_mnist results.

    python benchmarks/train_side_by_side.py --runs repvgg_small_v2_xeon repvgg_small_v2_xeon_s1 \
        plain_small_v2_xeon plain_small_v2_xeon_s1 --out train_side_by_side_xeon

Reads results/train_fashion_mnist_<tag>.json for each tag (written by train_fashion_mnist.py) and
writes results/<out>.md (one row per run, then the mean per block and the difference of the means)
and results/<out>.png (test top-1 against wall time, every run). Runs are compared only when they
share recipe, model, depths, epochs and hardware: anything else is refused, since the comparison would
then measure more than the branches.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling script, however this one is loaded
from results_md import this_command  # noqa: E402
from train_fashion_mnist import machine_line, plot_curves  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MUST_MATCH = ("recipe", "model", "depths", "epochs", "cpu", "torch")


def load(tag: str) -> dict:
    path = RESULTS / f"train_fashion_mnist_{tag}.json"
    if not path.exists():
        raise SystemExit(f"no results for run '{tag}': {path} does not exist")
    r = json.loads(path.read_text())
    if r.get("exit_code") != 0 or not r.get("final"):
        raise SystemExit(f"run '{tag}' did not finish (exit code {r.get('exit_code')}): not comparable")
    cfg = yaml.safe_load(r["config"])
    rows = r["time_to_accuracy"]
    fin = dict(r["final"])
    if "selection" not in fin and str(fin.get("best_epoch")) != str(rows[-1]["epoch"]):
        # kept by test top-1 (the trainer before 2026-12-04): report the final epoch, selected by nothing
        fin["train_top1"] = fin["deploy_top1"] = rows[-1]["test_top1"]
    return dict(tag=tag, block=r["block"], recipe=r["recipe"], model=r["model"], depths=cfg.get("depths"),
                epochs=cfg["epochs"], seed=cfg["seed"], amp=cfg["amp"], cpu=r["hardware"]["cpu"],
                torch=r["versions"]["torch"],
                wall_min=r["wall_s"] / 60, train_min=rows[-1]["elapsed_s"] / 60,
                img_s=statistics.median(x["img_per_s"] for x in rows),
                train_top1=fin["train_top1"], deploy_top1=fin["deploy_top1"], agreement=fin["agreement_pct"],
                hardware=r["hardware"], batch=cfg.get("batch_size"), rows=rows)


def check_comparable(runs: list[dict]) -> None:
    for key in MUST_MATCH:
        values = {str(r[key]) for r in runs}
        if len(values) > 1:
            raise SystemExit(f"runs differ in {key} ({', '.join(sorted(values))}): not a side-by-side")


def table(runs: list[dict]) -> list[str]:
    lines = ["| run | block | seed | precision | wall (min) | training (min) | median img/s | "
             "train-time top-1 | deploy top-1 | identical predictions |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['tag']} | {r['block']} | {r['seed']} | {r['amp'] or 'fp32'} | {r['wall_min']:.1f} | "
                     f"{r['train_min']:.1f} | {r['img_s']:.0f} | {r['train_top1']:.2f} | {r['deploy_top1']:.2f} | "
                     f"{r['agreement']:.1f}% |")
    return lines


def means(runs: list[dict]) -> tuple[list[str], dict]:
    by_block: dict[str, list[dict]] = {}
    for r in runs:
        by_block.setdefault(r["block"], []).append(r)
    lines = ["| block | runs | deploy top-1 mean | per seed | training min mean | median img/s mean |",
             "|---|---|---|---|---|---|"]
    stats = {}
    for block, rs in by_block.items():
        acc = [r["deploy_top1"] for r in rs]
        stats[block] = dict(top1=statistics.mean(acc), minutes=statistics.mean(r["train_min"] for r in rs),
                            img_s=statistics.mean(r["img_s"] for r in rs))
        lines.append(f"| {block} | {len(rs)} | {stats[block]['top1']:.2f} | {' '.join(f'{a:.2f}' for a in acc)} | "
                     f"{stats[block]['minutes']:.1f} | {stats[block]['img_s']:.0f} |")
    return lines, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True, help="result tags (train_fashion_mnist_<tag>.json)")
    ap.add_argument("--out", default="train_side_by_side")
    args = ap.parse_args()
    runs = [load(t) for t in args.runs]
    check_comparable(runs)
    if len({r["block"] for r in runs}) < 2:
        raise SystemExit("give runs of at least two blocks (e.g. repvgg and plain)")
    mean_lines, stats = means(runs)
    r0 = runs[0]
    depths = f" depths {r0['depths']}" if r0["depths"] else ""
    md = [f"# Same recipe, with and without the branches: {r0['model']}{depths}, recipe `{r0['recipe']}`, "
          f"{r0['epochs']} epochs, Fashion-MNIST 60k/10k", "",
          f"- command: `{this_command()}` (from the runs' own results files)",
          f"- hardware: {r0['cpu']}, torch {r0['torch']}; every run on the same kind of host",
          "- top-1 is on the full 10k test set, of the (EMA) weights picked on a validation split, or of the final "
          "epoch for runs made before 2026-12-04 (which had picked on the test set); deploy form = fused plain "
          "model", "",
          *table(runs), "", *mean_lines, ""]
    if "repvgg" in stats and "plain" in stats:
        d = stats["repvgg"]["top1"] - stats["plain"]["top1"]
        md.append(f"RepVGG blocks minus plain blocks, mean deploy top-1: {d:+.2f} points; training time "
                  f"{stats['repvgg']['minutes'] / stats['plain']['minutes']:.2f}x the plain model's. "
                  "Both deploy to the same plain network, so inference costs the same.")
    (RESULTS / f"{args.out}.md").write_text("\n".join(md) + "\n")
    plot_curves([(f"{r['block']} seed {r['seed']}", [x["elapsed_s"] / 60 for x in r["rows"]],
                  [x["test_top1"] for x in r["rows"]], "o-" if r["block"] == "repvgg" else "s--") for r in runs],
                RESULTS / f"{args.out}.png", f"{r0['model']}, recipe {r0['recipe']}: RepVGG vs plain blocks, test top-1 "
                f"vs training time\n{machine_line(r0['hardware'], {'batch_size': r0['batch'], 'amp': r0['amp']})}",
                ymin=88)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
