"""Every zoo model has the size the published table says, train-time and deploy.

The numbers are the "Params(M)" and "Flops(G)" columns of the mmcls RepVGG README (the official
weights republished by OpenMMLab; ../shared/paper/mmcls-repvgg-readme.md), 1000 classes, 224 px.
The table counts FLOPs with mmcv's convention (multiply-adds + conv-bias adds + ReLU outputs);
the pure multiply-add count is checked to sit just below it. Models are built on the meta device,
so nothing is allocated and the whole file runs in seconds.
"""
import pytest
import torch

import repvgg
from repvgg.complexity import count_flops_mmcv, count_macs, count_params

# name: (train params M, deploy params M, train FLOPs G, deploy FLOPs G)
MMCLS_TABLE = {
    "repvgg_a0": (9.11, 8.31, 1.52, 1.36),
    "repvgg_a1": (14.09, 12.79, 2.64, 2.37),
    "repvgg_a2": (28.21, 25.5, 5.7, 5.12),
    "repvgg_b0": (15.82, 14.34, 3.42, 3.06),
    "repvgg_b1": (57.42, 51.83, 13.16, 11.82),
    "repvgg_b1g2": (45.78, 41.36, 9.82, 8.82),
    "repvgg_b1g4": (39.97, 36.13, 8.15, 7.32),
    "repvgg_b2": (89.02, 80.32, 20.46, 18.39),
    "repvgg_b2g4": (61.76, 55.78, 12.63, 11.34),
    "repvgg_b3": (123.09, 110.96, 29.17, 26.22),
    "repvgg_b3g4": (83.83, 75.63, 17.9, 16.08),
    "repvgg_d2se": (133.33, 120.39, 36.56, 32.85),
}
SHAPE = (1, 3, 224, 224)


def meta_model(name, deploy):
    with torch.device("meta"):
        return repvgg.create_model(name, num_classes=1000, deploy=deploy)


@pytest.mark.parametrize("name", list(MMCLS_TABLE))
def test_params_and_flops_match_the_mmcls_table(name):
    train_p, deploy_p, _, deploy_g = MMCLS_TABLE[name]
    train, deploy = meta_model(name, False), meta_model(name, True)
    assert count_params(train) / 1e6 == pytest.approx(train_p, abs=0.01)
    assert count_params(deploy) / 1e6 == pytest.approx(deploy_p, abs=0.01)
    flops = count_flops_mmcv(deploy, SHAPE) / 1e9
    assert flops == pytest.approx(deploy_g, abs=0.02)
    macs = count_macs(deploy, SHAPE) / 1e9
    assert flops - 0.03 < macs < flops


def test_fusion_removes_exactly_the_branch_parameters():
    """Deploy params = train params - 1x1 kernels - BN affine + one bias per block (a0, counted)."""
    train = meta_model("repvgg_a0", False)
    blocks = [m for m in train.modules() if isinstance(m, repvgg.RepVGGBlock)]
    removed = sum(
        b.conv1x1.conv.weight.numel() + sum(bn.weight.numel() * 2 for bn in (b.conv3x3.bn, b.conv1x1.bn))
        + (b.identity.bn.weight.numel() * 2 if b.identity is not None else 0) - b.out_channels
        for b in blocks
    )
    assert count_params(train) - removed == count_params(meta_model("repvgg_a0", True))


def test_count_macs_on_a_single_conv():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, groups=2)
    assert count_macs(conv, (1, 4, 5, 5)) == 6 * 2 * 9 * 25
