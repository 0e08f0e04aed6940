"""A first conv trained on gray images starts an RGB model (and back): exact on gray pictures, loud."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from repvgg import create_model
from repvgg.checkpoint import save_checkpoint
from repvgg.input_adapt import InputChannelsAdaptedWarning, adapt_input_conv
from repvgg.seg import create_segmenter
from tests.conftest import randomize_bn_, rel_err


@pytest.mark.parametrize("old, new", [(1, 3), (3, 1), (3, 4), (1, 2), (4, 3)])
def test_adapted_kernel_gives_the_same_output_on_equal_channels(old, new):
    w = torch.randn(5, old, 3, 3, dtype=torch.float64)
    x = torch.randn(2, 1, 9, 9, dtype=torch.float64)
    a = adapt_input_conv(w, new)
    assert a.shape == (5, new, 3, 3)
    if new == 1 or new % old == 0:     # each old channel's weight spread over an equal share of the new ones
        assert rel_err(F.conv2d(x.repeat(1, new, 1, 1), a), F.conv2d(x.repeat(1, old, 1, 1), w)) < 1e-12


def test_adapt_input_conv_rules_and_refusals():
    w = torch.randn(4, 3, 3, 3)
    assert adapt_input_conv(w, 3) is w
    assert torch.equal(adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    assert torch.allclose(adapt_input_conv(w, 4), torch.cat([w, w[:, :1]], 1) * 0.75)     # timm's rule
    with pytest.raises(ValueError, match="conv kernel"):
        adapt_input_conv(torch.randn(4, 3), 1)
    with pytest.raises(ValueError, match="in_chans"):
        adapt_input_conv(w, 0)


def _gray_repvgg(tmp_path, deploy=False):
    gray = randomize_bn_(create_model("repvgg_a0", num_classes=7, in_chans=1, width=0.25, depths=(1, 2, 1, 1)), 3)
    gray = gray.double().eval()
    path = tmp_path / "gray.safetensors"
    save_checkpoint(gray, path)
    return gray, path


@pytest.mark.parametrize("deploy", [False, True])
def test_gray_repvgg_checkpoint_starts_an_rgb_model_exactly(tmp_path, deploy):
    gray, path = _gray_repvgg(tmp_path)
    with pytest.warns(InputChannelsAdaptedWarning, match="1-channel images; adapted to 3 channels"):
        rgb = create_model("repvgg_a0", num_classes=7, in_chans=3, deploy=deploy, checkpoint=path)
    assert rgb.stem.in_channels == 3
    x = torch.randn(2, 1, 33, 31, dtype=torch.float64)        # odd sizes
    # the adapted kernel is w / 3 rounded to the model's float32: ~1e-7, where a wrong rule is off by O(1)
    assert rel_err(rgb.double().eval()(x.repeat(1, 3, 1, 1)), gray(x)) < 1e-6


def test_gray_repvgg_checkpoint_starts_an_rgb_segmenter(tmp_path):
    _, path = _gray_repvgg(tmp_path)
    seg_gray = create_segmenter("pspnet_repvgg_a0", 5, in_chans=1, backbone_checkpoint=path, head_channels=8)
    with pytest.warns(InputChannelsAdaptedWarning):
        seg_rgb = create_segmenter("pspnet_repvgg_a0", 5, in_chans=3, backbone_checkpoint=path, head_channels=8)
    x = torch.randn(2, 1, 35, 29, dtype=torch.float64)
    a = seg_rgb.backbone.double().eval()(x.repeat(1, 3, 1, 1))
    b = seg_gray.backbone.double().eval()(x)
    assert all(rel_err(u, v) < 1e-6 for u, v in zip(a, b))


def test_gray_resnet_checkpoint_starts_an_rgb_segmenter(tmp_path):
    import torchvision

    from repvgg.seg.models import ResNetFeatures

    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    randomize_bn_(net, 5)
    torch.save(net.state_dict(), tmp_path / "r18_gray.pth")
    with pytest.warns(InputChannelsAdaptedWarning, match="adapted to 3 channels"):
        rgb = ResNetFeatures("resnet18", 3, tmp_path / "r18_gray.pth").double().eval()
    gray = ResNetFeatures("resnet18", 1, tmp_path / "r18_gray.pth").double().eval()
    x = torch.randn(1, 1, 41, 37, dtype=torch.float64)
    assert all(rel_err(u, v) < 1e-6 for u, v in zip(rgb(x.repeat(1, 3, 1, 1)), gray(x)))


def test_a_checkpoint_of_the_same_channels_loads_without_a_warning(tmp_path, recwarn):
    _, path = _gray_repvgg(tmp_path)
    create_model("repvgg_a0", num_classes=7, in_chans=1, checkpoint=path)
    assert not [w for w in recwarn if issubclass(w.category, InputChannelsAdaptedWarning)]
