"""Residual Reorg: the paper's layout (Table 7), real shortcuts in both forms, exact conv-BN folding,
and the model/checkpoint plumbing every other model has."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repvgg
from repvgg.archs import get_arch
from repvgg.blocks import RepVGGBlock
from repvgg.checkpoint import read_metadata, save_checkpoint
from repvgg.rebuild import model_from_checkpoint
from repvgg.reorg import ConvNormAct, ResidualBlock, ResidualReorg, reorg_depths
from tests.conftest import randomize_bn_, rel_err


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name="repvgg_a0", **kw):
    arch = dataclasses.replace(get_arch(name), a=0.125, b=0.125)  # same depths and groups, few channels
    return ResidualReorg(arch, num_classes=5, **kw)


def n_conv(model, k):
    return sum(isinstance(m, nn.Conv2d) and m.kernel_size == (k, k) for m in model.modules())


def test_b0_layout_is_the_papers():
    """One 3x3 layer in the first and last stages, 2, 3, 8 residual blocks in stages 2-4."""
    model = repvgg.create_model("repvgg_b0", num_classes=10, block="residual_reorg")
    assert isinstance(model, ResidualReorg) and isinstance(model.stem, ConvNormAct)
    assert [len(s) for s in model.stages] == [2, 3, 8, 1]
    assert isinstance(model.stages[3][0], ConvNormAct)
    assert all(isinstance(b, ResidualBlock) for s in model.stages[:3] for b in s)
    # the same number of 3x3 convs as RepVGG-B0 (1 + 4 + 6 + 16 + 1), plus a 1x1 per shape change
    assert n_conv(model, 3) == 28 and n_conv(model, 1) == 3
    assert [b.shortcut is not None for b in model.stages[0]] == [True, False]


def test_depth_rule_and_a0():
    assert reorg_depths((2, 4, 14, 1)) == [1, 2, 7, 0]
    assert reorg_depths((8, 14, 24, 1)) == [4, 7, 12, 0]
    model = repvgg.create_model("repvgg_a0", num_classes=10, block="residual_reorg")
    assert [len(s) for s in model.stages] == [1, 2, 7, 1]
    assert n_conv(model, 3) == 22


def test_trains_one_step_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = tiny(in_chans=1, small_input=True).train()
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 5, (4,))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name,kw", [("repvgg_a0", {}), ("repvgg_b1g4", {}), ("repvgg_d2se", {}),
                                     ("repvgg_a0", {"output_stride": 8})])
def test_reparameterize_folds_conv_bn_keeps_shortcuts_and_is_exact(name, kw):
    model = randomize_bn_(tiny(name, **kw).double()).eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    fused = repvgg.reparameterize(model)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) <= 1e-9
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    blocks = [m for m in fused.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == sum(reorg_depths(model.arch.depths))  # the shortcuts are still there
    assert fused.is_deployed and not model.is_deployed
    built = tiny(name, deploy=True, **kw)
    assert {k: v.shape for k, v in built.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}
    twice = repvgg.reparameterize(fused)
    assert all(torch.equal(a, b) for a, b in zip(twice.state_dict().values(), fused.state_dict().values()))


def test_shortcuts_matter_at_inference():
    """Not a plain network: removing the additions changes the output."""
    model = randomize_bn_(tiny().double()).eval()
    x = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    fused = repvgg.reparameterize(model)
    with torch.no_grad():
        ref = fused(x)
        for b in fused.modules():
            if isinstance(b, ResidualBlock):
                b.forward = lambda x, b=b: b.act(b.conv2(b.conv1(x)))
        assert rel_err(fused(x), ref) > 1e-3


def test_features_only_and_feature_info():
    feats = repvgg.create_model("repvgg_a0", block="residual_reorg", features_only=True, out_indices=(1, 4))
    outs = feats(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == feats.feature_info.channels() == [48, 1280]
    assert [64 // o.shape[-1] for o in outs] == feats.feature_info.reduction() == [4, 32]


def test_checkpoint_round_trip_in_both_forms(tmp_path):
    model = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1,
                                              block="residual_reorg")).eval()
    x = torch.randn(2, 1, 28, 28)
    save_checkpoint(model, tmp_path / "train.safetensors")
    assert read_metadata(tmp_path / "train.safetensors")["build_args"]["block"] == "residual_reorg"
    back = model_from_checkpoint(tmp_path / "train.safetensors").eval()
    assert isinstance(back, ResidualReorg) and not back.is_deployed
    save_checkpoint(repvgg.reparameterize(model), tmp_path / "deploy.safetensors")
    deployed = model_from_checkpoint(tmp_path / "deploy.safetensors")
    assert isinstance(deployed, ResidualReorg) and deployed.is_deployed
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
        assert rel_err(deployed(x), model(x)) <= 1e-4


def test_clear_errors():
    with pytest.raises(ValueError, match="residual_reorg"):
        ResidualReorg(get_arch("repvgg_a0"), block="repvgg")
    with pytest.raises(ValueError, match="unknown block variant 'residual_reorg'"):
        RepVGGBlock(4, 4, block="residual_reorg")  # a whole network, not a block
    with pytest.raises(ValueError, match="output_stride"):
        repvgg.create_model("repvgg_a0", block="residual_reorg", output_stride=4)
