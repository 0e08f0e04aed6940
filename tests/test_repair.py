"""Repairing a pruned plain model without gradients: per-channel recalibration, least-squares refit."""
import copy

import pytest
import torch
import torch.nn.functional as F

import repvgg
from repvgg.cli import main
from repvgg.checkpoint import save_checkpoint
from repvgg.deploy.common import load_model
from repvgg.deploy.prune import plain_layers, prune_model
from repvgg.deploy.repair import recalibrate, reconstruct, repair
from tests.test_export import tiny


def quiet(_):
    pass


def pruned_pair(groups=1, ratio=0.5):
    original = repvgg.reparameterize(tiny(groups=groups)).double()
    return original, prune_model(original, ratio, multiple_of=1, log=quiet).model


def layer_outputs(pruned, original, x):
    """(pruned input, pruned pre-activation, unpruned pre-activation of the kept channels) per layer."""
    out, h_p, h_o = [], x, x
    with torch.no_grad():
        for bp, bo in zip(plain_layers(pruned), plain_layers(original)):
            z_o = bo.fused(h_o)
            keep = getattr(bp, "kept_channels", None)          # absent where pruning left a layer alone
            out.append((h_p, bp.fused(h_p), z_o if keep is None else z_o[:, keep]))
            h_p, h_o = bp(h_p), bo(h_o)
    return out


def test_recalibrate_matches_kept_channel_statistics():
    original, pruned = pruned_pair()
    x = torch.randn(64, 3, 16, 16, dtype=torch.float64)
    recalibrate(pruned, original, x)
    for _, z_p, z_o in layer_outputs(pruned, original, x):
        torch.testing.assert_close(z_p.mean((0, 2, 3)), z_o.mean((0, 2, 3)), rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(z_p.std((0, 2, 3)), z_o.std((0, 2, 3)), rtol=1e-6, atol=1e-8)


def test_reconstruct_solves_the_least_squares_problem_of_every_layer():
    """Normal equations: with no ridge, each layer's residual is orthogonal to its input patches
    (and to the constant, for the bias). A wrong patch/kernel layout (stride 2 layers, odd widths)
    would leave a residual correlated with the inputs."""
    original, pruned = pruned_pair(ratio=0.3)
    x = torch.randn(48, 3, 16, 16, dtype=torch.float64)
    reconstruct(pruned, original, x, ridge=0.0)
    layers = plain_layers(pruned)
    assert {b.fused.stride[0] for b in layers} == {1, 2} and any(b.out_channels % 2 for b in layers)
    for block, (h_p, z_p, z_o) in zip(layers, layer_outputs(pruned, original, x)):
        conv = block.fused
        cols = F.unfold(h_p, conv.kernel_size, conv.dilation, conv.padding, conv.stride)   # [N, K, L]
        resid = (z_p - z_o).flatten(2)                                                     # [N, C, L]
        assert torch.einsum("nkl,ncl->kc", cols, resid).abs().max() < 1e-7 * cols.abs().sum()
        assert resid.sum((0, 2)).abs().max() < 1e-7 * z_o.abs().sum()


def test_reconstruct_is_exact_when_the_removed_filters_were_dead():
    original = repvgg.reparameterize(tiny()).double()
    with torch.no_grad():
        for block in plain_layers(original):
            c = block.fused.out_channels
            block.fused.weight[c // 2:] = 0
            block.fused.bias[c // 2:] = -1.0
            block.fused.weight[: c // 2] += 0.01
    pruned = prune_model(original, 0.5, multiple_of=1, log=quiet).model
    x = torch.randn(64, 3, 16, 16, dtype=torch.float64)
    reconstruct(pruned, original, x, ridge=0.0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), original(x), rtol=1e-8, atol=1e-8)


def test_reconstruct_tracks_the_unpruned_logits_better_than_recalibration():
    original, pruned = pruned_pair()
    x = torch.randn(256, 3, 16, 16, dtype=torch.float64)
    held_out = torch.randn(256, 3, 16, 16, dtype=torch.float64)
    rec, cal = copy.deepcopy(pruned), pruned
    reconstruct(rec, original, x)
    recalibrate(cal, original, x)
    with torch.no_grad():
        err = {k: F.mse_loss(m(held_out), original(held_out)).item() for k, m in (("rec", rec), ("cal", cal))}
    assert err["rec"] < 0.5 * err["cal"], err


def test_grouped_convs_get_the_per_channel_correction():
    original, pruned = pruned_pair(groups=2)
    x = torch.randn(64, 3, 16, 16, dtype=torch.float64)
    reconstruct(pruned, original, x)
    for block, (_, z_p, z_o) in zip(plain_layers(pruned), layer_outputs(pruned, original, x)):
        if block.fused.groups != 1:
            torch.testing.assert_close(z_p.mean((0, 2, 3)), z_o.mean((0, 2, 3)), rtol=1e-6, atol=1e-8)


def test_repair_refuses_unknown_method_and_missing_images():
    original, pruned = pruned_pair()
    with pytest.raises(ValueError, match="unknown repair 'magic'.*reconstruct, recalibrate"):
        repair(pruned, original, torch.randn(4, 3, 16, 16, dtype=torch.float64), "magic")
    with pytest.raises(ValueError, match="needs calibration images"):
        repair(pruned, original, torch.randn(0, 3, 16, 16, dtype=torch.float64))


@pytest.mark.parametrize("method", ["reconstruct", "recalibrate"])
def test_cli_prune_repairs_on_real_images(tmp_path, capsys, method):
    ckpt = tmp_path / "a0.safetensors"
    save_checkpoint(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True, width=0.25), ckpt)
    out = tmp_path / "pruned.safetensors"
    rc = main(["prune", "--checkpoint", str(ckpt), "--ratio", "0.3", "--out", str(out), "--data",
               "fashion-mnist-builtin", "--repair", method, "--calib-images", "64", "--eval-images", "200"])
    text = capsys.readouterr().out
    assert rc == 0 and f"top-1 % after {method} (64 img)" in text
    assert load_model(out, log=quiet).num_features == plain_layers(load_model(out, log=quiet))[-1].out_channels


def test_reconstruct_does_not_depend_on_how_the_patches_are_chunked():
    original, pruned = pruned_pair(ratio=0.3)
    other = copy.deepcopy(pruned)
    x = torch.randn(32, 3, 16, 16, dtype=torch.float64)
    reconstruct(pruned, original, x)                       # all images in one block
    reconstruct(other, original, x, chunk_elements=1)      # one image at a time
    for (k, a), b in zip(pruned.state_dict().items(), other.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=k)
