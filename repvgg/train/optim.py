"""Optimizer parameter groups and the per-step lr schedule.

Weight decay goes on conv and linear kernels only: decaying BN scales/shifts, biases or the
DiracNet alpha/beta re-parameterization scalars pulls them toward 0, which changes what the
network computes rather than regularizing it (the paper decays kernels only).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

_KERNEL_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def param_groups(model: nn.Module, weight_decay: float, exclude: set[int] = frozenset()) -> list[dict]:
    """[{"params": kernels, "weight_decay": wd}, {"params": everything else, "weight_decay": 0}].

    Kernels are the `weight` of conv and linear modules; every other trainable parameter
    (BN affine, biases, dirac_alpha/beta, SE biases) is not decayed. Shared params count once.
    ``exclude``: ids of kernels regularized another way (custom L2), left out of the decay group.
    """
    decay, seen = [], set()
    for m in model.modules():
        w = m.weight if isinstance(m, _KERNEL_TYPES) else None
        if w is not None and w.requires_grad and id(w) not in seen and id(w) not in exclude:
            decay.append(w)
            seen.add(id(w))
    no_decay = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            no_decay.append(p)
            seen.add(id(p))
    return [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]


def scaled_lr(lr_per_256: float, global_batch: int) -> float:
    """The linear scaling rule: the recipe's lr is per 256 images."""
    return lr_per_256 * global_batch / 256


def build_optimizer(model: nn.Module, cfg: dict, global_batch: int, exclude: set[int] = frozenset()
                    ) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg["weight_decay"], exclude)
    lr = scaled_lr(cfg["lr"], global_batch)
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=cfg["momentum"], nesterov=bool(cfg["nesterov"]))


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine") -> float:
    """Multiplier of the base lr at `step`: linear warm-up from ~0, then cosine to exactly 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def build_scheduler(optimizer, cfg: dict, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration (its state_dict resumes exactly)."""
    total = cfg["epochs"] * steps_per_epoch
    warmup = round(cfg["warmup_epochs"] * steps_per_epoch)
    schedule = cfg["schedule"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, schedule))
