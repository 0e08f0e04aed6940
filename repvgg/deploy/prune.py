"""Structured channel pruning of a fused (plain) RepVGG, and loading the pruned model back.

A deploy RepVGG is a chain of 3x3 convs, so removing filter j of one conv only means removing
input channel j of the next conv (or column j of the classifier) - the plainness the paper
argues for. Filters are ranked by the L1 norm of their fused kernel, summed over the blocks of a
stage, which keep one channel set together (see :func:`coupled_groups`). A group is pruned only
when neither it nor a conv reading it is grouped: removing channels of a grouped conv unevenly
would break its groups, so those are left alone, and said so.

The pruned widths go into the checkpoint metadata (``pruned_widths``); :func:`load_pruned`
rebuilds the model from the saved build args plus those widths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..blocks import RepVGGBlock, SqueezeExcite


@dataclass
class PruneResult:
    model: nn.Module
    widths: list[int]
    skipped: list[str] = field(default_factory=list)  # "layer: why" for layers left alone


def plain_layers(model: nn.Module) -> list[RepVGGBlock]:
    """The fused blocks in the order data flows through them: stem, then every stage block."""
    if not hasattr(model, "stem") or not hasattr(model, "stages") or not hasattr(model, "head"):
        raise ValueError("pruning needs a RepVGG classifier (stem, stages, head)")
    layers = [model.stem] + [b for stage in model.stages for b in stage]
    if not all(isinstance(b, RepVGGBlock) for b in layers):
        raise ValueError("pruning handles plain RepVGG models only (not residual/other block types)")
    if not all(b.deploy for b in layers):
        raise ValueError("pruning needs a fused model: call repvgg.reparameterize(model) first")
    return layers


def l1_keep(norms: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the ``keep`` channels with the largest (summed) filter L1 norm."""
    return norms.detach().topk(keep).indices.sort().values


def coupled_groups(model: nn.Module) -> list[tuple[str, list[RepVGGBlock], list[nn.Module]]]:
    """``(name, blocks whose outputs share one channel set, modules that read those channels)``.

    A fused identity branch is a residual stream: channel j of block k+1 carries channel j of
    block k through the centre tap of its kernel. Pruning each layer on its own would cut those
    streams at random depths (cutting 5% per layer uncoupled took a trained A0 from 77% to 16%
    top-1 on Fashion-MNIST in our check), so every
    block of a stage - which all hand on the same channels - keeps the same channel set, scored
    by its filters' L1 norms summed over the stage. The stem is its own group.
    """
    stages = [list(s) for s in model.stages]
    groups, names = [[model.stem]] + stages, ["stem"] + [f"stages.{i}" for i in range(len(stages))]
    out = []
    for k, (name, members) in enumerate(zip(names, groups)):
        nxt = groups[k + 1][0] if k + 1 < len(groups) else model.head.fc
        out.append((name, members, members[1:] + [nxt]))
    return out


