"""optimize_for_inference: verified against the fused model; clear errors for what cannot run here."""
import warnings

import pytest
import torch
import torch.nn as nn

import repvgg
from repvgg import optimize
from repvgg.optimize import optimize_for_inference
from tests.conftest import randomize_bn_, rel_err

BF16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _model():
    return randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10)).eval()


def test_fp32_eager_matches_fused_model():
    model = _model()
    opt = optimize_for_inference(model, compile=False, example_shape=(2, 3, 32, 32))
    info = opt.optimize_info
    assert not info["compiled"] and info["max_rel_err"] <= optimize.FP32_TOL
    # eager NHWC, eager NCHW, the oneDNN blocked form and (where NNPACK wins a conv) the Winograd form
    verified = [info] + info["selected_from"]
    winograd = any(i["winograd"] for i in verified)
    assert len(verified) == 2 + torch.backends.mkldnn.is_available() + winograd
    assert all(i["max_rel_err"] <= optimize.FP32_TOL for i in verified)
    assert any(getattr(m, "conv3x3", None) is not None for m in model.modules())  # the input is left as it was
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(opt(x), model(x)) < 1e-4


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN")
def test_onednn_plain_form_matches_and_refuses_what_it_cannot_run():
    model = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=7, in_chans=1, width=0.25,
                                              small_input=True)).eval()
    fused = repvgg.reparameterize(model)
    blocked = optimize.OneDNNPlain(fused, torch.float32)
    x = torch.randn(3, 1, 20, 20)
    with torch.no_grad():
        assert rel_err(blocked(x), fused(x)) < 1e-5
    with pytest.raises(TypeError, match="fused RepVGG without SE"):
        optimize.OneDNNPlain(model, torch.float32)  # not fused
    se = repvgg.create_model("repvgg_d2se", num_classes=3, channels=[8, 8, 8, 16, 16], deploy=True).eval()
    with pytest.raises(TypeError, match="fused RepVGG without SE"):
        optimize.OneDNNPlain(se, torch.float32)


def test_compiled_with_freezing():
    net = randomize_bn_(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 4, 3, padding=1)))
    opt = optimize_for_inference(net.eval(), example_shape=(2, 3, 16, 16))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert rel_err(opt(x), net.eval()(x)) < 1e-4
    verified = [opt.optimize_info] + opt.optimize_info.get("selected_from", [])
    assert any(i["compiled"] and i["max_rel_err"] <= optimize.FP32_TOL for i in verified)


@pytest.mark.skipif(not BF16, reason="this CPU has no fast bf16")
def test_bf16_runs_and_is_loosely_checked():
    opt = optimize_for_inference(_model(), dtype=torch.bfloat16, compile=False, example_shape=(2, 3, 32, 32))
    assert opt.optimize_info["tolerance"] == optimize.REDUCED_TOL
    assert opt(torch.randn(1, 3, 32, 32)).dtype == torch.bfloat16
    assert opt.optimize_info["fp32_eager_seconds"] > 0      # timed against plain fp32 in the same run


@pytest.mark.skipif(not BF16, reason="this CPU has no fast bf16")
@pytest.mark.parametrize("slower", [True, False])
def test_bf16_slower_than_fp32_is_said_out_loud(monkeypatch, slower):
    real = optimize._best_times
    monkeypatch.setattr(optimize, "_best_times", lambda fns, x, device, batches=3:
                        ([2.0, 1.0] if slower else [1.0, 2.0]) if len(fns) == 2 and not isinstance(fns[1], optimize.InferenceModel)
                        else real(fns, x, device, batches))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimize_for_inference(_model(), dtype=torch.bfloat16, compile=False, channels_last=True,
                               example_shape=(2, 3, 32, 32))
    said = [str(w.message) for w in caught if "slower than the plain fp32" in str(w.message)]
    assert bool(said) == slower, said


def test_failed_check_raises(monkeypatch):
    monkeypatch.setattr(optimize, "FP32_TOL", -1.0)
    with pytest.raises(RuntimeError, match="no optimized form matched"):
        optimize_for_inference(_model(), compile=False, example_shape=(1, 3, 32, 32))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        optimize_for_inference(_model(), device="cuda")


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype must be"):
        optimize_for_inference(_model(), dtype=torch.int8)
    if not torch.ops.mkldnn._is_mkldnn_fp16_supported():
        with pytest.raises(ValueError, match="no fast fp16"):
            optimize_for_inference(_model(), dtype=torch.float16)


@pytest.mark.skipif(not repvgg.winograd.nnpack_ready(), reason="no NNPACK in this PyTorch build")
def test_winograd_form_is_a_verified_candidate(monkeypatch):
    """Every eligible conv swapped (no autotuning, so the candidate exists whatever the timings):
    it must match the fused model and say how many convs it runs by NNPACK."""
    swap_all = lambda model, x: repvgg.winograd.winograd_convs(model, x, autotune=False)  # noqa: E731
    monkeypatch.setattr(optimize, "winograd_convs", swap_all)
    model = randomize_bn_(repvgg.create_segmenter("pspnet_repvgg_a0", num_classes=5, head_channels=16,
                                                  aux=False, width=0.25)).eval()
    opt = optimize_for_inference(model, compile=False, channels_last=False, example_shape=(1, 3, 40, 40))
    verified = [opt.optimize_info] + opt.optimize_info.get("selected_from", [])
    wino = [i for i in verified if i["winograd"]]
    assert len(wino) == 1 and wino[0]["max_rel_err"] <= optimize.FP32_TOL
    done, total = map(int, wino[0]["winograd_convs"].split("/"))
    assert done == total > 10
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert rel_err(opt(x), model(x)) < 1e-4
    # NHWC pinned or reduced precision: no Winograd candidate (NNPACK takes fp32 NCHW)
    assert ("winograd", False) not in optimize._candidates(True, False, winograd=True)
    assert not optimize._winograd_ok(repvgg.reparameterize(model), torch.bfloat16)
