"""fmnist-scenes segmentation at the same CPU time for each model (issue 24): train, fuse, compare.

    python benchmarks/seg_scenes.py --models pspnet_repvgg_a0 pspnet_resnet18 pspnet_repvgg_a0_fast \\
        --seeds 0 1 --budget-min 6.5 --threads 2 --parallel 6 --tag 16core

Each run is `repvgg seg train --time-budget-min B --threads T` (the poly schedule fitted to B minutes
of training steps, best epoch picked on the validation split, both forms scored on the 1,000 test
scenes at the end). All pretrainings (below) run first, then the segmenters, --parallel at a time: runs
started together share the machine alike; --parallel 1 runs them in turn.
Writes benchmarks/results/seg_scenes_<tag>.{json,md} from the runs' summary.json files
(--collect-only: only that, from existing runs; --keep-earlier-seeds: seeds whose runs are gone are
kept from the results JSON as they were collected).

--pretrain-epochs E first trains each segmenter's backbone as a Fashion-MNIST classifier (`repvgg
train --model repvgg_a0 | tv:resnet18 --no-small-input --epochs E`, the ImageNet stem, on the same
training images the scenes are built from; --pretrain-size S resizes them to S px;
--pretrain-data fmnist-items pastes each alone on a scene background at the scenes' scale and colours
instead) and starts the segmenter from its best checkpoint, as the paper starts from ImageNet weights;
the pretraining minutes are reported beside the segmentation budget.
With --keep-finished a finished pretraining in --runs is reused (its minutes as first measured).
--total-budget-min T makes the CPU time equal end to end instead: each segmenter trains for T minus its
own backbone's pretraining minutes, so a backbone that pretrains faster leaves its segmenter more steps.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.results_md import this_command, write_keeping_story  # noqa: E402
from repvgg.data.composite import ITEMS_DEFAULTS  # noqa: E402
from repvgg.train.config import read_config  # noqa: E402


# --amp choice -> (the flags `repvgg train` and `repvgg seg train` take, the `amp` a run's config.yaml then
# holds; None: each run's probe settles it)
PRECISION = {"auto": ([], None), "fp32": (["--no-amp"], False), "bf16": (["--amp", "bf16"], "bf16")}


def _cpu() -> str:
    from repvgg.bench.report import cpu_label
    return f"{cpu_label()}, {os.cpu_count()} logical cores"


def pending_runs(models, seeds, runs: Path, keep_finished: bool) -> list[tuple[str, int]]:
    """(model, seed) pairs to train: all, or with --keep-finished those without a summary.json yet."""
    return [(m, s) for m in models for s in seeds
            if not (keep_finished and (runs / f"{m}_s{s}" / "summary.json").is_file())]


def backbone_of(segmenter: str) -> str:
    """The classifier whose checkpoint starts a segmenter's backbone: pspnet_repvgg_a0(_fast) -> repvgg_a0,
    pspnet_resnet18 -> tv:resnet18."""
    arch = segmenter.removeprefix("pspnet_").removesuffix("_fast")
    return f"tv:{arch}" if arch.startswith("resnet") else arch


def commands(args, m: str, s: int, runs: Path) -> list[list[str]]:
    """The commands of one (model, seed) run, in order: [pretrain the backbone,] train the segmenter."""
    data_dir = ["--data-dir", args.data_dir] if args.data_dir else []
    amp = PRECISION[args.amp][0]
    seg = [sys.executable, "-m", "repvgg", "seg", "train", "--model", m, "--seed", str(s), "--threads",
           str(args.threads), "--time-budget-min", str(args.budget_min), "--output", str(runs / f"{m}_s{s}"),
           "--overwrite", "--quiet", "--recipe", args.recipe] + data_dir + amp
    if args.lr:
        seg += ["--lr", str(args.lr)]
    block = block_flags(args, m)
    seg += block
    if not args.pretrain_epochs:
        return [seg]
    backbone, pre = backbone_of(m), runs / f"{m}_s{s}_pretrain"
    seg += ["--backbone-checkpoint", str(pre / "best.safetensors")]
    if args.keep_finished and finished_pretraining(pre, args, backbone, s):
        return [seg]
    shape = [] if backbone.startswith("tv:") else ["--width", "1", "--depths", "model"]
    pretrain = [sys.executable, "-m", "repvgg", "train", "--model", backbone, "--recipe", "small", *shape,
                "--no-small-input", "--data", args.pretrain_data, "--epochs", str(args.pretrain_epochs),
                "--seed", str(s), "--threads", str(args.threads), "--output", str(pre), "--overwrite",
                "--quiet"] + data_dir + amp + block
    if args.pretrain_size:
        pretrain += ["--image-size", str(args.pretrain_size)]
    return [pretrain, seg]


def block_flags(args, segmenter: str) -> list[str]:
    """`--block B` for a RepVGG segmenter and its backbone's pretraining when --block names a variant; the
    ResNet baselines have no RepVGG blocks and train as they are."""
    if args.block == "repvgg" or backbone_of(segmenter).startswith("tv:"):
        return []
    return ["--block", args.block]


def finished_pretraining(pre: Path, args, backbone: str, seed: int) -> bool:
    """Whether `pre` holds a finished pretraining of this command's kind (--keep-finished reuses it, so that
    segmentation recipes can be compared from one backbone); one of another model, seed, length or
    precision is refused."""
    if not ((pre / "harness.json").is_file() and (pre / "best.safetensors").is_file()):
        return False
    saved_amp = PRECISION[args.amp][1]
    want = {"model": backbone, "seed": seed, "data": args.pretrain_data, "epochs": args.pretrain_epochs,
            "image_size": args.pretrain_size, **({"block": args.block} if not backbone.startswith("tv:") else {}),
            **({"amp": saved_amp} if saved_amp is not None else {})}
    cfg = _config(pre)
    got = {k: cfg.get(k, "repvgg" if k == "block" else None) for k in want}
    if got != want:
        raise SystemExit(f"{pre}: a finished pretraining with {got}, not {want}; remove it or drop --keep-finished")
    return True


def with_budget(cmd: list[str], minutes: float) -> list[str]:
    """A `repvgg seg train` command with its --time-budget-min set to `minutes`."""
    i = cmd.index("--time-budget-min") + 1
    return [*cmd[:i], f"{minutes:.3f}", *cmd[i + 1:]]


def total_budget_left(total: float, runs: Path, name: str) -> float | None:
    """With --total-budget-min: the minutes of segmentation steps a run's backbone pretraining (its measured
    wall minutes) left of the total; None where nothing is left."""
    left = total - json.loads((runs / f"{name}_pretrain" / "harness.json").read_text())["pretrain_min"]
    if left <= 0:
        print(f"{name}: its pretraining took all of --total-budget-min {total:g}; no segmenter trained", file=sys.stderr)
        return None
    return left


def run_parallel(jobs: list[dict], parallel: int) -> list[dict]:
    """Run the jobs' commands, `parallel` at a time, each into its log; returns the jobs that succeeded,
    each with the wall minutes it took."""
    done, running, pending = [], [], list(jobs)
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            log = open(job["log"], "a")
            job.update(proc=subprocess.Popen(job["cmd"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT),
                       log_file=log, t0=time.time())
            running.append(job)
        time.sleep(2)
        for job in [j for j in running if j["proc"].poll() is not None]:
            running.remove(job)
            job["log_file"].close()
            if job["proc"].returncode == 0:
                done.append({**job, "minutes": (time.time() - job["t0"]) / 60})
            else:
                print(f"failed ({job['proc'].returncode}): {' '.join(job['cmd'])}; see {job['log']}", file=sys.stderr)
    return done


def launch(args, runs: Path) -> None:
    """Pretrain the backbones first, then train the segmenters, --parallel at a time: segmenters of one
    comparison start together and share the CPU only with each other. A (model, seed) whose pretraining
    fails is not continued; each pretraining's wall time goes into its folder's harness.json."""
    todo = {f"{m}_s{s}": commands(args, m, s, runs) for m, s in pending_runs(args.models, args.seeds, runs, args.keep_finished)}
    for name in todo:
        (runs / f"{name}.log").write_text("")
    ready = {name for name, cmds in todo.items() if len(cmds) == 1}
    pretrain = [{"name": name, "cmd": cmds[0], "log": runs / f"{name}.log"} for name, cmds in todo.items() if len(cmds) == 2]
    for job in run_parallel(pretrain, args.parallel):
        (runs / f"{job['name']}_pretrain" / "harness.json").write_text(json.dumps({"pretrain_min": job["minutes"]}))
        ready.add(job["name"])
    segment = [{"name": name, "cmd": todo[name][-1], "log": runs / f"{name}.log"} for name in todo if name in ready]
    if getattr(args, "total_budget_min", None):
        left = {job["name"]: total_budget_left(args.total_budget_min, runs, job["name"]) for job in segment}
        segment = [{**job, "cmd": with_budget(job["cmd"], left[job["name"]])} for job in segment
                   if left[job["name"]] is not None]
    for job in run_parallel(segment, args.parallel):
        out = runs / job["name"]
        if out.is_dir():   # which harness command trained it (runs added with --keep-finished)
            (out / "harness.json").write_text(json.dumps({"command": this_command()}))


def _trained_by(folder: Path) -> str | None:
    """The seg_scenes command that trained a run (None for runs from before 2026-12-06)."""
    f = folder / "harness.json"
    return json.loads(f.read_text()).get("command") if f.is_file() else None


def _config(folder: Path) -> dict:
    """A run's saved settings (its config.yaml; empty where there is none)."""
    f = folder / "config.yaml"
    return read_config(f) if f.is_file() else {}


