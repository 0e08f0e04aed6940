"""Bad input gets a clear message that names the problem, never a deep traceback."""
import pytest
import torch

import repvgg
from repvgg.blocks import NotConvertibleError
from repvgg.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from repvgg.convert import convert_checkpoint
from repvgg.cli import main

KW = dict(num_classes=10, small_input=True)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def a0():
    return repvgg.create_model("repvgg_a0", **KW)


@pytest.mark.parametrize("name,close", [("repvgg_a3", "repvgg_a0"), ("RepVGG-B1g5", "repvgg_b1g4"), ("repvgg_d2", "repvgg_d2se")])
def test_unknown_model_name_suggests_close_names(name, close, capsys):
    with pytest.raises(ValueError, match=f"unknown model name.*Did you mean.*{close}"):
        repvgg.create_model(name)
    assert main(["info", name]) == 2
    err = capsys.readouterr().err
    assert "Did you mean" in err and close in err and "Traceback" not in err


def test_wrong_channel_count_and_non_4d_input(a0):
    with pytest.raises(ValueError, match=r"expected 3 input channels .* got 1"):
        a0(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected a 4D input \(N, C, H, W\), got a 3D tensor"):
        a0(torch.randn(3, 32, 32))
    feats = repvgg.create_model("repvgg_a0", deploy=True, features_only=True, **KW)
    with pytest.raises(ValueError, match=r"expected 3 input channels .* got 4"):
        feats(torch.randn(1, 4, 32, 32))


def test_mismatched_checkpoint_lists_first_mismatches_and_the_model_it_looks_like(a0, tmp_path):
    path = save_checkpoint(a0, tmp_path / "a0.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(repvgg.create_model("repvgg_b0", **KW), path)
    msg = str(info.value)
    assert str(path) in msg and "does not fit the model (repvgg_b0)" in msg
    assert "stem.conv3x3.conv.weight: checkpoint (48, 3, 3, 3) vs model (64, 3, 3, 3)" in msg
    assert "missing keys (" in msg and "stages.0.2." in msg  # b0 has 4 blocks in stage 1, a0 has 2
    assert "the checkpoint looks like repvgg_a0 (10 classes, 3 input channels)" in msg
    assert len(msg.splitlines()) <= 6  # first few of each kind, not hundreds of keys


def test_checkpoint_matching_no_zoo_model_says_what_it_is(tmp_path):
    from repvgg.archs import RepVGGArch
    from repvgg.model import RepVGG

    odd = RepVGG(RepVGGArch((1, 1, 1, 1), 0.25, 0.25), num_classes=3)
    path = save_checkpoint(odd, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"matches no zoo model: stem width 16, widths \[16, 32, 64, 128\]"):
        load_checkpoint(repvgg.create_model("repvgg_a0", num_classes=3), path)
    with pytest.raises(CheckpointError, match="no repvgg metadata"):
        repvgg.model_from_checkpoint(path)


@pytest.mark.parametrize("ext", ["pth", "safetensors"])
@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_truncated_or_corrupt_file_is_a_clear_error(a0, tmp_path, ext, damage):
    path = save_checkpoint(a0, tmp_path / f"m.{ext}")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 8, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(a0, path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no deep chained traceback


class _Exploit:
    """Unpickling this would create a file: weights-only loading must refuse instead."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_code_is_never_run(tmp_path):
    witness = tmp_path / "pwned"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": _Exploit(str(witness))}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"\(io.open\): loading them could run code"):
        load_checkpoint(repvgg.create_model("repvgg_a0"), tmp_path / "evil.pth")
    assert not witness.exists()


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(repvgg.create_model("repvgg_a0"), "/nonexistent/x.pth")


def test_convert_of_a_non_linear_block_explains_why(tmp_path, capsys):
    model = repvgg.create_model("repvgg_a0", block="relu_in_branches", **KW)
    src = save_checkpoint(model, tmp_path / "relu.safetensors")
    with pytest.raises(NotConvertibleError, match="ReLU inside each branch.*not a linear map"):
        convert_checkpoint(src, tmp_path / "out.safetensors")
    assert main(["convert", str(src), str(tmp_path / "out.safetensors"), "--verify"]) == 2
    assert "cannot be folded into one conv" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
