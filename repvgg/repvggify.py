"""repvggify: RepVGG training branches for any ConvNet, folded back into the user's own architecture.

The paper (Sect. 4.2) replaces every 3x3 conv+BN of a ResNet with a RepVGG block for training and
fuses it afterwards. Here that works on any ``nn.Module`` torch.fx can trace: the graph says which
3x3 convs feed exactly one BatchNorm2d (no guessing from attribute names), and each such pair
becomes a :class:`RepConv` in the conv's slot (3x3 conv+BN = the original pair, plus a 1x1 conv+BN
and, where shapes allow, an identity BN) while the BN's slot holds a :class:`FoldedBN` placeholder.
The new branches start at zero output (their BN scale is 0), so a trained model computes exactly
what it computed before and can be fine-tuned.

:func:`fold_back` (what :func:`repvgg.reparameterize` calls) puts one fused conv back in the conv's
slot and an exact identity-affine BatchNorm2d in the BN's slot (the fused bias as its shift, or in
the conv's bias where the original conv has one): the ``state_dict`` then strict-loads into a fresh
instance of the user's original class.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn

from . import fusion
from .blocks import ConvBN, IdentityBranch

BRANCHES = ("1x1", "identity")


@dataclass
class RepvggifyReport:
    """What changed: the conv-BN pairs given branches, and the 3x3 convs left alone with the reason."""

    pairs: list[tuple[str, str]] = field(default_factory=list)          # (conv name, bn name)
    skipped: list[tuple[str, str]] = field(default_factory=list)        # (conv name, why)

    def summary(self) -> str:
        lines = [f"repvggify: {len(self.pairs)} conv-BN pair(s) got RepVGG branches"]
        lines += [f"  left alone: {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


class FoldedBN(nn.Identity):
    """Placeholder in a BN's slot while its conv trains as a :class:`RepConv` (the BN lives there)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.num_features, self.eps, self.momentum = bn.num_features, bn.eps, bn.momentum


