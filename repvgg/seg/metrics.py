"""Segmentation metrics from one confusion matrix accumulated over the whole set, and inference.

mIoU is the mean over classes of TP / (TP + FP + FN) computed on the summed matrix (not a mean of
per-image IoUs), as mmsegmentation and the Cityscapes benchmark do; classes absent from both the
labels and the predictions are left out of the mean. Pixels labelled 255 are ignored.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 [C, C], rows = true class, columns = predicted; ignored pixels dropped."""
    keep = target != IGNORE_INDEX
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < 0):
        raise ValueError(f"label values outside 0..{num_classes - 1} (and not {IGNORE_INDEX}) in the targets")
    return torch.bincount(t * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def scores(conf: torch.Tensor, class_names: list[str] | None = None) -> dict:
    """mIoU, pixel accuracy, mean class accuracy and per-class IoU (percent) from a confusion matrix."""
    conf = conf.double()
    tp = conf.diag()
    gt, pr = conf.sum(1), conf.sum(0)
    union = gt + pr - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), torch.full_like(tp, float("nan")))
    names = class_names or [str(i) for i in range(len(tp))]
    return {"miou": 100 * float(iou[present].mean()) if present.any() else float("nan"),
            "pixel_acc": 100 * float(tp.sum() / conf.sum().clamp(min=1)),
            "mean_acc": 100 * float(acc[gt > 0].mean()) if (gt > 0).any() else float("nan"),
            "per_class_iou": {n: (100 * float(v) if not math.isnan(v) else None) for n, v in zip(names, iou.tolist())},
            "pixels": int(conf.sum())}


def format_scores(s: dict) -> str:
    lines = [f"mIoU {s['miou']:.2f}%  pixel accuracy {s['pixel_acc']:.2f}%  mean class accuracy {s['mean_acc']:.2f}%  "
             f"({s['pixels']} labelled pixels)", f"  {'class':<16} IoU %"]
    lines += [f"  {n:<16} {'-' if v is None else f'{v:.2f}'}" for n, v in s["per_class_iou"].items()]
    return "\n".join(lines)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, window: int | None = None, stride: int | None = None) -> torch.Tensor:
    """Logits at the input's size: the whole image at once, or sliding windows (window/stride px),
    overlapping logits averaged, as mmsegmentation's slide mode."""
    if window is None or (x.shape[-2] <= window and x.shape[-1] <= window):
        return model(x)
    stride = stride or (2 * window) // 3
    h, w = x.shape[-2:]
    rows = max(math.ceil((h - window) / stride), 0) + 1
    cols = max(math.ceil((w - window) / stride), 0) + 1
    out, count = None, x.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = min(r * stride, max(h - window, 0)), min(c * stride, max(w - window, 0))
            tile = x[..., y0:y0 + window, x0:x0 + window]
            logits = model(tile)
            if out is None:
                out = x.new_zeros(x.shape[0], logits.shape[1], h, w)
            out[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += logits
            count[..., y0:y0 + tile.shape[-2], x0:x0 + tile.shape[-1]] += 1
    return out / count


@torch.no_grad()
def evaluate_segmenter(model: nn.Module, loader, num_classes: int, device="cpu", *, window: int | None = None,
                       keep_predictions: bool = False, class_names=None) -> dict:
    """Scores over the whole loader (one confusion matrix); optionally the predicted masks (uint8)."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    preds = []
    for x, y in loader:
        logits = predict_logits(model, x.to(device), window)
        p = logits.argmax(1).cpu()
        conf += confusion_matrix(p, y, num_classes)
        if keep_predictions:
            preds.append(p.to(torch.uint8))
    res = scores(conf, class_names)
    res["confusion"] = conf
    if keep_predictions:
        res["predictions"] = torch.cat(preds)
    return res


def seg_loss(outputs, target: torch.Tensor, aux_weight: float = 0.4) -> torch.Tensor:
    """Cross-entropy ignoring 255 on the main output, plus aux_weight x that of the aux head (training)."""
    if isinstance(outputs, tuple):
        main, aux = outputs
        return F.cross_entropy(main.float(), target, ignore_index=IGNORE_INDEX) + \
            aux_weight * F.cross_entropy(aux.float(), target, ignore_index=IGNORE_INDEX)
    return F.cross_entropy(outputs.float(), target, ignore_index=IGNORE_INDEX)
