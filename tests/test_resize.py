"""Thinner, shallower and explicitly sized models: create_model(width=, channels=, depths=)."""
import pytest
import torch

import repvgg
from repvgg.archs import ARCHS, resize_arch
from repvgg.checkpoint import save_checkpoint
from repvgg.rebuild import model_from_checkpoint
from tests.conftest import randomize_bn_


def test_width_scales_every_stage_and_drops_the_paper_top1():
    arch = resize_arch(ARCHS["repvgg_a0"], 0.5)
    assert (arch.stem_width, *arch.widths) == (24, 24, 48, 96, 640)
    assert arch.top1 is None and ARCHS["repvgg_a0"].top1 is not None  # the zoo entry is untouched
    assert resize_arch(ARCHS["repvgg_a0"], 1.0) is ARCHS["repvgg_a0"]


def test_channels_set_the_widths_outright():
    arch = resize_arch(ARCHS["repvgg_b1g2"], channels=(32, 64, 96, 128, 256))
    assert (arch.stem_width, *arch.widths) == (32, 64, 96, 128, 256)
    m = repvgg.create_model("repvgg_b1g2", num_classes=7, channels=[32, 64, 96, 128, 256])
    assert m.stages[3][0].out_channels == 256 and m.head.fc.in_features == 256
    assert m.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_depths_set_the_blocks_per_stage():
    arch = resize_arch(ARCHS["repvgg_a0"], 0.5, depths=[1, 2, 4, 1])
    assert arch.depths == (1, 2, 4, 1) and arch.widths == (24, 48, 96, 640) and arch.top1 is None
    m = repvgg.create_model("repvgg_a0", num_classes=3, in_chans=1, width=0.5, depths=(1, 2, 4, 1))
    assert [len(s) for s in m.stages] == [1, 2, 4, 1] and m.build_args["depths"] == [1, 2, 4, 1]
    assert [s[0].stride for s in m.stages] == [2, 2, 2, 2]  # each stage still starts with its stride
    assert m.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(width=0), "width must be"),
    (dict(width=-1.0), "width must be"),
    (dict(width=True), "width must be"),
    (dict(width=0.01), "too thin"),
    (dict(channels=(8, 8, 8)), "5 positive ints"),
    (dict(channels=(8, 8, 8, 8, 0)), "5 positive ints"),
    (dict(width=0.5, channels=(8, 8, 8, 8, 8)), "not both"),
    (dict(width=0.5, pretrained=True), "pretrained"),
    (dict(depths=(2, 4, 1)), "4 block counts"),
    (dict(depths=(2, 4, 0, 1)), "4 block counts"),
    (dict(depths=(2, 4, 1.5, 1)), "4 block counts"),
    (dict(depths="2,4,6,1"), "4 block counts"),
    (dict(depths=(2, 4, 6, 1), pretrained=True), "pretrained"),
])
def test_bad_sizes_are_refused_with_a_clear_message(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        repvgg.create_model("repvgg_a0", **kwargs)


def test_groups_must_divide_the_channels():
    with pytest.raises(ValueError, match="groups=4"):
        repvgg.create_model("repvgg_b1g4", channels=(16, 30, 64, 64, 64))


@pytest.mark.parametrize("size", [dict(width=0.25), dict(channels=[8, 12, 16, 24, 40]),
                                  dict(width=0.25, depths=[1, 3, 2, 1])])
def test_resized_model_fuses_exactly_and_rebuilds_from_its_checkpoint(tmp_path, size):
    """The size is in build_args, so a checkpoint rebuilds the same model (train and deploy form)."""
    model = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=5, in_chans=1, small_input=True,
                                              **size)).double().eval()
    x = torch.randn(3, 1, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
        fused = repvgg.reparameterize(model, inplace=False)
        assert (fused(x) - ref).abs().max() <= 1e-9 * ref.abs().max()
    save_checkpoint(model.float(), tmp_path / "m.safetensors")
    for deploy in (False, True):
        back = model_from_checkpoint(tmp_path / "m.safetensors", deploy=deploy).eval()
        assert back.build_args == model.build_args
        with torch.no_grad():
            torch.testing.assert_close(back(x.float()), ref.float(), rtol=1e-4, atol=1e-4)
