"""Optional dependencies: one clear line naming the extra to install, never a deep traceback.

The core (models, fusion, checkpoints, training) needs torch, torchvision and safetensors only.
Export, INT8 and the timm baselines need more; each lives in a pip extra listed in the README.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# module -> (extra that provides it, what it is needed for)
EXTRAS = {
    "onnx": ("deploy", "ONNX export"),
    "onnxscript": ("deploy", "ONNX export (graph optimizer)"),
    "onnxruntime": ("deploy", "running ONNX / INT8 models"),
    "timm": ("bench", "benchmarking timm models"),
    "torchao": ("int8", "PyTorch PT2E INT8 quantization (--method torch)"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. "onnxruntime" or "onnxscript.optimizer"), or raise MissingExtraError."""
    parts = module.split(".")
    top = parts[0]
    try:
        for i in range(1, len(parts) + 1):   # each parent too: a blocked parent is a missing package
            found = importlib.import_module(".".join(parts[:i]))
        return found
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != top:
            raise   # the package is there but broken inside: its own error is the useful one
        extra, purpose = EXTRAS.get(top, (None, module))
        how = f'pip install "repvgg[{extra}]"' if extra else f"pip install {top}"
        raise MissingExtraError(f"{purpose} needs the '{top}' package, which is not installed: {how}") from None
