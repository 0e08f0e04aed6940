"""The RepVGG block, its variants, and its fused (deploy) form side by side.

One block class covers the paper's block and the ablation variants of Tables 6-7 and QARepVGG:
a variant is data (a :class:`BlockSpec`) saying which linear branches exist and where BN sits.
Every branch can hand fusion a 3x3 ``(kernel, bias)``; :meth:`RepVGGBlock.fuse` sums them and
returns a new block in deploy form, one 3x3 conv with bias, so a deploy model is the same plain
network whatever variant trained it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fusion


class NotConvertibleError(RuntimeError):
    """The module cannot be folded into one conv (a nonlinearity or batch statistics in a branch)."""


@dataclass(frozen=True)
class BlockSpec:
    """Which train-time branches a block has. The deploy form is always one 3x3 conv (+SE) + ReLU."""

    name: str
    description: str
    conv1x1: bool = True  # the 1x1 conv branch
    identity: str | None = "bn"  # identity branch: "bn", "plain" (no BN) or None
    branch_bn: bool = True  # BN inside the 3x3 branch
    bn_1x1: bool = True  # BN inside the 1x1 branch
    post_bn: bool = False  # one BN after the sum of branches
    branch_relu: bool = False  # ReLU at the end of each branch: not convertible
    kernel: str = "plain"  # how the 3x3 kernel is parameterized: "plain", "dirac", "trivial"
    asymmetric: bool = False  # ACB: 3x1 and 1x3 conv+BN branches beside the 3x3


BLOCKS: dict[str, BlockSpec] = {
    s.name: s
    for s in [
        BlockSpec("repvgg", "full RepVGG block: 3x3 conv+BN, 1x1 conv+BN, identity BN (paper Fig. 4)"),
        BlockSpec("no_identity", "Table 6: 3x3 conv+BN and 1x1 conv+BN, no identity branch", identity=None),
        BlockSpec("no_1x1", "Table 6: 3x3 conv+BN and identity BN, no 1x1 branch", conv1x1=False),
        BlockSpec("plain", "Table 6: 3x3 conv+BN only, an ordinary plain ConvNet", conv1x1=False, identity=None),
        BlockSpec("identity_no_bn", "Table 7: full block, identity branch without BN", identity="plain"),
        BlockSpec(
            "post_bn", "Table 7: branches without BN, one BN after the addition",
            branch_bn=False, bn_1x1=False, identity="plain", post_bn=True,
        ),
        BlockSpec(
            "relu_in_branches", "Table 7: ReLU at the end of each branch (more nonlinearity; NOT convertible)",
            branch_relu=True,
        ),
        BlockSpec(
            "dirac", "Table 7: DiracNet kernel diag(a)I + diag(b)W_norm, then BN",
            conv1x1=False, identity=None, kernel="dirac",
        ),
        BlockSpec(
            "trivial", "Table 7: trivial re-param, kernel I + W, then BN",
            conv1x1=False, identity=None, kernel="trivial",
        ),
        BlockSpec(
            "acb", "Table 7: ACNet asymmetric block, 3x3 + 3x1 + 1x3 conv+BN branches",
            conv1x1=False, identity=None, asymmetric=True,
        ),
        BlockSpec(
            "qa", "QARepVGG (YOLOv6): 3x3 conv+BN, 1x1 conv and identity without BN, one BN after the sum",
            identity="plain", bn_1x1=False, post_bn=True,
        ),
    ]
}


def get_block_spec(block: str | BlockSpec) -> BlockSpec:
    if isinstance(block, BlockSpec):
        return block
    try:
        return BLOCKS[block]
    except KeyError:
        raise ValueError(f"unknown block variant {block!r}; choose one of {sorted(BLOCKS)}") from None


class ConvBN(nn.Module):
    """A conv branch with optional BN; ``kernel`` "dirac"/"trivial" re-parameterize its weight."""

    def __init__(self, in_ch, out_ch, ksize, stride, dilation, groups, bn=True, kernel="plain"):
        super().__init__()
        kh, kw = ksize
        padding = ((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation)
        self.conv = nn.Conv2d(in_ch, out_ch, ksize, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch) if bn else nn.Identity()
        if kernel not in ("plain", "dirac", "trivial"):
            raise ValueError(f"unknown kernel parameterization {kernel!r}")
        self.kernel = kernel
        # Where shapes change there is no identity to add: the layer is a plain conv, no extra params.
        self.with_identity = kernel != "plain" and in_ch == out_ch and stride == 1
        if kernel == "dirac" and self.with_identity:
            self.dirac_alpha = nn.Parameter(torch.ones(out_ch))
            self.dirac_beta = nn.Parameter(torch.full((out_ch,), 0.1))

    def weight(self) -> torch.Tensor:
        """The kernel the conv actually applies (DiracNet / trivial re-param compute it)."""
        w = self.conv.weight
        if not self.with_identity:
            return w
        if self.kernel == "dirac":
            return fusion.dirac_kernel(w, self.dirac_alpha, self.dirac_beta, self.conv.groups)
        ident = fusion.identity_kernel(w.shape[0], self.conv.groups, dtype=w.dtype, device=w.device)
        return w + ident  # trivial: W_hat = I + W

    def forward(self, x):
        if self.kernel == "plain":
            return self.bn(self.conv(x))
        return self.bn(self._reparam_conv(x))

    @torch.jit.unused
    def _reparam_conv(self, x):
        """The DiracNet / trivial variants (ablation only; TorchScript covers the plain kernel)."""
        c = self.conv
        return F.conv2d(x, self.weight(), None, c.stride, c.padding, c.dilation, c.groups)

    def as_3x3(self) -> fusion.Branch:
        kernel = fusion.pad_to_3x3(self.weight())
        return _fold_optional_bn(kernel, self.bn, self.conv.bias)


class IdentityBranch(nn.Module):
    """``y = x`` (optionally through BN), seen by fusion as a 3x3 conv with an identity kernel."""

    def __init__(self, channels: int, groups: int, bn: bool):
        super().__init__()
        self.channels, self.groups = channels, groups
        self.bn = nn.BatchNorm2d(channels) if bn else nn.Identity()

    def forward(self, x):
        return self.bn(x)

    def as_3x3(self, like: torch.Tensor) -> fusion.Branch:
        kernel = fusion.identity_kernel(self.channels, self.groups, dtype=like.dtype, device=like.device)
        return _fold_optional_bn(kernel, self.bn)


def _fold_optional_bn(kernel, bn: nn.Module, conv_bias=None) -> fusion.Branch:
    if isinstance(bn, nn.Identity):
        bias = conv_bias if conv_bias is not None else kernel.new_zeros(kernel.shape[0])
        return kernel, bias
    if not isinstance(bn, nn.BatchNorm2d):
        raise NotConvertibleError(f"cannot fold {type(bn).__name__}: only BatchNorm2d folds into a conv")
    if bn.running_mean is None or bn.running_var is None:
        raise NotConvertibleError(
            "BatchNorm2d with track_running_stats=False uses batch statistics at inference, "
            "which no fixed conv can reproduce"
        )
    return fusion.fold_bn(kernel, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, conv_bias)


class SqueezeExcite(nn.Module):
    """SE as in the official RepVGG-D2se: global mean, 1x1 reduce + ReLU, 1x1 expand + sigmoid.

    It sits after the sum of branches in train form and after the fused conv in deploy form, the
    same place in both, so fusion never has to move it.
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


