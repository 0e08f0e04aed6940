"""INT8: a QDQ model with per-channel weights that tracks fp32, and clear errors without files."""
import json
import shutil
from collections import Counter
from pathlib import Path

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
    (["--data", "fashion-mnist-builtin", "--method", "torch", "--calibrate", "entropy"], "--method ort only"),
    (["--data", "fashion-mnist-builtin", "--method", "tensorrt"], "supported: ort, torch"),
])
def test_cli_quantize_bad_input(tmp_path, a0_deploy_ckpt, capsys, argv, message):
    out = tmp_path / "q.onnx"
    rc = main(["quantize", "--checkpoint", str(a0_deploy_ckpt), "--image-size", "16", "--out", str(out), *argv])
    assert rc == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_cli_quantize_refuses_calibration_data_that_does_not_fit_the_model(tmp_path, capsys):
    rgb = repvgg.reparameterize(repvgg.create_model("repvgg_a0", num_classes=10, width=0.25, depths=(1, 1, 1, 1)))
    rgb_ckpt = save_checkpoint(rgb, tmp_path / "rgb.safetensors")
    gray = repvgg.reparameterize(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True,
                                                     width=0.25, depths=(1, 1, 1, 1)))
    gray_ckpt = save_checkpoint(gray, tmp_path / "gray.safetensors", metadata={"image_size": 28})
    before = sorted(tmp_path.iterdir())
    base = ["quantize", "--data", "fashion-mnist-builtin", "--calib-batches", "1", "--out", str(tmp_path / "q.onnx")]
    assert main(base + ["--checkpoint", str(rgb_ckpt)]) == 2
    assert "channel mismatch: the model takes 3-channel images but fashion-mnist-builtin has 1" in capsys.readouterr().err
    assert main(base + ["--checkpoint", str(gray_ckpt), "--image-size", "16"]) == 2
    assert "calibration size mismatch: --image-size 16 but" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == before


# ------------------------------------------------------------------ PT2E (torchao), --method torch
def small_a0():
    m = repvgg.create_model("repvgg_a0", width=0.25, num_classes=5, in_chans=3, small_input=True)
    return repvgg.reparameterize(randomize_bn_(m)).eval()


def test_pt2e_file_is_safetensors_and_rebuilds_the_same_int8_program(tmp_path):
    pytest.importorskip("torchao")
    from safetensors import safe_open

    from repvgg.deploy.quantize_pt2e import OBSERVERS, load_int8

    model = small_a0()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    out = tmp_path / "a0.int8.safetensors"
    report = quantize_model(model, out, calib, method="torch")
    assert report.method == "torch" and report.calib_images == 16
    with safe_open(str(out), "pt") as f:                 # plain tensors + JSON metadata: nothing to unpickle
        keys, meta = set(f.keys()), f.metadata()
    assert set(model.state_dict()) < keys and any(k.startswith(OBSERVERS) for k in keys)
    assert '"pt2e-x86-inductor"' in meta["int8"]
    a, b = load_int8(out), load_int8(out)
    x = torch.randn(5, 3, 16, 16, generator=g)           # another batch size: the batch dimension is dynamic
    with torch.no_grad():
        qa, qb, ref = a(x), b(x), model(x)
    assert torch.equal(qa, qb)                            # deterministic rebuild
    assert not torch.equal(qa, ref)                       # it is quantized...
    assert np.corrcoef(qa.ravel(), ref.ravel())[0, 1] > 0.95  # ...but the same function


def test_pt2e_rejects_foreign_or_tampered_files(tmp_path):
    pytest.importorskip("torchao")
    from safetensors.torch import load_file, save_file

    from repvgg.checkpoint import CheckpointError
    from repvgg.deploy.quantize_pt2e import OBSERVERS, load_int8

    plain = tmp_path / "plain.safetensors"
    save_checkpoint(small_a0(), plain)
    with pytest.raises(CheckpointError, match="not an INT8 file"):
        load_int8(plain)
    out = tmp_path / "q.safetensors"
    quantize_model(small_a0(), out, [torch.randn(4, 3, 16, 16)], method="torch")
    with pytest.raises(CheckpointError, match="load_int8"):  # not mistaken for a model checkpoint
        repvgg.model_from_checkpoint(out)
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(out))
    dropped = next(k for k in sd if k.startswith(OBSERVERS))
    del sd[dropped]
    save_file(sd, str(out), metadata=meta)
    with pytest.raises(CheckpointError, match="do not match"):
        load_int8(out)
    with pytest.raises(ValueError, match="create_model"):
        quantize_model(repvgg.reparameterize(tiny()), tmp_path / "t.safetensors", [torch.randn(2, 3, 16, 16)],
                       method="torch")
    assert not (tmp_path / "t.safetensors").exists()