def _settings(folder: Path) -> dict:
    """The lr, precision and train-time block a run really trained with, whatever the collecting command says."""
    cfg = _config(folder)
    return {"lr": cfg.get("lr"), "amp": cfg.get("amp"), "block": cfg.get("block", "repvgg")}


def _pretraining(folder: Path) -> dict:
    """What the backbone's pretraining reached and cost (empty for a run from scratch)."""
    if not (folder / "summary.json").is_file():
        return {}
    sm = json.loads((folder / "summary.json").read_text())
    timing = folder / "harness.json"
    val = sm.get("val_top1")   # a string in summaries written before 2026-12-06
    return {"pretrain_val_top1": float(val) if val is not None else None, "pretrain_test_top1": sm.get("deploy_top1"),
            "pretrain_min": json.loads(timing.read_text())["pretrain_min"] if timing.is_file() else None,
            **_pretrain_input(folder)}


def _pretrain_input(folder: Path) -> dict:
    """A pretraining's data and image size (its own size where none was asked for)."""
    cfg = _config(folder)
    data = cfg.get("data") or "fashion-mnist"
    return {"pretrain_data": data,
            "pretrain_px": cfg.get("image_size") or (ITEMS_DEFAULTS["size"] if data == "fmnist-items" else 28)}


def results_json(tag: str) -> Path:
    """benchmarks/results/seg_scenes_<tag>.json (its .md beside it)."""
    return ROOT / "benchmarks" / "results" / f"seg_scenes_{tag}.json"


