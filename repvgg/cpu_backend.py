"""Training on CPUs whose oneDNN convolution backward is broken: torch's own kernels for backward there.

With torch 2.14 on x86 CPUs without AVX-512 (AMD EPYC with AVX2 only, seen 2026-12-05), oneDNN's
convolution backward (``jit_avx2_1x1_convolution_bwd_weights``) crashed the process with a
segmentation fault (tests/test_ablate.py) or spun forever inside one step (repvgg_a0 on 28 px, 110
minutes without finishing step 1). The same runs pass on AVX-512 CPUs and with oneDNN turned off,
and on an AVX-512 Xeon with oneDNN capped to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, its ``jit_1x1:avx2``
kernels in use: repvgg_a0 steps at batch 8-128 finished, 2026-12-06), so it looks specific to those
AMD CPUs, not to the ISA alone. The forward pass is not affected (inference runs through oneDNN
everywhere), and it is where oneDNN saves the most (repvgg_a0, batch 128, 28 px, 1 thread: forward
0.6-1.0 s vs 4.2-4.5 s in torch's kernels), so only the backward pass runs without oneDNN, where the
CPU lacks AVX-512: a training step does ``with kernels.backward(): loss.backward()``.
``REPVGG_ONEDNN_TRAINING=1`` keeps oneDNN's backward (to try a fixed torch), ``=0`` turns it off
anywhere.
"""
from __future__ import annotations

import contextlib
import os
import platform

import torch

ENV = "REPVGG_ONEDNN_TRAINING"


def onednn_training_ok(capability: str | None = None, machine: str | None = None) -> bool:
    """Whether convolution backward may run through oneDNN on this CPU (see the module docstring)."""
    choice = os.environ.get(ENV)
    if choice in ("0", "1"):
        return choice == "1"
    machine = (machine or platform.machine()).lower()
    capability = capability or torch.backends.cpu.get_cpu_capability()
    return machine not in ("x86_64", "amd64", "i686") or capability.upper().startswith("AVX512")


class TrainingKernels:
    """What :func:`cpu_training_backend` yields: ``with kernels.backward(): loss.backward()``."""

    def __init__(self, onednn_backward: bool):
        self.onednn_backward = onednn_backward

    @contextlib.contextmanager
    def backward(self):
        """oneDNN off while the backward pass runs (the autograd engine reads the same global flag)."""
        if self.onednn_backward:
            yield
            return
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False   # not mkldnn.flags(): it also sets TF32 and warns about Intel GPUs
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = before


@contextlib.contextmanager
def cpu_training_backend(device, log=None):
    """Run the training steps inside this and their backward passes inside the yielded
    ``kernels.backward()``: oneDNN stays off there where it is not safe (said once)."""
    safe = torch.device(device).type != "cpu" or onednn_training_ok()
    if not safe and log is not None:
        log(f"CPU {torch.backends.cpu.get_cpu_capability()} without AVX-512: oneDNN's convolution backward "
            f"crashes or hangs here with this torch, so backward passes use torch's own kernels (slower; forward "
            f"passes keep oneDNN; {ENV}=1 overrides)")
    yield TrainingKernels(onednn_backward=safe)
