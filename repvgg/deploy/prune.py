"""Structured channel pruning of a fused (plain) RepVGG, and loading the pruned model back.

A deploy RepVGG is a chain of 3x3 convs, so removing filter j of one conv only means removing
input channel j of the next conv (or column j of the classifier) - the plainness the paper
argues for. Filters are ranked by the L1 norm of their fused kernel, summed over the blocks of a
stage, which keep one channel set together (see :func:`coupled_groups`). A group is pruned only
when neither it nor a conv reading it is grouped: removing channels of a grouped conv unevenly
would break its groups, so those are left alone, and said so.

A pruned model is the zoo model at smaller per-stage widths, so its build args record them as
``channels`` (stem, stage 1..4) and it loads like any other checkpoint
(``repvgg.model_from_checkpoint``, ``repvgg eval``). An SE layer keeps its reduction ratio: its
hidden units are pruned too (by the L1 norm of their reduce filters).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..blocks import RepVGGBlock, SqueezeExcite
from ..model import chain_blocks


@dataclass
class PruneResult:
    model: nn.Module
    widths: list[int]
    skipped: list[str] = field(default_factory=list)  # "layer: why" for layers left alone


def plain_layers(model: nn.Module) -> list[RepVGGBlock]:
    """The fused blocks in the order data flows through them: stem, then every stage block."""
    if not hasattr(model, "stem") or not hasattr(model, "stages") or not hasattr(model, "head"):
        raise ValueError("pruning needs a RepVGG classifier (stem, stages, head)")
    layers = chain_blocks(model)
    if not all(isinstance(b, RepVGGBlock) for b in layers):
        raise ValueError("pruning handles plain RepVGG models only (not residual/other block types)")
    if not all(b.deploy for b in layers):
        raise ValueError("pruning needs a fused model: call repvgg.reparameterize(model) first")
    return layers


def select_kept(block: RepVGGBlock, z: torch.Tensor) -> torch.Tensor:
    """The channels of ``z`` (the unpruned layer's output) that the pruned ``block`` kept; all of
    them where pruning left the layer alone (no ``kept_channels``)."""
    keep = getattr(block, "kept_channels", None)
    return z if keep is None else z[:, keep]


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


def check_prune_args(ratio: float, multiple_of: int = 8) -> None:
    """Refuse a ratio outside (0, 1) or a width multiple below 1 (the CLI calls this before loading)."""
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ValueError(f"--ratio must be strictly between 0 and 1 (the fraction of filters removed), got {ratio}")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"--multiple-of must be a positive integer (kept widths are rounded to it), got {multiple_of}")


def prune_model(model: nn.Module, ratio: float, multiple_of: int = 8, log=print) -> PruneResult:
    """A smaller plain model with ``ratio`` of the filters of every prunable layer removed.

    Kept counts are rounded to ``multiple_of`` (CPU kernels run fastest on multiples of 8),
    and at least ``multiple_of`` (or the layer's width, if smaller) are kept.
    """
    check_prune_args(ratio, multiple_of)
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
                b.kept_channels = keep  # which original channels survive: see select_kept
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
    if getattr(model, "build_args", None):  # what rebuilds it: the same model at the kept widths
        args = {k: v for k, v in model.build_args.items() if k != "width"}
        model.build_args = {**args, "channels": _stage_out_widths(model)}
    for s in skipped:
        log(f"prune: {s}")
    return PruneResult(model, widths, skipped)


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
    if isinstance(block.se, SqueezeExcite):  # SE sees the kept channels only, at its usual ratio
        se = block.se
        fresh = SqueezeExcite(len(keep)).to(se.reduce.weight.dtype)
        hidden = l1_keep(se.reduce.weight[:, keep].abs().flatten(1).sum(1), fresh.reduce.out_channels)
        fresh.reduce.weight.copy_(se.reduce.weight[hidden][:, keep])
        fresh.reduce.bias.copy_(se.reduce.bias[hidden])
        fresh.expand.weight.copy_(se.expand.weight[keep][:, hidden])
        fresh.expand.bias.copy_(se.expand.bias[keep])
        block.se = fresh


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


def save_pruned(result_or_model, path: str | os.PathLike, metadata: dict | None = None):
    """Save a pruned model with its widths in the metadata, so :func:`load_pruned` can rebuild it."""
    from ..checkpoint import save_checkpoint

    model = getattr(result_or_model, "model", result_or_model)
    meta = {"pruned_widths": model.pruned_widths, **(metadata or {})}
    return save_checkpoint(model, path, metadata=meta)


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """A pruned model saved by :func:`save_pruned`, fused and in eval mode.

    Files record their per-stage widths as ``channels`` in the build args; files from before that
    only have per-layer ``pruned_widths``, turned into per-stage channels here.
    """
    from ..checkpoint import CheckpointError, read_metadata
    from ..rebuild import model_from_checkpoint

    meta = read_metadata(path) or {}
    args, widths = meta.get("build_args"), meta.get("pruned_widths")
    if isinstance(widths, str):
        widths = json.loads(widths)
    if not widths or not isinstance(args, dict):
        raise CheckpointError(f"{path} is not a pruned repvgg checkpoint (no pruned_widths/build_args metadata)")
    overrides = {}
    if "channels" not in args:
        overrides = {"channels": _channels_from_layer_widths(args, widths, path), "width": 1.0}
    try:
        return model_from_checkpoint(path, deploy=True, **overrides).eval()
    except CheckpointError as e:
        raise CheckpointError(f"{path}: weights do not match the pruned widths it records: {e}") from None


def _channels_from_layer_widths(args: dict, widths: list[int], path) -> list[int]:
    """Per-layer widths (stem, then every block) -> (stem, stage 1..4) widths; a stage is uniform."""
    from ..archs import get_arch
    from ..checkpoint import CheckpointError

    depths = get_arch(args["name"]).depths
    if len(widths) != 1 + sum(depths):
        raise CheckpointError(f"{path}: pruned_widths has {len(widths)} entries but {args['name']} "
                              f"has {1 + sum(depths)} layers")
    channels, i = [int(widths[0])], 1
    for d in depths:
        stage = {int(w) for w in widths[i:i + d]}
        if len(stage) != 1:
            raise CheckpointError(f"{path}: a stage of pruned_widths is not uniform: {sorted(stage)}")
        channels.append(stage.pop())
        i += d
    return channels
