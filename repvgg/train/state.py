"""The resumable training state: everything but the model weights, in a file that loads safely.

Model weights go through repvgg.checkpoint (safetensors). The rest (optimizer, scheduler,
scaler, EMA, RNG states, epoch, step, config) is a torch file made only of tensors, dicts,
lists, numbers and strings, so `torch.load(weights_only=True)` reads it: loading never runs
code. Both files are written to a temp name and renamed, so a crash leaves the previous pair.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..fileio import atomic_write

STATE_VERSION = 1


def rng_state() -> dict:
    """Global RNG states (torch CPU/CUDA, numpy, python) as tensors and plain values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed torch/numpy/python; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        # deterministic mode also NaN-fills every new tensor (a check for reads of uninitialized
        # memory, which our kernels never do): 6% of a training step on a 2-core CPU, same results
        torch.utils.deterministic.fill_uninitialized_memory = False


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_state(path: str | os.PathLike, **state) -> None:
    state["version"] = STATE_VERSION
    atomic_torch_save(state, path)


def load_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}: nothing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unreadable file the same way
        raise ValueError(f"{path}: unreadable training state ({e})") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a repvgg training state (version {STATE_VERSION})")
    return state
