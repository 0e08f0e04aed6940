"""Train form == deploy form, the hard way: eval mode, randomized BN, odd channels, groups,
strides, dilation, every block variant that claims to be convertible, and every model in the zoo."""

import pytest
import torch

import repvgg
from repvgg import fusion
from repvgg.blocks import BLOCKS, NotConvertibleError, RepVGGBlock
from tests.conftest import randomize_bn_, rel_err

TOL = {torch.float64: 1e-9, torch.float32: 1e-4}
CONVERTIBLE = [n for n, s in BLOCKS.items() if not s.branch_relu]


def fused_error(module, x):
    module = randomize_bn_(module).eval()
    with torch.no_grad():
        ref = module(x)
        fused = repvgg.reparameterize(module)
        out = fused(x)
    return rel_err(out, ref)


GRID = [
    # in, out, stride, groups, dilation
    (7, 7, 1, 1, 1), (7, 7, 2, 1, 1), (5, 9, 1, 1, 1), (5, 9, 2, 1, 1),
    (8, 8, 1, 2, 1), (8, 8, 1, 4, 1), (12, 8, 2, 4, 1), (6, 6, 1, 2, 2),
    (9, 9, 1, 1, 2), (9, 15, 2, 3, 2), (16, 16, 1, 4, 2),
]


@pytest.mark.parametrize("cin,cout,stride,groups,dilation", GRID)
@pytest.mark.parametrize("se", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_block_grid(cin, cout, stride, groups, dilation, se, dtype):
    block = RepVGGBlock(cin, cout, stride, groups, dilation, se=se).to(dtype)
    assert (block.identity is not None) == (cin == cout and stride == 1)
    x = torch.randn(2, cin, 11, 13, dtype=dtype)
    assert fused_error(block, x) <= TOL[dtype]


@pytest.mark.parametrize("variant", CONVERTIBLE)
@pytest.mark.parametrize("cin,cout,stride,groups,dilation", [(6, 6, 1, 2, 1), (6, 6, 1, 1, 2), (5, 7, 2, 1, 1)])
def test_every_convertible_variant_fuses_exactly(variant, cin, cout, stride, groups, dilation):
    block = RepVGGBlock(cin, cout, stride, groups, dilation, block=variant).double()
    x = torch.randn(2, cin, 10, 10, dtype=torch.float64)
    assert fused_error(block, x) <= 1e-9
    fused = block.fuse()
    assert [n for n, _ in fused.named_children()] == ["fused", "se", "act"]


def test_non_linear_branches_refuse_to_fuse_with_a_reason():
    block = RepVGGBlock(4, 4, block="relu_in_branches")
    with pytest.raises(NotConvertibleError, match="ReLU inside each branch"):
        repvgg.reparameterize(block)
    model = repvgg.create_model("repvgg_a0", num_classes=10, block="relu_in_branches")
    with pytest.raises(NotConvertibleError):
        repvgg.reparameterize(model)


def test_bn_without_running_stats_refuses():
    block = RepVGGBlock(4, 4)
    block.conv3x3.bn = torch.nn.BatchNorm2d(4, track_running_stats=False)
    with pytest.raises(NotConvertibleError, match="running"):
        block.fuse()


@pytest.mark.parametrize("drop", range(3))
def test_dropping_any_branch_is_caught(monkeypatch, drop):
    """A mutation test: if fusion forgot one branch, the equivalence check would fail."""
    real = fusion.add_branches

    def forgetful(branches):
        assert len(branches) == 3
        return real([b for i, b in enumerate(branches) if i != drop])

    monkeypatch.setattr(fusion, "add_branches", forgetful)
    block = RepVGGBlock(6, 6).double()
    assert fused_error(block, torch.randn(2, 6, 8, 8, dtype=torch.float64)) > 1e-3


@pytest.mark.parametrize("name", repvgg.list_models())
def test_every_model_in_the_zoo(name):
    torch.manual_seed(0)
    model = repvgg.create_model(name, num_classes=10, small_input=True)
    x64 = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    assert fused_error(model.double(), x64) <= 1e-9
    assert fused_error(model.float(), x64.float()) <= 1e-4


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_backbone_features_are_identical_after_fusion(output_stride):
    model = repvgg.create_model("repvgg_a0", features_only=True, output_stride=output_stride).double()
    randomize_bn_(model).eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), repvgg.reparameterize(model)(x)
    assert [f.shape[-1] for f in ref][-1] == 64 // output_stride
    for a, b in zip(out, ref):
        assert rel_err(a, b) <= 1e-9


def test_reparameterize_leaves_input_untouched_and_is_idempotent():
    model = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10, small_input=True)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    once = repvgg.reparameterize(model)
    assert model.training and not model.is_deployed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    twice = repvgg.reparameterize(once)
    assert once.is_deployed and not once.training
    sd1, sd2 = once.state_dict(), twice.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)


def test_inplace_converts_the_given_model():
    model = repvgg.create_model("repvgg_a0", num_classes=10)
    out = repvgg.reparameterize(model, inplace=True)
    assert out is model and model.is_deployed


def test_deploy_model_has_the_keys_and_shapes_of_a_converted_one():
    for name in ["repvgg_a0", "repvgg_b1g4", "repvgg_d2se"]:
        converted = repvgg.reparameterize(repvgg.create_model(name, num_classes=10)).state_dict()
        built = repvgg.create_model(name, num_classes=10, deploy=True).state_dict()
        assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in built.items()}


def test_reparameterize_any_module_tree():
    """A user's model that merely contains our blocks (a detector head on our backbone)."""
    class Detector(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = repvgg.create_model("repvgg_a0", features_only=True, out_indices=(2, 3))
            self.neck = torch.nn.ModuleList([RepVGGBlock(96, 96), RepVGGBlock(192, 192, groups=4)])
            self.out = torch.nn.Conv2d(96, 5, 1)

        def forward(self, x):
            a, b = self.backbone(x)
            return self.out(self.neck[0](a)), self.neck[1](b)

    det = randomize_bn_(Detector().double()).eval()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ref, out = det(x), repvgg.reparameterize(det)(x)
    assert all(rel_err(o, r) <= 1e-9 for o, r in zip(out, ref))
    fused = repvgg.reparameterize(det)
    assert all(m.deploy for m in fused.modules() if isinstance(m, RepVGGBlock))


def test_se_is_in_the_same_place_in_both_forms():
    block = randomize_bn_(RepVGGBlock(8, 8, se=True).double()).eval()
    fused = block.fuse()
    assert fused.se is block.se  # moved, not rebuilt: the SE applies after the (fused) conv sum
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    assert rel_err(fused(x), block(x)) <= 1e-9
