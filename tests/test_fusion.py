"""The pure fusion math, checked against the modules it replaces."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repvgg import fusion
from tests.conftest import randomize_bn_, rel_err


def test_fold_bn_matches_conv_then_bn_including_conv_bias():
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=True).double()
    bn = randomize_bn_(nn.BatchNorm2d(7).double()).eval()
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    k, b = fusion.fold_bn(conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, conv.bias)
    assert rel_err(F.conv2d(x, k, b, padding=1), bn(conv(x))) < 1e-12
    # dropping the conv bias must be visible
    k2, b2 = fusion.fold_bn(conv.weight, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps)
    assert rel_err(F.conv2d(x, k2, b2, padding=1), bn(conv(x))) > 1e-3


@pytest.mark.parametrize("channels,groups", [(6, 1), (6, 2), (6, 3), (8, 4), (5, 5), (7, 1)])
def test_identity_kernel_is_identity_for_grouped_conv(channels, groups):
    x = torch.randn(2, channels, 6, 6, dtype=torch.float64)
    k = fusion.identity_kernel(channels, groups, dtype=torch.float64)
    assert k.shape == (channels, channels // groups, 3, 3)
    assert torch.equal(F.conv2d(x, k, padding=1, groups=groups), x)


def test_identity_kernel_rejects_indivisible_groups():
    with pytest.raises(ValueError, match="divisible"):
        fusion.identity_kernel(6, 4)


@pytest.mark.parametrize("shape", [(1, 1), (3, 1), (1, 3), (3, 3)])
@pytest.mark.parametrize("dilation", [1, 2])
def test_pad_to_3x3_keeps_the_conv(shape, dilation):
    w = torch.randn(4, 3, *shape, dtype=torch.float64)
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    pad = ((shape[0] - 1) // 2 * dilation, (shape[1] - 1) // 2 * dilation)
    ref = F.conv2d(x, w, padding=pad, dilation=dilation)
    out = F.conv2d(x, fusion.pad_to_3x3(w), padding=dilation, dilation=dilation)
    assert rel_err(out, ref) < 1e-12


def test_pad_to_3x3_rejects_bigger_or_even_kernels():
    with pytest.raises(ValueError):
        fusion.pad_to_3x3(torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError):
        fusion.pad_to_3x3(torch.zeros(1, 1, 2, 2))


def test_fusion_preserves_dtype_and_device():
    w = torch.randn(4, 4, 1, 1, dtype=torch.float64)
    assert fusion.pad_to_3x3(w).dtype == torch.float64
    k, b = fusion.fold_bn(w, torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), None, None, 1e-5)
    assert k.dtype == b.dtype == torch.float64
    assert fusion.identity_kernel(4, dtype=torch.float16).dtype == torch.float16


def test_add_branches_needs_a_branch():
    with pytest.raises(ValueError):
        fusion.add_branches([])