def _accumulate(y: torch.Tensor, o: torch.Tensor, fresh: bool) -> tuple[torch.Tensor, bool]:
    """``y + o``; in place once ``y`` is a sum this block made (one activation less to hold)."""
    if fresh:
        y += o
        return y, True
    return y + o, True


class RepVGGBlock(nn.Module):
    """3x3 conv block with re-parameterizable train-time branches, then SE (optional) and ReLU.

    ``deploy=True`` builds the fused form directly: one 3x3 conv with bias named ``fused``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        se: bool = False,
        block: str | BlockSpec = "repvgg",
        deploy: bool = False,
    ):
        super().__init__()
        spec = get_block_spec(block)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"channels {in_channels}->{out_channels} not divisible by groups={groups}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.groups, self.dilation, self.spec = stride, groups, dilation, spec
        self.deploy, self.branch_relu = deploy, spec.branch_relu
        args = (in_channels, out_channels)
        # Every branch attribute exists in both forms, None where absent: TorchScript and
        # torch.compile then see one forward whose unused half is dropped at compile time.
        self.fused = self.conv3x3 = self.conv1x1 = self.conv3x1 = self.conv1x3 = None
        self.identity = self.post_bn = None
        if deploy:
            self.fused = nn.Conv2d(*args, 3, stride, dilation, dilation, groups, bias=True)
        else:
            bn3 = spec.branch_bn
            self.conv3x3 = ConvBN(*args, (3, 3), stride, dilation, groups, bn=bn3, kernel=spec.kernel)
            if spec.conv1x1:
                self.conv1x1 = ConvBN(*args, (1, 1), stride, 1, groups, bn=spec.bn_1x1)
            if spec.asymmetric:
                self.conv3x1 = ConvBN(*args, (3, 1), stride, dilation, groups, bn=bn3)
                self.conv1x3 = ConvBN(*args, (1, 3), stride, dilation, groups, bn=bn3)
            if spec.identity is not None and in_channels == out_channels and stride == 1:
                self.identity = IdentityBranch(out_channels, groups, spec.identity == "bn")
            if spec.post_bn:
                self.post_bn = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcite(out_channels) if se else nn.Identity()
        self.act = nn.ReLU(inplace=True)  # saves a full activation per block (peak memory, speed)

    def branches(self) -> list[nn.Module]:
        """The train-time branches, summed in forward and in fusion alike."""
        branches = (self.conv3x3, self.conv1x1, self.conv3x1, self.conv1x3, self.identity)
        return [b for b in branches if b is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused is not None:
            return self.act(self.se(self.fused(x)))
        conv3x3 = self.conv3x3
        assert conv3x3 is not None
        # written out branch by branch (no loop over branches()): TorchScript, torch.fx and
        # torch.compile(fullgraph=True) all take it as one graph
        y, fresh = self._out(conv3x3(x)), False
        if self.conv1x1 is not None:
            y, fresh = _accumulate(y, self._out(self.conv1x1(x)), fresh)
        if self.conv3x1 is not None:
            y, fresh = _accumulate(y, self._out(self.conv3x1(x)), fresh)
        if self.conv1x3 is not None:
            y, fresh = _accumulate(y, self._out(self.conv1x3(x)), fresh)
        if self.identity is not None:
            y, fresh = _accumulate(y, self._out(self.identity(x)), fresh)
        if self.post_bn is not None:
            y = self.post_bn(y)
        return self.act(self.se(y))

    def _out(self, branch_output: torch.Tensor) -> torch.Tensor:
        return F.relu(branch_output) if self.branch_relu else branch_output

    def fused_kernel_bias(self) -> fusion.Branch:
        """The single 3x3 ``(kernel, bias)`` equivalent to the branches in eval mode."""
        if self.deploy:
            return self.fused.weight, self.fused.bias
        if self.spec.branch_relu:
            raise NotConvertibleError(
                f"block variant {self.spec.name!r} has a ReLU inside each branch; the sum of "
                "nonlinear branches is not a linear map, so it cannot be folded into one conv"
            )
        like = self.conv3x3.conv.weight
        parts = [b.as_3x3(like) if isinstance(b, IdentityBranch) else b.as_3x3() for b in self.branches()]
        kernel, bias = fusion.add_branches(parts)
        if self.post_bn is not None:
            kernel, bias = _fold_optional_bn(kernel, self.post_bn, bias)
        return kernel, bias

    @torch.no_grad()
    def fuse(self) -> "RepVGGBlock":
        """A new deploy-form block computing what this one computes in eval mode."""
        if self.deploy:
            return self
        kernel, bias = self.fused_kernel_bias()
        like = self.conv3x3.conv.weight
        fused = RepVGGBlock(
            self.in_channels, self.out_channels, self.stride, self.groups, self.dilation,
            se=False, block=self.spec, deploy=True,
        ).to(device=like.device, dtype=like.dtype)
        fused.fused.weight.copy_(kernel)
        fused.fused.bias.copy_(bias)
        fused.se = self.se
        return fused.train(self.training)

    def train_twin(self) -> "RepVGGBlock":
        """A fresh train-time block whose fusion has this block's shape (fuse-on-load fills it)."""
        return RepVGGBlock(self.in_channels, self.out_channels, self.stride, self.groups, self.dilation,
                           se=isinstance(self.se, SqueezeExcite), block=self.spec, deploy=False)

    def extra_repr(self) -> str:
        form = "deploy" if self.deploy else f"train, block={self.spec.name}"
        return f"{self.in_channels}->{self.out_channels}, stride={self.stride}, groups={self.groups}, " \
               f"dilation={self.dilation}, {form}"