def earlier_seeds(tag: str) -> dict[tuple[str, int], dict]:
    """(model, seed) -> its entry in this tag's results JSON, each with the date it was collected: the runs
    behind a results file do not survive a change of machine, its per-seed figures do."""
    f = results_json(tag)
    if not f.is_file():
        return {}
    old = json.loads(f.read_text())
    return {(r["model"], x["seed"]): {"collected": old["date"], **x} for r in old["rows"] for x in r["runs"]}


def collect(args, runs: Path) -> dict:
    rows, now = [], time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    earlier = earlier_seeds(args.tag) if args.keep_earlier_seeds else {}
    for m in args.models:
        per_seed = []
        for s in args.seeds:
            f = runs / f"{m}_s{s}" / "summary.json"
            if not f.is_file():
                if (m, s) in earlier:
                    per_seed.append(earlier[(m, s)])
                continue
            sm = json.loads(f.read_text())
            metrics = [json.loads(ln) for ln in (f.parent / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            per_seed.append({"seed": s, "test_miou": sm["deploy_miou"], "train_form_miou": sm["train_miou"],
                             "pixel_acc": sm["pixel_acc"], "val_miou": float(sm["val_miou"] or "nan"),
                             "agreement_pct": sm["pixel_agreement_pct"], "fusion_ok": sm["fusion_ok"],
                             "train_min": sm["train_time_s"] / 60 if sm.get("train_time_s") else None,
                             "steps": metrics[-1]["step"] if metrics else None, "best_epoch": sm["best_epoch"],
                             "test_images": sm.get("test_images"), "trained_by": _trained_by(f.parent),
                             **_settings(f.parent),
                             **_pretraining(runs / f"{m}_s{s}_pretrain"),
                             "per_class_iou": sm["per_class_iou"],
                             "collected": now})
        if per_seed:
            mious = [r["test_miou"] for r in per_seed]
            rows.append({"model": m, "runs": per_seed, "test_miou_mean": statistics.mean(mious),
                         "test_miou_sd": statistics.stdev(mious) if len(mious) > 1 else 0.0})
    trained_by = list(dict.fromkeys(x["trained_by"] for r in rows for x in r["runs"] if x["trained_by"]))
    return {"command": this_command(), "trained_by": trained_by, "date": now,
            "cpu": _cpu(), "torch": torch.__version__, "budget_min": args.budget_min,
            "total_budget_min": args.total_budget_min, "threads": args.threads,
            "parallel": args.parallel, "recipe": args.recipe, "pretrain_epochs": args.pretrain_epochs,
            "pretrain_size": args.pretrain_size, "pretrain_data": args.pretrain_data, "rows": rows}


def _settings_line(result: dict) -> str:
    """'lr 0.001; precision bf16' for the runs of a table; every distinct value where runs differ."""
    runs = [x for r in result["rows"] for x in r["runs"]]
    names = {saved: name for name, (_, saved) in PRECISION.items() if saved is not None}
    lrs = ", ".join(dict.fromkeys(f"{x['lr']:g}" for x in runs if x.get("lr") is not None)) or "?"
    amps = ", ".join(dict.fromkeys(names.get(x.get("amp"), str(x.get("amp") or "?")) for x in runs))
    return f"lr {lrs}; precision {amps}"


def _kept_line(result: dict) -> list[str]:
    """A line naming the seeds taken from an earlier collection of the file (--keep-earlier-seeds), if any."""
    kept = {}
    for r in result["rows"]:
        for x in r["runs"]:
            if x.get("collected") and x["collected"] != result["date"]:
                kept.setdefault(x["collected"], set()).add(x["seed"])
    return [f"- seeds {', '.join(map(str, sorted(seeds)))} as collected on {when} (kept from this file's JSON; "
            "their runs were on another machine)" for when, seeds in sorted(kept.items())]


T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)   # Student t, 97.5%, df 1..10


def t975(df: int) -> float:
    """The two-sided 95% Student t quantile (beyond df 10 its 1/df expansion, within 0.03)."""
    z = 1.959964
    return T975[df - 1] if df <= len(T975) else z + (z ** 3 + z) / (4 * df)


def _paired_line(result: dict) -> list[str]:
    """The first model minus the second, seed by seed (runs of one seed trained side by side), with a 95%
    t-interval of the mean difference: whether the seeds can tell the gap from zero."""
    if len(result["rows"]) < 2:
        return []
    a, b = ({x["seed"]: x["test_miou"] for x in r["runs"]} for r in result["rows"][:2])
    d = [a[s] - b[s] for s in sorted(a) if s in b]
    if len(d) < 2:
        return []
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = t975(len(d) - 1) * sd / len(d) ** 0.5
    return [f"- paired by seed, {result['rows'][0]['model']} - {result['rows'][1]['model']}: "
            f"{', '.join(f'{x:+.2f}' for x in d)}; mean {mean:+.2f} +- {sd:.2f}, 95% t-interval "
            f"[{mean - half:+.2f}, {mean + half:+.2f}] ({len(d)} seeds)"]


def _model_label(row: dict) -> str:
    """The segmenter's name, with the train-time block where its runs used a variant (the fused form is the
    same plain network; the variant is how it was trained)."""
    blocks = {x.get("block", "repvgg") for x in row["runs"]} - {"repvgg"}
    return row["model"] + (f" (train-time block {', '.join(sorted(blocks))})" if blocks else "")


def write(result: dict, tag: str) -> str:
    json_path = results_json(tag)
    n_test = next((x["test_images"] for r in result["rows"] for x in r["runs"] if x.get("test_images")), "?")
    json_path.write_text(json.dumps(result, indent=2))
    total = result.get("total_budget_min")
    budget = (f"{total:g} min each: backbone pretraining + segmentation steps" if total else
              f"{result['budget_min']:g} min of training steps each")
    md = [f"# fmnist-scenes: PSPNet segmenters at the same CPU time ({budget})",
          "", f"- command: `{result['command']}`",
          *([f"- runs trained by: {'; '.join(f'`{c}`' for c in result['trained_by'])}"]
            if set(result.get("trained_by", [])) - {result["command"]} else []),
          f"- {result['date']}; {result['cpu']}; {result['threads']} torch threads per run, {result['parallel']} runs "
          f"side by side; torch {result['torch']}; recipe `{result['recipe']}` ({_settings_line(result)})",
          *_kept_line(result),
          f"- test mIoU of the fused deploy model on the {n_test} test scenes (built from Fashion-MNIST's test split), "
          "checkpoint picked on a validation split of the training scenes", "",
          "| segmenter | test mIoU (mean +- sd) | per seed | val mIoU per seed (what picks settings) | pixel acc | "
          "steps in the budget | training min | fused = train-time |", "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        seeds = ", ".join(f"{x['test_miou']:.2f}" for x in r["runs"])
        vals = ", ".join(f"{x['val_miou']:.2f}" for x in r["runs"])
        acc = statistics.mean(x["pixel_acc"] for x in r["runs"])
        steps = "/".join(str(x["steps"]) for x in r["runs"])
        same = all(x["fusion_ok"] for x in r["runs"])
        agree = min(x["agreement_pct"] for x in r["runs"])
        minutes = "/".join(f"{x['train_min']:.1f}" if x.get("train_min") else "?" for x in r["runs"])
        md.append(f"| {_model_label(r)} | {r['test_miou_mean']:.2f} +- {r['test_miou_sd']:.2f} | {seeds} | {vals} | {acc:.2f} | "
                  f"{steps} | {minutes} | {'yes' if same else 'NO'} (labels {agree:.3f}% identical) |")
    if paired := _paired_line(result):
        md += [""] + paired
    pre = [(r["model"], x) for r in result["rows"] for x in r["runs"] if "pretrain_min" in x]
    if pre:
        md += ["", "Backbones pretrained as Fashion-MNIST classifiers first (`--pretrain-epochs`):", "",
               "| segmenter | seed | pretraining (min) | data | image size | its val / test top-1 |",
               "|---|---|---|---|---|---|"]
        md += [f"| {m} | {x['seed']} | {x['pretrain_min'] or float('nan'):.1f} | {x['pretrain_data']} | "
               f"{x['pretrain_px']} px | "
               f"{x['pretrain_val_top1'] or float('nan'):.2f} / "
               f"{x['pretrain_test_top1'] or float('nan'):.2f} |" for m, x in pre]
    write_keeping_story(json_path.with_suffix(".md"), md)
    return "\n".join(md)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["pspnet_repvgg_a0", "pspnet_resnet18", "pspnet_repvgg_a0_fast"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--budget-min", type=float, default=30.0)
    ap.add_argument("--total-budget-min", type=float,
                    help="equal CPU time end to end (with --pretrain-epochs): each segmenter trains for this minus its "
                         "backbone's pretraining wall minutes, instead of --budget-min")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--recipe", default="scenes")
    ap.add_argument("--lr", type=float, help="the segmenters' base lr instead of the recipe's (the same for every model)")
    ap.add_argument("--data-dir", help="Fashion-MNIST files the scenes are built from (default: the system's)")
    ap.add_argument("--runs", default="runs/seg_scenes")
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--collect-only", action="store_true")
    ap.add_argument("--pretrain-epochs", type=int, default=0,
                    help="first train each backbone as a Fashion-MNIST classifier for this many epochs (0: from scratch)")
    ap.add_argument("--pretrain-size", type=int,
                    help="pretrain at this image size (Fashion-MNIST's 28 px resized) instead of 28 px: at 28 px "
                         "the stride-16 and stride-32 stages see 2x2 and 1x1 maps, so their 3x3 kernels barely learn "
                         "the spatial context they get in the 96 px scenes")
    ap.add_argument("--pretrain-data", choices=("fashion-mnist", "fmnist-items"), default="fashion-mnist",
                    help="what the backbones pretrain on: Fashion-MNIST as it is (grey items on black, 28 px) or "
                         "fmnist-items (each item alone on a 64 px scene background, at the scenes' scale and colours)")
    ap.add_argument("--block", default="repvgg",
                    help="the RepVGG segmenters' train-time block variant (repvgg.list_blocks()), pretraining "
                         "included; the fused segmenter is the same plain network; ResNets are unaffected")
    ap.add_argument("--amp", choices=("auto", "fp32", "bf16"), default="auto",
                    help="precision of every training (pretraining too); auto: each run's own timing probe, which "
                         "can choose differently from run to run where bf16 is about as fast as fp32")
    ap.add_argument("--keep-finished", action="store_true",
                    help="train only the (model, seed) runs without a summary.json (add seeds to an earlier run), "
                         "starting from a finished pretraining where one is there")
    ap.add_argument("--keep-earlier-seeds", action="store_true",
                    help="seeds without a run in --runs (trained on another machine, whose runs folder is gone) "
                         "are taken from this --tag's results JSON as they were collected, and named in the table")
    args = ap.parse_args()
    if args.total_budget_min and not args.pretrain_epochs:
        ap.error("--total-budget-min splits the minutes between pretraining and segmentation: give --pretrain-epochs "
                 "too (without pretraining use --budget-min)")
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
