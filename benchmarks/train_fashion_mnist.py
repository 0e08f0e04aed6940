"""Train a RepVGG on the full Fashion-MNIST (60k/10k) with a recipe and record everything.

    nice -n 10 python benchmarks/train_fashion_mnist.py --block repvgg   # the 30-min CPU target
    nice -n 10 python benchmarks/train_fashion_mnist.py --block plain    # same recipe, no branches
    python benchmarks/train_fashion_mnist.py --recipe heavy --model repvgg_a0 --small-input \
        --epochs 60 --device cuda --tag long                             # the >= 95.5% run (GPU)
    nice -n 10 python benchmarks/train_fashion_mnist.py --epochs 60 --threads 1 --tag long_xeon --resume
                                                                         # ... or a long CPU run, in segments

It runs the `repvgg train` command a user would run, tees its log, and writes to
benchmarks/results/: train_fashion_mnist_<tag>.json (command, hardware, versions, wall time,
time-to-accuracy rows, final train-time and deploy top-1), .md (a readable summary), .log
(the full log) and _curve.png (test top-1 against wall time). Needs the full data set
(`apt-get install dataset-fashion-mnist`, or --data-dir).

A long CPU run can span several sittings: stop it with SIGTERM or Ctrl-C (the training saves a
resumable state and the log so far stays in <stem>.log.partial), then run the same command with
--resume; the results files are written when the last segment ends, with the training time summed
over the segments (the run's own `elapsed_s`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
sys.path.insert(0, str(ROOT.parent))  # the repvgg beside this script, installed or not


def hardware() -> dict:
    import torch

    from repvgg.bench.report import cpu_isa, cpu_name

    return {"cpu": cpu_name(), "isa": cpu_isa(), "cores": os.cpu_count(), "avx512_bf16": cpu_isa().endswith("BF16"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def versions() -> dict:
    import torch
    import torchvision

    import repvgg

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "repvgg": repvgg.__version__}


def plot_curves(series: list[tuple[str, list[float], list[float], str]], path: Path, title: str,
                target: float | None = None, ymin: float | None = None) -> None:
    """Test top-1 against wall time: one line per (label, minutes, top-1 values, matplotlib style)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, minutes, top1, style in series:
        ax.plot(minutes, top1, style, ms=3, label=label)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"{target}%")
    if ymin is not None:
        ax.set_ylim(ymin, None)
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from repvgg.fileio import atomic_savefig

    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)


