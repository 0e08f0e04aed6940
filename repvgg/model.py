"""The RepVGG network: a stem block, four stages of blocks, and a pooled linear head.

Stride 2 opens each stage (the stem too, unless ``small_input``); ``output_stride`` 16 or 8
trades the last strides for dilation, as PSPNet-style backbones do (paper Sect. 4.3).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .archs import RepVGGArch
from .blocks import BlockSpec, RepVGGBlock


class FeatureInfo(list):
    """timm-style list of ``{"num_chs", "reduction", "module"}`` with column helpers."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]


def _check_input(x: torch.Tensor, in_chans: int) -> None:
    """Clear errors for a wrong input; in a form TorchScript and torch.fx take as well.

    Eager (and torch.compile) get messages naming the shape and the fix; a scripted or FX-traced
    model keeps the same checks as ``torch._assert`` nodes with fixed messages.
    """
    if not torch.jit.is_scripting():
        if not _fx_tracing():
            _explain_bad_input(x, in_chans)
            return
    torch._assert(x.dim() == 4, "expected a 4D input (N, C, H, W)")
    torch._assert(x.shape[1] == in_chans, "wrong number of input channels for this model (see in_chans)")
    torch._assert(x.is_floating_point(), "expected a floating-point image tensor (normalize uint8 images first)")


@torch.jit.unused
def _fx_tracing() -> bool:
    trace = torch.fx._symbolic_trace
    return getattr(trace, "is_fx_symbolic_tracing", trace.is_fx_tracing)()   # the former from torch 2.10


@torch.jit.unused
def _explain_bad_input(x: torch.Tensor, in_chans: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"expected a 4D input (N, C, H, W), got a {x.dim()}D tensor of shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels (N, {in_chans}, H, W), got {x.shape[1]} "
            f"(shape {tuple(x.shape)}); build the model with in_chans={x.shape[1]} if that is intended"
        )
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point image tensor, got {x.dtype}: convert and normalize it first, e.g. "
            "x.float().div(255) then (x - mean) / std (torchvision.transforms.v2.ToDtype(torch.float32, scale=True))"
        )


