"""Every block variant of Tables 6-7 (and QARepVGG): builds, trains, has the branches its
description promises, and the convertible ones fuse exactly into THE plain deploy network."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import repvgg
from repvgg.archs import get_arch
from repvgg.blocks import BLOCKS, NotConvertibleError, RepVGGBlock
from repvgg.model import RepVGG
from repvgg.reorg import ResidualReorg
from tests.conftest import randomize_bn_, rel_err

VARIANTS = list(repvgg.list_blocks())
BLOCK_VARIANTS = [v for v in VARIANTS if v in BLOCKS]
PLAIN_CONVERTIBLE = [v for v in BLOCK_VARIANTS if not BLOCKS[v].branch_relu]
TINY = dataclasses.replace(get_arch("repvgg_a0"), a=0.125, b=0.125)  # widths 8, 16, 32, 64; 22 layers


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(variant, **kw):
    cls = ResidualReorg if variant == "residual_reorg" else RepVGG
    return cls(TINY, num_classes=5, in_chans=1, block=variant, small_input=True, **kw)


def test_list_blocks_names_every_variant_of_the_issue_with_a_description():
    expected = {"repvgg", "no_identity", "no_1x1", "plain", "identity_no_bn", "post_bn", "relu_in_branches",
                "dirac", "trivial", "acb", "residual_reorg", "qa"}
    blocks = repvgg.list_blocks()
    assert set(blocks) == expected
    assert all(isinstance(d, str) and len(d) > 20 for d in blocks.values())




@pytest.mark.parametrize("variant", VARIANTS)
def test_builds_and_trains_one_step_with_gradient_in_every_parameter(variant):
    torch.manual_seed(0)
    model = tiny(variant).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    loss = F.cross_entropy(model(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"no gradient reaches {no_grad[:5]}"
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert torch.isfinite(F.cross_entropy(model(x), y))


def bn_places(block: RepVGGBlock) -> set[str]:
    """Names of the block's children (branch.bn or post_bn) that are a real BatchNorm2d."""
    return {n.rsplit(".bn", 1)[0] if n.endswith(".bn") else n
            for n, m in block.named_modules() if isinstance(m, nn.BatchNorm2d)}


# variant -> (branches of a block with in == out and stride 1, the branches/places holding a BN)
EXPECTED = {
    "repvgg": ({"conv3x3", "conv1x1", "identity"}, {"conv3x3", "conv1x1", "identity"}),
    "no_identity": ({"conv3x3", "conv1x1"}, {"conv3x3", "conv1x1"}),
    "no_1x1": ({"conv3x3", "identity"}, {"conv3x3", "identity"}),
    "plain": ({"conv3x3"}, {"conv3x3"}),
    "identity_no_bn": ({"conv3x3", "conv1x1", "identity"}, {"conv3x3", "conv1x1"}),
    "post_bn": ({"conv3x3", "conv1x1", "identity"}, {"post_bn"}),
    "relu_in_branches": ({"conv3x3", "conv1x1", "identity"}, {"conv3x3", "conv1x1", "identity"}),
    "dirac": ({"conv3x3"}, {"conv3x3"}),
    "trivial": ({"conv3x3"}, {"conv3x3"}),
    "acb": ({"conv3x3", "conv3x1", "conv1x3"}, {"conv3x3", "conv3x1", "conv1x3"}),
    "qa": ({"conv3x3", "conv1x1", "identity"}, {"conv3x3", "post_bn"}),
}


@pytest.mark.parametrize("variant", BLOCK_VARIANTS)
def test_block_has_the_documented_branches(variant):
    assert set(EXPECTED) == set(BLOCK_VARIANTS)
    branches, with_bn = EXPECTED[variant]
    block = RepVGGBlock(6, 6, block=variant)
    names = {n for n in ("conv3x3", "conv1x1", "conv3x1", "conv1x3", "identity") if getattr(block, n, None) is not None}
    assert names == branches
    assert bn_places(block) == with_bn
    down = RepVGGBlock(6, 8, stride=2, block=variant)  # no identity where the shape changes
    assert down.identity is None
    if variant == "acb":
        assert block.conv3x1.conv.kernel_size == (3, 1) and block.conv1x3.conv.kernel_size == (1, 3)
    if variant == "post_bn":
        assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 1
    if variant in ("dirac", "trivial"):
        assert block.conv3x3.kernel == variant and block.conv3x3.with_identity
        assert not down.conv3x3.with_identity


def test_trivial_and_dirac_kernels_are_what_the_paper_says():
    block = RepVGGBlock(4, 4, block="trivial").double()
    w = block.conv3x3.conv.weight
    ident = torch.zeros_like(w)
    ident[range(4), range(4), 1, 1] = 1
    assert torch.equal(block.conv3x3.weight(), w + ident)  # W_hat = I + W
    d = RepVGGBlock(4, 4, block="dirac").double().conv3x3
    w_norm = d.conv.weight / d.conv.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    expected = d.dirac_alpha.view(-1, 1, 1, 1) * ident + d.dirac_beta.view(-1, 1, 1, 1) * w_norm
    assert torch.allclose(d.weight(), expected, atol=1e-12)


def test_relu_in_branches_is_refused_with_the_reason():
    with pytest.raises(NotConvertibleError, match="ReLU inside each branch"):
        repvgg.reparameterize(tiny("relu_in_branches"))


@pytest.mark.parametrize("variant", PLAIN_CONVERTIBLE)
def test_deploy_model_is_the_same_plain_network(variant):
    """Same keys and shapes as the default deploy build (a zoo model is checked once below)."""
    fused = repvgg.reparameterize(tiny(variant))
    plain = tiny("repvgg", deploy=True)  # what create_model(..., deploy=True) builds, at a tiny width
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
    assert fused.is_deployed


@pytest.mark.parametrize("variant", PLAIN_CONVERTIBLE + ["residual_reorg"])
def test_whole_model_fuses_exactly_in_float64(variant):
    torch.manual_seed(1)
    model = randomize_bn_(tiny(variant).double()).eval()
    x = torch.randn(2, 1, 20, 20, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(repvgg.reparameterize(model)(x), model(x)) <= 1e-9


def test_zoo_deploy_build_matches_a_fused_variant():
    fused = repvgg.reparameterize(repvgg.create_model("repvgg_a0", num_classes=10, block="acb"))
    plain = repvgg.create_model("repvgg_a0", num_classes=10, deploy=True)
    assert {k: v.shape for k, v in fused.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}