def prune_model(model: nn.Module, ratio: float, multiple_of: int = 8, log=print) -> PruneResult:
    """A smaller plain model with ``ratio`` of the filters of every prunable layer removed.

    Kept counts are rounded to ``multiple_of`` (CPU kernels run fastest on multiples of 8),
    and at least ``multiple_of`` (or the layer's width, if smaller) are kept.
    """
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ValueError(f"--ratio must be strictly between 0 and 1 (the fraction of filters removed), got {ratio}")
    import copy

    model = copy.deepcopy(model).eval()
    layers = plain_layers(model)
    skipped = []
    with torch.no_grad():
        for name, members, consumers in coupled_groups(model):
            convs = [b.fused for b in members] + [c.fused for c in consumers if isinstance(c, RepVGGBlock)]
            grouped = [c.groups for c in convs if c.groups != 1]
            if grouped:
                skipped.append(f"{name}: has or feeds a grouped conv (groups={grouped[0]}); left alone")
                continue
            if not isinstance(consumers[-1], (RepVGGBlock, nn.Linear)):
                skipped.append(f"{name}: no classifier after it (num_classes=0); left alone")
                continue
            c = members[0].out_channels
            keep_n = min(c, max(multiple_of, int(round(c * (1 - ratio) / multiple_of)) * multiple_of))
            if keep_n >= c:
                skipped.append(f"{name}: only {c} filters; left alone")
                continue
            keep = l1_keep(torch.stack([b.fused.weight.abs().flatten(1).sum(1) for b in members]).sum(0), keep_n)
            for b in members:
                _keep_outputs(b, keep)
                b.kept_channels = keep  # which original channels survive: used by recalibrate()
            for cons in consumers:
                if isinstance(cons, RepVGGBlock):
                    _keep_inputs(cons, keep)
                else:
                    model.head.fc = _keep_columns(cons, keep)
    if not any(b.out_channels != w for b, w in zip(layers, _original_widths(model))):
        raise ValueError("nothing could be pruned in this model: " + "; ".join(skipped))
    _sync_model_attrs(model)
    widths = [b.out_channels for b in layers]
    model.pruned_widths = widths
    for s in skipped:
        log(f"prune: {s}")
    return PruneResult(model, widths, skipped)


@torch.no_grad()
def recalibrate(pruned: nn.Module, original: nn.Module, images: torch.Tensor) -> nn.Module:
    """Match each kept channel's pre-activation mean and std to the unpruned model's, layer by layer.

    A plain model has no BN left to re-estimate statistics after pruning, so the shift that
    removed channels cause compounds over 22 layers (a trained A0 falls to chance at 30%). Here
    the correction ``a * z + b`` per channel is computed on ``images`` and folded into the conv's
    weight and bias: same architecture, no gradient step, and a far better start for fine-tuning.
    """
    h_p, h_o = images, images
    for bp, bo in zip(plain_layers(pruned), plain_layers(original)):
        keep = getattr(bp, "kept_channels", None)
        z_p, z_o = bp.fused(h_p), bo.fused(h_o)
        if keep is not None:
            z_o = z_o[:, keep]
        dims = (0, 2, 3)
        a = (z_o.std(dims) / z_p.std(dims).clamp_min(1e-6)).clamp(0.1, 10.0)
        b = z_o.mean(dims) - a * z_p.mean(dims)
        bp.fused.weight.mul_(a.view(-1, 1, 1, 1))
        bp.fused.bias.mul_(a).add_(b)
        h_p, h_o = bp(h_p), bo(h_o)
    return pruned


def _original_widths(model) -> list[int]:
    arch = model.arch
    widths = [arch.stem_width]
    for depth, w in zip(arch.depths, arch.widths):
        widths += [w] * depth
    return widths


def _new_conv(old: nn.Conv2d, in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, old.kernel_size, old.stride, old.padding, old.dilation, old.groups,
                     bias=old.bias is not None).to(old.weight.dtype)


def _keep_outputs(block: RepVGGBlock, keep: torch.Tensor) -> None:
    old = block.fused
    new = _new_conv(old, old.in_channels, len(keep))
    new.weight.copy_(old.weight[keep])
    new.bias.copy_(old.bias[keep])
    block.fused, block.out_channels = new, len(keep)
    if isinstance(block.se, SqueezeExcite):  # SE sees the kept channels only
        se = block.se
        reduce = _new_conv(se.reduce, len(keep), se.reduce.out_channels)
        expand = _new_conv(se.expand, se.expand.in_channels, len(keep))
        reduce.weight.copy_(se.reduce.weight[:, keep])
        reduce.bias.copy_(se.reduce.bias)
        expand.weight.copy_(se.expand.weight[keep])
        expand.bias.copy_(se.expand.bias[keep])
        se.reduce, se.expand = reduce, expand


def _keep_inputs(block: RepVGGBlock, keep: torch.Tensor) -> None:
    old = block.fused
    new = _new_conv(old, len(keep), old.out_channels)
    new.weight.copy_(old.weight[:, keep])
    new.bias.copy_(old.bias)
    block.fused, block.in_channels = new, len(keep)


