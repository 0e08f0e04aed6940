"""What a new user meets in the first hour (issue 22): no crash after training, no overwritten inputs,
deliberate thread counts, readable files, stated guesses, metadata that follows the model, pruned
checkpoints everywhere, selection on a validation split, clear errors, and tests that can fail."""
import json
import os
import stat
import sys

import pytest
import torch
import torch.nn as nn

import repvgg
from repvgg import checkpoint as ckpt
from repvgg.cli import main
from repvgg.deploy.prune import prune_model, save_pruned
from repvgg.evaluate import compare_predictions
from repvgg.rebuild import GuessedArchitectureWarning
from repvgg.threads import choose_threads
from tests.conftest import randomize_bn_, rel_err
from tests.test_train import make_tiny_fmnist, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_fmnist(tmp_path_factory.mktemp("fmnist"), n_train=160, n_test=64)


def _small(**kw):
    return repvgg.create_model("repvgg_a0", num_classes=10, width=0.25, **kw)


# ------------------------------------------------------------------ 1. a finished run never crashes
def test_a_near_tie_flip_is_not_a_fusion_failure():
    a = torch.tensor([[1.0, 1.0 + 1e-7, 0.0], [3.0, 0.0, 0.0]])
    b = torch.tensor([[1.0 + 2e-7, 1.0, 0.0], [3.0, 0.0, 0.0]])     # the tie flips, rounding-sized change
    info = compare_predictions({"logits": a}, {"logits": b}, torch.tensor([0, 0]))
    assert info["ok"] and info["agreement"] == 50.0 and info["tie_flips"] == 1
    assert info["agreement_away_from_ties"] == 100.0


def test_a_real_difference_is_a_fusion_failure():
    a = torch.tensor([[2.0, 1.0], [3.0, 0.0]])
    b = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    info = compare_predictions({"logits": a}, {"logits": b}, torch.tensor([0, 0]))
    assert not info["ok"] and "do not compute" in info["reason"].replace("does not compute", "do not compute")


def test_failed_fusion_check_keeps_every_file_and_exits_nonzero(tmp_path, tiny, monkeypatch, capsys):
    import repvgg.train.run_folder as rf

    def broken(model):          # a fusion bug: the fused model is off by a visible amount
        fused = repvgg.reparameterize(model)
        with torch.no_grad():
            fused.head.fc.bias.add_(0.5 * torch.arange(10.0))
        return fused

    monkeypatch.setattr(rf, "reparameterize", broken)
    out = tmp_path / "run"
    flags = ["train", "--output", str(out), "--data", "fashion-mnist", "--data-dir", str(tiny), "--image-size",
             "16", "--no-small-input", "--batch-size", "32", "--epochs", "1", "--no-amp", "--threads", "1", "--quiet"]
    assert main(flags) == 1
    assert "fusion check failed" in capsys.readouterr().err
    for f in ("best.safetensors", "last.safetensors", "metrics.jsonl", "summary.json", "config.yaml"):
        assert (out / f).is_file(), f
    assert not (out / "deploy.safetensors").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fusion_ok"] is False and "logits differ" in summary["fusion_problem"]


# ------------------------------------------------------------------ 2. outputs never destroy inputs
@pytest.fixture
def train_file(tmp_path):
    model = randomize_bn_(_small(small_input=True)).eval()
    return model, repvgg.save_checkpoint(model, tmp_path / "a.safetensors")


def test_convert_refuses_its_own_input_and_a_wrong_extension(train_file, capsys):
    model, path = train_file
    before = path.read_bytes()
    assert main(["convert", str(path), str(path)]) == 2
    assert "is the input file" in capsys.readouterr().err and path.read_bytes() == before
    assert main(["convert", str(path), str(path.with_name("out.onnx"))]) == 2
    assert "repvgg export" in capsys.readouterr().err and not path.with_name("out.onnx").exists()
    out = path.with_name("d.safetensors")
    assert main(["convert", str(path), str(out)]) == 0
    assert main(["convert", str(path), str(out)]) == 2          # exists: not without --force
    assert "--force" in capsys.readouterr().err
    assert main(["convert", str(path), str(out), "--force"]) == 0


