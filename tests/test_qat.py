"""QAT on the train-time form: the forward is the fused kernel, fake-quantized; fusion after QAT is exact."""
from __future__ import annotations

import pytest
import torch

from repvgg import create_model, reparameterize
from repvgg.deploy.qat import (ActQuant, QATBlock, fake_quant_weight, prepare_qat, qat_blocks,
                               qat_finetune, set_quantize)


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _model(**kw):
    return _randomize_bn(create_model("repvgg_a0", num_classes=10, width=0.25, depths=[1, 2, 1, 1],
                                      small_input=True, in_chans=1, **kw)).double().eval()


def test_fake_quant_weight_is_int8_rounding_with_a_straight_through_gradient():
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    q = fake_quant_weight(w)
    scale = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    ints = q.detach() / scale
    assert torch.allclose(ints, ints.round(), atol=1e-9) and ints.abs().max() <= 127 + 1e-9
    assert (ints.abs().amax(dim=(1, 2, 3)) - 127).abs().max() < 1e-9      # absmax maps to 127 per channel
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    t = fake_quant_weight(w.detach(), per_channel=False)
    assert len(torch.unique((t / (w.detach().abs().max() / 127)).round())) <= 255


def test_act_quant_tracks_the_range_then_rounds_to_uint8():
    aq = ActQuant().train()
    x = torch.linspace(0, 5.1, 1000)
    aq(x)
    assert float(aq.lo) == 0 and float(aq.hi) == pytest.approx(5.1)
    aq.eval()
    y = aq(torch.tensor([0.0, 0.013, 2.5, 9.0]))
    step = 5.1 / 255
    assert torch.allclose(y, torch.tensor([0.0, step, step * round(2.5 / step), 5.1]), atol=1e-6)


@pytest.mark.parametrize("deploy", [False, True])
def test_qat_wrapper_without_quantization_is_the_model_in_eval_mode(deploy):
    model = _model()
    if deploy:
        model = reparameterize(model)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    ref = model(x)
    wrapped = prepare_qat(model)
    assert len(qat_blocks(wrapped)) == 6          # the stem and 1+2+1+1 blocks
    set_quantize(wrapped, False)
    assert (wrapped(x) - ref).abs().max() <= 1e-9 * ref.abs().max()
    set_quantize(wrapped, True)
    wrapped.train()
    wrapped(x)                      # ranges observed
    wrapped.eval()
    q = wrapped(x)
    assert 0 < (q - ref).abs().max() < 0.2 * ref.abs().max()     # INT8 rounding: close, not equal


def test_gradients_reach_every_branch_and_bn_affine_but_not_bn_statistics():
    model = _model().float().train()
    stats = [v.clone() for k, v in model.state_dict().items() if "running" in k]
    wrapped = prepare_qat(model)
    wrapped(torch.randn(4, 1, 28, 28)).sum().backward()
    block = qat_blocks(wrapped)[2].block
    for p in (block.conv3x3.conv.weight, block.conv1x1.conv.weight, block.conv3x3.bn.weight,
              block.identity.bn.weight if block.identity is not None else block.conv1x1.bn.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    after = [v for k, v in wrapped.state_dict().items() if "running" in k]
    assert len(after) == len(stats) and all(torch.equal(a, b) for a, b in zip(stats, after))


def test_after_qat_the_fused_model_is_what_qat_trained():
    from repvgg.data import build_datasets, train_subset

    train_ds, _, _ = build_datasets("fashion-mnist-builtin", None, None)
    train_ds = train_subset(train_ds, 256, 0)
    model = _model().float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed, ranges = qat_finetune(model, train_ds, 1, batch_size=64, log=lambda *_: None)
    assert not any(isinstance(m, QATBlock) for m in deployed.modules())
    layers = [n for n, m in deployed.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert set(ranges) == set(layers) and all(lo <= 0 < hi for lo, hi in ranges.values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    x = torch.randn(2, 1, 28, 28)
    ref = reparameterize(model)                    # the same weights fused again: identical
    assert torch.allclose(deployed(x), ref(x), atol=1e-5)


def test_qat_refuses_a_model_without_blocks():
    with pytest.raises(ValueError, match="no"):
        qat_finetune(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3)), [], 1)


def test_cli_quantize_qat_on_both_forms_and_bad_input(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from repvgg import save_checkpoint
    from repvgg.cli import main

    train_ck = save_checkpoint(_model().float(), tmp_path / "t.safetensors")
    deploy_ck = save_checkpoint(reparameterize(_model().float()), tmp_path / "d.safetensors")
    common = ["--data", "fashion-mnist-builtin", "--image-size", "16", "--calib-batches", "1", "--batch-size", "32",
              "--eval-images", "64", "--repeats", "1", "--method", "qat", "--epochs", "1"]
    assert main(["quantize", "--checkpoint", str(train_ck), "--out", str(tmp_path / "t.int8.onnx"), *common]) == 0
    out = capsys.readouterr().out
    assert "QAT on the train-time form" in out and "int8" in out and (tmp_path / "t.int8.onnx").is_file()
    assert "the input ranges of 6 convs are the ones QAT trained with" in out    # stem + 1+2+1+1 blocks
    assert main(["quantize", "--checkpoint", str(deploy_ck), "--out", str(tmp_path / "d.int8.onnx"), *common]) == 0
    assert "QAT on the fused form" in capsys.readouterr().out
    assert main(["quantize", "--checkpoint", str(deploy_ck), "--out", str(tmp_path / "x.onnx"), *common,
                 "--qat-on", "train"]) == 2
    assert "cannot be split back into branches" in capsys.readouterr().err
    assert main(["quantize", "--checkpoint", str(deploy_ck), "--out", str(tmp_path / "y.onnx"),
                 "--data", "fashion-mnist-builtin", "--qat-on", "fused"]) == 2
    assert "--method qat only" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_the_qdq_file_keeps_the_input_ranges_qat_trained_with(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    from repvgg.deploy.quantize import onnx_layer_nodes, quantize_model

    model = reparameterize(_model().float())
    calib = [torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))]
    ranges = {"stages.1.0.fused": (-0.25, 3.0), "stages.2.0.fused": (0.0, 0.75)}   # not what calibration finds
    out = quantize_model(model, tmp_path / "q.onnx", calib, fp32_out=tmp_path / "f.onnx", input_ranges=ranges,
                         log=lambda *_: None).path
    graph = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    nodes = onnx_layer_nodes(tmp_path / "f.onnx", model)
    for layer, (lo, hi) in ranges.items():
        conv = next(n for n in graph.node if n.name == nodes[layer])
        dq = producer[conv.input[0]]
        assert dq.op_type == "DequantizeLinear"
        scale, zero = float(inits[dq.input[1]]), int(inits[dq.input[2]])
        assert scale == pytest.approx((hi - lo) / 255, rel=1e-6) and zero == round(-lo / scale)
    with pytest.raises(ValueError, match="unknown layer"):
        quantize_model(model, tmp_path / "r.onnx", calib, input_ranges={"nope": (0.0, 1.0)}, log=lambda *_: None)
    assert not (tmp_path / "r.onnx").exists()
