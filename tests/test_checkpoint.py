"""Checkpoints: round trips in both formats, fuse-on-load, convert, atomic writes, wrappers."""
import argparse
import os

import pytest
import torch
from safetensors.torch import load_file

import repvgg
from repvgg import checkpoint as ckpt
from repvgg.checkpoint import CheckpointError, load_checkpoint, read_metadata, save_checkpoint
from repvgg.convert import convert_checkpoint
from tests.conftest import randomize_bn_, rel_err

KW = dict(num_classes=10, small_input=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained():
    """A train-time a0 with random weights and BN statistics, in eval mode, and an input."""
    torch.manual_seed(0)
    model = randomize_bn_(repvgg.create_model("repvgg_a0", **KW)).eval()
    return model, torch.randn(2, 3, 16, 16)


def out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def blank():
    """A target to load into: every load overwrites all of its weights, so tests can share it."""
    return repvgg.create_model("repvgg_a0", **KW)


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_round_trip_gives_identical_outputs(trained, blank, tmp_path, ext):
    model, x = trained
    path = save_checkpoint(model, tmp_path / f"m.{ext}")
    loaded = load_checkpoint(blank, path)
    assert torch.equal(out(loaded, x), out(model, x))
    meta = read_metadata(path)
    assert meta["format"] == "repvgg" and meta["deployed"] is False and meta["repvgg_version"] == repvgg.__version__
    assert meta["build_args"] == {"name": "repvgg_a0", "num_classes": 10, "in_chans": 3, "small_input": True}
    rebuilt = repvgg.model_from_checkpoint(path)
    assert rebuilt.build_args == model.build_args
    assert torch.equal(out(rebuilt, x), out(model, x))


def test_pth_loads_with_plain_torch_weights_only(trained, tmp_path):
    model, _ = trained
    obj = torch.load(save_checkpoint(model, tmp_path / "m.pth"), weights_only=True)
    repvgg.create_model("repvgg_a0", **KW).load_state_dict(obj["state_dict"], strict=True)


def test_train_checkpoint_is_fused_on_the_way_into_a_deploy_model(trained, tmp_path):
    model, x = trained
    path = save_checkpoint(model, tmp_path / "train.safetensors")
    deploy = repvgg.create_model("repvgg_a0", deploy=True, checkpoint=path, **KW)
    assert deploy.is_deployed
    assert rel_err(out(deploy, x), out(model, x)) < 1e-5
    again = repvgg.model_from_checkpoint(path, deploy=True)
    assert again.is_deployed and rel_err(out(again, x), out(model, x)) < 1e-5


def test_converted_checkpoint_loads_strictly_into_a_deploy_model(trained, tmp_path):
    model, x = trained
    src = save_checkpoint(model, tmp_path / "train.pth")
    report = convert_checkpoint(src, tmp_path / "deploy.safetensors", verify=True, image_size=16)
    assert report["ok"] and report["errors"]["float64"][1] < 1e-9 and report["errors"]["float32"][1] < 1e-4
    deploy = repvgg.create_model("repvgg_a0", deploy=True, **KW)
    deploy.load_state_dict(load_file(tmp_path / "deploy.safetensors"), strict=True)  # plain torch, strict
    assert rel_err(out(deploy, x), out(model, x)) < 1e-5
    meta = read_metadata(tmp_path / "deploy.safetensors")
    assert meta["deployed"] is True and meta["build_args"]["name"] == "repvgg_a0"
    assert repvgg.model_from_checkpoint(tmp_path / "deploy.safetensors").is_deployed


def test_deploy_checkpoint_into_train_model_is_refused(trained, blank, tmp_path):
    model, _ = trained
    path = save_checkpoint(repvgg.reparameterize(model), tmp_path / "deploy.safetensors")
    with pytest.raises(CheckpointError, match="cannot be split back into branches"):
        load_checkpoint(blank, path)


@pytest.mark.parametrize("ext", ["safetensors", "pth"])
def test_failed_write_keeps_the_old_file_and_leaves_no_partial_file(trained, tmp_path, monkeypatch, ext):
    model, _ = trained
    path = tmp_path / f"m.{ext}"
    path.write_bytes(b"the previous checkpoint")

    def crash(obj, dst, *args, **kwargs):
        with open(dst, "wb") as f:
            f.write(b"half a checkp")
        raise OSError("disk full")

    if ext == "safetensors":
        monkeypatch.setattr(ckpt, "save_file", crash)
    else:
        monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, path)
    assert path.read_bytes() == b"the previous checkpoint"
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("wrap", [
    lambda sd: {"state_dict": sd, "epoch": 3, "meta": {"note": "x"}},
    lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 0.1}},
    lambda sd: {"state_dict_ema": sd, "arch": "repvgg_a0", "args": argparse.Namespace(lr=0.1)},  # timm train.py
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
])
def test_wrappers_and_prefixes_are_unwrapped(trained, blank, tmp_path, wrap):
    model, x = trained
    torch.save(wrap(model.state_dict()), tmp_path / "w.pt")
    loaded = load_checkpoint(blank, tmp_path / "w.pt")
    assert torch.equal(out(loaded, x), out(model, x))


