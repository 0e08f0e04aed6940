"""Brief fine-tuning of a fused (plain) RepVGG, e.g. after pruning, with BN put back for the while.

A fused model has no BN left, and a deep plain net without normalization fine-tunes poorly: on the
full Fashion-MNIST the trained A0 x0.5 lost 0.49 points in 3 epochs at lr 0.01 without BN (94.11 ->
93.62), and its 30%-pruned copy recovered to 91.85 only (benchmarks/results/deploy_prune_full.md,
first run). So each fused conv gets a BN for the fine-tune, set up so that the model computes
exactly the same function in eval mode (:func:`attach_bn`), and afterwards every BN is folded back
into its conv with the same formula as re-parameterization (:func:`fold_attached_bn`): the result is
again a plain chain of 3x3 convs with bias, loadable like any pruned model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fusion import fold_bn
from .prune import plain_layers


def attach_bn(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Split every fused conv into ``conv (no bias) -> BN``, the BN initialised from ``images``.

    Running mean/var are the conv output's statistics on ``images``; gamma = sqrt(var + eps) and
    beta = mean + bias, so in eval mode ``bn(conv(x)) == conv(x) + bias`` exactly, and in train
    mode (batch statistics) it starts close to it.
    """
    model.eval()
    h = images
    with torch.no_grad():
        for block in plain_layers(model):
            conv = block.fused
            if not isinstance(conv, nn.Conv2d):
                raise ValueError("attach_bn: the model already has BN attached (call fold_attached_bn first)")
            bare = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                             conv.dilation, conv.groups, bias=False).to(conv.weight)
            bare.weight.copy_(conv.weight)
            z = bare(h)
            mean, var = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False)
            bn = nn.BatchNorm2d(conv.out_channels).to(conv.weight)
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(torch.sqrt(var + bn.eps))
            bn.bias.copy_(mean + (conv.bias if conv.bias is not None else 0.0))
            h = block(h)
            block.fused = nn.Sequential(bare, bn)
    return model


def fold_attached_bn(model: nn.Module) -> nn.Module:
    """Fold each BN that :func:`attach_bn` put in back into its conv (its running statistics)."""
    with torch.no_grad():
        for block in plain_layers(model):
            if not isinstance(block.fused, nn.Sequential):
                continue
            bare, bn = block.fused
            weight, bias = fold_bn(bare.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
            conv = nn.Conv2d(bare.in_channels, bare.out_channels, bare.kernel_size, bare.stride, bare.padding,
                             bare.dilation, bare.groups, bias=True).to(bare.weight)
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
            block.fused = conv
    return model


def finetune(model: nn.Module, train_ds, epochs: int, *, lr: float = 0.01, batch_size: int = 128,
             weight_decay: float = 5e-5, label_smoothing: float = 0.1, seed: int = 0,
             teacher: nn.Module | None = None, temperature: float = 4.0, with_bn: bool = True,
             bn_images: int = 512, log=print) -> nn.Module:
    """Briefly retrain a fused (e.g. pruned) model: SGD + one-cycle, bf16 where it is faster.

    With ``with_bn`` (default) each conv trains with a BN attached (initialised on ``bn_images``
    training images) that is folded back at the end, also when training stops with an error.
    With ``teacher`` (the unpruned model) half the loss is distillation towards its softened
    outputs: the teacher knows what the removed channels computed, the labels alone do not.
    """
    from ..data import build_loader

    if epochs < 1:
        return model
    torch.manual_seed(seed)
    loader = build_loader(train_ds, batch_size, train=True, seed=seed)
    if with_bn:
        images = []
        for x, _ in loader:
            images.append(x)
            if sum(len(b) for b in images) >= bn_images:
                break
        attach_bn(model, torch.cat(images)[:bn_images])
    try:
        _train(model, loader, epochs, lr, weight_decay, label_smoothing, teacher, temperature,
               (batch_size, *train_ds[0][0].shape), log)
    finally:
        if with_bn:
            fold_attached_bn(model)
    return model.eval()


def _train(model, loader, epochs, lr, weight_decay, label_smoothing, teacher, temperature, input_shape, log):
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader), pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    use_bf16 = _bf16_is_faster(model, input_shape, log)
    if teacher is not None:
        teacher.eval()
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
                loss = loss_fn(logits, y)
                if teacher is not None:
                    with torch.no_grad():
                        soft = F.softmax(teacher(x).float() / temperature, 1)
                    kd = F.kl_div(F.log_softmax(logits.float() / temperature, 1), soft, reduction="batchmean")
                    loss = 0.5 * loss + 0.5 * temperature**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        log(f"finetune epoch {epoch + 1}/{epochs}: loss {total / max(1, len(loader)):.4f}")


def _bf16_is_faster(model: nn.Module, input_shape: tuple, log) -> bool:
    """bf16 autocast where a few timed steps show it clearly faster on this CPU (see train.amp)."""
    from ..train.amp import probe_cpu_amp

    dtype, speedup, _ = probe_cpu_amp(model, input_shape, num_classes=1)
    if speedup:
        log(f"fine-tuning in {'bf16' if dtype is not None else 'fp32'} (bf16 steps ran {speedup:.2f}x "
            "the fp32 speed here)")
    return dtype is not None


__all__ = ["attach_bn", "finetune", "fold_attached_bn"]
