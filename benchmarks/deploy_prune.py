"""Prune a trained, fused RepVGG (L1 structured, default 30%), fine-tune briefly, and report params,
MACs, CPU speed (PyTorch and onnxruntime, interleaved medians) and top-1 before/after pruning and
after fine-tuning (on the augmentation the model was trained with). A control fine-tunes the
*unpruned* fused model for the same epochs, so the pruning loss is not confused with the effect of
extra training.

    nice -n 10 python benchmarks/deploy_prune.py --checkpoint runs/deploy_a0_repvgg/deploy.safetensors \
        --ratio 0.3 --finetune-epochs 2
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import this_command  # noqa: E402
from benchmarks.deploy_export_zoo import hardware  # noqa: E402
from repvgg.complexity import count_macs, count_params  # noqa: E402
from repvgg.data import build_datasets, build_loader  # noqa: E402
from repvgg.deploy.common import load_model, time_interleaved, top1  # noqa: E402
from repvgg.deploy.export import export_model  # noqa: E402
from repvgg.deploy.finetune import finetune  # noqa: E402
from repvgg.deploy.prune import prune_model, save_pruned  # noqa: E402
from repvgg.deploy.repair import REPAIRS, repair  # noqa: E402
from repvgg.deploy.quantize import calibration_images, ort_session  # noqa: E402
from repvgg.train.config import training_augmentation  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def speeds(models: dict, x: torch.Tensor, repeats: int) -> dict:
    """ms per batch: PyTorch eager and onnxruntime, every contender timed round-robin."""
    fns = {}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for name, m in models.items():
            path = Path(tmp) / f"{name}.onnx"
            export_model(m, path, dynamic_batch=True, image_size=tuple(x.shape[-2:]), log=lambda s: None)
            sessions[name] = ort_session(path)
        xn = x.numpy()
        for name, m in models.items():
            fns[f"torch_{name}"] = lambda m=m: m(x)
            fns[f"ort_{name}"] = lambda s=sessions[name]: s.run(None, {"input": xn})
        with torch.no_grad():
            t = time_interleaved(fns, repeats=repeats)
    return {k: v * 1e3 for k, v in t.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="fashion-mnist-builtin")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--multiple-of", type=int, default=8, help="round kept widths to a multiple of this")
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05, help="fine-tuning peak lr (one-cycle); 0.01 before 2026-12-03")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--calib-images", type=int, default=2048)
    ap.add_argument("--repair", choices=sorted(REPAIRS), default="reconstruct")
    ap.add_argument("--distill", action="store_true", help="fine-tune towards the unpruned model's outputs too")
    ap.add_argument("--distill-weight", type=float, default=0.5, help="share of the loss that is distillation")
    ap.add_argument("--feature-weight", type=float, default=0.0,
                    help="with --distill: weight of the per-layer feature loss towards the unpruned model")
    ap.add_argument("--ema-decay", type=float, help="end the fine-tune on the EMA of its weights (e.g. 0.999)")
    ap.add_argument("--seed", type=int, default=0, help="the fine-tune's seed (batch order, augmentation)")
    ap.add_argument("--no-control", action="store_true", help="skip fine-tuning the unpruned model (saves time)")
    ap.add_argument("--save", default="runs/deploy_prune/a0_pruned30_ft.safetensors")
    ap.add_argument("--out", default="deploy_prune")
    args = ap.parse_args()
    base = load_model(args.checkpoint, log=print)
    size = int(base.checkpoint_meta.get("image_size", 28))
    aug = training_augmentation(base.checkpoint_meta)  # fine-tune on the augmentation the model was trained with
    train_ds, test_ds, info = build_datasets(args.data, image_size=size, **aug)
    test = build_loader(test_ds, 250, train=False)
    shape = (1, base.in_chans, size, size)
    pruned = prune_model(base, args.ratio, multiple_of=args.multiple_of).model
    row = dict(checkpoint=args.checkpoint, ratio=args.ratio, multiple_of=args.multiple_of, finetune_epochs=args.finetune_epochs,
               train_aug=aug,
               params_before=count_params(base), params_after=count_params(pruned),
               macs_before=count_macs(base, shape), macs_after=count_macs(pruned, shape),
               widths_after=pruned.pruned_widths, top1_before=top1(base, test), top1_pruned=top1(pruned, test))
    t0 = time.perf_counter()
    repair(pruned, base, calibration_images(train_ds, args.calib_images), args.repair)
    row.update(repair=args.repair, calib_images=args.calib_images, repair_seconds=round(time.perf_counter() - t0, 1),
               top1_pruned_repaired=top1(pruned, test))
    print(json.dumps(row), flush=True)
    t0 = time.perf_counter()
    finetune(pruned, train_ds, args.finetune_epochs, lr=args.lr, teacher=base if args.distill else None,
             distill_weight=args.distill_weight, feature_weight=args.feature_weight, ema_decay=args.ema_decay,
             seed=args.seed, log=lambda m: print(m, flush=True))
    row["ema_decay"] = args.ema_decay
    row["feature_weight"] = args.feature_weight
    row["finetune_lr"] = args.lr
    row["finetune_seed"] = args.seed
    row["finetune_minutes"] = round((time.perf_counter() - t0) / 60, 1)
    row["top1_pruned_finetuned"] = top1(pruned, test)
    if not args.no_control:
        control = finetune(copy.deepcopy(base), train_ds, args.finetune_epochs, lr=args.lr)
        row["top1_unpruned_same_finetune"] = top1(control, test)
    for b in (64, 1):
        x = torch.randn(b, *shape[1:])
        for k, v in speeds({"before": base, "after": pruned}, x, args.repeats).items():
            row[f"{k}_ms_b{b}"] = v
    row["speedup_torch_b64"] = row["torch_before_ms_b64"] / row["torch_after_ms_b64"]
    row["speedup_ort_b64"] = row["ort_before_ms_b64"] / row["ort_after_ms_b64"]
    row["speedup_torch_b1"] = row["torch_before_ms_b1"] / row["torch_after_ms_b1"]
    row["speedup_ort_b1"] = row["ort_before_ms_b1"] / row["ort_after_ms_b1"]
    save_pruned(pruned, args.save, metadata={"prune_ratio": args.ratio, "finetune_epochs": args.finetune_epochs,
                                             "image_size": size})
    print(json.dumps(row), flush=True)
    meta = dict(command=this_command(), hardware=hardware(), data=args.data,
                test_images=len(test_ds), torch=torch.__version__, onnxruntime=onnxruntime.__version__,
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(dict(meta=meta, row=row), indent=1))
    r = row
    lines = [f"# Pruning {args.ratio:.0%} of the filters of a trained, fused RepVGG ({args.data})", "",
             f"- command: `{meta['command']}`", f"- hardware: {meta['hardware']}",
             f"- torch {meta['torch']}, onnxruntime {meta['onnxruntime']}; {meta['date']}; test: {meta['test_images']} images",
             f"- after pruning: repair `{args.repair}` on {args.calib_images} training images "
             f"(repvgg.deploy.repair.{args.repair}, {r['repair_seconds']} s), then fine-tuning (seed {args.seed}): "
             f"{args.finetune_epochs} epochs, SGD lr {args.lr} one-cycle, label smoothing 0.1, "
             f"the training run's augmentation {r['train_aug'] or '(defaults)'}, "
             f"{f' with distillation from the unpruned model (T=4, weight {args.distill_weight})' if args.distill else ''}"
             f"{f', per-layer feature loss towards it (weight {args.feature_weight})' if args.feature_weight else ''}"
             f"{f', ending on the EMA of the weights (decay {args.ema_decay})' if args.ema_decay else ''} "
             f"({r['finetune_minutes']} min)" + ("" if args.no_control else "; control = the unpruned model fine-tuned the same way"), "",
             "| | before | after pruning | after fine-tuning |", "|---|---|---|---|",
             f"| params | {r['params_before']:,} | {r['params_after']:,} | {r['params_after']:,} |",
             f"| MACs / image | {r['macs_before']:,} | {r['macs_after']:,} | {r['macs_after']:,} |",
             f"| top-1 % | {r['top1_before']:.2f} | {r['top1_pruned']:.2f} ({args.repair}: {r['top1_pruned_repaired']:.2f}) "
             f"| {r['top1_pruned_finetuned']:.2f} "
             + (f"(unpruned, same fine-tune: {r['top1_unpruned_same_finetune']:.2f}) |" if "top1_unpruned_same_finetune" in r
                else "(control not run) |"),
             f"| PyTorch CPU ms, batch 64 | {r['torch_before_ms_b64']:.1f} | {r['torch_after_ms_b64']:.1f} "
             f"({r['speedup_torch_b64']:.2f}x) | same |",
             f"| onnxruntime CPU ms, batch 64 | {r['ort_before_ms_b64']:.1f} | {r['ort_after_ms_b64']:.1f} "
             f"({r['speedup_ort_b64']:.2f}x) | same |",
             f"| PyTorch CPU ms, batch 1 | {r['torch_before_ms_b1']:.2f} | {r['torch_after_ms_b1']:.2f} "
             f"({r['speedup_torch_b1']:.2f}x) | same |",
             f"| onnxruntime CPU ms, batch 1 | {r['ort_before_ms_b1']:.2f} | {r['ort_after_ms_b1']:.2f} "
             f"({r['speedup_ort_b1']:.2f}x) | same |", "",
             f"Pruned widths (rounded to multiples of {args.multiple_of}): {r['widths_after']}"]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