def test_backbone_takes_a_classifier_checkpoint(trained, tmp_path):
    model, x = trained
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    feats = repvgg.create_model("repvgg_a0", features_only=True, checkpoint=path, **KW).eval()
    with torch.no_grad():
        assert torch.equal(feats(x)[-1], model.forward_features(x))


def test_strict_false_tolerates_missing_keys_but_not_wrong_shapes(trained, tmp_path):
    model, x = trained
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    torch.save(sd, tmp_path / "nohead.pth")
    target = repvgg.create_model("repvgg_a0", **KW)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(target, tmp_path / "nohead.pth")
    load_checkpoint(target, tmp_path / "nohead.pth", strict=False)
    with torch.no_grad():
        assert torch.equal(target.eval().forward_features(x), model.forward_features(x))
    path = save_checkpoint(model, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(repvgg.create_model("repvgg_a0", num_classes=7, small_input=True), path, strict=False)


def test_pretrained_loads_from_the_cache_offline(trained, tmp_path, monkeypatch):
    """A file already in REPVGG_CACHE is used, never downloaded; another num_classes drops the head."""
    from repvgg import hub

    model, x = trained
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: calls.append(a))
    # the published file is a train-time mmcls checkpoint: {"meta": ..., "state_dict": backbone.* / head.fc.*}
    mm = {("head." + k[5:] if k.startswith("head.") else "backbone." + _to_mm(k)): v
          for k, v in model.state_dict().items()}
    torch.save({"meta": {"epoch": 120}, "state_dict": mm}, tmp_path / hub.PRETRAINED_FILES["repvgg_a0"])
    loaded = repvgg.create_model("repvgg_a0", pretrained=True, **KW)
    assert torch.equal(out(loaded, x), out(model, x))
    fused = repvgg.create_model("repvgg_a0", pretrained=True, deploy=True, **KW)
    assert rel_err(out(fused, x), out(model, x)) < 1e-5
    with pytest.warns(UserWarning, match="backbone only"):
        other = repvgg.create_model("repvgg_a0", pretrained=True, num_classes=3, small_input=True)
    with torch.no_grad():
        assert torch.equal(other.eval().forward_features(x), model.forward_features(x))
    assert calls == []


def test_pretrained_downloads_with_the_hash_prefix_of_the_file_name(tmp_path, monkeypatch):
    from repvgg import hub

    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path))
    seen = {}

    def fake_download(url, dst, hash_prefix=None, progress=True):
        seen.update(url=url, hash_prefix=hash_prefix)
        raise ConnectionError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(RuntimeError, match="To work offline, put the file at"):
        hub.pretrained_path("repvgg_b1g4")
    assert seen["url"].startswith("https://download.openmmlab.com/mmclassification/v0/repvgg/repvgg-B1g4_")
    assert seen["hash_prefix"] == "d4c1a642"
    with pytest.raises(ValueError, match="no pretrained weights are published for repvgg_b2g2"):
        repvgg.create_model("repvgg_b2g2", pretrained=True)


def _to_mm(key):
    """Our key -> mmpretrain key (stage_N numbering from 1, conv+norm, branch_norm)."""
    parts = key.split(".")
    if parts[0] == "stages":
        parts = [f"stage_{int(parts[1]) + 1}"] + parts[2:]
    key = ".".join(parts)
    for a, b in (("conv3x3.bn.", "branch_3x3.norm."), ("conv1x1.bn.", "branch_1x1.norm."),
                 ("conv3x3.", "branch_3x3."), ("conv1x1.", "branch_1x1."), ("identity.bn.", "branch_norm.")):
        key = key.replace(a, b)
    return key
