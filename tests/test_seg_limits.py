"""benchmarks/seg_limits.py: the area-pooled resolution estimate and the localisation / recognition split."""
import pytest
import torch

from tests.conftest import load_benchmark

NAMES = ["background", "a", "b"]


@pytest.fixture(scope="module")
def limits():
    return load_benchmark("seg_limits")


def test_area_pooling_is_exact_where_labels_change_only_at_cell_edges(limits):
    cols = torch.arange(32) // 8 % 3                       # vertical stripes 8 px wide, aligned to the cells
    masks = cols.expand(2, 32, 32).clone()
    conf = limits.area_pooled_confusion(masks, 3, 8)
    assert int(conf.sum()) == masks.numel()
    assert int(conf.diag().sum()) == masks.numel()


def test_area_pooling_loses_detail_finer_than_the_stride_and_keeps_it_at_stride_one(limits):
    fine = ((torch.arange(32)[:, None] // 2 + torch.arange(32)[None, :] // 2) % 2 + 1).expand(1, 32, 32).clone()
    assert float(limits.area_pooled_confusion(fine, 3, 8).diag().sum()) < 0.6 * fine.numel()
    assert int(limits.area_pooled_confusion(fine, 3, 1).diag().sum()) == fine.numel()


def test_error_split_separates_localisation_from_recognition(limits):
    truth = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 0]]])
    pred = torch.tensor([[[0, 0, 2, 2], [0, 0, 2, 2], [2, 2, 0, 0], [0, 0, 0, 0]]])  # a called b; half of b missed
    r = limits.error_split(pred, truth, NAMES)
    assert r["fg_iou"] == pytest.approx(75.0)               # 6 of the 8 item pixels found, none invented
    assert r["fg_class_acc"] == pytest.approx(100 * 2 / 6)  # of those 6, only b's 2 have the right class
    assert r["miou_recognition_fixed"] == pytest.approx(100 * (0.8 + 1.0 + 0.5) / 3)
    assert r["confusions"] == [{"true": "a", "predicted": "b", "pct_of_true": 100.0}]
    assert r["miou"] < r["miou_recognition_fixed"]


def test_report_names_every_class_and_checkpoint(limits):
    iou = {n: 50.0 for n in NAMES}
    res = {"classes": NAMES, "command": "python benchmarks/seg_limits.py", "date": "d", "hardware": "h", "torch": "t",
           "test_images": 2, "size": 32,
           "stride_estimates": [{"stride": s, "miou": 90.0, "pixel_acc": 95.0, "per_class_iou": iou} for s in (8, 4, 2)],
           "checkpoints": [{"name": "pspnet_x", "path": "r/deploy.safetensors", "miou": 40.0, "fg_iou": 80.0,
                            "fg_class_acc": 60.0, "miou_recognition_fixed": 70.0, "per_class_iou": iou,
                            "per_class_iou_recognition_fixed": iou,
                            "confusions": [{"true": "a", "predicted": "b", "pct_of_true": 12.5}]}]}
    text = "\n".join(limits.report(res))
    assert "| 8 | 90.00 | 95.00 | 50.0 | 50.0 | 50.0 |" in text
    assert "| pspnet_x (`r/deploy.safetensors`) | 40.00 | 80.00 | 60.00 | 70.00 | a -> b 12.5 |" in text
