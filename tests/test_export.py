"""Export: the ONNX graph of a deploy RepVGG is plain, every format equals PyTorch, and bad input
fails clearly without leaving a file behind."""
from collections import Counter

import onnx
import onnxruntime as ort
import pytest
import torch

import repvgg
from repvgg.archs import RepVGGArch
from repvgg.checkpoint import save_checkpoint
from repvgg.cli import main
from repvgg.deploy.export import PLAIN_OPS, SE_OPS, ExportCheckError, export_model
from repvgg.model import RepVGG
from tests.conftest import randomize_bn_, rel_err


def tiny(se=False, groups=1, block="repvgg"):
    """A 5-layer RepVGG (SE / groups optional) that exports in a couple of seconds."""
    arch = RepVGGArch((1, 1, 1, 1), 0.25, 0.25, groups=groups, se=se)
    return randomize_bn_(RepVGG(arch, num_classes=5, in_chans=3, small_input=True, block=block)).eval()


def ops_of(path):
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("se,groups,block", [(False, 1, "repvgg"), (True, 2, "repvgg"), (False, 1, "qa")])
def test_onnx_graph_is_plain_and_matches(tmp_path, se, groups, block):
    train = tiny(se, groups, block)
    model = repvgg.reparameterize(train)
    out = tmp_path / "m.onnx"
    report = export_model(model, out, "onnx", dynamic_batch=True, image_size=(16, 16), log=lambda s: None)
    ops = ops_of(out)
    assert "BatchNormalization" not in ops and "Add" not in ops
    assert set(ops) <= PLAIN_OPS | (SE_OPS if se else set())
    assert ops["Conv"] == 5 + (10 if se else 0) and ops["Gemm"] == 1
    assert report.rel_error <= 1e-4 and set(report.errors) == {"random", "real"}
    onnx.checker.check_model(str(out), full_check=True)
    x = torch.randn(7, 3, 16, 16)  # a batch size the export never saw
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert rel_err(torch.from_numpy(got), train(x)) <= 1e-4  # equals the *train-time* model too


def test_legacy_opset_graph_is_plain(tmp_path):
    out = tmp_path / "m17.onnx"
    export_model(repvgg.reparameterize(tiny()), out, "onnx", opset=17, image_size=(16, 16), log=lambda s: None)
    model = onnx.load(str(out))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert set(ops_of(out)) <= PLAIN_OPS  # the legacy exporter's Identity nodes are folded away


@pytest.mark.parametrize("fmt,loader", [("torchscript", torch.jit.load), ("pt2", lambda p: torch.export.load(p).module())])
def test_torch_formats_round_trip(tmp_path, fmt, loader):
    model = repvgg.reparameterize(tiny(se=True))
    out = tmp_path / f"m.{fmt}"
    notes = []
    export_model(model, out, fmt, dynamic_batch=True, image_size=(16, 16), log=notes.append)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(loader(str(out))(x), model(x)) <= 1e-5
    assert all("deprecated" in n and "pt2" in n for n in notes)  # a deprecation note points to pt2


def test_failed_check_leaves_no_file(tmp_path):
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportCheckError, match="tolerance"):
        export_model(repvgg.reparameterize(tiny()), out, "onnx", image_size=(16, 16), tol=0.0, log=lambda s: None)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_unfused_model(tmp_path):
    with pytest.raises(ValueError, match="reparameterize"):
        export_model(tiny(), tmp_path / "m.onnx", image_size=(16, 16))


@pytest.fixture(scope="module")
def a0_train_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "a0.safetensors"
    m = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True))
    save_checkpoint(m, path)
    return path


def test_cli_export_fuses_train_checkpoint(tmp_path, a0_train_ckpt, capsys):
    out = tmp_path / "a0.onnx"
    rc = main(["export", "--checkpoint", str(a0_train_ckpt), "--image-size", "16", "16", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "re-parameterized 22 blocks" in text and "max abs err" in text
    assert set(ops_of(out)) <= PLAIN_OPS


@pytest.mark.parametrize("argv,message", [
    (["--format", "tflite"], "supported: onnx, torchscript, pt2"),
    (["--opset", "9"], "supported: 13-23"),
    (["--model", "repvgg_b0"], "does not fit the model"),
])
def test_cli_export_bad_input(tmp_path, a0_train_ckpt, capsys, argv, message):
    out = tmp_path / "bad.onnx"
    rc = main(["export", "--checkpoint", str(a0_train_ckpt), "--image-size", "16", "16", "--out", str(out), *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temp file left


def test_cli_export_missing_checkpoint(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope.safetensors")]) == 2
    assert "not found" in capsys.readouterr().err
