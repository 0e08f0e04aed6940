"""Segmenters: a dilated backbone (output stride 8) with the same PSP head for all (paper Table 8).

``pspnet_<zoo model>`` dilates the last two stages of a RepVGG; ``pspnet_<zoo model>_fast`` keeps
their strides removed but dilates only the last 5 blocks (the paper's "fast" variants: dilated convs
are the slow ones). ``pspnet_resnet18/50/101`` are torchvision's ResNets with
``replace_stride_with_dilation``. A segmenter is an ``nn.Module`` with RepVGG blocks inside:
``repvgg.reparameterize`` fuses it, and drops the auxiliary head (wrapped in ``TrainOnly``).
"""
from __future__ import annotations

from os import PathLike

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..factory import create_model, list_models
from ..reparam import TrainOnly
from .heads import FCNHead, PSPHead

RESNETS = ("resnet18", "resnet50", "resnet101")
FAST_DILATED_BLOCKS = 5


def list_segmenters() -> list[str]:
    zoo = list_models()
    return [f"pspnet_{m}" for m in zoo] + [f"pspnet_{m}_fast" for m in zoo] + [f"pspnet_{r}" for r in RESNETS]


class ResNetFeatures(nn.Module):
    """torchvision ResNet, dilated to output stride 8, returning [layer3, layer4] outputs."""

    def __init__(self, name: str, in_chans: int = 3, checkpoint: str | PathLike | None = None):
        super().__init__()
        import torchvision

        net = getattr(torchvision.models, name)(replace_stride_with_dilation=[False, True, True]) \
            if name != "resnet18" else _dilated_resnet18()
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        if checkpoint is not None:
            load_resnet_weights(net, checkpoint, name)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        widths = [m[-1].conv3.out_channels if hasattr(m[-1], "conv3") else m[-1].conv2.out_channels
                  for m in (self.layer3, self.layer4)]
        self.channels = widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.layer2(self.layer1(self.stem(x)))
        c3 = self.layer3(x)
        return [c3, self.layer4(c3)]


def load_resnet_weights(net: nn.Module, path: str | PathLike, name: str) -> None:
    """Load a torchvision / timm ResNet classification checkpoint (``conv1``, ``bn1``, ``layer1-4``; the
    ``fc`` classifier is dropped) into ``net``; dilation changes no weight shape. A first conv trained on
    other input channels is adapted (gray <-> RGB, see repvgg.input_adapt); anything else that does not fit
    is refused with the keys that differ."""
    from ..checkpoint import CheckpointError, read_checkpoint
    from ..input_adapt import adapt_first_convs

    sd, _ = read_checkpoint(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    sd = adapt_first_convs(sd, net.conv1.in_channels, ["conv1.weight"], str(path))
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd and not k.startswith("fc.")]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path} is not a {name} checkpoint (torchvision / timm naming): "
            + "; ".join(f"{what} {keys[:4]}{' ...' if len(keys) > 4 else ''}" for what, keys in
                        (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong)) if keys))
    net.load_state_dict({**{k: v for k, v in expected.items() if k.startswith("fc.")}, **sd})


def _dilated_resnet18():
    """torchvision's BasicBlock refuses dilation > 1; set it on the convs of layers 3-4 (stride 1) by hand."""
    import torchvision

    net = torchvision.models.resnet18()
    for layer, d in ((net.layer3, 2), (net.layer4, 4)):
        for i, block in enumerate(layer):
            for conv in (block.conv1, block.conv2):
                first = i == 0 and conv is block.conv1
                dil = d // 2 if first else d
                conv.stride, conv.dilation, conv.padding = (1, 1), (dil, dil), (dil, dil)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
    return net


