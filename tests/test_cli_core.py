"""`repvgg list`, `repvgg info`, `repvgg convert` through the CLI entry point and the console script."""
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

import repvgg
from repvgg import checkpoint as ckpt
from repvgg import convert
from repvgg.cli import main
from tests.conftest import randomize_bn_, rel_err

KW = dict(num_classes=10)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = randomize_bn_(repvgg.create_model("repvgg_a0", **KW)).eval()
    path = ckpt.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "a0_train.pth")
    return model, path


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in repvgg.list_models()) and len(out.splitlines()) == 15
    assert main(["list", "b1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == \
        ["repvgg_b1", "repvgg_b1g2", "repvgg_b1g4"]
    assert main(["list", "*g4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    assert main(["list", "nothing"]) == 1


def test_info_prints_params_and_macs_of_both_forms(capsys):
    assert main(["info", "RepVGG-A0"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    # counted by torch's FlopCounterMode; the mmcls table says 9.11 M / 8.31 M params, 1.36 GFLOPs deploy
    assert rows["train"] == ["9.109", "1.513"] and rows["deploy"] == ["8.309", "1.361"]
    assert main(["info", "repvgg_a0", "--image-size", "32", "--num-classes", "10", "--small-input"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert float(rows["deploy"][0]) < 8.309 and float(rows["deploy"][1]) < 1.361 / 10


def test_convert_verify_writes_a_strict_deploy_checkpoint(train_ckpt, tmp_path, capsys):
    model, src = train_ckpt
    dst = tmp_path / "a0_deploy.safetensors"
    assert main(["convert", str(src), str(dst), "--verify", "--verify-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "verify float64: max abs error" in out and "verify float32: max abs error" in out and "FAIL" not in out
    deploy = repvgg.create_model("repvgg_a0", deploy=True, **KW)
    deploy.load_state_dict(load_file(dst), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(deploy.eval()(x), model(x)) < 1e-5


def test_convert_a_foreign_file_with_model_name_and_format(train_ckpt, tmp_path, capsys):
    model, _ = train_ckpt
    timm_sd = {k.replace("conv3x3.", "conv_kxk.").replace("conv1x1.", "conv_1x1.").replace("identity.bn.", "identity."): v
               for k, v in model.state_dict().items()}
    src = tmp_path / "timm.pth"
    torch.save(timm_sd, src)  # no metadata: --model names it (the shapes would also say repvgg_a0)
    dst = tmp_path / "deploy.bin"
    assert main(["convert", str(src), str(dst), "--model", "RepVGG-A0", "--format", "pth"]) == 0
    assert "timm naming" in capsys.readouterr().out
    obj = torch.load(dst, weights_only=True)
    assert set(obj["state_dict"]) == set(repvgg.create_model("repvgg_a0", deploy=True, **KW).state_dict())
    assert obj["metadata"]["source_naming"] == "timm"


def test_convert_fails_above_tolerance_and_writes_nothing(train_ckpt, tmp_path, monkeypatch, capsys):
    _, src = train_ckpt
    dst = tmp_path / "out.safetensors"
    dst.write_bytes(b"older file")
    monkeypatch.setitem(convert.TOLERANCE, torch.float32, -1.0)  # no error can pass
    assert main(["convert", str(src), str(dst), "--verify", "--verify-size", "16", "--force"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "not written" in captured.err
    assert dst.read_bytes() == b"older file"  # never clobbered, and no temp file left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_console_script_runs():
    exe = shutil.which("repvgg")
    if exe is None:
        pytest.skip("repvgg console script not installed (pip install -e .)")
    proc = subprocess.run([exe, "info", "repvgg_b1g4"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "deploy" in proc.stdout and "36.125" in proc.stdout  # mmcls table: 36.13 M deploy params
    proc = subprocess.run([exe, "convert", "/nonexistent.pth", "out.safetensors"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr
