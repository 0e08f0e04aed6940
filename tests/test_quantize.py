"""INT8: a QDQ model with per-channel weights that tracks fp32, and clear errors without files."""
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

import repvgg
from repvgg.checkpoint import save_checkpoint
from repvgg.cli import main
from repvgg.deploy.quantize import compare, ort_session, quantize_model
from tests.conftest import randomize_bn_
from tests.test_export import tiny


def test_int8_model_is_qdq_per_channel_and_tracks_fp32(tmp_path):
    model = repvgg.reparameterize(tiny(block="qa"))
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(16, 3, 16, 16, generator=g) for _ in range(3)]
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    report = quantize_model(model, int8, calib, fp32_out=fp32, log=lambda s: None)
    assert report.calib_images == 48 and int8.is_file()
    graph = onnx.load(str(int8)).graph
    ops = Counter(n.op_type for n in graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    inits = {t.name: t for t in graph.initializer}
    conv_w_scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear"
                     and n.input[1] in inits and any(a.name == "axis" for a in n.attribute)]
    assert conv_w_scales and all(np.prod(s.dims) > 1 for s in conv_w_scales)  # one scale per output channel
    x = calib[0].numpy()
    a = ort_session(fp32).run(None, {"input": x})[0]
    b = ort_session(int8).run(None, {"input": x})[0]
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95  # quantized, but still the same function
    labels = torch.from_numpy(a.argmax(1))  # fp32's own predictions: fp32 scores 100% by construction
    res = compare(fp32, int8, [(calib[0], labels)], bench_batch=calib[0], repeats=2)
    assert res["fp32_top1"] == 100.0 and 0 <= res["int8_top1"] <= 100
    assert res["fp32_ms"] > 0 and res["int8_ms"] > 0


def test_quantize_rejects_empty_calibration(tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        quantize_model(repvgg.reparameterize(tiny()), tmp_path / "q.onnx", [])
    assert not (tmp_path / "q.onnx").exists()


@pytest.fixture(scope="module")
def a0_deploy_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "a0d.safetensors"
    m = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True))
    save_checkpoint(repvgg.reparameterize(m), path)
    return path


def test_cli_quantize_reports_side_by_side(tmp_path, a0_deploy_ckpt, capsys):
    out = tmp_path / "a0.int8.onnx"
    rc = main(["quantize", "--checkpoint", str(a0_deploy_ckpt), "--data", "fashion-mnist-builtin", "--image-size", "16",
               "--calib-batches", "1", "--batch-size", "16", "--eval-images", "32", "--repeats", "2", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "top-1  fp32" in text and "int8" in text and "speed-up" in text


@pytest.mark.parametrize("argv,message", [
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "cifar"),
    (["--data", "fashion-mnist-builtin", "--calib-batches", "0"], "--calib-batches must be >= 1"),
    (["--data", "fashion-mnist-builtin", "--method", "torch"], "torchao"),
    (["--data", "fashion-mnist-builtin", "--method", "tensorrt"], "supported: ort, torch"),
])
def test_cli_quantize_bad_input(tmp_path, a0_deploy_ckpt, capsys, argv, message):
    out = tmp_path / "q.onnx"
    rc = main(["quantize", "--checkpoint", str(a0_deploy_ckpt), "--image-size", "16", "--out", str(out), *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
