"""Tests for repvgg.data: IDX parsing, Fashion-MNIST sources, CIFAR, ImageFolder, aug, loaders."""
import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from repvgg.data import (STATS, FastLoader, InMemoryDataset, batch_augment, batch_erase, build_datasets, build_loader,
                         folder_transforms, read_idx, write_idx)
from repvgg.data import fashion_mnist as fm


# ---------------------------------------------------------------- IDX
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("arr", [np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
                                 np.array([[1, -2], [300000, 4]], dtype=np.int32),
                                 np.linspace(0, 1, 5, dtype=np.float32)])
def test_idx_round_trip(tmp_path, name, arr):
    write_idx(tmp_path / name, arr)
    out = read_idx(tmp_path / name)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\0\0")


def test_idx_corrupt_files_raise_clear_errors(tmp_path):
    arr = np.zeros((4, 28, 28), np.uint8)
    write_idx(tmp_path / "ok", arr)
    raw = (tmp_path / "ok").read_bytes()
    cases = {
        "truncated": raw[:-10],
        "extra": raw + b"\0",
        "badmagic": b"\1\2" + raw[2:],
        "badtype": raw[:2] + b"\x42" + raw[3:],
        "short_header": raw[:6],
        "truncated.gz": gzip.compress(raw)[:-20],
        "truncated_payload.gz": gzip.compress(raw[:-1]),
    }
    for fname, data in cases.items():
        (tmp_path / fname).write_bytes(data)
        with pytest.raises(ValueError, match=fname.replace(".", r"\.")):
            read_idx(tmp_path / fname)


def _write_fake_fmnist(folder, n_train=20, n_test=10, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        sfx = ".gz" if gz else ""
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(folder / (fm.FILES[f"{split}_images"] + sfx), images)
        write_idx(folder / (fm.FILES[f"{split}_labels"] + sfx), (np.arange(n) % 10).astype(np.uint8))


# ---------------------------------------------------------------- Fashion-MNIST
def test_builtin_subset_shapes_classes_balance():
    train, test, info = build_datasets("fashion-mnist-builtin")
    assert info.origin == "builtin" and info.in_chans == 1 and info.num_classes == 10
    assert info.image_size == info.default_image_size == 28 and len(info.class_names) == 10
    assert train.images.shape == (6000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert train.images.dtype == torch.uint8 and train.targets.dtype == torch.int64
    assert torch.bincount(train.targets).tolist() == [600] * 10
    assert torch.bincount(test.targets).tolist() == [200] * 10
    x, y = test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)


# ---------------------------------------------------------------- fmnist-items
def test_items_on_canvas_paste_each_item_at_the_scenes_scale():
    """Each item alone on its background, 28-62 px wide: against blank items (same seed, so the same
    backgrounds and draws) the canvases differ only inside one box of that size."""
    from repvgg.data.composite import items_on_canvas

    items = torch.full((12, 1, 28, 28), 255, dtype=torch.uint8)
    drawn = items_on_canvas(items, seed=3, size=64, scale=(1.0, 2.2))
    blank = items_on_canvas(torch.zeros_like(items), seed=3, size=64, scale=(1.0, 2.2))
    assert drawn.shape == (12, 3, 64, 64) and drawn.dtype == torch.uint8
    sides = []
    for a, b in zip(drawn, blank):
        rows, cols = (a != b).any(0).any(1).nonzero(), (a != b).any(0).any(0).nonzero()
        h, w = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert h == w and 28 <= h <= 62, (h, w)
        sides.append(h)
    assert len(set(sides)) > 3                         # scales drawn, not fixed
    assert torch.equal(drawn, items_on_canvas(items, seed=3, size=64, scale=(1.0, 2.2)))


def test_fmnist_items_dataset_is_colour_cached_and_keeps_the_splits_labels(tmp_path, monkeypatch):
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path / "cache"))
    _write_fake_fmnist(tmp_path / "fm", n_train=20, n_test=10)
    train, test, info = build_datasets("fmnist-items", str(tmp_path / "fm"))
    assert info.name == "fmnist-items" and info.in_chans == 3 and info.num_classes == 10
    assert info.image_size == info.default_image_size == 64 and info.origin == "data_dir"
    assert train.images.shape == (20, 3, 64, 64) and test.images.shape == (10, 3, 64, 64)
    assert train.targets.tolist() == [i % 10 for i in range(20)]
    assert len(info.mean) == 3 and info.mean != STATS["fashion-mnist"][0]    # its own, not grey Fashion-MNIST's
    cache = list((tmp_path / "cache").glob("fmnist-items-*.npz"))
    assert len(cache) == 1
    again, _, _ = build_datasets("fmnist-items", str(tmp_path / "fm"))
    assert torch.equal(again.images, train.images)
    whole = cache[0].read_bytes()
    for damaged in (b"damaged", whole[:len(whole) // 2]):     # garbage, or cut short: rebuilt, not an error
        cache[0].write_bytes(damaged)
        rebuilt, _, _ = build_datasets("fmnist-items", str(tmp_path / "fm"))
        assert torch.equal(rebuilt.images, train.images)
    with pytest.raises(ValueError, match="fmnist-items takes no ':' argument"):
        build_datasets("fmnist-items:x")


def test_channel_stats_match_a_direct_computation():
    from repvgg.data.build import channel_stats

    x = torch.randint(0, 256, (37, 3, 9, 11), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x)
    f = x.double() / 255
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), f.mean((0, 2, 3)), atol=1e-12)
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), f.std((0, 2, 3), correction=0), atol=1e-9)