def _keep_columns(fc: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(keep), fc.out_features).to(fc.weight.dtype)
    new.weight.copy_(fc.weight[:, keep])
    new.bias.copy_(fc.bias)
    return new


def _sync_model_attrs(model) -> None:
    """num_features and feature_info follow the new widths."""
    model.num_features = plain_layers(model)[-1].out_channels
    for info, ch in zip(model.feature_info, _stage_out_widths(model)):
        info["num_chs"] = ch


def _stage_out_widths(model) -> list[int]:
    return [model.stem.out_channels] + [stage[-1].out_channels for stage in model.stages]


def resize_to_widths(model: nn.Module, widths: list[int]) -> nn.Module:
    """Give a fresh deploy model the given per-layer widths (weights uninitialized: load them next)."""
    layers = plain_layers(model)
    if len(widths) != len(layers):
        raise ValueError(f"pruned_widths has {len(widths)} entries but {model.build_args.get('name')} "
                         f"has {len(layers)} layers")
    in_ch = model.in_chans
    for block, w in zip(layers, widths):
        block.fused = _new_conv(block.fused, in_ch, int(w))
        block.in_channels, block.out_channels = in_ch, int(w)
        if isinstance(block.se, SqueezeExcite):
            se = block.se
            se.reduce = _new_conv(se.reduce, int(w), se.reduce.out_channels)
            se.expand = _new_conv(se.expand, se.expand.in_channels, int(w))
        in_ch = int(w)
    fc = model.head.fc
    if isinstance(fc, nn.Linear):
        model.head.fc = nn.Linear(in_ch, fc.out_features)
    _sync_model_attrs(model)
    model.pruned_widths = [int(w) for w in widths]
    return model


def save_pruned(result_or_model, path: str | os.PathLike, metadata: dict | None = None):
    """Save a pruned model with its widths in the metadata, so :func:`load_pruned` can rebuild it."""
    from ..checkpoint import save_checkpoint

    model = getattr(result_or_model, "model", result_or_model)
    meta = {"pruned_widths": model.pruned_widths, **(metadata or {})}
    return save_checkpoint(model, path, metadata=meta)


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Rebuild a model saved by :func:`save_pruned`: build args + pruned widths, then its weights."""
    from ..checkpoint import CheckpointError, read_checkpoint
    from ..factory import create_model

    sd, meta = read_checkpoint(path)
    widths, args = meta.get("pruned_widths"), meta.get("build_args")
    if isinstance(widths, str):
        import json

        widths = json.loads(widths)
    if not widths or not isinstance(args, dict):
        raise CheckpointError(f"{path} is not a pruned repvgg checkpoint (no pruned_widths/build_args metadata)")
    model = resize_to_widths(create_model(**args, deploy=True), widths)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the pruned widths it records: {str(e)[:300]}") from None
    return model.eval()


def finetune(model: nn.Module, train_ds, epochs: int, *, lr: float = 0.01, batch_size: int = 128,
             weight_decay: float = 5e-5, label_smoothing: float = 0.1, seed: int = 0,
             teacher: nn.Module | None = None, temperature: float = 4.0, log=print) -> nn.Module:
    """Briefly retrain a pruned plain model (no BN left: small lr, SGD + one-cycle, bf16 where native).

    With ``teacher`` (the unpruned model) half the loss is distillation towards its softened
    outputs: the teacher knows what the removed channels computed, the labels alone do not.
    """
    from ..data import build_loader

    if epochs < 1:
        return model
    torch.manual_seed(seed)
    loader = build_loader(train_ds, batch_size, train=True, seed=seed)
    steps = epochs * len(loader)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    use_bf16 = _cpu_bf16()
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
    return model.eval()


def _cpu_bf16() -> bool:
    try:
        from ..train.loop import cpu_has_bf16

        return cpu_has_bf16()
    except ImportError:
        return False

