"""Speed of segmenters side by side (paper Table 8 protocol): deploy forms, conv-BN folded, interleaved.

Every segmenter in its deploy form (RepVGG fused; then every remaining conv-BN pair folded with
torch.fx, the ResNets' and the heads' alike), the aux head absent; models are timed interleaved
(median of ``repeats``). Params and multiply-adds are counted for backbone and head separately: at
output stride 8 the head is a large share of the work.
"""
from __future__ import annotations

import torch

from ..complexity import count_macs, count_params
from ..deploy.common import time_interleaved
from ..reparam import reparameterize
from .models import create_segmenter

PAIRS = [("pspnet_repvgg_a0", "pspnet_resnet18"), ("pspnet_repvgg_b1g2_fast", "pspnet_resnet50")]
FAST_PAIR = ("pspnet_repvgg_a0_fast", "pspnet_repvgg_a0")   # dilation in the last 5 blocks vs in all of stages 3-4


def deployed_for_speed(name: str, classes: int, head_channels: int = 512) -> torch.nn.Module:
    from torch.fx.experimental.optimization import fuse

    seg = create_segmenter(name, classes, aux=False, head_channels=head_channels).eval()
    return fuse(reparameterize(seg)).eval()


RUNTIMES = ("torch", "winograd", "onnxruntime")


def _ort_runner(model: torch.nn.Module, x: torch.Tensor, threads: int | None):
    """The deploy form exported to ONNX and run by onnxruntime, its output checked against PyTorch's.

    ``onnx_proto``, not ``export_model``: that one refuses a graph that is not plain, and the ResNet
    baselines keep their Add and MaxPool."""
    from ..deploy.export import onnx_proto
    from ..deploy.quantize import ort_session

    proto, _ = onnx_proto(model, x)
    sess = ort_session(proto.SerializeToString(), threads)
    feed = {"input": x.numpy()}
    with torch.inference_mode():
        ref = model(x)
    err = float((torch.as_tensor(sess.run(None, feed)[0]) - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
    if not err < 1e-4:
        raise RuntimeError(f"onnxruntime's output differs from PyTorch's (relative error {err:.1e}): not timed")
    return lambda: sess.run(None, feed)


def _runner(model: torch.nn.Module, x: torch.Tensor, runtime: str, threads: int | None):
    """A no-argument callable running one deploy form in ``runtime`` (see :func:`compare_speed`);
    for ``winograd`` also the count of swapped convs over eligible ones."""
    if runtime == "onnxruntime":
        return _ort_runner(model, x, threads), None
    swapped = None
    if runtime == "winograd":
        from ..winograd import winograd_convs

        model, report = winograd_convs(model, x)
        swapped = f"{sum(r['used'] for r in report)}/{len(report)}"

    def run():
        with torch.inference_mode():
            model(x)
        if x.is_cuda:
            torch.cuda.synchronize()
    return run, swapped


def compare_speed(names: list[str], size: int = 512, batch: int = 1, classes: int = 19, repeats: int = 5,
                  device: str = "cpu", head_channels: int = 512, runtime: str | tuple[str, ...] = "torch",
                  threads: int | None = None) -> list[dict]:
    """One row per segmenter and runtime: ms per batch (median, all timed interleaved in one loop),
    params and GMACs of backbone and head. ``speed_vs_first``: the first model's time over this one's
    in the same runtime (2.0 = twice as fast); ``speed_vs_torch``: the same model in PyTorch eager
    over this runtime, where ``torch`` is among the runtimes.
    ``runtime="winograd"`` (CPU): PyTorch eager with every eligible 3x3 conv that NNPACK runs faster on
    this input swapped in (:func:`repvgg.winograd.winograd_convs`), the ResNets' convs alike.
    ``runtime="onnxruntime"`` (CPU): each deploy form exported to ONNX and run by onnxruntime."""
    runtimes = (runtime,) if isinstance(runtime, str) else tuple(runtime)
    for rt in runtimes:
        if rt not in RUNTIMES:
            raise ValueError(f"unknown runtime {rt!r}; one of {', '.join(RUNTIMES)}")
        if rt != "torch" and device != "cpu":
            raise ValueError(f"runtime {rt} is timed on the CPU (NNPACK / onnxruntime's CPU provider); use device='cpu'")
    dev = torch.device(device)
    x = torch.randn(batch, 3, size, size, device=dev)
    fns, swapped = {}, {}
    for n in names:
        model = deployed_for_speed(n, classes, head_channels).to(dev)
        for rt in runtimes:
            fns[n, rt], swapped[n, rt] = _runner(model, x, rt, threads)
    t = time_interleaved(fns, repeats=repeats, warmup=2)
    rows = []
    for n in names:
        seg = reparameterize(create_segmenter(n, classes, aux=False, head_channels=head_channels).eval())
        one = (1, 3, size, size)
        with torch.inference_mode():
            feat = tuple(seg.backbone(torch.zeros(one))[-1].shape)
        counts = {"params_backbone_m": count_params(seg.backbone) / 1e6, "params_head_m": count_params(seg.head) / 1e6,
                  "gmacs_backbone": count_macs(seg.backbone, one) / 1e9, "gmacs_head": count_macs(seg.head, feat) / 1e9}
        for rt in runtimes:
            row = {"model": n, "runtime": rt, "ms": t[n, rt] * 1e3, "images_per_s": batch / t[n, rt],
                   "speed_vs_first": t[names[0], rt] / t[n, rt], **counts}
            if "torch" in runtimes:
                row["speed_vs_torch"] = t[n, "torch"] / t[n, rt]
            if swapped[n, rt] is not None:
                row["winograd_convs"] = swapped[n, rt]  # eligible 3x3 convs run by NNPACK / all eligible
            rows.append(row)
    return rows


def format_rows(rows: list[dict], batch: int) -> str:
    lines = [f"| segmenter | runtime | ms / batch of {batch} | images/s | speed vs {rows[0]['model']} | "
             "params backbone / head (M) | GMACs per image backbone / head |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['runtime']} | {r['ms']:.1f} | {r['images_per_s']:.1f} | {r['speed_vs_first']:.2f}x | "
              f"{r['params_backbone_m']:.1f} / {r['params_head_m']:.1f} | {r['gmacs_backbone']:.1f} / "
              f"{r['gmacs_head']:.1f} |" for r in rows]
    return "\n".join(lines)
