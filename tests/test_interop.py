"""Foreign checkpoints: the official release, timm and mmpretrain, train-time and deploy form.

The foreign state dicts are written here by hand from each project's naming rules (see the
docstring of repvgg/keymaps.py for where the rules come from), filled with our model's random
values and random BN statistics, and must reproduce our model's outputs once loaded. When timm
is installed, real timm models are checked too.
"""
import re

import pytest
import torch
from safetensors.torch import save_file

import repvgg
from repvgg.archs import RepVGGArch
from repvgg.checkpoint import CheckpointError, load_checkpoint
from repvgg.model import RepVGG
from tests.conftest import randomize_bn_, rel_err

# SE on every block and groups=2 on the interleaved layers, small enough to be quick.
TINY = RepVGGArch((2, 2, 2, 1), 0.5, 0.5, groups=2, se=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def official(key: str) -> str:
    """DingXiaoH/RepVGG repvgg.py: stage0..stage4, rbr_*, se.down/up, linear."""
    key = re.sub(r"^stem\.", "stage0.", key)
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"stage{int(m[1]) + 1}.", key)
    for ours, theirs in [("conv3x3.", "rbr_dense."), ("conv1x1.", "rbr_1x1."), ("identity.bn.", "rbr_identity."),
                         ("fused.", "rbr_reparam."), ("se.reduce.", "se.down."), ("se.expand.", "se.up."),
                         ("head.fc.", "linear.")]:
        key = key.replace(ours, theirs)
    return key


def timm(key: str) -> str:
    """timm byobnet RepVggBlock: stem/stages.I.J kept, conv_kxk/conv_1x1, identity = bare BN, attn.fc1/2."""
    for ours, theirs in [("conv3x3.", "conv_kxk."), ("conv1x1.", "conv_1x1."), ("identity.bn.", "identity."),
                         ("fused.", "reparam_conv."), ("se.reduce.", "attn.fc1."), ("se.expand.", "attn.fc2.")]:
        key = key.replace(ours, theirs)
    return key


def mmpretrain(key: str) -> str:
    """mmpretrain RepVGG: backbone.stem, backbone.stage_1..4, branch_3x3/1x1 (conv+norm), branch_norm,
    branch_reparam, se_layer.conv1.conv/conv2.conv (ConvModule); head.fc (LinearClsHead, no prefix)."""
    if key.startswith("head."):
        return key
    key = re.sub(r"^stages\.(\d)\.", lambda m: f"stage_{int(m[1]) + 1}.", key)
    for ours, theirs in [("conv3x3.bn.", "branch_3x3.norm."), ("conv1x1.bn.", "branch_1x1.norm."),
                         ("conv3x3.", "branch_3x3."), ("conv1x1.", "branch_1x1."), ("identity.bn.", "branch_norm."),
                         ("fused.", "branch_reparam."), ("se.reduce.", "se_layer.conv1.conv."),
                         ("se.expand.", "se_layer.conv2.conv.")]:
        key = key.replace(ours, theirs)
    return "backbone." + key


NAMINGS = {"official": official, "timm": timm, "mmpretrain": mmpretrain}
# How each project wraps its files: official DDP runs save "module." keys, mmcls {"meta", "state_dict"}.
WRAP = {
    "official": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "timm": lambda sd: sd,
    "mmpretrain": lambda sd: {"meta": {"mmcls_version": "0.15.0"}, "state_dict": sd},
}


def build(arch, deploy=False):
    name = [n for n, a in repvgg.archs.ARCHS.items() if a == arch]
    if name:
        return repvgg.create_model(name[0], num_classes=5, small_input=True, deploy=deploy)
    return RepVGG(arch, num_classes=5, small_input=True, deploy=deploy)


@pytest.fixture(scope="module")
def reference():
    arch = TINY
    torch.manual_seed(1)
    model = randomize_bn_(build(arch)).eval()
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        ref = model(x)
    return arch, model, x, ref


def foreign_file(model, naming, form, tmp_path):
    src = model if form == "train" else repvgg.reparameterize(model)
    sd = {NAMINGS[naming](k): v for k, v in src.state_dict().items()}
    path = tmp_path / f"{naming}_{form}.pth"
    torch.save(WRAP[naming](sd), path)
    return path, sd


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_train_time_foreign_checkpoint(reference, naming, tmp_path):
    arch, model, x, ref = reference
    path, sd = foreign_file(model, naming, "train", tmp_path)
    assert all(k not in model.state_dict() for k in sd if "." in k and not k.startswith("head."))  # really foreign
    train = load_checkpoint(build(arch), path).eval()
    with torch.no_grad():
        assert torch.equal(train(x), ref)
        fused = load_checkpoint(build(arch, deploy=True), path).eval()  # fused on the way in
        assert rel_err(fused(x), ref) < 1e-5


@pytest.mark.parametrize("naming", list(NAMINGS))
def test_deploy_form_foreign_checkpoint(reference, naming, tmp_path):
    arch, model, x, ref = reference
    path, sd = foreign_file(model, naming, "deploy", tmp_path)
    assert any(k.endswith(("rbr_reparam.weight", "reparam_conv.weight", "branch_reparam.weight")) for k in sd)
    deploy = load_checkpoint(build(arch, deploy=True), path).eval()
    with torch.no_grad():
        assert rel_err(deploy(x), ref) < 1e-5
    with pytest.raises(CheckpointError, match="cannot be split"):
        load_checkpoint(build(arch), path)


def test_foreign_safetensors_file(reference, tmp_path):
    arch, model, x, ref = reference
    save_file({timm(k): v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "t.safetensors")
    with torch.no_grad():
        assert torch.equal(load_checkpoint(build(arch), tmp_path / "t.safetensors").eval()(x), ref)


def test_se_keys_are_mapped_in_every_naming():
    keys = build(TINY).state_dict()
    se = [k for k in keys if ".se." in k]
    assert se and {official(k).split(".")[-2] for k in se} == {"down", "up"}
    assert {timm(k).split(".")[-2] for k in se} == {"fc1", "fc2"}
    assert {mmpretrain(k).rsplit(".", 3)[-3] for k in se} == {"conv1", "conv2"}


@pytest.mark.parametrize("name", ["repvgg_a0"])
def test_real_timm_models(name):
    """timm's own repvgg, random BN: its keys are what the hand rules say and its outputs are ours.

    (b1g4 passes too, 30 s on 2 loaded cores; groups are covered quickly by TINY above.)"""
    timm_lib = pytest.importorskip("timm")
    from timm.utils.model import reparameterize_model

    torch.manual_seed(2)
    theirs = randomize_bn_(timm_lib.create_model(name, num_classes=5)).eval()
    ours = repvgg.create_model(name, num_classes=5)
    assert {timm(k) for k in ours.state_dict()} == set(theirs.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = theirs(x)
        loaded = repvgg.checkpoint.load_state_dict(ours, theirs.state_dict()).eval()
        assert rel_err(loaded(x), ref) < 1e-6
        fused_theirs = reparameterize_model(theirs)
        deploy = repvgg.checkpoint.load_state_dict(repvgg.create_model(name, num_classes=5, deploy=True),
                                                   fused_theirs.state_dict()).eval()
        assert rel_err(deploy(x), ref) < 1e-5


def test_unknown_naming_is_a_clear_error(tmp_path):
    torch.save({"features.0.weight": torch.zeros(3), "classifier.weight": torch.zeros(3)}, tmp_path / "vgg.pth")
    with pytest.raises(CheckpointError, match="does not look like a RepVGG checkpoint.*features.0.weight"):
        load_checkpoint(build(TINY), tmp_path / "vgg.pth")
