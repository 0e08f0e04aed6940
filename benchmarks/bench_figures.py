"""The speed figures of issue 5, measured in ONE interleaved run, written to benchmarks/results/.

    python benchmarks/bench_figures.py --device cpu --batch-size 32            # this 2-core CPU
    python benchmarks/bench_figures.py --device cuda --batch-size 128          # on a GPU machine

Rows: RepVGG-A0 (ours deploy / train, timm's train form and timm's reparameterize_model, ours via
optimize_for_inference in fp32 and in bf16), ResNet-18 fused (eager and optimized, the same
treatment as A0), RepVGG-B0 train / deploy; the A0 deploy convs timed alone (the ceiling); peak
memory of the A0 train and deploy forms. Every ratio is between rows of the same run (medians of
interleaved repeats; the median of per-repeat ratios is given beside it). ``--checkpoint`` adds
the accuracy check of reduced precision on real data: top-1 of the trained model in fp32 and
through optimize_for_inference in bf16 (fp16 too on GPU) on its test set.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from repvgg.bench import Protocol, markdown_table, run_bench, write_results
from repvgg.bench.memory import peak_memory
from repvgg.bench.models import ModelSpec
from repvgg.bench.paper import PAPER_B0_DEPLOY_OVER_TRAIN
from repvgg.bench.report import write_text

RESULTS = Path(__file__).resolve().parent / "results"

# (figure, numerator label key, denominator label key, target on CPU, target on GPU)
FIGURES = [
    ("ours deploy / timm reparameterize_model, eager fp32", "ours_deploy", "timm_deploy", 1.0, 1.0),
    ("ours train form / timm train form, eager fp32", "ours_train", "timm_train", 1.0, 1.0),
    ("optimize_for_inference fp32 / timm deploy eager fp32", "ours_opt_fp32", "timm_deploy", 1.15, 1.5),
    ("optimize_for_inference reduced precision / timm deploy eager fp32", "ours_opt_low", "timm_deploy", 2.0, 3.0),
    ("A0 deploy / ResNet-18 fused, eager fp32", "ours_deploy", "resnet18", 1.6, 1.33),
    ("A0 / ResNet-18 fused, both optimize_for_inference fp32", "ours_opt_fp32", "resnet18_opt", None, None),
    ("B0 deploy / B0 train form, eager fp32", "b0_deploy", "b0_train", None, PAPER_B0_DEPLOY_OVER_TRAIN),
]


def specs(low: str) -> dict[str, ModelSpec]:
    return dict(
        ours_deploy=ModelSpec("repvgg_a0", "deploy"),
        timm_deploy=ModelSpec("timm:repvgg_a0", "deploy"),
        ours_train=ModelSpec("repvgg_a0", "train"),
        timm_train=ModelSpec("timm:repvgg_a0", "train"),
        ours_opt_fp32=ModelSpec("repvgg_a0", "deploy", treatment="optimized"),
        ours_opt_low=ModelSpec("repvgg_a0", "deploy", dtype=low, treatment="optimized"),
        resnet18=ModelSpec("resnet18"),
        resnet18_opt=ModelSpec("resnet18", treatment="optimized"),
        b0_train=ModelSpec("repvgg_b0", "train"),
        b0_deploy=ModelSpec("repvgg_b0", "deploy"),
    )


def accuracy_check(checkpoint: str, device: torch.device, dtypes: list[torch.dtype], data_dir=None,
                   data=None) -> dict:
    """Top-1 on the checkpoint's test set: fused fp32 against optimize_for_inference in each dtype."""
    import repvgg
    from repvgg.data import build_datasets, build_loader
    from repvgg.evaluate import evaluate

    meta = repvgg.read_metadata(checkpoint)
    model = repvgg.reparameterize(repvgg.model_from_checkpoint(checkpoint)).eval()
    image_size = int(meta.get("image_size", 224))
    data = data or meta["dataset"]
    _, test_ds, info = build_datasets(data, data_dir=data_dir, image_size=image_size)
    loader = build_loader(test_ds, 256, train=False)
    shape = (2, info.in_chans, image_size, image_size)
    out = dict(checkpoint=checkpoint, dataset=data, n_test=len(test_ds))
    out["fp32_top1"] = evaluate(model, loader, info.num_classes, device)["top1"]
    for dt in dtypes:
        opt = repvgg.optimize_for_inference(model, device=device, dtype=dt, example_shape=shape)
        name = str(dt).removeprefix("torch.")
        out[f"{name}_top1"] = evaluate(opt, loader, info.num_classes, device)["top1"]
        out[f"{name}_drop"] = out["fp32_top1"] - out[f"{name}_top1"]
        out[f"{name}_within_0.1"] = abs(out[f"{name}_drop"]) <= 0.1
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--warmup", type=int)
    p.add_argument("--iters", type=int)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    p.add_argument("--checkpoint", help="trained RepVGG checkpoint for the reduced-precision accuracy check")
    p.add_argument("--data", help="dataset spec for the accuracy check (default: the checkpoint's)")
    p.add_argument("--data-dir")
    p.add_argument("--notes", type=Path, help="markdown with the reasons found for missed figures, appended")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    default = Protocol.default(device.type, args.repeats)
    protocol = Protocol(default.warmup if args.warmup is None else args.warmup,
                        default.iters if args.iters is None else args.iters, args.repeats)
    rows_by_key = specs("bf16")
    extra = {"ours_opt_fp16": ModelSpec("repvgg_a0", "deploy", dtype="fp16", treatment="optimized")} if gpu else {}
    all_specs = {**rows_by_key, **extra}
    result = run_bench(list(all_specs.values()), args.batch_size, args.image_size, device, protocol,
                       ceiling=[all_specs["ours_deploy"]],
                       memory=[all_specs["ours_train"], all_specs["ours_deploy"]])
    rows = {k: r for k, r in zip(all_specs, result["rows"])}
    figures = []
    for name, num, den, cpu_t, gpu_t in FIGURES:
        a, b = rows[num], rows[den]
        paired = torch.tensor([x / y for x, y in zip(a["per_repeat"], b["per_repeat"])]).median().item()
        target = gpu_t if gpu else cpu_t
        figures.append(dict(figure=name, ratio=a["images_per_s"] / b["images_per_s"], paired_median_ratio=paired,
                            target=target, reached=None if target is None else a["images_per_s"] / b["images_per_s"] >= target))
    dep = rows["ours_deploy"]
    figures.append(dict(figure="A0 deploy throughput / its conv ceiling", ratio=dep["ceiling_fraction"],
                        target=0.8, reached=dep["ceiling_fraction"] >= 0.8))
    mem = dep["peak_mem_mb"] / rows["ours_train"]["peak_mem_mb"]
    figures.append(dict(figure="A0 peak inference memory, deploy / train form (NCHW)", ratio=mem, target=0.5,
                        reached=mem <= 0.5, lower_is_better=True,
                        deploy_mb=dep["peak_mem_mb"], train_mb=rows["ours_train"]["peak_mem_mb"]))
    # The same in channels_last, oneDNN's native layout: NCHW convs add reorder copies of their input.
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    cl = {f: peak_memory(ModelSpec("repvgg_a0", f, channels_last=True), shape, device) / 2**20
          for f in ("deploy", "train")}
    mem = cl["deploy"] / cl["train"]
    figures.append(dict(figure="A0 peak inference memory, deploy / train form (channels_last)", ratio=mem,
                        target=0.5, reached=mem <= 0.5, lower_is_better=True, deploy_mb=cl["deploy"],
                        train_mb=cl["train"]))
    result["figures"] = figures
    if not gpu:
        result["gpu_figures"] = "not measured in this session (no GPU); run this script with --device cuda"
    if args.checkpoint:
        dts = [torch.bfloat16] + ([torch.float16] if gpu else [])
        try:
            result["accuracy"] = accuracy_check(args.checkpoint, device, dts, args.data_dir, args.data)
        except Exception as e:  # keep the timings even if the checkpoint cannot be evaluated
            result["accuracy"] = dict(checkpoint=args.checkpoint, error=f"{type(e).__name__}: {e}")
    if args.notes:
        result["notes"] = args.notes.read_text()

    stem = args.out or RESULTS / f"bench_figures_{device.type}"
    table = markdown_table(result["rows"])
    lines = ["| figure | measured | paired median | target | reached |", "|---|---|---|---|---|"]
    for f in figures:
        t = "-" if f["target"] is None else (f"<= {f['target']}" if f.get("lower_is_better") else f">= {f['target']}")
        paired = f"{f['paired_median_ratio']:.2f}x" if "paired_median_ratio" in f else ""
        mb = f" ({f['deploy_mb']:.0f} / {f['train_mb']:.0f} MB)" if "deploy_mb" in f else ""
        lines.append(f"| {f['figure']} | {f['ratio']:.2f}x{mb} | {paired} | {t} | {f['reached']} |")
    print(table + "\n\n" + "\n".join(lines))
    if "accuracy" in result:
        print(result["accuracy"])
    for r in result["rows"]:
        if "optimize_info" in r:
            print(r["label"], "->", r["optimize_info"])
    write_results(stem, result, title=f"RepVGG-A0 vs baselines ({result['environment']['device']})")
    # The .md gets the figures table too (write_results wrote rows + settings).
    md = stem.with_suffix(".md")
    extra = "\n## Figures\n\n" + "\n".join(lines) + "\n"
    if "accuracy" in result:
        extra += "\n## Reduced precision on real data\n\n" + "\n".join(f"- {k}: {v}" for k, v in result["accuracy"].items()) + "\n"
    if "gpu_figures" in result:
        extra += f"\nGPU figures: {result['gpu_figures']}.\n"
    if "notes" in result:
        extra += "\n## Notes\n\n" + result["notes"]
    write_text(md, md.read_text() + extra)
    print(f"wrote {stem}.{{json,csv,md,png}}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
