"""Fashion-MNIST from IDX files, with a tiny numpy IDX reader/writer.

Why our own parser: the files are trivial (a magic number, big-endian dims,
raw bytes), and reading them directly into one uint8 array keeps the whole
split in memory as a tensor, with no PIL work per image.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {(np.dtype(v).kind, np.dtype(v).itemsize): k for k, v in _IDX_DTYPES.items()}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":          # not gzip: plain IDX
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({e})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not) into a native-endian numpy array.

    Raises ValueError naming the file for a bad magic number, unknown type,
    or a byte count that does not match the header (truncated/corrupt file).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated or has 0 dims (ndim={ndim})")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - 4 - 4 * ndim
    if got != expected:
        raise ValueError(f"{path}: IDX payload is {got} bytes but header dims {dims} need "
                         f"{expected} (truncated or corrupt file)")
    arr = np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)   # writable, native order


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an IDX file; gzip it (reproducibly, mtime=0) when the name ends in .gz."""
    array = np.asarray(array)
    code = _IDX_CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    path.write_bytes(payload)


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_all(folder: Path) -> bool:
    return all(_find_file(folder, s) for s in FILES.values())


def find_fashion_mnist(data_dir: str | Path | None = None) -> tuple[Path, str]:
    """Return (folder, origin) with origin 'data_dir' | 'system' | 'builtin'.

    An explicit data_dir must contain the files (no silent fallback to the
    small subset); it may be the folder itself, data_dir/fashion-mnist or
    torchvision's data_dir/FashionMNIST/raw.
    """
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        candidates = [root, root / "fashion-mnist", root / "FashionMNIST" / "raw"]
        for c in candidates:
            if _has_all(c):
                return c, "data_dir"
        raise FileNotFoundError(
            f"fashion-mnist: no IDX files in data_dir={root} (looked in "
            f"{', '.join(str(c) for c in candidates)}); expected "
            f"{', '.join(s + '[.gz]' for s in FILES.values())}")
    if _has_all(SYSTEM_DIR):
        return SYSTEM_DIR, "system"
    if _has_all(BUILTIN_DIR):
        return BUILTIN_DIR, "builtin"
    raise FileNotFoundError(f"fashion-mnist: not found in {SYSTEM_DIR} nor the built-in "
                            f"subset {BUILTIN_DIR}; pass data_dir")


def load_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load 'train' or 'test' as (uint8 [N,1,H,W], int64 [N]); grayscale stays 1 channel."""
    img_path = _find_file(folder, FILES[f"{split}_images"])
    lbl_path = _find_file(folder, FILES[f"{split}_labels"])
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{img_path}: expected uint8 images [N,H,W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{lbl_path}: {labels.shape} labels for {len(images)} images in {img_path}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise ValueError(f"{lbl_path}: labels outside 0..{len(CLASSES) - 1}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
