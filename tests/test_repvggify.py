"""repvggify: RepVGG branches for any traceable ConvNet, folded back into the user's own class (Sect. 4.2)."""
import pytest
import torch
import torch.nn as nn
import torchvision

import repvgg
from repvgg.repvggify import FoldedBN, RepConv, fold_back
from tests.conftest import randomize_bn_, rel_err

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(c=3, size=32, dtype=torch.float64):
    return torch.randn(2, c, size, size, generator=torch.Generator().manual_seed(0), dtype=dtype)


@pytest.mark.parametrize("build, pairs", [
    (lambda: torchvision.models.resnet18(num_classes=10), 16),
    (lambda: torchvision.models.vgg11_bn(num_classes=10), 8),
])
def test_folds_back_into_the_users_own_class(build, pairs):
    model, report = repvgg.repvggify(build())
    assert len(report.pairs) == pairs
    assert sum(isinstance(m, RepConv) for m in model.modules()) == pairs
    randomize_bn_(model.double()).eval()                    # every branch non-trivial, the new ones too
    x = _x(size=32 if pairs == 16 else 32)
    with torch.no_grad():
        ref = model(x)
        folded = repvgg.reparameterize(model)
        assert not any(isinstance(m, (RepConv, FoldedBN)) for m in folded.modules())
        fresh = build().double()
        fresh.load_state_dict(folded.state_dict(), strict=True)        # the original class, unchanged
        assert rel_err(fresh.eval()(x), ref) <= 1e-9


def test_a_trained_model_keeps_its_function():
    trained = randomize_bn_(torchvision.models.resnet18(num_classes=10)).eval()
    x = _x(dtype=torch.float32)
    with torch.no_grad():
        before = trained(x)
        model, _ = repvgg.repvggify(trained)
        assert torch.equal(model.eval()(x), before)                       # new branches start at zero
        assert torch.equal(trained(x), before)                            # the input is left alone
        model.train()(x)                                                   # and it trains (batch stats)


class Mixed(nn.Module):
    """Depthwise and grouped 3x3 convs, a conv with bias, a strided one, a conv read twice, a 5x5."""

    def __init__(self):
        super().__init__()
        self.dw, self.dw_bn = nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), nn.BatchNorm2d(6, eps=1e-3)
        self.g, self.g_bn = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=True), nn.BatchNorm2d(6, eps=0.1)
        self.down, self.down_bn = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8)
        self.twice, self.twice_bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.big, self.big_bn = nn.Conv2d(8, 8, 5, padding=2), nn.BatchNorm2d(8)

    def forward(self, x):
        x = torch.relu(self.dw_bn(self.dw(x)))
        x = torch.relu(self.g_bn(self.g(x)))
        x = torch.relu(self.down_bn(self.down(x)))
        t = self.twice(x)
        x = self.twice_bn(t) + t
        return self.big_bn(self.big(x))


def test_groups_dilation_bias_stride_and_what_is_left_alone():
    model, report = repvgg.repvggify(Mixed())
    assert [c for c, _ in report.pairs] == ["dw", "g", "down"]
    skipped = dict(report.skipped)
    assert set(skipped) == {"twice"} and "feeds 2 nodes" in skipped["twice"]
    assert model.down.identity is None and model.dw.identity is not None      # identity only where shapes allow
    randomize_bn_(model.double()).eval()
    x = _x(c=6, size=17)
    with torch.no_grad():
        ref = model(x)
        folded = repvgg.reparameterize(model)
        fresh = Mixed().double()
        fresh.load_state_dict(folded.state_dict(), strict=True)
        assert fresh.g.bias is not None and rel_err(fresh.eval()(x), ref) <= 1e-9


