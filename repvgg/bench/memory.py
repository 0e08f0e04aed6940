"""Peak memory of one inference batch, beyond the resident model and input.

GPU: ``torch.cuda.max_memory_allocated`` minus what was allocated before the forward pass.
CPU: there is no allocator counter, so a fresh subprocess per model builds it, runs two warm-up
batches (compilation, oneDNN weight caches), hands freed heap back to the OS (``malloc_trim``),
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), runs one batch and reports
``VmHWM - VmRSS``: the extra resident memory that one inference needed, with no other model's
leftovers in the process.
"""
from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys

import torch

from .models import ModelSpec, apply_treatment, build_reference, example_input


def peak_memory(spec: ModelSpec, shape: tuple[int, ...], device: torch.device, num_classes: int = 1000) -> int | None:
    """Bytes of peak inference memory beyond model + input; None where it cannot be measured."""
    if device.type == "cuda":
        return _measure_cuda(spec, shape, device, num_classes)
    cmd = [sys.executable, "-m", "repvgg.bench.memory",
           json.dumps(dict(spec=spec.to_dict(), shape=list(shape), num_classes=num_classes,
                           threads=torch.get_num_threads()))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {spec.label} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]


def _measure_cuda(spec, shape, device, num_classes):
    model = apply_treatment(build_reference(spec, num_classes), spec, device, shape)
    x = example_input(spec, shape, device)
    with torch.inference_mode():
        model(x)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        model(x)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_cpu_here(spec: ModelSpec, shape, num_classes) -> int | None:
    device = torch.device("cpu")
    model = apply_treatment(build_reference(spec, num_classes), spec, device, shape)
    x = example_input(spec, shape, device)
    with torch.inference_mode():
        model(x)
        model(x)
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
        except OSError:
            return None  # not Linux/glibc: no honest way to isolate one batch's peak
        base = _status_kib("VmRSS")
        model(x)
        return (_status_kib("VmHWM") - base) * 1024


if __name__ == "__main__":
    req = json.loads(sys.argv[1])
    torch.set_num_threads(req["threads"])  # the parent's setting: oneDNN scratch memory is per thread
    peak = _measure_cpu_here(ModelSpec(**req["spec"]), tuple(req["shape"]), req["num_classes"])
    print(json.dumps(dict(peak_bytes=peak)))
