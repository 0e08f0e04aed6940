#!/usr/bin/env python
"""Make the built-in Fashion-MNIST subset shipped in repvgg/data/builtin/.

Why: tests, smoke runs and machines without the Debian package still get real
images. The subset is class-balanced and seeded, so it is reproducible
byte-for-byte (gzip mtime=0) from the Debian package dataset-fashion-mnist.

    python scripts/make_builtin_subset.py [--seed 0] [--train-per-class 600]
                                          [--test-per-class 200]
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from repvgg.data.fashion_mnist import CLASSES, FILES, SYSTEM_DIR, load_split, write_idx  # noqa: E402

README = """# Built-in Fashion-MNIST subset

Real Fashion-MNIST images (Zalando Research, https://github.com/zalandoresearch/fashion-mnist,
MIT license), taken from the Debian package `dataset-fashion-mnist`
(`/usr/share/datasets/fashion-mnist/`).

It is used by `repvgg.data.build_datasets("fashion-mnist")` only when no `data_dir` is given
and the Debian files are not installed (or explicitly with the spec `fashion-mnist-builtin`).

- made by: `python scripts/make_builtin_subset.py --seed {seed} --train-per-class {ntr} --test-per-class {nte}`
- selection: for each of the 10 classes, `numpy.random.default_rng({seed})` picks
  {ntr} train and {nte} test images without replacement; kept in the original file order
- sizes: {n_train} train + {n_test} test images, 28x28 uint8 grayscale, labels uint8 0..9
- format: standard IDX files, gzip level 9 (mtime=0), same names as the originals

| file | bytes | sha256 |
|---|---|---|
{rows}
"""


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = []
    for c in range(len(CLASSES)):
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise SystemExit(f"class {c} has only {len(pool)} images, need {per_class}")
        picks.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=SYSTEM_DIR)
    ap.add_argument("--out", type=Path, default=ROOT / "repvgg" / "data" / "builtin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--test-per-class", type=int, default=200)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    sizes = {}
    for split, per_class in (("train", a.train_per_class), ("test", a.test_per_class)):
        images, labels = load_split(a.src, split)
        idx = balanced_indices(labels.numpy(), per_class, rng)
        write_idx(a.out / (FILES[f"{split}_images"] + ".gz"), images[idx, 0].numpy())
        write_idx(a.out / (FILES[f"{split}_labels"] + ".gz"), labels[idx].numpy().astype(np.uint8))
        sizes[split] = len(idx)
    rows = []
    for stem in FILES.values():
        f = a.out / (stem + ".gz")
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        rows.append(f"| {f.name} | {f.stat().st_size} | {digest} |")
    (a.out / "README.md").write_text(README.format(
        seed=a.seed, ntr=a.train_per_class, nte=a.test_per_class,
        n_train=sizes["train"], n_test=sizes["test"], rows="\n".join(rows)))
    total = sum((a.out / (s + ".gz")).stat().st_size for s in FILES.values())
    print(f"wrote {sizes['train']} train + {sizes['test']} test images to {a.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