def test_nothing_to_change_and_untraceable_models_are_clear_errors():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with pytest.raises(ValueError, match="no 3x3 conv followed only by a BatchNorm2d"):
        repvgg.repvggify(plain)
    assert isinstance(plain[0], nn.Conv2d)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:                   # data-dependent control flow: not traceable
                return self.bn(self.conv(x))
            return x

    with pytest.raises(ValueError, match="cannot trace Branchy.*repvggify the traceable submodules"):
        repvgg.repvggify(Branchy())
    with pytest.raises(ValueError, match="unknown branch"):
        repvgg.repvggify(Mixed(), branches=("5x5",))


def test_train_mode_bn_is_folded_with_running_statistics_and_said(recwarn):
    model, _ = repvgg.repvggify(Mixed())
    randomize_bn_(model.double())
    x = _x(c=6, size=9)
    with torch.no_grad():
        ref = model.eval()(x)
        model.train()
        with pytest.warns(UserWarning, match="running statistics"):
            fold_back(model)
        assert rel_err(model.eval()(x), ref) <= 1e-9


def test_train_a_repvggified_torchvision_model_and_convert_it_back(tmp_path):
    from repvgg.cli import main
    from repvgg.tvmodels import build_tv
    from tests.test_train import make_tiny_fmnist

    data = make_tiny_fmnist(tmp_path / "data", n_train=96, n_test=32)
    out = tmp_path / "run"
    assert main(["train", "--model", "tv:resnet18", "--repvggify", "--output", str(out), "--data", "fashion-mnist",
                 "--data-dir", str(data), "--image-size", "16", "--small-input", "--batch-size", "32", "--epochs", "1",
                 "--no-amp", "--threads", "1", "--quiet", "--recipe", "small"]) == 0
    assert "training tv:resnet18 (repvgg blocks)" in (out / "train.log").read_text()
    best = repvgg.model_from_checkpoint(out / "best.safetensors")
    assert sum(isinstance(m, RepConv) for m in best.modules()) == 17     # 16 in the blocks + the 3x3 stem
    deploy = repvgg.model_from_checkpoint(out / "deploy.safetensors")           # the plain torchvision ResNet
    assert type(deploy) is torchvision.models.ResNet and not any(isinstance(m, RepConv) for m in deploy.modules())
    again = repvgg.create_model("tv:resnet18", num_classes=10, in_chans=1, small_input=True, repvggify=True,
                                checkpoint=out / "best.safetensors")             # create_model takes it too
    assert sum(isinstance(m, RepConv) for m in again.modules()) == 17
    assert main(["convert", str(out / "best.safetensors"), str(tmp_path / "folded.safetensors"), "--verify"]) == 0
    fresh = build_tv("tv:resnet18", 10, 1, small_input=True)
    from safetensors.torch import load_file

    fresh.load_state_dict(load_file(tmp_path / "folded.safetensors"), strict=True)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert rel_err(fresh.eval()(x), best.eval()(x)) < 1e-5
    assert main(["train", "--model", "repvgg_a0", "--repvggify", "--output", str(tmp_path / "x"), "--data",
                 "fashion-mnist-builtin", "--epochs", "1"]) == 2


def test_a_torchvision_baseline_trains_as_is_and_its_log_says_so(tmp_path):
    """Without --repvggify a tv: model is the torchvision network unchanged (the segmentation baselines'
    pretraining); the log must not call its blocks RepVGG blocks."""
    from repvgg.cli import main
    from tests.test_train import make_tiny_fmnist

    data = make_tiny_fmnist(tmp_path / "data", n_train=64, n_test=32)
    out = tmp_path / "run"
    assert main(["train", "--model", "tv:resnet18", "--output", str(out), "--data", "fashion-mnist", "--data-dir",
                 str(data), "--image-size", "16", "--small-input", "--batch-size", "32", "--epochs", "1", "--no-amp",
                 "--threads", "1", "--quiet", "--recipe", "small"]) == 0
    assert "training tv:resnet18 (torchvision, as is)" in (out / "train.log").read_text()
    assert not any(isinstance(m, RepConv) for m in repvgg.model_from_checkpoint(out / "best.safetensors").modules())