def check_io_sizes(num_classes: int, in_chans: int) -> None:
    """A classifier has >= 0 classes (0: no head, features only) and reads >= 1 input channel."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an integer >= 0 (0 = no classifier), got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")


def stage_schedule(num_stages: int, small_input: bool, output_stride: int) -> list[tuple[int, int, int, int]]:
    """Per stage ``(stride, first_dilation, dilation, reduction)``, the stem's reduction first.

    Each stage halves the resolution until that would pass ``output_stride``; from then on it keeps
    the resolution and doubles the dilation instead. A stage's first layer keeps the dilation of the
    stage before it (as torchvision's dilated ResNets do).
    """
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    reduction, dilation, schedule = (1 if small_input else 2), 1, []
    for _ in range(num_stages):
        first = dilation
        if reduction * 2 > output_stride:  # keep resolution, widen the receptive field instead
            stride, dilation = 1, dilation * 2
        else:
            stride, reduction = 2, reduction * 2
        schedule.append((stride, first, dilation, reduction))
    return schedule


def chain_blocks(model: nn.Module) -> list[nn.Module]:
    """The stem, then every stage block, in the order data flows through them.

    For a fused RepVGG this is the whole plain conv chain (pruning and the oneDNN inference form
    walk it); a model without ``stem``/``stages`` has no such chain and gets ``[]``.
    """
    if not hasattr(model, "stem") or not hasattr(model, "stages"):
        return []
    return [model.stem, *(b for stage in model.stages for b in stage)]


class RepVGG(nn.Module):
    # Python-side conveniences TorchScript need not compile (a scripted model keeps forward & co.)
    __jit_unused_properties__ = ["build_args", "is_deployed", "pretrained_cfg", "default_cfg", "head_hidden_size"]

    def __init__(
        self,
        arch: RepVGGArch,
        num_classes: int = 1000,
        in_chans: int = 3,
        deploy: bool = False,
        block: str | BlockSpec = "repvgg",
        small_input: bool = False,
        output_stride: int = 32,
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        dilated_blocks: int | None = None,
    ):
        super().__init__()
        check_io_sizes(num_classes, in_chans)
        schedule = stage_schedule(len(arch.depths), small_input, output_stride)
        self.arch, self.num_classes, self.in_chans = arch, num_classes, in_chans
        self.block_kwargs = dict(se=arch.se, block=block, deploy=deploy)
        self.stem = RepVGGBlock(in_chans, arch.stem_width, stride=1 if small_input else 2, **self.block_kwargs)
        reduction = 1 if small_input else 2
        self.feature_info = FeatureInfo([dict(num_chs=arch.stem_width, reduction=reduction, module="stem")])

        # dilated_blocks=N: only the last N blocks keep their dilation (the paper's "fast" PSPNet backbones,
        # N = 5); the strides stay removed, so the output stride is unchanged
        undilated = sum(arch.depths) - dilated_blocks if dilated_blocks is not None else 0
        stages, in_ch, layer_idx = [], arch.stem_width, 1
        for i, (depth, width, (stride, prev_dilation, dilation, reduction)) in enumerate(
            zip(arch.depths, arch.widths, schedule)
        ):
            blocks = []
            for j in range(depth):
                blocks.append(
                    RepVGGBlock(
                        in_ch, width, stride=stride if j == 0 else 1, groups=arch.layer_groups(layer_idx),
                        dilation=1 if layer_idx <= undilated else (prev_dilation if j == 0 else dilation),
                        **self.block_kwargs,
                    )
                )
                in_ch, layer_idx = width, layer_idx + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = in_ch
        self.head = ClassifierHead(in_ch, num_classes, drop_rate, global_pool)

    @property
    @torch.jit.unused
    def is_deployed(self) -> bool:
        """True when every block is in fused form (derived from the blocks, never stored)."""
        return all(m.deploy for m in self.modules() if isinstance(m, RepVGGBlock))

    @torch.jit.unused
    def _warn_if_exporting_unfused(self) -> None:
        if torch.onnx.is_in_onnx_export() and not self.is_deployed:
            warnings.warn(
                "exporting a train-time RepVGG: call repvgg.reparameterize(model) first, or the "
                "exported graph keeps every branch and BN (slower, and not the plain network)",
                stacklevel=3,
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_chans)
        # Block by block in this one frame, not self.stages(x): a called stage's caller would keep
        # the stage's input alive until its last block, and at the first stage that input (the
        # stem's output, the largest map) is most of the fused model's peak inference memory
        # (A0, batch 32, 224 px, channels_last: 110 -> 92 MB of tensors).
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            self._warn_if_exporting_unfused()
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's feature API: ``(final features, [stem/stage outputs])``, or the list alone.

        ``indices``: which of the 5 feature levels (0 = stem, 1-4 = stages; negative from the end;
        an int n = the last n). ``stop_early`` skips the stages after the last one asked for.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (a ConvNet's own layout), got {output_fmt!r}")
        take = feature_indices(len(self.feature_info), indices)
        _check_input(x, self.in_chans)
        x = self.stem(x)
        feats = [x] if 0 in take else []
        last = max(take) if stop_early else len(self.stages)
        for i, stage in enumerate(self.stages, start=1):
            if i > last:
                break
            for block in stage:
                x = block(x)
            if i in take:
                feats.append(x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(self, indices: int | list[int] | None = None, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last kept feature level (and the head): a smaller backbone."""
        take = feature_indices(len(self.feature_info), indices)
        self.stages = self.stages[:max(take)]              # level k is the output of stage k (0: the stem)
        self.feature_info = FeatureInfo(self.feature_info[:max(take) + 1])
        self.num_features = self.feature_info[-1]["num_chs"]
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new, untrained classifier for ``num_classes`` (0: none), pooling ``global_pool`` (timm's API)."""
        check_io_sizes(num_classes, self.in_chans)
        self.num_classes = num_classes
        pool = self.head.global_pool if global_pool is None else global_pool
        self.head = ClassifierHead(self.num_features, num_classes, self.head.drop.p, pool)

    @property
    def head_hidden_size(self) -> int:
        """Width of what the classifier reads (no pre-logits layer: the last stage's channels)."""
        return self.num_features

    @property
    @torch.jit.unused
    def pretrained_cfg(self) -> dict:
        """What a user needs to feed the model: input size, normalization, resize, crop (timm's keys)."""
        small = bool(self.__dict__.get("_build_args", {}).get("small_input"))
        size = 32 if small else 224
        mean, std = (0.5,) * self.in_chans, (0.5,) * self.in_chans
        if self.in_chans == 3:
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        return {"input_size": (self.in_chans, size, size), "mean": mean, "std": std, "interpolation": "bilinear",
                "crop_pct": 1.0 if small else 0.875, "crop_mode": "center", "num_classes": self.num_classes,
                "pool_size": (1, 1), "first_conv": _first_conv(self.stem), "classifier": "head.fc",
                "license": "mit", "paper_ids": "arXiv:2101.03697"}

    default_cfg = pretrained_cfg      # the older timm name

    @property
    def build_args(self) -> dict:
        """The ``create_model`` kwargs that rebuild this model as it is now (saved with checkpoints).

        Set by ``create_model`` (and by pruning, for the new widths); the class count is read from
        the live model, so ``reset_classifier`` is reflected without anyone remembering to.
        """
        args = dict(self.__dict__.get("_build_args", {}))
        if args:
            args["num_classes"] = self.num_classes
        return args

    @build_args.setter
    def build_args(self, args: dict) -> None:
        self.__dict__["_build_args"] = dict(args)


POOLS = ("avg", "max", "avgmax", "")


class ClassifierHead(nn.Module):
    """Global pooling, dropout, linear (``head.fc``; identity when num_classes=0).

    ``global_pool``: "avg" (the paper's), "max", "avgmax" (their mean), or "" for no pooling,
    which returns the feature map and needs num_classes=0 (timm's ``reset_classifier(0, "")``).
    """

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        if global_pool not in POOLS:
            raise ValueError(f"global_pool must be one of {POOLS}, got {global_pool!r}")
        if global_pool == "" and num_classes > 0:
            raise ValueError("global_pool='' returns feature maps; a classifier needs pooling (or num_classes=0)")
        self.global_pool = global_pool
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        elif self.global_pool == "max":
            x = x.amax((2, 3))
        elif self.global_pool == "avgmax":
            x = 0.5 * (x.mean((2, 3)) + x.amax((2, 3)))
        x = self.drop(x)
        return x if pre_logits else self.fc(x)


def feature_indices(num_levels: int, indices: int | list[int] | None) -> list[int]:
    """timm's rule: None = every level, n = the last n, a list = those (negative from the end)."""
    if indices is None:
        return list(range(num_levels))
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"indices={indices}: asks for the last {indices} of {num_levels} feature levels")
        return list(range(num_levels - indices, num_levels))
    take = sorted(i % num_levels if -num_levels <= i < num_levels else num_levels for i in indices)
    if not take or take[-1] >= num_levels:
        raise ValueError(f"indices {list(indices)} must lie in -{num_levels}..{num_levels - 1}")
    return take


def _first_conv(stem: nn.Module) -> str:
    conv = getattr(stem, "fused", None)
    return "stem.fused" if conv is not None else "stem.conv3x3.conv"


class RepVGGFeatures(nn.Module):
    """Backbone form (``features_only=True``): returns the outputs of the selected stages.

    Index 0 is the stem, 1-4 the stages. Keys are the classifier's minus ``head.``, so backbone
    checkpoints and classifier checkpoints share one naming.
    """

    def __init__(self, model: RepVGG, out_indices=(0, 1, 2, 3, 4)):
        super().__init__()
        out_indices = tuple(out_indices)
        bad = [i for i in out_indices if not 0 <= i <= 4]
        if bad:
            raise ValueError(f"out_indices must be in 0..4 (0 = stem, 1-4 = stages), got {bad}")
        self.in_chans, self.arch, self.out_indices = model.in_chans, model.arch, out_indices
        self.build_args = dict(getattr(model, "build_args", {}), num_classes=0)
        self.stem, self.stages = model.stem, model.stages
        self.feature_info = FeatureInfo(model.feature_info[i] for i in out_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.in_chans)
        x = self.stem(x)
        feats = [x] if 0 in self.out_indices else []
        for i, stage in enumerate(self.stages, start=1):
            for block in stage:  # block by block, as RepVGG.forward_features does (peak memory)
                x = block(x)
            if i in self.out_indices:
                feats.append(x)
        return feats