def machine_line(hw: dict, cfg: dict) -> str:
    """The second title line of a curve: where it ran and with which batch (a plot says both)."""
    where = hw.get("gpu") or f"{hw.get('cpu', '?')}, {hw.get('cores', '?')} cores, {hw.get('torch_threads', '?')} thread(s)"
    return f"{where}; batch {cfg.get('batch_size', '?')}, {cfg.get('amp') or 'fp32'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="small")
    ap.add_argument("--model", default="repvgg_a0")
    ap.add_argument("--block", default="repvgg")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--depths", help="blocks per stage 1-4, e.g. 1,2,4,1 (default: the recipe's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-dir")
    ap.add_argument("--threads", type=int, help="torch threads (1 on a machine shared with other jobs)")
    ap.add_argument("--small-input", action="store_true", help="(the small recipe already sets it)")
    ap.add_argument("--seed", type=int, help="the run's seed (default: the recipe's)")
    ap.add_argument("--target", type=float, default=94.0, help="top-1 %% for the time-to-accuracy figure")
    ap.add_argument("--tag", help="results name suffix (default: the block)")
    ap.add_argument("--runs", default=str(ROOT.parent / "runs"), help="where the run folder goes")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run folder of this --tag if it holds a resumable state (a long run in "
                         "segments), else start it")
    ap.add_argument("--report-only", action="store_true",
                    help="do not train: rewrite the results files from the existing run folder (when the "
                         "report step failed after training; wall time then = the run's own elapsed time)")
    ap.add_argument("train_args", nargs=argparse.REMAINDER,
                    help="after --: more `repvgg train` flags, e.g. -- --width 1.0 --batch-size 256")
    args = ap.parse_args()
    args.train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    tag = args.tag or args.block
    out = Path(args.runs) / f"bench-fmnist-{tag}"
    resuming = args.resume and (out / "last.state.pt").is_file()
    cmd = [sys.executable, "-m", "repvgg", "train", "--recipe", args.recipe, "--model", args.model,
           "--block", args.block, "--data", "fashion-mnist", "--output", str(out),
           "--resume" if resuming else "--overwrite", "--device", args.device]
    if not resuming:   # the time-to-accuracy curve: test top-1 each epoch, reported, never used to select
        cmd += ["--test-every-epoch"]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    if args.depths:
        cmd += ["--depths", args.depths]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.small_input:
        cmd += ["--small-input"]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    cmd += args.train_args
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"train_fashion_mnist_{tag}"
    # the log goes to a side file and replaces <stem>.log only if the run succeeds: a failed or
    # killed run never overwrites the results of a good one (it reports under <stem>_failed)
    log_path = stem.parent / f"{stem.name}.log.partial"
    if args.report_only:
        return report(args, out, stem, cmd, None, None, "unknown (report rebuilt from the run folder)", None)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    env = {**os.environ, "TQDM_DISABLE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT.parent), os.environ.get("PYTHONPATH")]))}
    with open(log_path, "a" if resuming else "w") as log:
        log.write(f"$ {shlex.join(cmd)}   # started {started}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        # stop the training, not this report: SIGTERM is handed on (it saves a resumable state);
        # Ctrl-C reaches it from the terminal already (a second SIGINT would abort it unsaved)
        old = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum)),
               signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                log.write(line)
                log.flush()
            rc = proc.wait()
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
    if rc in (128 + signal.SIGINT, 128 + signal.SIGTERM) and (out / "last.state.pt").is_file():
        print(f"training stopped by a signal with a resumable state; the log so far is in {log_path}. "
              f"Continue with the same command and --resume", file=sys.stderr)
        return rc
    if rc != 0:
        stem = stem.parent / f"{stem.name}_failed"
        print(f"training exited with code {rc}: results go to {stem}.* (earlier results kept)", file=sys.stderr)
    log_path.replace(stem.with_suffix(".log"))
    # a run in segments: its training time is the run's own elapsed time, summed over the segments
    wall = None if args.resume else time.perf_counter() - t0
    return report(args, out, stem, cmd, rc, wall, started, load_before)


def report(args, out: Path, stem: Path, cmd: list[str], rc, wall, started: str, load_before) -> int:
    """Write <stem>.json/.md/_curve.png from the run folder ``out``."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()] \
        if (out / "metrics.jsonl").exists() else []
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    cfg = yaml.safe_load((out / "config.yaml").read_text()) if (out / "config.yaml").exists() else {}
    model_desc = f"{args.model} x{cfg.get('width', 1.0):g} width" if cfg.get("width", 1.0) != 1 else args.model
    if cfg.get("depths"):
        model_desc += f", depths {cfg['depths']}"
    hit = next((r for r in rows if (r.get("test_top1") or 0) >= args.target), None)
    if wall is None and rows:
        wall = rows[-1]["elapsed_s"]
    result = {
        "command": shlex.join(cmd), "exit_code": rc, "started": started, "wall_s": wall and round(wall, 1),
        "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
        "hardware": hardware(), "versions": versions(), "recipe": args.recipe, "block": args.block,
        "model": args.model, "config": (out / "config.yaml").read_text() if (out / "config.yaml").exists() else None,
        "time_to_accuracy": [{"epoch": r["epoch"], "elapsed_s": round(r["elapsed_s"], 1),
                              "val_top1": r.get("val_top1"), "test_top1": r.get("test_top1"), "img_per_s": round(r["img_per_s"], 1)} for r in rows],
        f"time_to_{args.target}_s": round(hit["elapsed_s"], 1) if hit else None,
        "final": summary,
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    if rows:
        plot_curves([(args.block, [r["elapsed_s"] / 60 for r in rows], [r.get("test_top1") for r in rows], "o-")],
                    stem.parent / f"{stem.name}_curve.png",
                    f"{model_desc} ({args.block}), recipe {args.recipe}: Fashion-MNIST test top-1 vs training time\n"
                    f"{machine_line(result['hardware'], cfg)}", args.target)
    if args.report_only:
        timing = f"training time (last epoch's elapsed) {wall / 60:.1f} min"
    elif args.resume:
        timing = (f"training time {wall / 60:.1f} min, summed over the run's segments (this one started then; "
                  f"--resume); exit code {rc}")
    else:
        timing = f"wall time {wall / 60:.1f} min; exit code {rc}"
    md = [f"# Fashion-MNIST, {model_desc} ({args.block} blocks), recipe `{args.recipe}`", "",
          f"- command: `{shlex.join(cmd)}`",
          f"- started {started}; {timing}",
          f"- hardware: {result['hardware']}", f"- versions: {result['versions']}",
          f"- load average before/after: {load_before} / {result['load_avg_after']} (shared machine)",
          f"- time to {args.target}% test top-1: " + (f"{hit['elapsed_s'] / 60:.1f} min (epoch {hit['epoch']})"
                                                      if hit else "not reached"),
          f"- picked weights (epoch {summary.get('best_epoch')}, selected by {summary.get('selection')}): test top-1 "
          f"train-time {summary.get('train_top1')}, deploy {summary.get('deploy_top1')}, identical predictions "
          f"{summary.get('agreement_pct')}%; final epoch's weights: test top-1 {summary.get('final_epoch_top1')}", "",
          "| epoch | wall (min) | val top-1 (%) | test top-1 (%, not used to select) | img/s |", "|---|---|---|---|---|"]
    nan = float("nan")
    md += [f"| {r['epoch']} | {r['elapsed_s'] / 60:.1f} | {r.get('val_top1') or nan:.2f} | {r.get('test_top1') or nan:.2f} "
           f"| {r['img_per_s']:.0f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"results: {stem}.json/.md/.log")
    return 0 if rc is None else rc


if __name__ == "__main__":
    sys.exit(main())