def _cpu_has_vnni() -> bool:
    info = Path("/proc/cpuinfo")
    return not info.is_file() or "vnni" in info.read_text()


# Without VNNI, oneDNN's u8 x s8 int8 convs add pairs of products in 16 bits, which saturate: the
# lowered answers then differ from the simulated ones by more than rounding (seen on an AVX2-only
# EPYC, 2026-12-05). PyTorch's fix for such CPUs is reduce_range, which repvgg does not apply yet.
@pytest.mark.skipif(not _cpu_has_vnni(), reason="CPU without VNNI: oneDNN int8 convs saturate (reduce_range not applied)")
def test_pt2e_program_lowers_to_onednn_int8_kernels_with_the_same_answers(tmp_path):
    """Speed comes from the lowered program: it must hold real INT8 convs, not fp32 ones with
    quantize/dequantize around them, and compute what the simulated program computes."""
    pytest.importorskip("torchao")
    from repvgg.deploy.quantize_pt2e import deployed_pair, load_int8, lower_int8

    model = small_a0()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    out = tmp_path / "a0.int8.safetensors"
    quantize_model(model, out, calib, method="torch")
    program, x = load_int8(out), torch.randn(8, 3, 16, 16, generator=g)
    lowered = lower_int8(program, x)
    ops = Counter(str(n.target) for n in lowered.graph.nodes if n.op == "call_function")
    assert ops["onednn.qconv_pointwise.default"] == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert not any("aten.convolution" in op for op in ops)
    with torch.no_grad():
        simulated, fast = program(x), lowered(x)
    assert torch.allclose(fast, simulated, atol=0.05 * simulated.abs().max().item())  # rounding steps only
    if shutil.which("c++") or shutil.which("g++"):  # fp32 side goes through torch.compile (C++ codegen)
        assert deployed_pair(model, program, x, log=lambda s: None)[2]  # the benchmark path measures speed


def test_cli_quantize_torch_reports_side_by_side(tmp_path, capsys):
    pytest.importorskip("torchao")
    ckpt = tmp_path / "a0.safetensors"
    m = repvgg.create_model("repvgg_a0", width=0.25, num_classes=10, in_chans=1, small_input=True)
    save_checkpoint(repvgg.reparameterize(randomize_bn_(m)), ckpt)
    rc = main(["quantize", "--checkpoint", str(ckpt), "--data", "fashion-mnist-builtin", "--image-size", "16",
               "--method", "torch", "--calib-batches", "1", "--batch-size", "16", "--eval-images", "40",
               "--repeats", "2"])
    text = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "a0.int8.safetensors").is_file()
    assert "PT2E" in text and "top-1  fp32" in text
    assert "speed-up" in text or "speed not measured" in text


def test_cli_quantize_torch_without_torchao_says_how_to_get_it(tmp_path, a0_deploy_ckpt, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e", None)  # import fails as if not installed
    out = tmp_path / "q.safetensors"
    rc = main(["quantize", "--checkpoint", str(a0_deploy_ckpt), "--data", "fashion-mnist-builtin",
               "--method", "torch", "--out", str(out)])
    assert rc == 2 and "pip install" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("per_tensor", [False, True])
def test_per_tensor_weights_use_one_scale_per_tensor(tmp_path, a0_deploy_ckpt, capsys, per_tensor):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "q.int8.onnx"
    argv = ["quantize", "--checkpoint", str(a0_deploy_ckpt), "--data", "fashion-mnist-builtin", "--image-size", "16",
            "--calib-batches", "1", "--batch-size", "16", "--eval-images", "32", "--repeats", "1", "--out", str(out)]
    assert main(argv + (["--per-tensor"] if per_tensor else [])) == 0
    assert ("per-tensor weights" if per_tensor else "per-channel weights") in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = [inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
              and inits[n.input[0]].ndim == 4]                              # the conv weights' scales
    assert scales and all((s.size == 1) == per_tensor for s in scales)


def test_weight_range_spread_names_the_widest_layer():
    from repvgg.deploy.quantize import weight_range_spread

    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Conv2d(4, 4, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].weight[0] = 100.0                     # one channel 100x the others: spread 100
        model[1].weight.fill_(0.5)
    rows = {r["layer"]: r for r in weight_range_spread(model)}
    assert rows["0"]["spread"] == pytest.approx(100.0) and rows["1"]["spread"] == pytest.approx(1.0)
    assert rows["0"]["levels_median_channel"] == pytest.approx(1.27)


def test_sensitivity_ranks_layers_and_keep_fp32_leaves_them_in_float(tmp_path, capsys):
    import onnx

    small = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True, width=0.25,
                                              depths=(1, 1, 1, 1)))
    ckpt = save_checkpoint(repvgg.reparameterize(small), tmp_path / "small.safetensors")    # 6 layers
    out = tmp_path / "s.int8.onnx"
    base = ["quantize", "--checkpoint", str(ckpt), "--data", "fashion-mnist-builtin", "--image-size", "16",
            "--calib-batches", "1", "--batch-size", "16", "--eval-images", "32", "--repeats", "1"]
    assert main(base + ["--out", str(out), "--sensitivity", "--keep-fp32", "2"]) == 0
    text = capsys.readouterr().out
    assert "per-layer sensitivity" in text and "kept in float" in text
    assert "600 validation images" in text and "may have been trained on" in text   # no val_split metadata here
    csv_text = (tmp_path / "s.sensitivity.csv").read_text()
    assert csv_text.count("fused") == 5 and "head.fc" in csv_text and (tmp_path / "s.sensitivity.png").is_file()
    kept = text.split("kept in float: ")[1].splitlines()[0].split(", ")
    assert len(kept) == 2 and kept[0] == csv_text.splitlines()[1].split(",")[0]     # the worst layer first
    quantized = [n for n in onnx.load(str(out)).graph.node if n.op_type == "DequantizeLinear"]
    named = tmp_path / "n.int8.onnx"
    assert main(base + ["--out", str(named), "--keep-fp32", "stem.fused,head.fc"]) == 0
    assert "kept in float: stem.fused, head.fc" in capsys.readouterr().out
    auto = tmp_path / "a.int8.onnx"
    assert main(base + ["--out", str(auto), "--sensitivity", "--keep-fp32", "auto"]) == 0
    text = capsys.readouterr().out
    k = int(text.split("--keep-fp32 auto: K = ")[1].split()[0])
    curve = csv_text.split("keep_fp32_K")[1].splitlines()[1:]
    assert auto.is_file() and 0 <= k <= len(curve) - 1 and ("kept in float" in text) == (k > 0)
    fewer = [n for n in onnx.load(str(named)).graph.node if n.op_type == "DequantizeLinear"]
    assert fewer and len(fewer) < len([n for n in onnx.load(str(tmp_path / "s.int8.onnx")).graph.node]) and quantized


