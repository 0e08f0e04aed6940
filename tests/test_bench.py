"""repvgg.bench: counters against the paper's Table 4, fused baselines, protocol, smoke runs, bad args.
No timing assertions: the machine is shared, only structure and counts are checked."""
import json
import weakref

import pytest
import torch

import repvgg
from repvgg.archs import ARCHS
from repvgg.bench import (PAPER, Protocol, complexity, create_baseline, fuse_conv_bn, make_spec, make_specs,
                          run_bench, time_interleaved)
from repvgg.cli import main
from tests.conftest import randomize_bn_, rel_err


@pytest.mark.parametrize("name", ["repvgg_a0", "repvgg_b0", "resnet18", "vgg16"])
def test_counters_match_table4(name):
    """Theo FLOPs (multiply-adds) and Wino MULs, in billions, to the table's one decimal.
    Built on the meta device: shapes only, so even VGG-16 counts in about a second."""
    with torch.device("meta"):
        model = repvgg.create_model(name, deploy=True) if name.startswith("repvgg") else create_baseline(name)
    c = complexity(model, (1, 3, 224, 224))
    assert round(c.macs / 1e9, 1) == PAPER[name].flops_b
    assert round(c.wino_muls / 1e9, 1) == PAPER[name].wino_muls_b


def test_wino_counts_only_stride1_3x3():
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, 1, 1), torch.nn.Conv2d(4, 4, 3, 2, 1),
                              torch.nn.Conv2d(4, 4, 1))
    c = complexity(net, (1, 4, 8, 8))
    s1, s2, pw = 8 * 8 * 4 * 4 * 9, 4 * 4 * 4 * 4 * 9, 4 * 4 * 4 * 4
    assert c.macs == s1 + s2 + pw
    assert c.wino_muls == s1 * 4 // 9 + s2 + pw


def test_paper_top1_agrees_with_arch_table():
    for name, row in PAPER.items():
        if name in ARCHS:
            assert ARCHS[name].top1 == row.top1, name


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0"])  # residual adds; depthwise + SE
def test_baseline_fusion_is_equivalent(name):
    model = randomize_bn_(create_baseline(name, num_classes=10, fused=False), seed=1)
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(fused(x), model(x)) < 1e-4


def test_unknown_names_suggest():
    with pytest.raises(ValueError, match="Did you mean resnet18"):
        make_spec("resnet17")
    with pytest.raises(ValueError, match="Did you mean.*efficientnet_b0"):
        create_baseline("efficientnet_b")
    assert make_spec("RepVGG-A0").name == "repvgg_a0"
    assert make_spec("timm:RepVGG-A0").name == "timm:repvgg_a0"


def test_specs_forms():
    specs = make_specs(["repvgg_a0", "resnet18"], form="both")
    assert [(s.name, s.form) for s in specs] == [("repvgg_a0", "train"), ("repvgg_a0", "deploy"),
                                                  ("resnet18", "deploy")]
    with pytest.raises(ValueError, match="form"):
        make_specs(["repvgg_a0"], form="fused")


def test_protocol_interleaves_and_rotates():
    calls = []
    runners = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    out = time_interleaved(runners, 4, Protocol(warmup=1, iters=2, repeats=3), torch.device("cpu"))
    assert all(len(t.per_repeat) == 3 and t.median > 0 for t in out.values())
    timed = calls[3:]  # after one warm-up call each
    assert timed[:6] == list("aabbcc") and timed[6:12] == list("bbccaa")
    with pytest.raises(ValueError):
        Protocol(warmup=0, iters=0)


def test_run_bench_smoke():
    specs = make_specs(["repvgg_a0", "resnet18"], form="both")
    result = run_bench(specs, batch_size=2, image_size=32, protocol=Protocol(0, 1, 2), ceiling=True,
                       memory=False, num_classes=10, progress=lambda m: None)
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {s.label for s in specs}
    deploy = rows["repvgg_a0 [deploy, fp32]"]
    assert deploy["images_per_s"] > 0 and deploy["ceiling_fraction"] > 0
    assert deploy["paper_top1"] == 72.41
    assert rows["repvgg_a0 [train, fp32]"]["params_m"] > deploy["params_m"]
    assert "ceiling_fraction" not in rows["resnet18 [fused, fp32]"]
    assert result["environment"]["torch"] == torch.__version__


def test_cli_bench_writes_results(tmp_path, capsys):
    stem = tmp_path / "r"
    rc = main(["bench", "--models", "repvgg_a0", "--form", "deploy", "--batch-size", "1", "--image-size", "32",
               "--warmup", "0", "--iters", "1", "--repeats", "1", "--out", str(stem)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| repvgg_a0 [deploy, fp32] |" in out and "paper" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["rows"][0]["peak_mem_mb"] > 0  # measured in a fresh subprocess
    assert data["settings"]["repeats"] == 1 and "command" in data["environment"]
    assert (tmp_path / "r.csv").read_text().startswith("label,")
    assert (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.parametrize("argv, msg", [
    (["--models", "resnet17"], "unknown model 'resnet17'. Did you mean resnet18"),
    (["--batch-size", "0"], "batch size must be >= 1"),
    (["--image-size", "8"], "image size must be >= 32"),
])
def test_cli_bad_args(argv, msg, capsys):
    assert main(["bench", "--out", "", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cli_cuda_without_gpu(capsys):
    assert main(["bench", "--device", "cuda", "--out", ""]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err


@pytest.mark.parametrize("features_only", [False, True])
def test_a_stage_input_is_released_after_its_first_block(features_only):
    """Peak inference memory of the plain model: the stem's output (the largest map) must be freed
    once the first stage block has consumed it, not held until that stage ends."""
    features = dict(features_only=True, out_indices=(2, 3)) if features_only else {}
    model = repvgg.create_model("repvgg_a0", width=0.25, depths=[2, 1, 1, 1], num_classes=10, deploy=True,
                                **features)
    model.eval()
    stem_out, alive_at = [], []
    model.stem.register_forward_hook(lambda m, i, out: stem_out.append(weakref.ref(out)))
    model.stages[0][1].register_forward_pre_hook(lambda m, i: alive_at.append(stem_out[0]() is not None))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert alive_at == [False]


def test_cpu_label_names_the_vector_extensions(monkeypatch):
    from repvgg.bench import report

    assert report.cpu_label() == f"{report.cpu_name()} ({report.cpu_isa()})"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert report.cpu_isa() == "AVX2"   # no "-BF16" without AVX-512, whatever oneDNN says
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(report, "_cpu_flags", lambda: {"avx512f", "avx512bw", "avx512_vnni"})
    assert report.cpu_isa() == "AVX512"   # oneDNN emulates bf16 there: not "-BF16"
    monkeypatch.setattr(report, "_cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert report.cpu_isa() == "AVX512-BF16"
