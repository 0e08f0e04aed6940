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


def deployed_for_speed(name: str, classes: int, head_channels: int = 512) -> torch.nn.Module:
    from torch.fx.experimental.optimization import fuse

    seg = create_segmenter(name, classes, aux=False, head_channels=head_channels).eval()
    return fuse(reparameterize(seg)).eval()


RUNTIMES = ("torch", "onnxruntime")


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


def compare_speed(names: list[str], size: int = 512, batch: int = 1, classes: int = 19, repeats: int = 5,
                  device: str = "cpu", head_channels: int = 512, runtime: str = "torch",
                  threads: int | None = None) -> list[dict]:
    """One row per segmenter: ms per batch (median, interleaved), params and GMACs of backbone and head.
    ``speed_vs_first``: the first model's time over this one's (2.0 = twice as fast as the first).
    ``runtime="onnxruntime"`` (CPU): each deploy form exported to ONNX and run by onnxruntime."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    if runtime == "onnxruntime" and device != "cpu":
        raise ValueError("runtime onnxruntime is timed on the CPU here (its CPU provider); use device='cpu'")
    dev = torch.device(device)
    x = torch.randn(batch, 3, size, size, device=dev)
    models = {n: deployed_for_speed(n, classes, head_channels).to(dev) for n in names}

    def run(m):
        m(x)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if runtime == "onnxruntime":
        fns = {n: _ort_runner(m, x, threads) for n, m in models.items()}
        t = time_interleaved(fns, repeats=repeats, warmup=2)
    else:
        with torch.inference_mode():
            t = time_interleaved({n: (lambda m=m: run(m)) for n, m in models.items()}, repeats=repeats, warmup=2)
    rows = []
    for n in names:
        seg = reparameterize(create_segmenter(n, classes, aux=False, head_channels=head_channels).eval())
        one = (1, 3, size, size)
        with torch.inference_mode():
            feat = tuple(seg.backbone(torch.zeros(one))[-1].shape)
        rows.append({"model": n, "ms": t[n] * 1e3, "images_per_s": batch / t[n],
                     "params_backbone_m": count_params(seg.backbone) / 1e6, "params_head_m": count_params(seg.head) / 1e6,
                     "gmacs_backbone": count_macs(seg.backbone, one) / 1e9, "gmacs_head": count_macs(seg.head, feat) / 1e9})
    for r in rows:
        r["speed_vs_first"] = t[names[0]] / t[r["model"]]
    return rows


def format_rows(rows: list[dict], batch: int) -> str:
    lines = [f"| segmenter | ms / batch of {batch} | images/s | speed vs {rows[0]['model']} | "
             "params backbone / head (M) | GMACs per image backbone / head |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['ms']:.1f} | {r['images_per_s']:.1f} | {r['speed_vs_first']:.2f}x | "
              f"{r['params_backbone_m']:.1f} / {r['params_head_m']:.1f} | {r['gmacs_backbone']:.1f} / "
              f"{r['gmacs_head']:.1f} |" for r in rows]
    return "\n".join(lines)
