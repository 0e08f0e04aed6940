"""Classification metrics: top-1/top-5, per-class accuracy, confusion matrix (+ PNG).

Evaluation runs in fp32 with the model in eval mode, so a train-time model and its fused
deploy form are compared on the arithmetic of the fusion alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fileio import atomic_savefig


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device="cpu", *, keep_outputs: bool = False,
             reduce=None, channels_last: bool = False) -> dict:
    """Run `model` over `loader`; return top1/top5 (%), loss, per_class (%), confusion [true, pred].

    keep_outputs: also return `logits` [N, C] and `preds` [N] in loader order. `reduce` sums
    count tensors across ranks (distributed evaluation on sharded loaders).
    """
    was_training = model.training
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    top5 = torch.zeros(1, dtype=torch.int64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    logits_all = []
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = model(x).float()
        if out.shape[1] != num_classes:
            raise ValueError(f"model outputs {out.shape[1]} classes but the data has {num_classes}")
        loss_sum += F.cross_entropy(out, y, reduction="sum").double().cpu()
        pred = out.argmax(1)
        conf += torch.bincount((y * num_classes + pred).cpu(), minlength=num_classes ** 2).view(
            num_classes, num_classes)
        k = min(5, num_classes)
        top5 += (out.topk(k, 1).indices == y[:, None]).any(1).sum().cpu()
        if keep_outputs:
            logits_all.append(out.cpu())
    if reduce is not None:
        conf, top5, loss_sum = reduce(conf), reduce(top5), reduce(loss_sum)
    model.train(was_training)
    n = int(conf.sum())
    if n == 0:
        raise ValueError("evaluation data is empty")
    per_class_n = conf.sum(1)
    result = {
        "n": n,
        "top1": 100.0 * float(conf.diag().sum()) / n,
        "top5": 100.0 * float(top5) / n,
        "loss": float(loss_sum) / n,
        "per_class": (100.0 * conf.diag().double() / per_class_n.clamp_min(1)).tolist(),
        "confusion": conf,
    }
    if keep_outputs:
        result["logits"] = torch.cat(logits_all)
        result["preds"] = result["logits"].argmax(1)
    return result


def format_report(result: dict, class_names: list[str] | None = None) -> str:
    lines = [f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}  "
             f"({result['n']} images)", "per-class accuracy:"]
    names = class_names or [str(i) for i in range(len(result["per_class"]))]
    for name, acc in zip(names, result["per_class"]):
        lines.append(f"  {name:>16}: {acc:6.2f}%")
    return "\n".join(lines)


def save_confusion_png(confusion: torch.Tensor, path: str | os.PathLike,
                       class_names: list[str] | None = None, title: str = "") -> Path:
    """Row-normalized confusion matrix (true rows, predicted columns), counts in the cells."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    c = confusion.double()
    norm = c / c.sum(1, keepdim=True).clamp_min(1)
    k = c.shape[0]
    names = class_names or [str(i) for i in range(k)]
    size = max(4.0, min(20.0, 0.55 * k + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        for i in range(k):
            for j in range(k):
                if c[i, j] > 0:
                    ax.text(j, i, int(c[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    try:
        return atomic_savefig(fig, path, dpi=100)
    finally:
        plt.close(fig)


def compare_predictions(train_out: dict, deploy_out: dict, labels: torch.Tensor, tol: float = 1e-4) -> dict:
    """Judge a fused model by what fusion is: the same function up to floating-point rounding.

    Fusion changes only rounding (~1e-6 of the logits' scale in float32), so the verdict is the
    largest logit difference relative to the largest logit (``rel_logit_diff`` <= ``tol``). A
    prediction can then flip only where the train-time model's two best logits are within rounding
    of each other (a near-tie, gap <= ``tol`` of the scale); such flips are counted, not failed:
    on a briefly trained model many logits sit close together, and one tie in a few hundred images
    says nothing about the fusion. Returns the figures and ``ok`` / ``reason``; never raises.
    """
    a, b = train_out["logits"], deploy_out["logits"]
    pa, pb = a.argmax(1), b.argmax(1)
    scale = a.abs().max().clamp_min(1e-12)
    top2 = a.topk(min(2, a.shape[1]), 1).values
    gap = (top2[:, 0] - top2[:, -1]) / scale
    tie = gap <= tol
    flips = pa != pb
    away = ~tie
    max_diff = float((a - b).abs().max())
    info = {
        "agreement": 100.0 * float((~flips).sum()) / len(pa),
        "agreement_away_from_ties": 100.0 * float((~flips & away).sum()) / max(int(away.sum()), 1),
        "flips": int(flips.sum()), "tie_flips": int((flips & tie).sum()), "near_ties": int(tie.sum()),
        "max_logit_diff": max_diff, "rel_logit_diff": max_diff / float(scale),
        "top1_train": 100.0 * float((pa == labels).sum()) / len(pa),
        "top1_deploy": 100.0 * float((pb == labels).sum()) / len(pa),
    }
    bad_flips = info["flips"] - info["tie_flips"]
    if info["rel_logit_diff"] > tol:
        info["reason"] = (f"logits differ by {max_diff:.3g} ({info['rel_logit_diff']:.2e} of their scale, tolerance "
                          f"{tol:g}): the fused model does not compute what the train-time model computes")
    elif bad_flips:
        info["reason"] = f"{bad_flips} prediction(s) changed that were not near-ties"
    info["ok"] = "reason" not in info
    return info