def test_export_refuses_to_write_over_its_checkpoint(train_file, capsys):
    _, path = train_file
    before = path.read_bytes()
    assert main(["export", "--checkpoint", str(path), "--out", str(path)]) == 2
    assert path.read_bytes() == before
    assert "extension" in capsys.readouterr().err


# ------------------------------------------------------------------ 3. threads, chosen and said
def test_threads_leave_busy_cores_alone(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (1.1, 1.0, 1.0))
    n, why = choose_threads()
    assert n == 1 and "other jobs" in why
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert choose_threads()[0] == 2
    assert choose_threads(3)[0] == 3
    assert choose_threads(processes=2)[0] == 1
    with pytest.raises(ValueError, match="threads"):
        choose_threads(0)


def test_train_log_says_how_many_threads_and_why(tmp_path, tiny):
    from repvgg.train import prepare_run, train

    out = tmp_path / "run"
    cfg = prepare_run(out, "small", tiny_overrides(tiny, epochs=1, threads=None))
    train(cfg, out, quiet=True)
    log = (out / "train.log").read_text()
    assert "CPU threads per process:" in log and "thread(s)" in log


def test_bench_says_how_many_threads(capsys):
    argv = ["bench", "--models", "repvgg_a0", "--form", "deploy", "--batch-size", "1", "--image-size", "32",
            "--repeats", "1", "--warmup", "0", "--iters", "1", "--no-memory", "--threads", "1", "--out", ""]
    assert main(argv) == 0
    assert "threads: 1 thread(s), as set" in capsys.readouterr().out


# ------------------------------------------------------------------ 4. files others can read
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_follow_the_umask(tmp_path, umask):
    from repvgg.evaluate import save_confusion_png
    from repvgg.fileio import atomic_write_text

    old = os.umask(umask)
    try:
        files = [repvgg.save_checkpoint(_small(), tmp_path / "w.safetensors"),
                 repvgg.save_checkpoint(_small(), tmp_path / "w.pth"),
                 save_confusion_png(torch.eye(3, dtype=torch.int64), tmp_path / "c.png")]
        atomic_write_text(tmp_path / "s.json", "{}")
        files.append(tmp_path / "s.json")
    finally:
        os.umask(old)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


# ------------------------------------------------------------------ 5. guesses are said; flags fix them
def test_plain_state_dict_says_what_was_guessed_and_takes_build_flags(tmp_path, capsys):
    model = randomize_bn_(_small(small_input=True)).eval()
    src = tmp_path / "plain.pth"
    torch.save(model.state_dict(), src)
    x = torch.randn(2, 3, 28, 28)
    with pytest.warns(GuessedArchitectureWarning, match="small_input"):
        repvgg.model_from_checkpoint(src, name="repvgg_a0", width=0.25)
    out = tmp_path / "fused.safetensors"
    assert main(["convert", str(src), str(out), "--model", "repvgg_a0"]) == 2   # width is not in the zoo shapes
    capsys.readouterr()
    from repvgg.convert import convert_checkpoint

    with pytest.warns(GuessedArchitectureWarning, match="small_input=False"):
        convert_checkpoint(src, out, model="repvgg_a0", width=0.25)
    assert rel_err(repvgg.model_from_checkpoint(out)(x), model(x)) > 1e-2      # the guess was wrong...
    convert_checkpoint(src, out, model="repvgg_a0", width=0.25, small_input=True)
    assert rel_err(repvgg.model_from_checkpoint(out)(x), model(x)) < 1e-5      # ...and the flag fixes it