@pytest.mark.parametrize("extra, message", [
    (["--keep-fp32", "stem.fused,nope"], "unknown layer"),
    (["--keep-fp32", "3"], "add --sensitivity"),
    (["--keep-fp32", "auto"], "add --sensitivity"),
    (["--method", "torch", "--keep-fp32", "1"], "--method ort only"),
])
def test_keep_fp32_bad_input(tmp_path, a0_deploy_ckpt, capsys, extra, message):
    argv = ["quantize", "--checkpoint", str(a0_deploy_ckpt), "--data", "fashion-mnist-builtin", "--image-size", "16",
            "--calib-batches", "1", "--out", str(tmp_path / "x.int8.onnx"), *extra]
    assert main(argv) == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_choose_keep_k_takes_the_fewest_float_layers_within_tolerance():
    from repvgg.deploy.sensitivity import choose_keep_k

    curve = [{"keep_fp32": k, "int8_top1": t} for k, t in enumerate([80.0, 89.0, 89.5, 89.9, 90.0])]
    assert choose_keep_k(curve, 90.0) == 3                  # 89.9 is within 0.1 of 90.0
    assert choose_keep_k(curve, 90.0, tolerance=1.0) == 1
    assert choose_keep_k(curve, 95.0) == 4                  # none within: the best one
    flat = [{"keep_fp32": k, "int8_top1": 70.0} for k in range(3)]
    assert choose_keep_k(flat, 90.0) == 0                   # ties: the fewest float layers


def test_held_out_split_is_the_one_training_used():
    from repvgg.data import build_datasets
    from repvgg.data.build import split_validation
    from repvgg.deploy.sensitivity import held_out_split

    train_ds, test_ds, _ = build_datasets("fashion-mnist-builtin", None, None)
    _, val, note = held_out_split(train_ds, test_ds, {"val_split": '{"fraction": 0.2, "seed": 3}'})
    _, expected = split_validation(train_ds, test_ds, 0.2, 3)
    assert torch.equal(val.images, expected.images) and "held out (seed 3)" in note
    _, val, note = held_out_split(train_ds, test_ds, {})
    assert len(val) == round(0.1 * len(train_ds)) and "may have been trained on" in note


def test_training_records_its_validation_split(tmp_path):
    from repvgg.checkpoint import read_metadata
    from repvgg.train.loop import _meta

    class Info:
        name, class_names, image_size, mean, std = "x", ["a"], 8, (0.5,), (0.5,)

    meta = _meta({"val_split": 0.1, "seed": 4, "recipe": "small"}, Info())
    assert meta["val_split"] == {"fraction": 0.1, "seed": 4}
    ckpt = save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "m.safetensors", metadata=meta)
    assert json.loads(read_metadata(ckpt)["val_split"]) == {"fraction": 0.1, "seed": 4}
