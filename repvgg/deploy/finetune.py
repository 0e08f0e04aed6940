"""Brief fine-tuning of a fused (plain) RepVGG, e.g. after pruning.

Train it on the augmentation the model was trained with
(``repvgg.train.config.training_augmentation``): on the full Fashion-MNIST, 3 epochs on the default
4 px crops took the trained A0 x0.5 from 94.11% to 93.62%, on its own 1 px crops + erasing to
94.13% (benchmarks/results/deploy_prune_full_kd3.md). Putting a BN back on each conv for the
fine-tune (folded afterwards) made no difference there (30% pruned, 3 epochs: 92.50 vs 92.49), so the convs
train as they are. The default peak lr 0.05 (one-cycle) beat 0.01 after pruning 30%: 93.75% vs
93.42% after 10 epochs with distillation, against 94.11% unpruned
(benchmarks/results/deploy_prune_full_rec_kd10{_lr05,}.md, one seed each).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prune import plain_layers, select_kept


def finetune(model: nn.Module, train_ds, epochs: int, *, lr: float = 0.05, batch_size: int = 128,
             weight_decay: float = 5e-5, label_smoothing: float = 0.1, seed: int = 0,
             teacher: nn.Module | None = None, temperature: float = 4.0, distill_weight: float = 0.5,
             feature_weight: float = 0.0, ema_decay: float | None = None, allow_bf16: bool = True,
             log=print) -> nn.Module:
    """Briefly retrain a fused (e.g. pruned) model: SGD + one-cycle, bf16 where it is faster.

    With ``teacher`` (the unpruned model) a ``distill_weight`` share of the loss is distillation towards
    its softened outputs: the teacher knows what the removed channels computed, the labels alone do not.
    ``feature_weight`` > 0 (with a teacher) adds, with that weight, the repair's own objective
    (:func:`feature_loss`): every layer's output stays close to the teacher's kept channels.
    With ``ema_decay`` the model ends with the exponential moving average of its weights (warmed up as
    in training, see repvgg.train.ema), which smooths the noise of the last steps.
    """
    from ..cpu_backend import cpu_training_backend
    from ..data import build_loader
    from ..train.ema import ModelEma

    if epochs < 1:
        return model
    if not 0.0 <= distill_weight <= 1.0:
        raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
    if feature_weight < 0 or (feature_weight > 0 and teacher is None):
        raise ValueError(f"feature_weight must be >= 0 and needs a teacher, got {feature_weight}")
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
    torch.manual_seed(seed)
    loader = build_loader(train_ds, batch_size, train=True, seed=seed)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    use_bf16 = allow_bf16 and _bf16_is_faster(model, (batch_size, *train_ds[0][0].shape), log)
    if teacher is not None:
        teacher.eval()
    model.train()
    ema = ModelEma(model, ema_decay) if ema_decay is not None else None
    feats, hooks = _record_layer_outputs(model, teacher) if feature_weight > 0 else (None, [])

    def batch_loss(x, y):
        logits = model(x)
        loss = loss_fn(logits, y)
        if teacher is not None:
            with torch.no_grad():
                soft = F.softmax(teacher(x).float() / temperature, 1)
            kd = F.kl_div(F.log_softmax(logits.float() / temperature, 1), soft, reduction="batchmean")
            loss = (1 - distill_weight) * loss + distill_weight * temperature**2 * kd
        if feats is not None:
            loss = loss + feature_weight * feature_loss(*feats)
            for f in feats:
                f.clear()
        return loss

    try:
        with cpu_training_backend(next(model.parameters()).device, log) as kernels:
            for epoch in range(epochs):
                total = 0.0
                for x, y in loader:
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                        loss = batch_loss(x, y)
                    opt.zero_grad(set_to_none=True)
                    with kernels.backward():
                        loss.backward()
                    opt.step()
                    sched.step()
                    if ema is not None:
                        ema.update_parameters(model)
                    total += loss.item()
                log(f"finetune epoch {epoch + 1}/{epochs}: loss {total / max(1, len(loader)):.4f}")
    finally:
        for h in hooks:
            h.remove()
    if ema is not None:
        model.load_state_dict(ema.module.state_dict())
    return model.eval()


def feature_loss(student: list, teacher: list) -> torch.Tensor:
    """Mean over layers of ||z_student - z_teacher[kept]||^2 / mean(z_teacher[kept]^2).

    ``student`` / ``teacher``: ``(block, output)`` per plain layer, in data-flow order; a pruned
    block's kept channels (:func:`repvgg.deploy.prune.select_kept`) pick the teacher channels it
    stands for. Normalised per layer, so wide and narrow layers weigh alike.
    """
    total = 0.0
    for (block, z_s), (_, z_t) in zip(student, teacher):
        z_t = select_kept(block, z_t).float()
        total = total + F.mse_loss(z_s.float(), z_t) / z_t.pow(2).mean().clamp_min(1e-8)
    return total / max(1, len(student))


def _record_layer_outputs(model: nn.Module, teacher: nn.Module):
    """Forward hooks that append ``(block, output)`` of every plain layer of both models to two lists
    (and their handles, to remove them)."""
    student_layers, teacher_layers = plain_layers(model), plain_layers(teacher)
    if len(student_layers) != len(teacher_layers):
        raise ValueError(f"feature distillation needs the same layers: the model has {len(student_layers)}, "
                         f"the teacher {len(teacher_layers)}")
    feats: tuple[list, list] = ([], [])
    hooks = [b.register_forward_hook(lambda m, i, o, out=out: out.append((m, o)))
             for layers, out in zip((student_layers, teacher_layers), feats) for b in layers]
    return feats, hooks


def _bf16_is_faster(model: nn.Module, input_shape: tuple, log) -> bool:
    """bf16 autocast where a few timed steps show it clearly faster on this CPU (see train.amp)."""
    from ..train.amp import probe_cpu_amp

    dtype, speedup, _ = probe_cpu_amp(model, input_shape, num_classes=1)
    if speedup:
        log(f"fine-tuning in {'bf16' if dtype is not None else 'fp32'} (bf16 steps ran {speedup:.2f}x "
            "the fp32 speed here)")
    return dtype is not None


__all__ = ["finetune"]
