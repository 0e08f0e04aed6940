"""Verb `ablate`: the paper's Tables 6-7 on your data (library: repvgg.train.ablate.run_ablation)."""
from __future__ import annotations

import os
import sys

import yaml


def register(sub) -> None:
    p = sub.add_parser(
        "ablate", help="train every block variant x seeds with one recipe; table + bar chart (Tables 6-7)",
        description="Train each block variant (Tables 6-7 of the paper) with the same recipe and seeds, then "
                    "write OUTPUT/ablation.md, .csv and .png: mean +- std top-1 of the deploy model, speeds "
                    "and params on this machine, beside the paper's ImageNet number. Resumable: rerun the "
                    "same command and finished runs are kept; two processes may share one --output.")
    p.add_argument("--model", default="repvgg_a0")
    p.add_argument("--data", default="fashion-mnist", help="any `repvgg train --data` spec")
    p.add_argument("--variants", default="all", help="'all' or a comma-separated list (see list_blocks())")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per variant")
    p.add_argument("--recipe", default="small", help="normal | heavy | small | a YAML file")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--width", type=float, default=1.0,
                   help="scale the model's width multipliers (0.25: a quarter of the channels) for CPU budgets")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe setting, YAML value (e.g. --set small_input=false --set threads=1)")
    p.add_argument("--output", "-o", default="runs/ablation", help="folder of the runs and the table")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each run's weights (large)")
    p.add_argument("--report-only", action="store_true", help="only rewrite the table from finished runs")
    p.set_defaults(func=run)


def parse_settings(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run(args) -> int:
    from ..train.ablate import run_ablation
    from ..bench.report import cpu_name
    from ..train import TrainingInterrupted

    settings = parse_settings(args.settings)
    argv = [a for a in sys.argv[1:] if a != "--report-only"]  # the command that trained the runs
    cmd = "repvgg " + " ".join(argv) if sys.argv and sys.argv[0].endswith("repvgg") else \
        f"repvgg ablate --output {args.output} ..."
    header = (f"# Ablation (paper Tables 6-7): {args.model} width x{args.width:g} on {args.data}, recipe "
              f"{args.recipe}{f', {args.epochs} epochs' if args.epochs else ''}, settings {settings or '{}'}\n\n"
              f"Command: `{cmd}`  \nHardware: {cpu_name()} ({os.cpu_count()} cores), CPU only, shared with "
              "other jobs (speeds are "
              f"indicative; train-time vs deploy ratios are timed interleaved).  \n"
              "Top-1 is on the test split, of the epoch picked on a validation split held out of the training "
              "data (the final epoch with --set val_split=0; EMA weights when the recipe uses EMA). The last column "
              "is the PAPER's ImageNet top-1 of RepVGG-B0 after 120 epochs, quoted for the ordering only.")
    try:
        rows = run_ablation(args.output, args.model, args.data, args.variants, args.seeds, args.recipe,
                            args.epochs, args.width, settings, args.keep_checkpoints, args.report_only,
                            header=header, log=lambda m: print(m, flush=True))
    except TrainingInterrupted as e:
        print(f"repvgg ablate: {e}\nrerun the same command to continue", file=sys.stderr)
        return e.exit_code
    done = sum(r["seeds"] for r in rows)
    print(f"{done} run(s) in the table: {args.output}/ablation.md, ablation.csv, ablation.png")
    return 0
