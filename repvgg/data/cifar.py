"""CIFAR-10/100 from the standard python-pickle batches.

Pickle can run code, so only the known file names are opened and a restricted
unpickler accepts nothing but the numpy array classes these files contain.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

LAYOUTS = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", labels=b"labels",
                    names=b"label_names", num_classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     labels=b"fine_labels", names=b"fine_label_names", num_classes=100),
}

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),      # bytes in protocol-2 pickles written by Python 3
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _load(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _Unpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a valid CIFAR pickle ({e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


def _get(d: dict, key: bytes, path: Path):
    for k in (key, key.decode()):
        if k in d:
            return d[k]
    raise ValueError(f"{path}: missing key {key.decode()!r}")


def find_cifar(name: str, data_dir: str | Path | None) -> Path:
    """The batch folder: data_dir itself or data_dir/<standard folder name>."""
    lay = LAYOUTS[name]
    files = lay["train"] + lay["test"] + [lay["meta"]]
    expected = f"{lay['folder']}/ with {', '.join(files)}"
    if data_dir is None:
        raise FileNotFoundError(f"{name}: pass data_dir, the folder {expected} (or its parent)")
    root = Path(data_dir).expanduser()
    for folder in (root, root / lay["folder"]):
        if all((folder / f).is_file() for f in files):
            return folder
    raise FileNotFoundError(f"{name}: expected {expected} at {root} or {root / lay['folder']}")


def _read_split(folder: Path, lay: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for fname in lay[split]:
        path = folder / fname
        d = _load(path)
        x = np.asarray(_get(d, b"data", path))
        y = np.asarray(_get(d, lay["labels"], path), dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(y) != len(x):
            raise ValueError(f"{path}: expected data [N,3072] and N labels, got {x.shape}, {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= lay["num_classes"]):
            raise ValueError(f"{path}: labels outside 0..{lay['num_classes'] - 1}")
        xs.append(x.astype(np.uint8).reshape(-1, 3, 32, 32))
        ys.append(y)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def load_cifar(name: str, data_dir: str | Path | None) -> dict:
    """Both splits as uint8 [N,3,32,32] / int64 [N] tensors, plus class names and source."""
    lay = LAYOUTS[name]
    folder = find_cifar(name, data_dir)
    meta_path = folder / lay["meta"]
    names = [n.decode() if isinstance(n, bytes) else str(n)
             for n in _get(_load(meta_path), lay["names"], meta_path)]
    if len(names) != lay["num_classes"]:
        raise ValueError(f"{meta_path}: {len(names)} class names, expected {lay['num_classes']}")
    x_train, y_train = _read_split(folder, lay, "train")
    x_test, y_test = _read_split(folder, lay, "test")
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                classes=names, source=str(folder))
