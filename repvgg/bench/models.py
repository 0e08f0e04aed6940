"""What a benchmark row is (a :class:`ModelSpec`) and how to build it.

A spec is plain data (JSON-able), so a fresh subprocess can rebuild the same model to measure its
memory honestly. Names: our RepVGG names ("repvgg_a0"), torchvision baselines ("resnet18"), or
timm's RepVGG for comparison ("timm:repvgg_a0"; timm is an optional extra, imported only here).
"""
from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..archs import ARCHS, canonical_name
from ..optional import require
from .baselines import BASELINES, create_baseline

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FORMS = ("train", "deploy")
TREATMENTS = ("eager", "compile", "optimized")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # "repvgg_a0", "resnet18", "timm:repvgg_a0"
    form: str = "deploy"  # RepVGG: "train" (multi-branch) or "deploy" (fused); baselines: always fused
    dtype: str = "fp32"
    channels_last: bool = False
    treatment: str = "eager"  # "eager", "compile" (torch.compile, freezing on CPU), "optimized"

    @property
    def kind(self) -> str:
        if self.name.startswith("timm:"):
            return "timm"
        return "repvgg" if self.name in ARCHS else "baseline"

    @property
    def label(self) -> str:
        form = "fused" if self.kind == "baseline" else self.form
        extras = [self.dtype] + (["channels_last"] if self.channels_last else [])
        extras += [] if self.treatment == "eager" else [self.treatment]
        return f"{self.name} [{form}, {', '.join(extras)}]"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_name(name: str) -> str:
    """Canonical bench name, or a ValueError listing close matches."""
    if name.startswith("timm:"):
        return "timm:" + canonical_name(name[5:])
    if name in BASELINES:
        return name
    try:
        return canonical_name(name)
    except ValueError:
        known = list(ARCHS) + list(BASELINES)
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} Known: {', '.join(known)} (and timm:<repvgg name>)"
        ) from None


def make_spec(name: str, form: str = "deploy", dtype: str = "fp32", channels_last: bool = False,
              treatment: str = "eager") -> ModelSpec:
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if treatment not in TREATMENTS:
        raise ValueError(f"treatment must be one of {TREATMENTS}, got {treatment!r}")
    name = resolve_name(name)
    if name in BASELINES:
        form = "deploy"
    return ModelSpec(name, form, dtype, channels_last, treatment)


def build_reference(spec: ModelSpec, num_classes: int = 1000, seed: int = 0) -> nn.Module:
    """The plain fp32 eager model of a spec (what its params and FLOPs are counted on)."""
    torch.manual_seed(seed)
    if spec.kind == "baseline":
        return create_baseline(spec.name, num_classes=num_classes)
    if spec.kind == "timm":
        timm = require("timm")
        # timm.models has it since 1.0; timm 0.9 keeps it in timm.utils.model (seen on the GPU host)
        reparameterize_model = getattr(require("timm.models"), "reparameterize_model", None) \
            or require("timm.utils.model").reparameterize_model

        model = timm.create_model(spec.name[5:], num_classes=num_classes).eval()
        return reparameterize_model(model) if spec.form == "deploy" else model
    from ..factory import create_model
    from ..reparam import reparameterize

    model = create_model(spec.name, num_classes=num_classes).eval()
    return reparameterize(model) if spec.form == "deploy" else model


def apply_treatment(model: nn.Module, spec: ModelSpec, device: torch.device,
                    example_shape: tuple[int, ...]) -> nn.Module:
    """Move/cast a reference model as the spec says; returns what is timed."""
    dtype = DTYPES[spec.dtype]
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    if spec.treatment == "optimized":
        from ..optimize import optimize_for_inference

        return optimize_for_inference(model, device=device, dtype=dtype, channels_last=spec.channels_last or None,
                                      example_shape=tuple(example_shape))
    model = model.to(device=device, dtype=dtype, memory_format=fmt).eval()
    if spec.treatment == "compile":
        from ..optimize import compile_for_inference

        model = compile_for_inference(model, device)
    return model


def example_input(spec: ModelSpec, shape: tuple[int, ...], device: torch.device, seed: int = 0) -> torch.Tensor:
    """A random batch as the timed model takes it. An optimized model is handed plain fp32 NCHW
    images, as a user would: its own conversion is part of what is timed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(device)
    if spec.treatment == "optimized":
        return x
    fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
    return x.to(DTYPES[spec.dtype]).contiguous(memory_format=fmt)
