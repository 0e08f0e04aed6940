"""``run_bench``: build the rows, time them interleaved, count, measure memory, attach paper numbers."""
from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Sequence

import torch

from ..optimize import check_device_dtype
from .ceiling import ceiling_timer
from .counting import complexity
from .memory import peak_memory
from .models import DTYPES, ModelSpec, apply_treatment, build_reference, example_input, make_spec
from .paper import PAPER
from .report import environment, loadavg
from .timing import Protocol, time_interleaved

MIN_IMAGE_SIZE = 32  # five stride-2 stages


def make_specs(models: Sequence[str], form: str = "deploy", dtype: str = "fp32", channels_last: bool = False,
               treatment: str = "eager") -> list[ModelSpec]:
    """One spec per model and form; ``form="both"`` gives RepVGG (and timm) train and deploy rows."""
    if form not in ("train", "deploy", "both"):
        raise ValueError(f"form must be train, deploy or both, got {form!r}")
    if not models:
        raise ValueError("no models given")
    forms = ("train", "deploy") if form == "both" else (form,)
    specs = []
    for name in models:
        for f in forms:
            spec = make_spec(name, f, dtype, channels_last, treatment)
            if spec not in specs:
                specs.append(spec)
    return specs


def run_bench(
    specs: Sequence[ModelSpec],
    batch_size: int = 128,
    image_size: int = 224,
    device: str | torch.device = "cpu",
    protocol: Protocol | None = None,
    ceiling: bool | Sequence[ModelSpec] = False,
    memory: bool | Sequence[ModelSpec] = True,
    num_classes: int = 1000,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Time every spec with the interleaved protocol; returns ``{"settings", "environment", "rows"}``.

    Params/FLOPs/Wino MULs are counted on each row's plain fp32 model at batch 1. With ``ceiling``,
    each deploy-form RepVGG row (or the rows listed) also gets its convs timed alone, interleaved
    with the rest; ``memory`` likewise measures all rows or the rows listed.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be >= {MIN_IMAGE_SIZE} (the models downsample 32x), got {image_size}")
    device = torch.device(device)
    for dt in {s.dtype for s in specs}:
        check_device_dtype(device, DTYPES[dt])
    protocol = protocol or Protocol.default(device.type)
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    shape = (batch_size, 3, image_size, image_size)
    load_before = loadavg()
    want_ceiling = [s for s in specs if s.form == "deploy" and s.kind == "repvgg"] if ceiling is True else ceiling or []
    want_memory = list(specs) if memory is True else memory or []

    rows, runners, timers = [], {}, {}
    for spec in specs:
        say(f"building {spec.label}")
        ref = build_reference(spec, num_classes)
        counts = complexity(ref, (1, 3, image_size, image_size))
        cref = copy.deepcopy(ref) if spec in want_ceiling else None
        model = apply_treatment(ref, spec, device, shape)
        x = example_input(spec, shape, device)
        runners[spec.label] = (lambda m, x: lambda: m(x))(model, x)
        chosen = getattr(model, "optimize_info", None)  # what optimize_for_inference picked
        if cref is not None:
            cl = spec.channels_last or spec.treatment == "optimized"
            fmt = torch.channels_last if cl else torch.contiguous_format
            cref = cref.to(device=device, dtype=DTYPES[spec.dtype], memory_format=fmt)
            xc = torch.randn(shape, device=device).to(DTYPES[spec.dtype]).contiguous(memory_format=fmt)
            timers[spec.label + " :ceiling"] = ceiling_timer(cref, xc)
        paper = PAPER.get(spec.name.removeprefix("timm:"))
        rows.append(dict(
            label=spec.label, name=spec.name, kind=spec.kind, form=spec.form if spec.kind != "baseline" else "fused",
            dtype=spec.dtype, channels_last=spec.channels_last, treatment=spec.treatment,
            params_m=counts.params / 1e6, macs_g=counts.macs / 1e9, wino_muls_g=counts.wino_muls / 1e9,
            paper_top1=paper.top1 if paper else None, paper_speed=paper.speed if paper else None,
        ))
        if chosen is not None:
            rows[-1]["optimize_info"] = chosen

    say(f"timing {len(runners) + len(timers)} runners: {protocol}")
    timings = time_interleaved(runners, batch_size, protocol, device, timers=timers, progress=say)
    for row in rows:
        t = timings[row["label"]]
        row.update(images_per_s=t.median, images_per_s_min=t.spread[0], images_per_s_max=t.spread[1],
                   per_repeat=t.per_repeat)
        c = timings.get(row["label"] + " :ceiling")
        if c is not None:
            row.update(ceiling_images_per_s=c.median, ceiling_fraction=t.median / c.median,
                       ceiling_per_repeat=c.per_repeat)
    load_after = loadavg()
    del runners, timers

    for spec, row in zip(specs, rows):
        if spec in want_memory:
            say(f"peak memory of {spec.label}")
            peak = peak_memory(spec, shape, device, num_classes)
            row["peak_mem_mb"] = None if peak is None else peak / 2**20

    settings = dict(batch_size=batch_size, image_size=image_size, device=str(device),
                    warmup_batches=protocol.warmup, timed_batches=protocol.iters, repeats=protocol.repeats,
                    interleaved=True, ceiling=[s.label for s in want_ceiling],
                    memory=("GPU max allocated minus allocated before the batch" if device.type == "cuda" else
                            "CPU peak RSS delta of one batch, fresh subprocess per model") if want_memory else None,
                    loadavg_before=load_before, loadavg_after=load_after,
                    paper_columns="paper_top1 / paper_speed are the paper's Tables 4-5 (1080Ti, bs 128), not ours")
    return dict(settings=settings, environment=environment(device), rows=rows)
