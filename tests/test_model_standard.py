"""The checks timm's own tests/test_models.py runs on every timm model, run on every zoo model here.

Each model, in train-time and deploy form, on small inputs: forward, backward (every parameter gets
a gradient), features (channels, reductions), TorchScript, torch.fx (and torchvision's
create_feature_extractor), torch.compile as one graph, classifier reset and pooling options,
``forward_intermediates`` and ``pretrained_cfg``. Outputs of every traced/scripted form equal eager.
"""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import repvgg
from tests.conftest import randomize_bn_, rel_err

MODELS = repvgg.list_models()
X_SIZE = 32
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=MODELS)
def pair(request) -> tuple[str, nn.Module, nn.Module]:
    """(name, train-time, fused) with randomized BN, eval mode: built once per model (pytest groups the
    tests by this module-scoped parameter)."""
    torch.manual_seed(0)
    train = randomize_bn_(repvgg.create_model(request.param, num_classes=7)).eval()
    return request.param, train, repvgg.reparameterize(train)


def _x(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, X_SIZE, X_SIZE, generator=torch.Generator().manual_seed(1))


def _script(model: nn.Module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit is deprecated upstream, still supported
        return torch.jit.script(model)


def test_forward_backward_every_parameter_gets_a_gradient(pair):
    model = copy.deepcopy(pair[1]).train()
    out = model(_x())
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


@pytest.mark.parametrize("form", ["train", "deploy"])
def test_script_fx_and_compile_equal_eager(pair, form):
    model = pair[2] if form == "deploy" else pair[1]
    x = _x()
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(_script(model)(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), ref, rtol=0, atol=1e-5)
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons[:2]


def test_features_and_feature_extractor(pair):
    from torchvision.models.feature_extraction import create_feature_extractor

    name, train, deploy = pair
    x = _x()
    feats = repvgg.create_model(name, features_only=True)
    feats.load_state_dict({k: v for k, v in train.state_dict().items() if not k.startswith("head.")})
    feats.eval()
    with torch.no_grad():
        outs = feats(x)
        assert [o.shape[1] for o in outs] == feats.feature_info.channels()
        assert [X_SIZE // o.shape[-1] for o in outs] == feats.feature_info.reduction() == [2, 4, 8, 16, 32]
        torch.testing.assert_close(_script(feats)(x), outs, rtol=0, atol=1e-5)
        nodes = {f"stages.{i}.{len(s) - 1}": f"s{i}" for i, s in enumerate(train.stages)}
        for model in (train, deploy):           # the fused form: equal up to float32 fusion rounding
            got = list(create_feature_extractor(model, return_nodes=nodes)(x).values())
            assert max(rel_err(a, b) for a, b in zip(got, outs[1:])) < 1e-5


def test_classifier_reset_pooling_and_intermediates(pair):
    name, train, _ = pair
    model = copy.deepcopy(train)
    x = _x()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["num_classes"] == 7 and {cfg["first_conv"] + ".weight", cfg["classifier"] + ".weight"} <= \
        set(model.state_dict())
    assert model.head_hidden_size == model.num_features == model.feature_info[-1]["num_chs"]
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == model.feature_info.channels()
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == model.feature_info.channels()[-2:]
        early, _ = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert early.shape[1] == model.feature_info[1]["num_chs"]
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).dim() == 4
        model.reset_classifier(5, "max")
        assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    assert repvgg.create_model(name, num_classes=0, global_pool="avgmax")(x).shape == (2, train.num_features)


def test_bad_head_settings_are_refused():
    with pytest.raises(ValueError, match="global_pool"):
        repvgg.create_model("repvgg_a0", global_pool="median")
    with pytest.raises(ValueError, match="feature maps"):
        repvgg.create_model("repvgg_a0", num_classes=10, global_pool="")
    with pytest.raises(ValueError, match="indices"):
        repvgg.create_model("repvgg_a0").forward_intermediates(_x(), indices=[7])


def test_scripted_and_traced_models_keep_the_input_checks():
    model = repvgg.create_model("repvgg_a0", num_classes=3).eval()
    for traced in (_script(model), torch.fx.symbolic_trace(model)):
        with pytest.raises(Exception, match="input channels"):
            traced(torch.randn(1, 1, 32, 32))


def test_prune_intermediate_layers_keeps_a_working_backbone():
    model = repvgg.create_model("repvgg_a0", num_classes=3).eval()
    x = _x()
    with torch.no_grad():
        want = model.forward_intermediates(x, indices=[2], intermediates_only=True)[0]
        model.prune_intermediate_layers(indices=[2])
        assert len(model.stages) == 2 and model.feature_info.channels() == [48, 48, 96]
        torch.testing.assert_close(model.forward_features(x), want, rtol=0, atol=0)
        assert model(x).dim() == 4                           # no head: the last kept feature map