def test_zoo_shaped_state_dict_cli_notes_the_guess(tmp_path, capsys):
    model = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=10, small_input=True)).eval()
    src = tmp_path / "plain.pth"
    torch.save(model.state_dict(), src)
    out = tmp_path / "fused.safetensors"
    assert main(["convert", str(src), str(out)]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "small_input=False" in err and "Traceback" not in err
    assert main(["convert", str(src), str(out), "--small-input", "--force"]) == 0
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(repvgg.model_from_checkpoint(out)(x), model(x)) < 1e-5


# ------------------------------------------------------------------ 6. metadata follows the model
def test_reset_classifier_is_saved_and_a_hand_made_head_is_refused(tmp_path):
    model = repvgg.create_model("repvgg_a0", width=0.25)
    model.reset_classifier(10)
    path = repvgg.save_checkpoint(model, tmp_path / "r.safetensors")
    assert repvgg.model_from_checkpoint(path).num_classes == 10
    model.head.fc = nn.Linear(model.num_features, 7)          # behind the API's back
    with pytest.raises(ckpt.CheckpointError, match="build_args"):
        repvgg.save_checkpoint(model, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()
    with pytest.raises(ValueError, match="num_classes"):
        model.reset_classifier(-1)


# ------------------------------------------------------------------ 7. pruned checkpoints load everywhere
def test_pruned_checkpoint_loads_everywhere(tmp_path, capsys):
    base = repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, width=0.5, small_input=True)
    pruned = prune_model(repvgg.reparameterize(randomize_bn_(base)), 0.3, log=lambda s: None).model
    path = save_pruned(pruned, tmp_path / "p.safetensors", metadata={"image_size": 28})
    x = torch.randn(2, 1, 28, 28)
    ref = pruned(x)
    for loaded in (repvgg.create_model("repvgg_a0", num_classes=10, in_chans=1, small_input=True, checkpoint=path),
                   repvgg.model_from_checkpoint(path)):
        assert loaded.is_deployed and rel_err(loaded.eval()(x), ref) < 1e-6
    assert main(["eval", "--checkpoint", str(path), "--data", "fashion-mnist-builtin", "--threads", "1",
                 "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "CPU threads: 1 thread(s), as set" in out


# ------------------------------------------------------------------ 8. selection on a validation split
def test_best_is_picked_on_a_validation_split_and_the_final_epoch_is_reported(tmp_path, tiny):
    from repvgg.train import prepare_run, train

    out = tmp_path / "run"
    cfg = prepare_run(out, "small", tiny_overrides(tiny, epochs=2))
    assert cfg["val_split"] == 0.1
    summary = train(cfg, out, quiet=True)
    log = (out / "train.log").read_text()
    assert "142 train / 64 test" in log and "validation split of 18 images held out of the training set" in log
    assert "never used to pick a checkpoint" in log
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("val_top1" in r and "test_top1" not in r for r in rows)     # the test set is not looked at
    best = max(rows, key=lambda r: r["val_top1"])                         # first of equals wins, as in training
    assert summary["best_epoch"] == str(best["epoch"]) and summary["selection"] == "validation split"
    assert "final_epoch_top1" in summary and summary["fusion_ok"]
    assert float(repvgg.read_metadata(out / "best.safetensors")["val_top1"]) == pytest.approx(best["val_top1"],
                                                                                                abs=1e-3)


def test_validation_split_is_stratified_disjoint_and_unaugmented():
    from repvgg.data import build_datasets, split_validation

    tr, te, _ = build_datasets("fashion-mnist-builtin", crop_padding=2, erasing=0.5)
    a, v = split_validation(tr, te, 0.1, seed=0)
    assert len(a) + len(v) == len(tr) and v.targets.bincount().tolist() == [60] * 10
    assert a.train and not v.train and v.erasing == 0
    seen = {bytes(img.numpy()) for img in a.images}
    assert not any(bytes(img.numpy()) in seen for img in v.images[:200])


# ------------------------------------------------------------------ 9. Residual Reorg fuses on load
def test_residual_reorg_is_fused_on_load(tmp_path):
    model = randomize_bn_(_small(block="residual_reorg", small_input=True)).eval()
    path = repvgg.save_checkpoint(model, tmp_path / "r.safetensors")
    fused = repvgg.model_from_checkpoint(path, deploy=True)
    assert fused.is_deployed
    x = torch.randn(2, 3, 32, 32)
    assert rel_err(fused(x), model(x)) < 1e-5


# ------------------------------------------------------------------ 10. missing extras: one line
@pytest.mark.parametrize("module, argv", [
    ("onnx", ["export", "--checkpoint", "{ckpt}", "--format", "onnx", "--out", "{tmp}/m.onnx"]),
    ("onnxruntime", ["quantize", "--checkpoint", "{ckpt}", "--data", "fashion-mnist-builtin", "--out",
                     "{tmp}/m.int8.onnx"]),
    ("timm", ["bench", "--models", "timm:repvgg_a0", "--out", ""]),
])
def test_missing_extra_is_one_line_naming_it(module, argv, train_file, tmp_path, monkeypatch, capsys):
    _, path = train_file
    monkeypatch.setitem(sys.modules, module, None)          # import raises ImportError, as if not installed
    argv = [a.format(ckpt=path, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install \"repvgg[" in err and module in err, err


# ------------------------------------------------------------------ 11. a code payload is named as such
def test_os_system_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload()}, bad)
    with pytest.raises(ckpt.CheckpointError, match="could run code") as e:
        ckpt.read_checkpoint(bad)
    assert "system" in str(e.value) and "truncated" not in str(e.value)
    assert not marker.exists()


# ------------------------------------------------------------------ 12. small things that were tracebacks
def test_bad_sizes_and_inputs_are_clear(capsys):
    assert main(["info", "repvgg_a0", "--image-size", "0"]) == 2
    assert "--image-size must be >= 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="num_classes"):
        repvgg.create_model("repvgg_a0", num_classes=-1)
    with pytest.raises(ValueError, match="in_chans"):
        repvgg.create_model("repvgg_a0", in_chans=0)
    with pytest.raises(TypeError, match="floating-point"):
        _small()(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_renamed_pth_loads_and_a_directory_is_named(tmp_path):
    model = _small().eval()
    renamed = tmp_path / "weights.safetensors"
    torch.save(model.state_dict(), renamed)                  # a .pth under a .safetensors name
    loaded = _small()
    repvgg.load_checkpoint(loaded, renamed)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    with pytest.raises(IsADirectoryError, match="directory"):
        repvgg.load_checkpoint(loaded, tmp_path)


def test_list_accepts_paper_spellings_in_patterns(capsys):
    assert main(["list", "RepVGG-B1*"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == ["repvgg_b1", "repvgg_b1g2", "repvgg_b1g4"]


# ------------------------------------------------------------------ 13. tests that can fail
def _set_eps(model: nn.Module, eps: float) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = eps
    return model


@pytest.mark.parametrize("eps", [1e-3, 0.1])
@pytest.mark.parametrize("block", ["repvgg", "residual_reorg"])
def test_fusion_uses_each_bn_eps(eps, block):
    from repvgg.blocks import RepVGGBlock

    single = _set_eps(randomize_bn_(RepVGGBlock(6, 6, groups=3).double()), eps).eval()
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    assert rel_err(repvgg.reparameterize(single)(x), single(x)) < 1e-12
    model = _set_eps(randomize_bn_(_small(block=block, small_input=True).double()), eps).eval()
    x = torch.randn(2, 3, 17, 17, dtype=torch.float64)
    assert rel_err(repvgg.reparameterize(model)(x), model(x)) < 1e-9
    default = _set_eps(randomize_bn_(_small(block=block, small_input=True).double()), 1e-5).eval()
    assert rel_err(repvgg.reparameterize(default)(x), model(x)) > 1e-6     # eps really matters here


@pytest.mark.parametrize("deploy", [False, True])
def test_an_unexpected_key_is_refused_on_both_load_paths(tmp_path, deploy):
    sd = dict(randomize_bn_(_small()).state_dict())
    sd["stages.0.0.conv3x3.extra"] = torch.zeros(3)
    path = tmp_path / "extra.safetensors"
    from safetensors.torch import save_file

    save_file(sd, str(path))
    with pytest.raises(ckpt.CheckpointError, match="unexpected keys.*extra"):
        repvgg.load_checkpoint(_small(deploy=deploy), path)
