"""Classification metrics: top-1/top-5, per-class accuracy, confusion matrix (+ PNG).

Evaluation runs in fp32 with the model in eval mode, so a train-time model and its fused
deploy form are compared on the arithmetic of the fusion alone.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path


def compare_predictions(train_out: dict, deploy_out: dict, labels: torch.Tensor,
                        tie_tol: float = 1e-4, min_agreement: float = 99.9) -> dict:
    """Check that a fused model predicts what its train-time form predicts.

    Fusion changes only floating-point rounding (~1e-6 relative), so a prediction can flip
    only where the train-time model's two best logits are within rounding of each other (a
    tie). Raises AssertionError when any flip is not such a near-tie, when agreement is below
    `min_agreement` %, or when top-1 differs by more than the near-tie flips can explain.
    """
    a, b = train_out["logits"], deploy_out["logits"]
    pa, pb = a.argmax(1), b.argmax(1)
    diff = (pa != pb).nonzero().flatten()
    scale = a.abs().amax(1).clamp_min(1.0)
    gap = (a.gather(1, pa[:, None]) - a.gather(1, pb[:, None])).squeeze(1) / scale
    not_ties = [int(i) for i in diff if gap[i] > tie_tol]
    agreement = 100.0 * float((pa == pb).sum()) / len(pa)
    correct_a, correct_b = int((pa == labels).sum()), int((pb == labels).sum())
    info = {"agreement": agreement, "flips": len(diff), "tie_flips": len(diff) - len(not_ties),
            "max_logit_diff": float((a - b).abs().max()), "top1_train": 100.0 * correct_a / len(pa),
            "top1_deploy": 100.0 * correct_b / len(pa)}
    if not_ties:
        raise AssertionError(f"fused model changed {len(not_ties)} predictions that were not ties "
                             f"(first indices {not_ties[:5]}); max logit diff {info['max_logit_diff']:.3g}")
    if agreement < min_agreement:
        raise AssertionError(f"fused model agrees on only {agreement:.3f}% of predictions")
    if abs(correct_a - correct_b) > len(diff):
        raise AssertionError(f"top-1 differs: train {info['top1_train']:.2f}% vs deploy {info['top1_deploy']:.2f}%")
    return info