class Segmenter(nn.Module):
    """backbone -> [aux-level, last] features -> PSP head (+ FCN aux head while training), upsampled."""

    def __init__(self, backbone: nn.Module, head: nn.Module, aux_head: nn.Module | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.aux_head = TrainOnly(aux_head) if aux_head is not None else None

    @property
    def is_deployed(self) -> bool:
        """No train-time block left and no aux head: what export and quantize accept."""
        from ..reparam import FUSABLE

        return self.aux_head is None and not any(isinstance(m, FUSABLE) and not m.deploy for m in self.modules())

    @property
    def in_chans(self) -> int:
        return self.spec.get("in_chans", 3) if hasattr(self, "spec") else 3

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        feats = self.backbone(x)
        out = F.interpolate(self.head(feats[-1]), size=size, mode="bilinear", align_corners=False)
        if self.training and self.aux_head is not None:
            aux = F.interpolate(self.aux_head(feats[-2]), size=size, mode="bilinear", align_corners=False)
            return out, aux
        return out


def create_segmenter(name: str, num_classes: int, deploy: bool = False, aux: bool = True,
                     backbone_checkpoint: str | PathLike | None = None, in_chans: int = 3, head_channels: int = 512,
                     **kwargs) -> Segmenter:
    """A PSPNet by name (see :func:`list_segmenters`); ``backbone_checkpoint`` loads a classification
    checkpoint into the backbone, dilation reusing its weights: for RepVGG ours, official, timm or mmpretrain
    naming; for the ResNet baselines torchvision's or timm's (e.g. ``resnet18-f37072fd.pth``).
    ``head_channels``: the PSP head's width (512 as in the paper and mmsegmentation; smaller for CPU budgets)."""
    if not name.startswith("pspnet_"):
        raise ValueError(f"unknown segmenter {name!r}; names look like pspnet_repvgg_a0, pspnet_repvgg_b1g2_fast, "
                         f"pspnet_resnet50 (repvgg.seg.list_segmenters())")
    arch = name[len("pspnet_"):]
    if arch in RESNETS:
        backbone = ResNetFeatures(arch, in_chans, backbone_checkpoint)
        channels = backbone.channels
    else:
        fast = arch.endswith("_fast")
        zoo = arch[: -len("_fast")] if fast else arch
        model = create_model(zoo, num_classes=0, in_chans=in_chans, deploy=deploy, output_stride=8,
                             dilated_blocks=FAST_DILATED_BLOCKS if fast else None, features_only=True,
                             out_indices=(3, 4), checkpoint=backbone_checkpoint, **kwargs)
        backbone, channels = model, model.feature_info.channels()
    aux_head = FCNHead(channels[0], num_classes) if aux and not deploy else None
    seg = Segmenter(backbone, PSPHead(channels[1], num_classes, channels=head_channels), aux_head)
    seg.segmenter_name = name
    seg.spec = {"name": name, "num_classes": num_classes, "in_chans": in_chans, "head_channels": head_channels,
                "deployed": deploy, **kwargs}
    return seg


def load_segmenter(path: str | PathLike, deploy: bool = False) -> Segmenter:
    """A segmenter from a checkpoint written by ``repvgg seg train`` (its ``segmenter`` metadata), in eval mode;
    ``deploy=True`` fuses a train-time checkpoint (the aux head is dropped)."""
    import json

    from ..checkpoint import load_state_dict, read_checkpoint
    from ..reparam import reparameterize

    state, meta = read_checkpoint(path)
    if "segmenter" not in meta:
        raise ValueError(f"{path}: not a segmenter checkpoint (no 'segmenter' metadata; classification checkpoints "
                         "load as a backbone: create_segmenter(name, n, backbone_checkpoint=...))")
    spec = json.loads(meta["segmenter"])
    name, n = spec.pop("name"), spec.pop("num_classes")
    deployed = spec.pop("deployed", False)
    has_aux = any(k.startswith("aux_head.") for k in state)
    model = create_segmenter(name, n, deploy=deployed, aux=has_aux, **spec)
    load_state_dict(model, state, source=str(path))
    model.eval()
    return reparameterize(model) if deploy and not deployed else model
