"""Winograd convs through NNPACK: equal to F.conv2d (odd sizes, dilation, groups, batches), swapped
only where eligible, and a whole fused model or segmenter gives the same output."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repvgg
from repvgg.winograd import (WinogradConv2d, batch_to_space, eligible, nnpack_conv3x3, nnpack_ready,
                             space_to_batch, winograd_convs)
from tests.conftest import randomize_bn_, rel_err

pytestmark = pytest.mark.skipif(not nnpack_ready(), reason="this PyTorch build has no NNPACK")


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_space_to_batch_round_trip_on_odd_sizes(d):
    x = torch.randn(2, 3, 13, 10)
    xb = space_to_batch(x, d)
    assert xb.shape == (2 * d * d, 3, -(-13 // d), -(-10 // d))
    for i in range(d):
        for j in range(d):
            sub = x[1, :, i::d, j::d]  # image 1's sub-image (i, j), zero-filled to the common size
            got = xb[(i * d + j) * 2 + 1]
            assert torch.equal(got[:, :sub.shape[1], :sub.shape[2]], sub)
            assert not got[:, sub.shape[1]:].any() and not got[:, :, sub.shape[2]:].any()
    assert torch.equal(batch_to_space(xb, d, 2, 13, 10), x)


@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("groups,cin,cout", [(1, 5, 7), (3, 6, 9)])
@pytest.mark.parametrize("batch,per_image", [(1, False), (3, False), (3, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_nnpack_conv_equals_conv2d(dilation, groups, cin, cout, batch, per_image, bias):
    g = torch.Generator().manual_seed(dilation * 100 + groups * 10 + batch)
    x = torch.randn(batch, cin, 13, 11, generator=g)
    w = torch.randn(cout, cin // groups, 3, 3, generator=g)
    b = torch.randn(cout, generator=g) if bias else None
    ref = F.conv2d(x.double(), w.double(), b.double() if bias else None, padding=dilation, dilation=dilation,
                   groups=groups)
    out = nnpack_conv3x3(x, w, b, dilation, groups, per_image)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out.double(), ref) < 1e-5


def test_only_same_size_3x3_stride1_fp32_convs_are_eligible():
    assert eligible(nn.Conv2d(4, 4, 3, padding=1))
    assert eligible(nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False))
    for conv in [nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, padding=2),
                 nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), nn.Conv2d(4, 4, 3, padding=1).double(),
                 nn.Conv2d(4, 4, (3, 3), padding=(2, 1), dilation=(2, 1))]:
        assert not eligible(conv)
        with pytest.raises(ValueError, match="3x3 stride-1"):
            WinogradConv2d(conv)


def test_falls_back_to_the_exact_conv_where_nnpack_does_not_apply():
    conv = nn.Conv2d(4, 6, 3, padding=2, dilation=2)
    fast = WinogradConv2d(conv)
    assert fast.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(1, 4, 9, 9, requires_grad=True)
    y = fast(x)  # autograd records: the exact conv, so training through it is never approximate
    assert torch.equal(y, conv(x)) and y.requires_grad
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        assert torch.equal(fast.double()(x.double()), conv.double()(x.double()))


def test_whole_fused_model_gives_the_same_output_and_keeps_strided_convs(randomize_bn):
    torch.manual_seed(0)
    model = randomize_bn(repvgg.create_model("repvgg_a0", num_classes=7, width=0.25, depths=(1, 2, 2, 1)))
    fused = repvgg.reparameterize(model.eval())
    x = torch.randn(2, 3, 45, 39)
    fast, report = winograd_convs(fused, x, autotune=False)
    swapped = [m for m in fast.modules() if isinstance(m, WinogradConv2d)]
    assert len(swapped) == len(report) > 0 and all(r["used"] for r in report)
    strided = [m for m in fast.modules() if type(m) is nn.Conv2d]
    assert strided and all(m.stride == (2, 2) for m in strided)  # the first block of each stage
    assert fast.state_dict().keys() == fused.state_dict().keys()
    assert not any(isinstance(m, WinogradConv2d) for m in fused.modules())  # the input is left alone
    with torch.inference_mode():
        assert rel_err(fast(x), fused(x)) < 1e-4
    with pytest.raises(ValueError, match="eval model"):
        winograd_convs(model.train(), x)


def test_dilated_segmenter_autotuned_matches_its_deploy_form():
    seg = randomize_bn_(repvgg.create_segmenter("pspnet_repvgg_a0", 5, aux=False, head_channels=8)).eval()
    fused = repvgg.reparameterize(seg)
    x = torch.randn(1, 3, 70, 54)
    fast, report = winograd_convs(fused, x, repeats=1)
    assert {r["dilation"] for r in report} == {1, 2}  # A0's last stage is one block: its first keeps dilation 2
    assert all(r["onednn_ms"] > 0 and r["winograd_ms"] > 0 for r in report)
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == sum(r["used"] for r in report)
    with torch.inference_mode():
        a, b = fast(x), fused(x)
    assert rel_err(a, b) < 1e-4 and (a.argmax(1) == b.argmax(1)).float().mean() > 0.999


def test_speed_pairs_time_runtimes_side_by_side():
    from repvgg.seg.bench import compare_speed

    rows = compare_speed(["pspnet_resnet18", "pspnet_repvgg_a0"], size=48, classes=3, repeats=1,
                         head_channels=8, runtime=("torch", "winograd"), threads=1)
    assert [(r["model"], r["runtime"]) for r in rows] == [
        ("pspnet_resnet18", "torch"), ("pspnet_resnet18", "winograd"),
        ("pspnet_repvgg_a0", "torch"), ("pspnet_repvgg_a0", "winograd")]
    assert all(r["speed_vs_torch"] > 0 for r in rows) and rows[0]["speed_vs_torch"] == 1.0
    assert rows[1]["winograd_convs"].endswith("/16") and "winograd_convs" not in rows[0]
    with pytest.raises(ValueError, match="on the CPU"):
        compare_speed(["pspnet_resnet18"], size=48, runtime=("winograd",), device="cuda")