class RepConv(nn.Module):
    """The original 3x3 conv+BN, a 1x1 conv+BN and an identity BN, summed (RepVGG's block, no ReLU)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, bn_slot: str, branches=BRANCHES,
                 keep_function: bool = True):
        super().__init__()
        c = conv
        self.conv3x3 = ConvBN(c.in_channels, c.out_channels, (3, 3), c.stride[0], c.dilation[0], c.groups)
        self.conv3x3.conv, self.conv3x3.bn = conv, bn                  # the trained pair, unchanged
        self.conv1x1 = self.identity = None
        if "1x1" in branches:
            self.conv1x1 = ConvBN(c.in_channels, c.out_channels, (1, 1), c.stride[0], 1, c.groups)
        if "identity" in branches and c.in_channels == c.out_channels and c.stride == (1, 1):
            self.identity = IdentityBranch(c.out_channels, c.groups, bn=True)
        for branch in (self.conv1x1, self.identity):
            if branch is not None:
                if keep_function:                   # start at zero: a trained model computes what it did
                    nn.init.zeros_(branch.bn.weight)
                branch.bn.to(device=bn.weight.device, dtype=bn.weight.dtype)
        if self.conv1x1 is not None:
            self.conv1x1.conv.to(device=conv.weight.device, dtype=conv.weight.dtype)
        self.bn_slot = bn_slot     # qualified name of the BN's slot in the root module (fold_back fills it)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3x3(x)
        if self.conv1x1 is not None:
            y = y + self.conv1x1(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return y

    def fused_kernel_bias(self) -> fusion.Branch:
        like = self.conv3x3.conv.weight
        parts = [self.conv3x3.as_3x3()]
        if self.conv1x1 is not None:
            parts.append(self.conv1x1.as_3x3())
        if self.identity is not None:
            parts.append(self.identity.as_3x3(like))
        return fusion.add_branches(parts)


def repvggify(model: nn.Module, *, branches=BRANCHES, inplace: bool = False,
              keep_function: bool = True) -> tuple[nn.Module, RepvggifyReport]:
    """Give every traced 3x3 conv -> BatchNorm2d pair RepVGG branches; return ``(model, report)``.

    ``keep_function`` (for a trained model): the new branches' BN scales start at 0, so the model
    computes exactly what it did and fine-tunes from there. A model trained from scratch wants
    ``keep_function=False``: every branch starts with BN's usual scale of 1, as in the paper.

    The model keeps its class and code: only the pair's modules are swapped. Raises ValueError
    when nothing can be changed (the model is returned untouched by the caller's copy) and when
    torch.fx cannot trace the model (repvggify its traceable submodules instead).
    """
    bad = set(branches) - set(BRANCHES)
    if bad:
        raise ValueError(f"unknown branch(es) {sorted(bad)}; choose from {BRANCHES}")
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as e:  # noqa: BLE001 - any tracing failure gets the same advice
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "repvggify the traceable submodules instead, e.g. repvggify(model.backbone)") from None
    modules = dict(model.named_modules())
    report = RepvggifyReport()
    found = []
    for node in graph.nodes:
        conv = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or conv.kernel_size != (3, 3):
            continue
        users = list(node.users)
        bn = modules.get(users[0].target) if len(users) == 1 and users[0].op == "call_module" else None
        why = _why_not(conv, bn, users)
        if why:
            report.skipped.append((node.target, why))
        else:
            found.append((node.target, users[0].target))
    if not found:
        raise ValueError(f"{type(model).__name__} has no 3x3 conv followed only by a BatchNorm2d; nothing to "
                         "repvggify" + (f" ({report.skipped[0][0]}: {report.skipped[0][1]})" if report.skipped else ""))
    if not inplace:
        model = copy.deepcopy(model)
    for conv_name, bn_name in found:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        _set(model, conv_name, RepConv(conv, bn, bn_name, branches, keep_function))
        _set(model, bn_name, FoldedBN(bn))
        report.pairs.append((conv_name, bn_name))
    return model, report


def _why_not(conv: nn.Conv2d, bn, users) -> str | None:
    if len(users) != 1:
        return f"its output feeds {len(users)} nodes, not just a BatchNorm"
    if not isinstance(bn, nn.BatchNorm2d):
        return f"followed by {users[0].target or users[0].op}, not a BatchNorm2d"
    if not bn.track_running_stats or not bn.affine:
        return "its BatchNorm2d has no running statistics or no affine parameters"
    if conv.padding != conv.dilation or conv.padding_mode != "zeros":
        return f"padding {conv.padding} is not 'same' for dilation {conv.dilation}: a 1x1 branch would not align"
    if conv.stride[0] != conv.stride[1] or conv.dilation[0] != conv.dilation[1]:
        return "anisotropic stride or dilation"
    return None


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


@torch.no_grad()
def fold_back(model: nn.Module) -> nn.Module:
    """Fuse every :class:`RepConv` in place into the original architecture's conv + BN slots.

    The conv slot gets an ``nn.Conv2d`` with the fused kernel (and the fused bias, when the original
    conv had a bias); the BN slot gets a BatchNorm2d that is an exact identity affine (mean 0,
    variance 1, scale sqrt(1 + eps)) shifted by the fused bias otherwise. BN in train mode is folded
    with its running statistics, which is what the model computes in eval mode; it is said once.
    """
    reps = [(n, m) for n, m in model.named_modules() if isinstance(m, RepConv)]
    if any(m.training for _, m in reps):
        warnings.warn("fold_back: the model is in train mode; folding BatchNorm with its running statistics "
                      "(what it computes in eval mode)", stacklevel=2)
    for name, rep in reps:
        kernel, bias = rep.fused_kernel_bias()
        old, slot = rep.conv3x3.conv, model.get_submodule(rep.bn_slot)
        conv = nn.Conv2d(old.in_channels, old.out_channels, 3, old.stride, old.padding, old.dilation, old.groups,
                         bias=old.bias is not None).to(device=kernel.device, dtype=kernel.dtype)
        conv.weight.copy_(kernel)
        bn = nn.BatchNorm2d(slot.num_features, eps=slot.eps, momentum=slot.momentum).to(kernel.device, kernel.dtype)
        bn.weight.fill_(1.0 + slot.eps).sqrt_()
        bn.running_var.fill_(1.0)
        if conv.bias is not None:
            conv.bias.copy_(bias)
            bn.bias.zero_()
        else:
            bn.bias.copy_(bias)
        _set(model, name, conv)
        _set(model, rep.bn_slot, bn)
    args = getattr(model, "build_args", None)
    if reps and isinstance(args, dict) and args.get("repvggify"):   # it is the plain architecture again
        model.build_args = {**args, "repvggify": False}
    return model


__all__ = ["repvggify", "fold_back", "RepConv", "FoldedBN", "RepvggifyReport"]
