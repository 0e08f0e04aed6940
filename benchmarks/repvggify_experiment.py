"""Paper Sect. 4.2 on torchvision's own nets: does `repvggify` help a plain VGG, and not a ResNet?

    nice -n 10 python benchmarks/repvggify_experiment.py --epochs 4 --seeds 3 --threads 2

Trains torchvision ResNet-18 and VGG-11-bn (small-input stems, see repvgg/tvmodels.py), each plain
and repvggified, with the same recipe, data, epochs and seeds, through the trainer `repvgg train`
uses (best epoch picked on the validation split). Reports test top-1 (mean +- std over seeds),
training time, and the deployed speed: the repvggified net folds back into the plain torchvision
architecture, so both deploy forms are timed side by side (interleaved) to show they are equal.
Writes benchmarks/results/repvggify_<data>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from benchmarks.results_md import this_command  # noqa: E402

MODELS = ("tv:resnet18", "tv:vgg11_bn")


def run_one(model: str, repvggify: bool, seed: int, args) -> dict:
    from repvgg.train import prepare_run, train

    out = Path(args.runs) / f"{model[3:]}{'_rep' if repvggify else ''}_s{seed}"
    cfg = prepare_run(out, args.recipe, {"model": model, "repvggify": repvggify, "seed": seed, "data": args.data,
                                         "data_dir": args.data_dir, "epochs": args.epochs, "threads": args.threads,
                                         "small_input": True}, overwrite=True)
    t0 = time.perf_counter()
    summary = train(cfg, out, overwrite=True, quiet=True)
    return dict(model=model, repvggify=repvggify, seed=seed, out=str(out), test_top1=summary["deploy_top1"],
                train_form_top1=summary["train_top1"], final_epoch_top1=summary["final_epoch_top1"],
                best_epoch=summary["best_epoch"], fusion_ok=summary["fusion_ok"],
                identical_pct=summary["agreement_pct"], train_s=summary["elapsed_s"], wall_s=time.perf_counter() - t0)


def deployed_speed(runs: list[dict]) -> dict:
    """ms per batch of 64 of each deployed model, plain vs folded, timed interleaved (median of 15)."""
    import torch

    from repvgg.deploy.common import time_interleaved
    from repvgg.rebuild import model_from_checkpoint

    out = {}
    for model in MODELS:
        pair = {r["repvggify"]: r for r in runs if r["model"] == model and r["seed"] == 0}
        if len(pair) < 2:
            continue
        nets = {k: model_from_checkpoint(Path(r["out"]) / "deploy.safetensors").eval() for k, r in pair.items()}
        x = torch.randn(64, 1, 28, 28)
        with torch.no_grad():
            t = time_interleaved({"plain": lambda: nets[False](x), "repvggified": lambda: nets[True](x)}, repeats=15)
        out[model] = {"plain_ms": t["plain"] * 1e3, "repvggified_folded_ms": t["repvggified"] * 1e3,
                      "same_architecture": type(nets[False]) is type(nets[True]) and
                      [tuple(p.shape) for p in nets[False].parameters()] == [tuple(p.shape) for p in nets[True].parameters()]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist-builtin")
    ap.add_argument("--data-dir")
    ap.add_argument("--recipe", default="small")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default=str(ROOT.parent / "runs" / "repvggify"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = []
    for seed in range(args.seeds):
        for model in MODELS:
            for rep in (False, True):
                r = run_one(model, rep, seed, args)
                print(f"{model} {'repvggified' if rep else 'plain'} seed {seed}: {r['test_top1']:.2f}% "
                      f"({r['train_s'] / 60:.1f} min)", flush=True)
                runs.append(r)
    speed = deployed_speed(runs)
    rows = []
    for model in MODELS:
        for rep in (False, True):
            rs = [r for r in runs if r["model"] == model and r["repvggify"] == rep]
            acc = [r["test_top1"] for r in rs]
            rows.append(dict(model=model, repvggify=rep, seeds=len(rs), mean=statistics.mean(acc),
                             std=statistics.stdev(acc) if len(acc) > 1 else 0.0, per_seed=acc,
                             train_min=statistics.mean(r["train_s"] for r in rs) / 60))
    from repvgg.bench.report import cpu_label
    cpu = cpu_label()
    cmd = this_command()
    result = dict(command=cmd, started=started, cpu=cpu, cores=os.cpu_count(), threads=args.threads,
                  torch=torch.__version__, load_after=os.getloadavg(), args=vars(args), rows=rows, runs=runs,
                  deployed_speed=speed)
    stem = ROOT / "results" / f"repvggify_{args.data.replace('-', '_')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = [f"# repvggify (paper Sect. 4.2) on torchvision nets: {args.data}, recipe `{args.recipe}`, "
          f"{args.epochs} epochs, {args.seeds} seeds", "",
          f"- command: `{cmd}`", f"- started {started}; {cpu}, {os.cpu_count()} cores, {args.threads} torch threads, "
          f"torch {torch.__version__}; load average after {os.getloadavg()[0]:.1f}",
          "- test top-1 of the weights picked on the validation split (10% of the training images), deploy form "
          "(the repvggified nets folded back into the plain torchvision architecture); mean +- std over seeds", "",
          "| model | training form | seeds | test top-1 (%) | per seed | training min (mean) |", "|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {'repvggified' if r['repvggify'] else 'plain'} | {r['seeds']} | {r['mean']:.2f} +- "
           f"{r['std']:.2f} | {' '.join(f'{a:.2f}' for a in r['per_seed'])} | {r['train_min']:.1f} |" for r in rows]
    md += ["", "Deployed speed, batch 64, 28 px, interleaved (median of 15): the folded net IS the plain architecture.", "",
           "| model | plain ms | repvggified, folded ms | ratio | same architecture |", "|---|---|---|---|---|"]
    md += [f"| {m} | {s['plain_ms']:.2f} | {s['repvggified_folded_ms']:.2f} | "
           f"{s['plain_ms'] / s['repvggified_folded_ms']:.2f} | {s['same_architecture']} |" for m, s in speed.items()]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
