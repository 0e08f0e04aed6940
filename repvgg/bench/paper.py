"""The paper's Tables 4 and 5 as data: reference numbers printed beside our measurements.

Speeds are the paper's (1080Ti, batch 128, fp32, examples/s); they are a reference, never ours.
Keys are the names ``repvgg bench`` uses. Table 5 rows (200 epochs, stronger augmentation) are
marked ``table=5``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperRow:
    top1: float
    speed: int  # examples/s on a 1080Ti, batch 128, fp32
    params_m: float
    flops_b: float  # multiply-adds, billions
    wino_muls_b: float | None  # None where the paper prints "-"
    table: int = 4


PAPER: dict[str, PaperRow] = {
    "repvgg_a0": PaperRow(72.41, 3256, 8.30, 1.4, 0.7),
    "resnet18": PaperRow(71.16, 2442, 11.68, 1.8, 1.0),
    "repvgg_a1": PaperRow(74.46, 2339, 12.78, 2.4, 1.3),
    "repvgg_b0": PaperRow(75.14, 1817, 14.33, 3.1, 1.6),
    "resnet34": PaperRow(74.17, 1419, 21.78, 3.7, 1.8),
    "repvgg_a2": PaperRow(76.48, 1322, 25.49, 5.1, 2.7),
    "repvgg_b1g4": PaperRow(77.58, 868, 36.12, 7.3, 3.9),
    "efficientnet_b0": PaperRow(75.11, 829, 5.26, 0.4, None),
    "repvgg_b1g2": PaperRow(77.78, 792, 41.36, 8.8, 4.6),
    "resnet50": PaperRow(76.31, 719, 25.53, 3.9, 2.8),
    "repvgg_b1": PaperRow(78.37, 685, 51.82, 11.8, 5.9),
    "regnet_x_3_2gf": PaperRow(77.98, 671, 15.26, 3.2, 2.9),
    "repvgg_b2g4": PaperRow(78.50, 581, 55.77, 11.3, 6.0),
    "resnext50_32x4d": PaperRow(77.46, 484, 24.99, 4.2, 4.1),
    "repvgg_b2": PaperRow(78.78, 460, 80.31, 18.4, 9.1),
    "resnet101": PaperRow(77.21, 430, 44.49, 7.6, 5.5),
    "vgg16": PaperRow(72.21, 415, 138.35, 15.5, 6.9),
    "resnet152": PaperRow(77.78, 297, 60.11, 11.3, 8.1),
    "resnext101_32x8d": PaperRow(78.42, 295, 44.10, 8.0, 7.9),
    # Table 5 (200 epochs, Autoaugment + label smoothing + mixup)
    "repvgg_b3g4": PaperRow(80.21, 464, 75.62, 16.1, 8.4, table=5),
    "repvgg_b3": PaperRow(80.52, 363, 110.96, 26.2, 12.9, table=5),
    "regnet_x_12gf": PaperRow(80.55, 277, 46.05, 12.1, 10.9, table=5),
    "efficientnet_b3": PaperRow(79.31, 224, 12.19, 1.8, None, table=5),
}

# Table 6: RepVGG-B0 inference speed (examples/s, 1080Ti, batch 128) before re-parameterization.
PAPER_B0_TRAIN_FORM_SPEED = 1061
PAPER_B0_DEPLOY_OVER_TRAIN = PAPER["repvgg_b0"].speed / PAPER_B0_TRAIN_FORM_SPEED  # 1.71x