@pytest.mark.skipif(not fm._has_all(fm.SYSTEM_DIR), reason="dataset-fashion-mnist not installed")
def test_debian_files_used_when_present():
    train, test, info = build_datasets("fashion-mnist")
    assert info.origin == "system" and info.source == str(fm.SYSTEM_DIR)
    assert train.images.shape == (60000, 1, 28, 28) and len(test) == 10000


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_data_dir(tmp_path, gz):
    _write_fake_fmnist(tmp_path / "fashion-mnist", gz=gz)
    train, test, info = build_datasets("fashion-mnist", data_dir=str(tmp_path), image_size=32)
    assert info.origin == "data_dir" and (len(train), len(test)) == (20, 10)
    x, y = next(iter(build_loader(train, 8, train=True)))
    assert x.shape == (8, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        build_datasets("fashion-mnist", data_dir=str(tmp_path / "nowhere"))


# ---------------------------------------------------------------- CIFAR
def _write_cifar(folder, layout, n=6):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    nc = 10 if layout == "cifar10" else 100
    if layout == "cifar10":
        files, key = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], b"labels"
        meta = ("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(nc)]})
    else:
        files, key = ["train", "test"], b"fine_labels"
        meta = ("meta", {b"fine_label_names": [f"c{i}".encode() for i in range(nc)]})
    proto = 2 if layout == "cifar10" else 4
    for f in files:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), key: list(range(n))}
        (folder / f).write_bytes(pickle.dumps(d, protocol=proto))
    (folder / meta[0]).write_bytes(pickle.dumps(meta[1], protocol=proto))
    return pickle.loads((folder / files[0]).read_bytes())[b"data"]


@pytest.mark.parametrize("name,folder,n_train", [("cifar10", "cifar-10-batches-py", 30),
                                                 ("cifar100", "cifar-100-python", 6)])
def test_cifar_layouts(tmp_path, name, folder, n_train):
    first = _write_cifar(tmp_path / folder, name)
    for d in (tmp_path, tmp_path / folder):            # parent or the folder itself
        train, test, info = build_datasets(name, data_dir=str(d))
        assert info.num_classes == (10 if name == "cifar10" else 100) and info.in_chans == 3
        assert info.class_names[:2] == ["c0", "c1"] and info.source == str(tmp_path / folder)
        assert train.images.shape == (n_train, 3, 32, 32) and len(test) == 6
        # channel planes: first 1024 bytes are R, row-major
        assert torch.equal(train.images[0, 0].flatten(), torch.from_numpy(first[0, :1024]))
    with pytest.raises(FileNotFoundError, match=folder):
        build_datasets(name, data_dir=str(tmp_path / "missing"))


def test_cifar_rejects_unsafe_pickle(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py", "cifar10")
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"x": print}))
    with pytest.raises(ValueError, match="test_batch"):
        build_datasets("cifar10", data_dir=str(tmp_path))


# ---------------------------------------------------------------- ImageFolder
def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 14), color).save(path)


def _make_folder(root, classes=("cat", "dog"), n=3):
    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            for i in range(n):
                _png(root / split / c / f"{i}.png", (ci * 100, i * 50, 0))


