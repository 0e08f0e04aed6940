"""Residual Reorg (paper Table 7): the RepVGG stages re-organized as a real ResNet-18/34-style net.

Depth rule: a stage of depth ``d >= 2`` becomes ``d // 2`` basic residual blocks (two 3x3 conv+BN
layers; the shortcut is the identity, or a 1x1 conv+BN projection when the shape changes); a stage
of depth 1 (the stem, the last stage) stays one 3x3 conv+BN+ReLU layer. RepVGG-B0 (1, 4, 6, 16, 1)
gives 1 layer, 2, 3, 8 blocks, 1 layer, as in the paper; RepVGG-A0 (1, 2, 4, 14, 1) gives 1 layer,
1, 2, 7 blocks, 1 layer. With even depths (every model in the zoo) it has exactly RepVGG's number of
3x3 convs; an odd depth would lose one layer.

The shortcuts are real at inference too, so this network is NOT convertible to the plain RepVGG:
``reparameterize`` folds each conv-BN pair into one conv with bias (``fused``) and keeps the
additions, giving a BN-free ResNet with the same outputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import fusion
from .archs import RepVGGArch
from .blocks import ConvBN, SqueezeExcite
from .model import ClassifierHead, FeatureInfo, RepVGG, check_io_sizes, stage_schedule

DESCRIPTION = (
    "Table 7: Residual Reorg, a real ResNet-18/34-style net (depth d -> d//2 two-layer residual "
    "blocks); reparameterize folds conv-BN, keeps shortcuts"
)


def reorg_depths(depths: tuple[int, ...]) -> list[int]:
    """Residual blocks per stage (0 = a single 3x3 conv+BN+ReLU layer), by the rule above."""
    return [0 if d < 2 else d // 2 for d in depths]


class ConvNormAct(nn.Module):
    """conv+BN (+SE) (+ReLU); deploy form: one ``fused`` conv with bias (+SE) (+ReLU).

    The train-time conv+BN is a :class:`repvgg.blocks.ConvBN` named ``conv3x3`` / ``conv1x1`` like
    the branches of a RepVGG block, so checkpoints of either form carry this project's naming.
    """

    def __init__(self, in_ch, out_ch, ksize=3, stride=1, dilation=1, groups=1, act=True, se=False,
                 deploy=False):
        super().__init__()
        self.args = (in_ch, out_ch, ksize, stride, dilation, groups)
        self.deploy = deploy
        if deploy:
            pad = (ksize - 1) // 2 * dilation
            self.fused = nn.Conv2d(in_ch, out_ch, ksize, stride, pad, dilation, groups, bias=True)
        else:
            setattr(self, f"conv{ksize}x{ksize}", ConvBN(in_ch, out_ch, (ksize, ksize), stride, dilation, groups))
        self.se = SqueezeExcite(out_ch) if se else nn.Identity()
        self.act = nn.ReLU() if act else nn.Identity()

    @property
    def branch(self) -> ConvBN:
        k = self.args[2]
        return getattr(self, f"conv{k}x{k}")

    def forward(self, x):
        y = self.fused(x) if self.deploy else self.branch(x)
        return self.act(self.se(y))

    def train_twin(self) -> "ConvNormAct":
        """A fresh train-time layer whose fusion has this layer's shape (fuse-on-load fills it)."""
        return ConvNormAct(*self.args, act=isinstance(self.act, nn.ReLU), se=isinstance(self.se, SqueezeExcite))

    @torch.no_grad()
    def fuse(self) -> "ConvNormAct":
        """A new deploy-form module computing what this one computes in eval mode (Eq. 3)."""
        if self.deploy:
            return self
        bn, w = self.branch.bn, self.branch.conv.weight
        kernel, bias = fusion.fold_bn(w, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
        out = ConvNormAct(*self.args, act=False, deploy=True).to(device=w.device, dtype=w.dtype)
        out.fused.weight.copy_(kernel)
        out.fused.bias.copy_(bias)
        out.se, out.act = self.se, self.act
        return out.train(self.training)


class ResidualBlock(nn.Module):
    """ResNet basic block: ``relu(conv2(conv1(x)) + shortcut(x))``, conv1 with ReLU, conv2 without."""

    def __init__(self, in_ch, out_ch, stride=1, groups=(1, 1), dilation=(1, 1), se=False, deploy=False):
        super().__init__()
        self.conv1 = ConvNormAct(in_ch, out_ch, 3, stride, dilation[0], groups[0], deploy=deploy)
        self.conv2 = ConvNormAct(out_ch, out_ch, 3, 1, dilation[1], groups[1], act=False, se=se, deploy=deploy)
        needs_proj = stride != 1 or in_ch != out_ch
        self.shortcut = ConvNormAct(in_ch, out_ch, 1, stride, act=False, deploy=deploy) if needs_proj else None
        self.act = nn.ReLU()

    def forward(self, x):
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.conv2(self.conv1(x)) + skip)


class ResidualReorg(RepVGG):
    """RepVGG's widths, strides and layer count as a ResNet (``create_model(name, block="residual_reorg")``).

    Same ``stem`` / ``stages`` / ``head`` layout and feature API as :class:`RepVGG` (it reuses its
    forward, head and feature code); only the layers differ.
    """

    def __init__(self, arch: RepVGGArch, num_classes=1000, in_chans=3, deploy=False,
                 block="residual_reorg", small_input=False, output_stride=32, drop_rate=0.0,
                 global_pool="avg"):
        nn.Module.__init__(self)  # RepVGG.__init__ would build RepVGG blocks; the layout is rebuilt here
        if block != "residual_reorg":
            raise ValueError(f"ResidualReorg builds block='residual_reorg' only, got {block!r}")
        check_io_sizes(num_classes, in_chans)
        schedule = stage_schedule(len(arch.depths), small_input, output_stride)
        self.arch, self.num_classes, self.in_chans = arch, num_classes, in_chans
        kw = dict(se=arch.se, deploy=deploy)
        reduction = 1 if small_input else 2
        self.stem = ConvNormAct(in_chans, arch.stem_width, 3, reduction, **kw)
        self.feature_info = FeatureInfo([dict(num_chs=arch.stem_width, reduction=reduction, module="stem")])

        stages, in_ch, layer_idx = [], arch.stem_width, 1
        for i, (n_blocks, width, (stride, prev, dilation, reduction)) in enumerate(
            zip(reorg_depths(arch.depths), arch.widths, schedule)
        ):
            if n_blocks == 0:
                layers = [ConvNormAct(in_ch, width, 3, stride, prev, arch.layer_groups(layer_idx), **kw)]
                layer_idx += 1
            else:
                layers = []
                for j in range(n_blocks):
                    groups = (arch.layer_groups(layer_idx), arch.layer_groups(layer_idx + 1))
                    dil = (prev if j == 0 else dilation, dilation)
                    layers.append(ResidualBlock(in_ch, width, stride if j == 0 else 1, groups, dil, **kw))
                    in_ch, layer_idx = width, layer_idx + 2
            in_ch = width
            stages.append(nn.Sequential(*layers))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.head = ClassifierHead(in_ch, num_classes, drop_rate, global_pool)

    @property
    def is_deployed(self) -> bool:
        """True when every conv-BN pair is folded (the shortcuts stay: see the module docstring)."""
        return all(m.deploy for m in self.modules() if isinstance(m, ConvNormAct))
