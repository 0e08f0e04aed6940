"""What limits mIoU on fmnist-scenes: the output stride's resolution, and where a trained segmenter errs.

    python benchmarks/seg_limits.py --threads 1 --checkpoint RUNS/pspnet_repvgg_a0_s0/deploy.safetensors ...

1. Resolution. PSPNet scores classes at 1/8 of the input (output stride 8) and upsamples the logits
   bilinearly. Scoring each class by its share of an s x s cell (the ground truth average-pooled) and
   upsampling the same way gives a naive estimate of what stride s alone costs; it is not a bound:
   learned logits are sharper than area shares and place boundaries inside a cell better (part 2's
   "recognition fixed" figures exceed it). Strides 8, 4 and 2 are reported.
2. Each --checkpoint (a segmenter, fused or not) on the test scenes, its errors split in two:
   localisation (items vs background, classes ignored: foreground IoU) and recognition (the class
   accuracy on pixels that both the prediction and the truth call an item); "mIoU, recognition fixed"
   gives those pixels their true class, so what is still lost is localisation; the most confused
   class pairs name the recognition errors.
Writes benchmarks/results/seg_limits.{json,md} (--out to rename).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results_md import this_command, write_keeping_story  # noqa: E402
from repvgg.seg.metrics import confusion_matrix, scores  # noqa: E402

BACKGROUND = 0
STRIDES = (8, 4, 2)


def area_pooled_confusion(masks: torch.Tensor, num_classes: int, stride: int) -> torch.Tensor:
    """Confusion matrix of area-share scores at stride ``stride`` (class shares per cell), upsampled bilinearly
    as the segmenters upsample their logits. ``masks``: [N, H, W] labels without ignored pixels."""
    onehot = F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2).float()
    cells = F.avg_pool2d(onehot, stride, ceil_mode=True)
    up = F.interpolate(cells, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return confusion_matrix(up.argmax(1), masks, num_classes)


def error_split(pred: torch.Tensor, truth: torch.Tensor, names: list[str], top: int = 5) -> dict:
    """Localisation vs recognition: foreground IoU, class accuracy where both say foreground, the mIoU with
    those pixels given their true class, and the ``top`` most frequent (true, predicted) class confusions."""
    n = len(names)
    pred, truth = pred.long(), truth.long()
    fg_p, fg_t = pred != BACKGROUND, truth != BACKGROUND
    both = fg_p & fg_t
    conf = confusion_matrix(pred, truth, n)
    fixed = scores(confusion_matrix(torch.where(both, truth, pred), truth, n), names)
    off = conf.clone()
    off.fill_diagonal_(0)
    off[BACKGROUND, :] = 0
    off[:, BACKGROUND] = 0
    flat = off.flatten().topk(min(top, n * n))
    pairs = [{"true": names[int(i) // n], "predicted": names[int(i) % n],
              "pct_of_true": 100 * int(v) / max(1, int(conf[int(i) // n].sum()))}
             for v, i in zip(flat.values, flat.indices) if int(v) > 0]
    s = scores(conf, names)
    return {"miou": s["miou"], "pixel_acc": s["pixel_acc"], "per_class_iou": s["per_class_iou"],
            "fg_iou": 100 * int(both.sum()) / max(1, int((fg_p | fg_t).sum())),
            "fg_class_acc": 100 * int((both & (pred == truth)).sum()) / max(1, int(both.sum())),
            "miou_recognition_fixed": fixed["miou"], "per_class_iou_recognition_fixed": fixed["per_class_iou"],
            "confusions": pairs}


def predictions(path: Path, test_ds, num_classes: int) -> tuple[torch.Tensor, str]:
    """The checkpoint's labels for every test scene (in order) and the segmenter's name."""
    from repvgg.seg.data import build_seg_loader
    from repvgg.seg.metrics import evaluate_segmenter
    from repvgg.seg.models import load_segmenter

    model = load_segmenter(path)
    res = evaluate_segmenter(model, build_seg_loader(test_ds, 32, train=False), num_classes, keep_predictions=True)
    return res["predictions"], model.spec["name"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def report(res: dict) -> list[str]:
    names = res["classes"]
    lines = ["# fmnist-scenes: what limits mIoU (output-stride resolution; localisation vs recognition)", "",
             f"- command: `{res['command']}`",
             f"- {res['date']}; {res['hardware']}; torch {res['torch']}; {res['test_images']} test scenes of "
             f"{res['size']} px", "",
             "Resolution, a naive estimate: the ground truth average-pooled to 1/stride and upsampled bilinearly, as "
             "the segmenters upsample their logits (not a bound: learned logits are sharper than area shares)", "",
             "| output stride | mIoU | pixel acc | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for c in res["stride_estimates"]:
        lines.append(f"| {c['stride']} | {c['miou']:.2f} | {c['pixel_acc']:.2f} | "
                     + " | ".join(_fmt(c["per_class_iou"][k]) for k in names) + " |")
    if res["checkpoints"]:
        lines += ["", "Trained segmenters on the test scenes: localisation (foreground IoU, classes ignored) vs "
                  "recognition (class accuracy where both call a pixel an item)", "",
                  "| checkpoint | mIoU | foreground IoU | class acc on foreground | mIoU, recognition fixed | "
                  "most confused (true -> predicted, % of the true class's pixels) |", "|---|---|---|---|---|---|"]
        for r in res["checkpoints"]:
            conf = "; ".join(f"{p['true']} -> {p['predicted']} {p['pct_of_true']:.1f}" for p in r["confusions"][:3])
            lines.append(f"| {r['name']} (`{r['path']}`) | {r['miou']:.2f} | {r['fg_iou']:.2f} | "
                         f"{r['fg_class_acc']:.2f} | {r['miou_recognition_fixed']:.2f} | {conf} |")
        lines += ["", "Per-class IoU of each, beside the output-stride-8 estimate", "",
                  "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
                  "| area-pooled truth, stride 8 | "
                  + " | ".join(_fmt(res["stride_estimates"][0]["per_class_iou"][k]) for k in names) + " |"]
        for r in res["checkpoints"]:
            lines.append(f"| {r['name']} | " + " | ".join(_fmt(r["per_class_iou"][k]) for k in names) + " |")
            lines.append(f"| {r['name']}, recognition fixed | "
                         + " | ".join(_fmt(r["per_class_iou_recognition_fixed"][k]) for k in names) + " |")
    return lines


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", nargs="*", default=[], help="segmenter checkpoints (.safetensors) to split")
    ap.add_argument("--data-dir", help="Fashion-MNIST folder (default: the usual places)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="seg_limits", help="results name under benchmarks/results/")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    paths = [Path(p) for p in args.checkpoint]
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"--checkpoint {p}: no such file")
    from repvgg.bench.report import cpu_label
    from repvgg.seg.data import build_seg_datasets

    _, test_ds, info = build_seg_datasets("fmnist-scenes", args.data_dir)
    truth, names = test_ds.masks, list(info.class_names)
    estimates = []
    for s in STRIDES:
        sc = scores(area_pooled_confusion(truth, len(names), s), names)
        estimates.append({"stride": s, "miou": sc["miou"], "pixel_acc": sc["pixel_acc"], "per_class_iou": sc["per_class_iou"]})
        print(f"stride {s}: area-pooled truth mIoU {sc['miou']:.2f}%", flush=True)
    rows = []
    for p in paths:
        pred, name = predictions(p, test_ds, len(names))
        rows.append({"name": name, "path": str(p), **error_split(pred, truth, names)})
        print(f"{name}: mIoU {rows[-1]['miou']:.2f}%, foreground IoU {rows[-1]['fg_iou']:.2f}%, class acc on "
              f"foreground {rows[-1]['fg_class_acc']:.2f}%, recognition fixed {rows[-1]['miou_recognition_fixed']:.2f}%")
    res = {"command": this_command(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "hardware": f"{cpu_label()}, {args.threads} torch threads", "torch": torch.__version__,
           "test_images": len(truth), "size": int(truth.shape[-1]), "classes": names, "stride_estimates": estimates,
           "checkpoints": rows}
    out = Path(__file__).resolve().parent / "results" / args.out
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    write_keeping_story(out.with_suffix(".md"), report(res))
    print(f"wrote {out}.md / .json")
    return res


if __name__ == "__main__":
    main()
