"""Pruning the plain model: L1 picks the filters, the pruned model round-trips, bad input is refused."""
import pytest
import torch

import repvgg
from repvgg.checkpoint import save_checkpoint
from repvgg.cli import main
from repvgg.data import InMemoryDataset
from repvgg.deploy.common import load_model
from repvgg.deploy.finetune import finetune
from repvgg.deploy.prune import load_pruned, plain_layers, prune_model, save_pruned
from tests.test_export import tiny


def quiet(_):
    pass


def _half_dead_model():
    """A fused tiny model whose second half of filters in every layer always outputs 0 after ReLU."""
    model = repvgg.reparameterize(tiny())
    with torch.no_grad():
        for block in plain_layers(model):
            c = block.fused.out_channels
            dead = torch.arange(c // 2, c)  # the second half: zero kernel, negative bias
            block.fused.weight[dead] = 0
            block.fused.bias[dead] = -1.0
            block.fused.weight[: c // 2] += 0.01  # keep the live half clearly above in L1
    return model


def test_dead_filters_are_removed_exactly():
    """Filters that always output 0 after ReLU carry nothing: L1 pruning must pick exactly them,
    and the pruned model must compute the same logits."""
    model = _half_dead_model()
    result = prune_model(model, 0.5, multiple_of=1, log=quiet)
    assert result.widths == [b.out_channels // 2 for b in plain_layers(model)]
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [{}, dict(width=0.5, depths=(1, 2, 4, 1))])
def test_pruned_model_is_smaller_and_round_trips(tmp_path, shape):
    model = repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True, deploy=True,
                                **shape).eval()
    result = prune_model(model, 0.3, log=quiet)
    p0 = sum(p.numel() for p in model.parameters())
    p1 = sum(p.numel() for p in result.model.parameters())
    assert 0.4 * p0 < p1 < 0.6 * p0  # in and out channels both shrink by ~30%
    assert all(w % 8 == 0 for w in result.widths) and result.skipped == []
    path = save_pruned(result, tmp_path / "pruned.safetensors")
    for loaded in (load_pruned(path), load_model(path, log=quiet), repvgg.model_from_checkpoint(path)):
        assert [b.out_channels for b in plain_layers(loaded)] == result.widths
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            assert torch.equal(loaded.eval()(x), result.model(x))


def test_files_with_only_per_layer_widths_still_load(tmp_path):
    """Pruned files written before build_args recorded ``channels`` carry per-layer pruned_widths."""
    model = repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True, deploy=True).eval()
    result = prune_model(model, 0.3, log=quiet)
    old_meta = {"build_args": dict(model.build_args), "pruned_widths": result.widths}   # no channels
    path = repvgg.save_checkpoint(result.model.state_dict(), tmp_path / "old.safetensors", metadata=old_meta)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_pruned(path)(x), result.model(x))


def test_se_model_prunes_its_se_at_the_same_ratio_and_reloads(tmp_path):
    model = repvgg.create_model("repvgg_d2se", num_classes=4, channels=[16, 32, 32, 64, 64], small_input=True,
                                deploy=True).eval()
    result = prune_model(model, 0.5, log=quiet)
    se = result.model.stages[3][0].se
    assert se.reduce.in_channels == 32 and se.reduce.out_channels == 32 // 16
    path = save_pruned(result, tmp_path / "se.safetensors")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(repvgg.model_from_checkpoint(path).eval()(x), result.model(x))


def test_stage_blocks_keep_one_channel_set():
    """Identity branches make a stage one residual stream: all its blocks keep the same channels."""
    model = repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True, deploy=True).eval()
    pruned = prune_model(model, 0.3, log=quiet).model
    for stage in pruned.stages:
        kept = [b.kept_channels.tolist() for b in stage]
        assert all(k == kept[0] for k in kept)


def test_grouped_layers_are_left_alone_with_a_message():
    model = repvgg.reparameterize(tiny(groups=2))
    msgs = []
    result = prune_model(model, 0.5, multiple_of=1, log=msgs.append)
    groups = [b.fused.groups for b in plain_layers(model)]
    assert groups == [1, 1, 2, 1, 2]
    # stem feeds layer 1 (ungrouped): pruned; layers 1-4 are grouped or feed a grouped conv
    assert result.widths[0] == 8 and result.widths[1:] == [b.out_channels for b in plain_layers(model)][1:]
    assert len(msgs) == 4 and all("grouped" in m and "left alone" in m for m in msgs)
    with torch.no_grad():
        assert result.model(torch.randn(1, 3, 16, 16)).shape == (1, 5)


@pytest.mark.parametrize("ratio", [0, 1, -0.2, 1.5])
def test_ratio_outside_open_interval(ratio):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        prune_model(repvgg.reparameterize(tiny()), ratio)


def test_prune_needs_fused_model():
    with pytest.raises(ValueError, match="fused"):
        prune_model(tiny(), 0.3)


def _brightness_set(n: int, classes: int, step: int) -> InMemoryDataset:
    """``n`` 16x16 RGB images whose class is their (uniform) brightness: 20 + step * class."""
    labels = torch.arange(n) % classes
    images = (labels * step + 20).to(torch.uint8).view(-1, 1, 1, 1).expand(n, 3, 16, 16).contiguous()
    return InMemoryDataset(images, labels, list("abcdefgh"[:classes]), mean=(0.5,) * 3, std=(0.25,) * 3, train=True,
                           recipe_aug="none")


