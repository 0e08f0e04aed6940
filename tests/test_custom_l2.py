"""--custom-l2: decay on the equivalent fused kernel (identity branch included), checked explicitly."""
import pytest
import torch

import repvgg
from repvgg.blocks import RepVGGBlock
from repvgg.train.custom_l2 import covered_kernels, custom_l2, custom_l2_blocks
from repvgg.train.optim import param_groups
from tests.conftest import randomize_bn_


def _explicit(block: RepVGGBlock) -> torch.Tensor:
    """Outer taps of the 3x3 kernel, plus the fused kernel's centre tap (fusion's own arithmetic, biases
    aside) divided by the sum of the squared BN scales of the branches that reach that tap."""
    k3 = block.conv3x3.conv.weight
    fused, _ = block.fused_kernel_bias()
    outer = k3.square().sum() - k3[:, :, 1, 1].square().sum()
    norm = torch.zeros_like(fused[:, :, 1, 1])
    per_group = block.in_channels // block.groups
    for branch in (block.conv3x3, block.conv1x1):
        bn = branch.bn
        norm += ((bn.weight / (bn.running_var + bn.eps).sqrt()) ** 2)[:, None]
    if block.identity is not None:
        bn = block.identity.bn
        t = (bn.weight / (bn.running_var + bn.eps).sqrt()) ** 2
        for i in range(block.out_channels):
            norm[i, i % per_group] += t[i]
    return outer + (fused[:, :, 1, 1].square() / norm).sum()


@pytest.mark.parametrize("cin, cout, stride, groups", [(6, 6, 1, 1), (6, 6, 1, 3), (4, 8, 2, 2), (5, 5, 2, 1)])
def test_custom_l2_is_the_decay_of_the_fused_kernel(cin, cout, stride, groups):
    block = randomize_bn_(RepVGGBlock(cin, cout, stride, groups).double())
    for bn in (block.conv3x3.bn, block.conv1x1.bn) + ((block.identity.bn,) if block.identity else ()):
        bn.eps = 0.01
    value = custom_l2([block])
    assert (block.identity is not None) == (cin == cout and stride == 1)
    torch.testing.assert_close(value, _explicit(block), rtol=1e-12, atol=0)
    value.backward()
    assert block.conv3x3.conv.weight.grad is not None and block.conv1x1.conv.weight.grad is not None
    assert block.conv3x3.bn.weight.grad is None            # the BN scales are constants here, as officially


def test_without_identity_it_is_the_official_term():
    block = randomize_bn_(RepVGGBlock(4, 8, 2).double())
    k3, k1 = block.conv3x3.conv.weight, block.conv1x1.conv.weight
    t3 = (block.conv3x3.bn.weight / (block.conv3x3.bn.running_var + 1e-5).sqrt()).reshape(-1, 1, 1, 1)
    t1 = (block.conv1x1.bn.weight / (block.conv1x1.bn.running_var + 1e-5).sqrt()).reshape(-1, 1, 1, 1)
    official = (k3 ** 2).sum() - (k3[:, :, 1:2, 1:2] ** 2).sum() + \
        ((k3[:, :, 1:2, 1:2] * t3 + k1 * t1) ** 2 / (t3 ** 2 + t1 ** 2)).sum()   # get_custom_L2, verbatim
    torch.testing.assert_close(custom_l2([block]), official, rtol=1e-12, atol=0)


def test_covered_kernels_leave_the_decay_group_and_training_runs(tmp_path):
    from repvgg.train import prepare_run, train
    from tests.test_train import make_tiny_fmnist, tiny_overrides

    model = repvgg.create_model("repvgg_a0", num_classes=10, width=0.25)
    blocks = custom_l2_blocks(model)
    assert len(blocks) == 22
    groups = param_groups(model, 1e-4, covered_kernels(blocks))
    decayed = {id(p) for p in groups[0]["params"]}
    assert not decayed & covered_kernels(blocks) and id(model.head.fc.weight) in decayed
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))   # nothing dropped
    assert custom_l2_blocks(repvgg.create_model("repvgg_a0", block="plain", width=0.25)) != []
    data = make_tiny_fmnist(tmp_path / "data", n_train=96, n_test=32)
    out = tmp_path / "run"
    train(prepare_run(out, "small", tiny_overrides(data, epochs=1, custom_l2=True)), out, quiet=True)
    assert (out / "deploy.safetensors").is_file()
    with pytest.raises(ValueError, match="custom-l2"):
        train(prepare_run(tmp_path / "r2", "small", tiny_overrides(data, epochs=1, custom_l2=True,
                                                                   block="post_bn")), tmp_path / "r2", quiet=True)