def test_imagefolder_ok_and_corrupt_file_skipped(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "train" / "dog" / "bad.png").write_bytes(b"\x89PNG not really")
    train, val, info = build_datasets(f"imagefolder:{tmp_path}", image_size=16)
    assert info.class_names == ["cat", "dog"] and info.in_chans == 3 and not info.in_memory
    assert len(train) == 7 and len(val) == 6
    loader = build_loader(train, 4, train=True, drop_last=False)
    with pytest.warns(UserWarning, match="bad.png"):
        batches = list(loader)
    assert sum(len(y) for _, y in batches) == 6 and loader.skipped == 1
    x, y = batches[0]
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_imagefolder_errors(tmp_path):
    _make_folder(tmp_path / "a")
    (tmp_path / "a" / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        build_datasets(f"imagefolder:{tmp_path / 'a'}")
    _make_folder(tmp_path / "b")
    _make_folder(tmp_path / "b2", classes=("cow",))
    (tmp_path / "b2" / "val" / "cow").rename(tmp_path / "b" / "val" / "cow")
    with pytest.raises(ValueError, match="only in val \\['cow'\\]"):
        build_datasets(f"imagefolder:{tmp_path / 'b'}")
    _png(tmp_path / "c" / "train" / "x" / "0.png", (0, 0, 0))
    with pytest.raises(FileNotFoundError, match="val"):
        build_datasets(f"imagefolder:{tmp_path / 'c'}")
    with pytest.raises(FileNotFoundError):
        build_datasets(f"imagefolder:{tmp_path / 'nope'}")


# ---------------------------------------------------------------- augmentation & loaders
def test_batch_augment_shapes_and_determinism():
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = batch_augment(x, 4, generator=torch.Generator().manual_seed(1))
    b = batch_augment(x, 4, generator=torch.Generator().manual_seed(1))
    c = batch_augment(x, 4, generator=torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(batch_augment(x, 0, flip=False), x)
    flipped = batch_augment(x[:1].expand(64, -1, -1, -1), 0, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(f, x[0]) or torch.equal(f, x[0].flip(-1)) for f in flipped)


def test_crop_padding_bounds_the_shift():
    """crop_padding=1: a lone bright pixel moves by at most 1 px in each direction (flip aside)."""
    train, _, _ = build_datasets("fashion-mnist-builtin", crop_padding=1)
    assert train.padding == 1
    img = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    img[0, 0, 10, 5] = 255
    ds = InMemoryDataset(img.expand(200, -1, -1, -1).contiguous(), torch.zeros(200, dtype=torch.long), ["c"],
                         mean=(0.0,), std=(1.0,), train=True, padding=1)
    x, _ = ds.get_batch(torch.arange(200), torch.Generator().manual_seed(0))
    rows, cols = set(), set()
    for im in x[:, 0]:
        r, c = divmod(int(im.argmax()), 28)
        rows.add(r)
        cols.add(min(c, 27 - c))  # undo a flip
    assert rows == {9, 10, 11} and cols == {4, 5, 6}


def test_random_erasing_blanks_one_rectangle_per_erased_image():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(400, 2, 20, 30)
    out = batch_erase(x.clone(), 0.5, g)
    erased = out[:, 0] == 0
    assert torch.equal(erased, out[:, 1] == 0)           # same rectangle in every channel
    hit = erased.flatten(1).any(1)
    assert 0.4 < hit.float().mean() < 0.6                 # probability p
    for mask in erased[hit]:
        rows, cols = mask.any(1).nonzero().ravel(), mask.any(0).nonzero().ravel()
        h, w = len(rows), len(cols)
        assert rows[-1] - rows[0] + 1 == h and cols[-1] - cols[0] + 1 == w and mask.sum() == h * w  # a rectangle
        assert 0.02 * 600 * 0.5 <= h * w <= 0.33 * 600 * 1.5  # area in scale (rounding aside)
    again = batch_erase(x.clone(), 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)                         # seeded: resumable runs stay exact
    assert torch.equal(batch_erase(x.clone(), 0.0, g), x)
    with pytest.raises(ValueError, match="probability"):
        batch_erase(x, 1.5, g)


def test_random_erasing_only_in_training():
    train, test, _ = build_datasets("fashion-mnist-builtin", erasing=1.0)
    idx = torch.arange(64)
    xt, _ = train.get_batch(idx, torch.Generator().manual_seed(0))
    xe, _ = test.get_batch(idx)
    assert (xt == 0).flatten(1).sum(1).min() > 0           # every training image has an erased patch
    ref, _ = build_datasets("fashion-mnist-builtin")[1].get_batch(idx)
    assert torch.equal(xe, ref)
    tf, ev = folder_transforms(32, "simple", (0.5,) * 3, (0.5,) * 3, erasing=0.25)
    assert type(tf.transforms[-1]).__name__ == "RandomErasing" and tf.transforms[-1].p == 0.25
    assert not any(type(t).__name__ == "RandomErasing" for t in ev.transforms)


def _index_ds(n, train=False):
    # targets == index, so the labels show which samples a loader produced
    return InMemoryDataset(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n), ["c"],
                           mean=(0.5,), std=(0.5,), train=train)


@pytest.mark.parametrize("n,world", [(103, 1), (103, 2), (103, 3), (10, 4)])
def test_sharded_loader_covers_every_index_once(n, world):
    ds = _index_ds(n)
    seen = []
    for rank in range(world):
        loader = FastLoader(ds, 8, seed=3, rank=rank, world_size=world)
        got = torch.cat([y for _, y in loader])
        assert len(loader) == -(-len(got) // 8)
        seen.append(got)
    assert sorted(torch.cat(seen).tolist()) == list(range(n))
    # drop_last: equal full batches on every rank, no duplicates
    loaders = [FastLoader(ds, 8, seed=3, rank=r, world_size=world, drop_last=True) for r in range(world)]
    counts = {len(list(ld)) for ld in loaders}
    assert counts == {len(loaders[0])}


def test_fast_loader_seeded_and_reshuffles():
    ds = _index_ds(50, train=True)
    runs = [[y for _, y in FastLoader(ds, 16, seed=7)] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    ld = FastLoader(ds, 50, seed=7)
    e0, e1 = next(iter(ld))[1], next(iter(ld))[1]
    assert not torch.equal(e0, e1)


def test_unknown_spec_and_recipe():
    with pytest.raises(ValueError, match="cifar10.*imagefolder"):
        build_datasets("mnist-ish")
    with pytest.raises(ValueError, match="autoaugment"):
        build_datasets("fashion-mnist-builtin", recipe_aug="heavy")