def test_finetune_reduces_loss_on_a_small_set():
    ds = _brightness_set(64, 5, 50)
    torch.manual_seed(0)  # the random model: some draws (seed 2) start dead and stay at chance (loss ln 5)
    model = prune_model(repvgg.reparameterize(tiny()), 0.5, multiple_of=1, log=quiet).model
    losses = []
    # seed 0: the loss falls 1.65 -> 0.83-0.85 in fp32 and in bf16 alike; lr 0.1, 8 epochs: the loss falls by 0.6-0.7 in fp32 and in bf16 (lr 0.05: by 0.3-0.5, too close
    # to the bar once the CPU probe's choice of bf16 or fp32 moves the rounding)
    finetune(model, ds, 8, lr=0.1, batch_size=16, log=losses.append)
    values = [float(s.split("loss ")[1]) for s in losses if s.startswith("finetune epoch")]
    # + the precision picked, + on CPUs without AVX-512 the oneDNN note (repvgg/cpu_backend.py)
    assert all(s.startswith(("finetune epoch", "fine-tuning in", "CPU ")) for s in losses)
    assert len(values) == 8 and values[-1] < values[0] - 0.3


def test_cli_prune_fuses_and_writes_a_loadable_model(tmp_path, capsys):
    ckpt = tmp_path / "a0_train.safetensors"
    save_checkpoint(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True), ckpt)
    out = tmp_path / "a0_pruned.safetensors"
    rc = main(["prune", "--checkpoint", str(ckpt), "--ratio", "0.3", "--out", str(out), "--image-size", "16",
               "--batch-size", "8"])
    text = capsys.readouterr().out
    assert rc == 0 and "train-time checkpoint" in text and "re-parameterized" in text
    assert "params" in text and "MACs" in text and "speed-up" in text
    assert plain_layers(load_model(out, log=quiet))[0].out_channels == 32


@pytest.mark.parametrize("argv,message", [
    (["--ratio", "1.0"], "strictly between 0 and 1"),
    (["--ratio", "0.3", "--finetune-epochs", "1"], "needs --data"),
    (["--ratio", "0.3", "--multiple-of", "0"], "--multiple-of must be a positive integer"),
    (["--ratio", "0.3", "--feature-weight", "1"], "needs --distill"),
])
def test_cli_prune_bad_input(tmp_path, capsys, argv, message):
    out = tmp_path / "p.safetensors"
    rc = main(["prune", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(out), *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_finetune_refuses_a_distill_weight_outside_0_1():
    model = prune_model(repvgg.reparameterize(tiny()), 0.5, multiple_of=1, log=quiet).model
    with pytest.raises(ValueError, match="distill_weight must be in"):
        finetune(model, None, 1, teacher=model, distill_weight=1.5)


def test_finetune_ends_on_the_ema_of_its_weights(monkeypatch):
    """ema_decay ~0 averages nothing (= the last weights); 0.9 ends elsewhere; bad decays are refused."""
    import copy

    import repvgg.deploy.finetune as ft

    monkeypatch.setattr(ft, "_bf16_is_faster", lambda *a: False)   # same precision in every run
    ds = _brightness_set(32, 4, 60)
    torch.manual_seed(0)
    start = prune_model(repvgg.reparameterize(tiny()), 0.5, multiple_of=1, log=quiet).model
    runs = {d: finetune(copy.deepcopy(start), ds, 2, lr=0.05, batch_size=8, ema_decay=d, log=quiet)
            for d in (None, 1e-12, 0.9)}
    for (k, last), tiny_ema, ema in zip(runs[None].state_dict().items(), runs[1e-12].state_dict().values(),
                                        runs[0.9].state_dict().values()):
        torch.testing.assert_close(tiny_ema, last, rtol=1e-6, atol=1e-7, msg=k)
    assert any(not torch.allclose(a, b) for a, b in zip(runs[None].parameters(), runs[0.9].parameters()))
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="ema_decay must be in"):
            finetune(copy.deepcopy(start), ds, 1, ema_decay=bad)


def test_feature_loss_compares_each_layer_with_the_teachers_kept_channels():
    """Pruning dead filters changes no kept channel: the feature loss is 0 (up to rounding); a
    perturbed layer makes it positive; the hooks are gone afterwards."""
    from repvgg.deploy.finetune import _record_layer_outputs, feature_loss

    teacher = _half_dead_model()
    student = prune_model(teacher, 0.5, multiple_of=1, log=quiet).model
    (s_feats, t_feats), hooks = _record_layer_outputs(student, teacher)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        student(x), teacher(x)
        assert len(s_feats) == len(t_feats) == len(plain_layers(teacher))
        assert float(feature_loss(s_feats, t_feats)) < 1e-10
        for f in (s_feats, t_feats):
            f.clear()
        plain_layers(student)[2].fused.bias.add_(0.5)
        student(x), teacher(x)
        assert float(feature_loss(s_feats, t_feats)) > 1e-3
    for h in hooks:
        h.remove()


def test_finetune_with_feature_distillation_trains_and_leaves_no_hooks(monkeypatch):
    import repvgg.deploy.finetune as ft

    monkeypatch.setattr(ft, "_bf16_is_faster", lambda *a: False)
    ds = _brightness_set(32, 4, 60)
    torch.manual_seed(0)
    teacher = repvgg.reparameterize(tiny())
    student = prune_model(teacher, 0.5, multiple_of=1, log=quiet).model
    losses = []
    finetune(student, ds, 2, lr=0.05, batch_size=8, teacher=teacher, feature_weight=1.0, log=losses.append)
    assert len([s for s in losses if s.startswith("finetune epoch")]) == 2
    for m in [*student.modules(), *teacher.modules()]:
        assert not m._forward_hooks, m
    with pytest.raises(ValueError, match="feature_weight must be >= 0 and needs a teacher"):
        finetune(student, ds, 1, feature_weight=1.0)
