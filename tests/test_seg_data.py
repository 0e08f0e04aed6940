"""Segmentation data and metrics: fabricated Cityscapes and folder trees, bad input, mIoU by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from repvgg.seg.data import (CITYSCAPES_LUT, IGNORE_INDEX, build_seg_datasets, build_seg_loader, hold_out,
                             eval_transform)
from repvgg.seg.metrics import confusion_matrix, evaluate_segmenter, predict_logits, scores, seg_loss
from repvgg.seg.scenes import compose_scene, load_scenes


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _cityscapes(root, splits=("train", "val"), train_ids=False, size=(24, 32)):
    h, w = size
    for split in splits:
        for city in ("aachen", "bonn"):
            for k in range(2):
                stem = f"{city}_00000{k}_000019"
                _png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                     np.random.randint(0, 255, (h, w, 3), dtype=np.uint8))
                ids = np.zeros((h, w), np.uint8)
                ids[: h // 2] = 7          # road -> train id 0
                ids[h // 2:, : w // 2] = 26  # car -> 13; the rest 0 (unlabeled -> 255)
                name = "labelTrainIds" if train_ids else "labelIds"
                _png(root / "gtFine" / split / city / f"{stem}_gtFine_{name}.png",
                     CITYSCAPES_LUT[ids] if train_ids else ids)
    return root


def _folder(root, n=3, classes=("bg", "cat", "dog"), size=(20, 28), palette=True):
    h, w = size
    for split in ("train", "val"):
        for i in range(n):
            _png(root / split / "images" / f"im{i}.jpg", np.random.randint(0, 255, (h, w, 3), dtype=np.uint8))
            m = np.zeros((h, w), np.uint8)
            m[:, w // 2:] = 1 + i % 2
            m[0, 0] = IGNORE_INDEX
            img = Image.fromarray(m).convert("P") if palette else Image.fromarray(m)
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            img.save(root / split / "masks" / f"im{i}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def test_cityscapes_label_ids_map_to_19_train_ids(tmp_path):
    train, test, info = build_seg_datasets("cityscapes", str(_cityscapes(tmp_path)), crop_size=16)
    assert info.num_classes == 19 and len(train) == 4 and len(test) == 4
    x, y = test[0]
    assert x.shape == (3, 24, 32) and y.shape == (24, 32)
    assert set(torch.unique(y).tolist()) == {0, 13, IGNORE_INDEX}
    assert (y[:12] == 0).all() and (y[12:, :16] == 13).all() and (y[12:, 16:] == IGNORE_INDEX).all()
    xt, yt = train[0]
    assert xt.shape == (3, 16, 16) and yt.shape == (16, 16)       # cropped jointly


def test_cityscapes_label_train_ids_are_used_as_they_are(tmp_path):
    _, test, _ = build_seg_datasets("cityscapes", str(_cityscapes(tmp_path, train_ids=True)))
    assert set(torch.unique(test[0][1]).tolist()) == {0, 13, IGNORE_INDEX}


def test_cityscapes_missing_split_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no val split"):
        build_seg_datasets("cityscapes", str(_cityscapes(tmp_path, splits=("train",))))


def test_image_without_mask_is_named(tmp_path):
    root = _cityscapes(tmp_path)
    gone = root / "gtFine" / "val" / "bonn" / "bonn_000001_000019_gtFine_labelIds.png"
    gone.unlink()
    with pytest.raises(FileNotFoundError, match="bonn_000001_000019_leftImg8bit.png has no mask"):
        build_seg_datasets("cityscapes", str(root))


def test_mask_of_another_size_is_found_before_training(tmp_path):
    root = _folder(tmp_path)
    _png(root / "train" / "masks" / "im1.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match=r"im1.png: mask is 5x5 px, its image .*im1.jpg is 28x20"):
        build_seg_datasets("folder", str(root))


def test_folder_palette_masks_and_classes_txt(tmp_path):
    train, test, info = build_seg_datasets("folder", str(_folder(tmp_path)), crop_size=16)
    assert info.class_names == ["bg", "cat", "dog"]
    y = test[1][1]
    assert set(torch.unique(y).tolist()) == {0, 2, IGNORE_INDEX}
    assert int(y[0, 0]) == IGNORE_INDEX


def test_folder_grayscale_masks_and_num_classes(tmp_path):
    root = _folder(tmp_path, classes=None, palette=False)
    with pytest.raises(ValueError, match="no classes.txt"):
        build_seg_datasets("folder", str(root))
    _, test, info = build_seg_datasets("folder", str(root), num_classes=3)
    assert info.num_classes == 3 and set(torch.unique(test[0][1]).tolist()) == {0, 1, IGNORE_INDEX}


def test_label_outside_the_classes_is_named_with_its_file(tmp_path):
    root = _folder(tmp_path)
    m = np.zeros((20, 28), np.uint8)
    m[3, 3] = 7
    _png(root / "val" / "masks" / "im2.png", m)
    _, test, _ = build_seg_datasets("folder", str(root))
    with pytest.raises(ValueError, match=r"im2.png: label value\(s\) \[7\] outside the 3 classes"):
        test[2]


def test_colour_mask_is_refused(tmp_path):
    root = _folder(tmp_path)
    _png(root / "val" / "masks" / "im0.png", np.zeros((20, 28, 3), np.uint8))
    _, test, _ = build_seg_datasets("folder", str(root))
    with pytest.raises(ValueError, match="grayscale or palette"):
        test[0]


def test_folder_without_splits_and_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="train/images"):
        build_seg_datasets("folder", str(tmp_path))
    with pytest.raises(ValueError, match="unknown segmentation data"):
        build_seg_datasets("coco", str(tmp_path))
    with pytest.raises(ValueError, match="needs --data-dir"):
        build_seg_datasets("cityscapes")


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    train, _, _ = build_seg_datasets("cityscapes", str(_cityscapes(tmp_path)), crop_size=16, seed=3)
    a, b = train[1], train[1]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    train.set_epoch(1)
    assert not torch.equal(train[1][0], a[0])
    loader = build_seg_loader(train, 2, train=True, seed=3)
    loader.set_epoch(4)
    first = [y.clone() for _, y in loader]
    loader.set_epoch(4)
    assert all(torch.equal(p, q) for p, q in zip(first, [y for _, y in loader]))


def test_hold_out_is_disjoint_and_unaugmented(tmp_path):
    train, _, info = build_seg_datasets("folder", str(_folder(tmp_path, n=10)), crop_size=8)
    tr, val = hold_out(train, 0.3, 0, eval_transform(info.mean, info.std))
    assert len(tr) == 7 and len(val) == 3
    assert not set(tr.pairs) & set(val.pairs)
    assert val[0][0].shape[-2:] == (20, 28)          # full image, no crop


# ------------------------------------------------------------------------------- fmnist-scenes
def test_scene_labels_are_the_items_on_top():
    items = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    items[:, :, 4:24, 4:24] = 255
    g = torch.Generator().manual_seed(0)
    img, mask = compose_scene(items, torch.tensor([3, 3]), g, 64, (2, 2), (1.0, 1.0))
    assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    assert set(torch.unique(mask).tolist()) <= {0, 4}
    assert int((mask == 4).sum()) >= 20 * 20 - 4


def test_scenes_are_deterministic_cached_and_split_apart(tmp_path, monkeypatch):
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path))
    a, origin = load_scenes(num_train=6, num_test=3, size=40)
    assert len(list(tmp_path.glob("fmnist-scenes-*.npz"))) == 1
    b, _ = load_scenes(num_train=6, num_test=3, size=40)
    assert torch.equal(a["train"][0], b["train"][0]) and torch.equal(a["test"][1], b["test"][1])
    assert a["train"][0].shape == (6, 3, 40, 40) and a["test"][1].shape == (3, 40, 40)
    assert not torch.equal(a["train"][0][:3], a["test"][0])
    c, _ = load_scenes(num_train=6, num_test=3, size=40, seed=1)
    assert not torch.equal(a["train"][0], c["train"][0])


def test_scene_normalisation_is_the_training_scenes_own_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path))
    scenes = {"num_train": 12, "num_test": 3, "size": 40}
    _, _, info = build_seg_datasets("fmnist-scenes", scenes=scenes)
    x = load_scenes(**scenes)[0]["train"][0].double() / 255
    assert info.mean == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-9)
    assert info.std == pytest.approx(x.std((0, 2, 3), correction=0).tolist(), abs=1e-9)
    assert len(info.mean) == 3 and min(info.std) > 0.05


def test_scenes_are_not_segmented_by_a_brightness_threshold(tmp_path, monkeypatch):
    """The point of the textured background: the best global threshold on brightness is poor."""
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path))
    s, _ = load_scenes(num_train=40, num_test=1, size=64)
    x, y = s["train"]
    gray, fg = x.float().mean(1).flatten(), (y > 0).flatten()
    best = 0.0
    for t in range(0, 256, 4):
        for pred in (gray > t, gray <= t):
            inter, union = (pred & fg).sum().item(), (pred | fg).sum().item()
            best = max(best, inter / union)
    assert best < 0.5, f"a brightness threshold reaches foreground IoU {best:.2f}"


# ------------------------------------------------------------------------------- metrics
def test_miou_from_one_confusion_matrix_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 1, 2]])
    conf = confusion_matrix(pred, target, 4)
    assert conf.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    s = scores(conf, ["a", "b", "c", "d"])
    # IoU: a 1/(2+2-1)=1/3, b 2/(2+3-2)=2/3, c 1/(2+1-1)=1/2; d absent everywhere: left out
    assert s["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert s["pixel_acc"] == pytest.approx(100 * 4 / 6)
    assert s["per_class_iou"]["d"] is None


def test_confusion_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 5, 255]), 3)


def test_sliding_window_equals_whole_image_for_a_pointwise_model():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 5, 1).double().eval()
    x = torch.randn(2, 3, 37, 53, dtype=torch.float64)
    whole = predict_logits(model, x)
    slid = predict_logits(model, x, window=16, stride=10)
    assert torch.allclose(whole, slid, atol=1e-12)


def test_evaluate_segmenter_and_loss_ignore_255():
    model = torch.nn.Conv2d(3, 3, 1)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4, 8, 8))
    y[:, 0] = IGNORE_INDEX
    res = evaluate_segmenter(model, [(x, y)], 3)
    assert res["pixels"] == 4 * 7 * 8
    out = model(x)
    assert torch.isfinite(seg_loss((out, out), y)) and seg_loss(out, y) < seg_loss((out, out), y)
