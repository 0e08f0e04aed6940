"""Training: param groups, schedule, recipes/overrides, resume equality, overwrite refusal."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml
from safetensors.torch import load_file

from repvgg import create_model
from repvgg.checkpoint import read_metadata
from repvgg.rebuild import model_from_checkpoint
from repvgg.cli import main
from repvgg.data import read_idx, write_idx
from repvgg.data.fashion_mnist import BUILTIN_DIR
from repvgg.train import (TrainingInterrupted, load_recipe, lr_factor, param_groups, prepare_run,
                          resolve_config, scaled_lr, train)
from repvgg.train.config import training_augmentation
from repvgg.train.state import load_state


def make_tiny_fmnist(folder: Path, n_train: int = 128, n_test: int = 64) -> Path:
    """Real Fashion-MNIST images (the first of the built-in subset) as IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3", "labels-idx1"):
            arr = read_idx(BUILTIN_DIR / f"{split}-{kind}-ubyte.gz")
            write_idx(folder / f"{split}-{kind}-ubyte.gz", arr[:n])
    return folder


def tiny_overrides(data_dir, **kw) -> dict:
    """RepVGG-A0 on 16 px (stride-2 stem): 128 images train in about a second per epoch."""
    return {"data": "fashion-mnist", "data_dir": str(data_dir), "image_size": 16, "small_input": False,
            "batch_size": 32, "epochs": 2, "amp": False, "threads": 1, **kw}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))


# ------------------------------------------------------------------ optimizer groups, schedule
@pytest.mark.parametrize("block", ["repvgg", "dirac", "qa"])
def test_weight_decay_only_on_conv_and_linear_kernels(block):
    model = create_model("repvgg_a0", num_classes=10, block=block)
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0
    kernels = {id(m.weight) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert {id(p) for p in decay["params"]} == kernels
    names = {id(p): n for n, p in model.named_parameters()}
    for p in no_decay["params"]:
        n = names[id(p)]
        assert n.endswith(("bias", "bn.weight", "dirac_alpha", "dirac_beta")) or ".bn" in n or "post_bn" in n, n
    # every trainable parameter is in exactly one group
    all_ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters()) and len(set(all_ids)) == len(all_ids)
    if block == "dirac":
        assert any(names[id(p)].endswith("dirac_alpha") for p in no_decay["params"])
    assert any(names[id(p)] == "head.fc.bias" for p in no_decay["params"])


def test_lr_schedule_warmup_cosine_to_zero():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10]))            # rising warm-up
    assert all(a >= b for a, b in zip(f[10:], f[11:]))             # cosine decay
    assert lr_factor(total, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)


# ------------------------------------------------------------------ recipes
def test_recipes_load_and_match_the_paper():
    normal, heavy, small = (load_recipe(r) for r in ("normal", "heavy", "small"))
    assert (normal["optimizer"], normal["momentum"], normal["lr"], normal["epochs"]) == ("sgd", 0.9, 0.1, 120)
    assert normal["weight_decay"] == 1e-4 and normal["schedule"] == "cosine" and normal["warmup_epochs"] == 0
    assert (heavy["warmup_epochs"], heavy["epochs"], heavy["label_smoothing"], heavy["mixup"], heavy["aug"]) == \
        (5, 200, 0.1, 0.2, "autoaugment")
    assert small["small_input"] is True and small["width"] == 0.5 and small["crop_padding"] == 1
    assert small["depths"] == [1, 2, 4, 1] and normal["depths"] is None and heavy["depths"] is None


@pytest.mark.parametrize("key,value,msg", [("width", 0, "width must be"), ("crop_padding", -1, "crop_padding"),
                                           ("crop_padding", 1.5, "crop_padding"),
                                           ("random_erasing", 1.5, "random_erasing"),
                                           ("random_erasing", True, "random_erasing"),
                                           ("depths", [2, 4, 1], "depths"), ("depths", [2, 0, 6, 1], "depths")])
def test_bad_size_settings_are_refused(key, value, msg):
    with pytest.raises(ValueError, match=msg):
        resolve_config("small", {key: value})


def test_depths_flag_trains_a_shallower_model_its_checkpoints_rebuild(tmp_path, tiny, capsys):
    args = ["train", "--recipe", "small", "--data", "fashion-mnist", "--data-dir", str(tiny), "--image-size", "16",
            "--no-small-input", "--batch-size", "32", "--epochs", "1", "--no-amp", "--threads", "1", "--quiet"]
    with pytest.raises(SystemExit):
        main(args + ["--output", str(tmp_path / "bad"), "--depths", "2,x,6,1"])
    assert "comma-separated block counts" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    out = tmp_path / "run"
    assert main(args + ["--output", str(out), "--depths", "1,1,2,1"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["depths"] == [1, 1, 2, 1]
    for name in ("best.safetensors", "deploy.safetensors"):
        assert [len(s) for s in model_from_checkpoint(out / name).stages] == [1, 1, 2, 1]


def test_trains_on_fmnist_items_in_colour(tmp_path, tiny, monkeypatch):
    """fmnist-items (the scene segmenters' pretraining) trains through the same command: 3-channel
    64 px pictures from the same IDX files, the model built for 3 channels."""
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert main(["train", "--recipe", "small", "--data", "fmnist-items", "--data-dir", str(tiny), "--image-size", "16",
                 "--no-small-input", "--batch-size", "32", "--epochs", "1", "--no-amp", "--threads", "1", "--quiet",
                 "--depths", "1,1,1,1", "--output", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] == "fmnist-items"
    assert model_from_checkpoint(out / "best.safetensors").in_chans == 3
    assert len(list((tmp_path / "cache").glob("fmnist-items-*.npz"))) == 1


def test_depths_model_overrides_a_recipe_back_to_the_models_own():
    from repvgg.commands.train import _depths

    assert resolve_config("small")["depths"] == [1, 2, 4, 1]
    assert resolve_config("small", {"depths": _depths("model")})["depths"] is None
    assert resolve_config("small", {"depths": _depths("2,4,6,1")})["depths"] == [2, 4, 6, 1]
    assert resolve_config("small", {"depths": None})["depths"] == [1, 2, 4, 1]    # None: not given


def test_override_precedence_and_recipe_files(tmp_path):
    cfg = resolve_config("heavy", {"epochs": 3, "lr": None, "ema": False})
    assert cfg["epochs"] == 3 and cfg["lr"] == 0.1 and cfg["ema"] is False and cfg["mixup"] == 0.2
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"epochs": 7, "batch_size": 64}))
    cfg = resolve_config(str(f), {"batch_size": 16})
    assert (cfg["epochs"], cfg["batch_size"], cfg["momentum"]) == (7, 16, 0.9)   # defaults from normal
    f.write_text(yaml.safe_dump({"epochz": 7}))
    with pytest.raises(ValueError, match="unknown setting.*epochz"):
        resolve_config(str(f))
    with pytest.raises(FileNotFoundError, match="neither a built-in recipe"):
        resolve_config("nope")
    with pytest.raises(ValueError, match="epochs must be a positive"):
        resolve_config("normal", {"epochs": 0})


def test_training_augmentation_falls_back_on_the_recipe_then_the_defaults():
    small = load_recipe("small")
    assert training_augmentation({"recipe": "small"}) == {
        "recipe_aug": small["aug"], "crop_padding": small["crop_padding"], "erasing": small["random_erasing"]}
    assert training_augmentation({"recipe": "/gone/my.yaml"}) == {}   # a recipe file: not guessed
    assert training_augmentation({}) == {}


# ------------------------------------------------------------------ output folder rules
def test_refuses_to_overwrite_another_run(tmp_path, tiny):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    (out / "config.yaml").write_text("model: x\n")
    with pytest.raises(FileExistsError, match="already holds a run.*--resume.*--overwrite"):
        prepare_run(out, "small", tiny_overrides(tiny))
    with pytest.raises(FileNotFoundError, match="no resumable state"):
        prepare_run(out, "small", tiny_overrides(tiny), resume=True)
    # the heavy recipe's pieces run through the real loop here: AutoAugment, mixup, warm-up, checkpointing
    cfg = prepare_run(out, "heavy", tiny_overrides(tiny, model="repvgg_a0", epochs=1, aug="autoaugment",
                                                   grad_checkpointing=True), overwrite=True)
    train(cfg, out, overwrite=True, quiet=True)
    assert (out / "keep.txt").read_text() == "user file"          # only run files are replaced
    assert (out / "deploy.safetensors").is_file()
    # a later fine-tune (after pruning) reads the augmentation the run trained with from the checkpoint
    assert training_augmentation(read_metadata(out / "deploy.safetensors")) == {
        "recipe_aug": "autoaugment", "crop_padding": cfg["crop_padding"], "erasing": float(cfg["random_erasing"])}
    with pytest.raises(ValueError, match="saved config; epochs=5 differs"):
        prepare_run(out, "small", {"epochs": 5}, resume=True)


# ------------------------------------------------------------------ resume == uninterrupted
@pytest.mark.parametrize("stop", [2, 3], ids=["mid-epoch", "epoch-end"])   # 115 of 128 train, val 13: 3 steps/epoch
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny, stop):
    kw = tiny_overrides(tiny, ema=True, mixup=0.2, label_smoothing=0.1, drop_rate=0.1, grad_clip=1.0)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(prepare_run(straight, "small", kw), straight, quiet=True)
    with pytest.raises(TrainingInterrupted, match="resumable state saved"):
        train(prepare_run(resumed, "small", kw), resumed, quiet=True, stop_at_step=stop)
    st = load_state(resumed / "last.state.pt")                      # loads with weights_only=True
    assert st["step"] == stop and st["epoch"] == stop // 3
    assert not (resumed / "deploy.safetensors").exists()
    train(prepare_run(resumed, overrides={}, resume=True), resumed, resume=True, quiet=True)
    for name in ("last.safetensors", "last_ema.safetensors", "best.safetensors", "deploy.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"{name}:{k}")
    assert load_state(resumed / "last.state.pt")["step"] == load_state(straight / "last.state.pt")["step"] == 6
    rows = (resumed / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2                                            # one row per epoch, none duplicated


def test_state_file_is_weights_only_loadable(tmp_path, tiny):
    out = tmp_path / "r"
    with pytest.raises(TrainingInterrupted):
        train(prepare_run(out, "small", tiny_overrides(tiny, ema=True, train_subset=96)), out, quiet=True,
              stop_at_step=2)
    st = torch.load(out / "last.state.pt", weights_only=True)
    assert "(repvgg blocks) on fashion-mnist [data_dir: 96 train" in (out / "train.log").read_text()
    assert {"optimizer", "scheduler", "scaler", "rng", "epoch", "step", "config"} <= st.keys()
    assert st["optimizer"]["state"], "momentum buffers are saved"


def test_torn_checkpoint_pair_is_detected(tmp_path, tiny):
    out = tmp_path / "r"
    with pytest.raises(TrainingInterrupted):
        train(prepare_run(out, "small", tiny_overrides(tiny)), out, quiet=True, stop_at_step=2)
    st = torch.load(out / "last.state.pt", weights_only=True)
    st["step"] = 99
    torch.save(st, out / "last.state.pt")
    with pytest.raises(ValueError, match="different steps"):
        train(prepare_run(out, resume=True), out, resume=True, quiet=True)


def test_bad_data_spec_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no IDX files"):
        train(prepare_run(tmp_path / "r", "small", {"data": "fashion-mnist", "data_dir": str(tmp_path)}),
              tmp_path / "r", quiet=True)
    with pytest.raises(ValueError, match="train_subset=100000 must be in 1..54000|train_subset=100000 must be in 1..5400"):
        train(prepare_run(tmp_path / "r3", "small", {"data": "fashion-mnist-builtin", "train_subset": 100000}),
              tmp_path / "r3", quiet=True)
    with pytest.raises(ValueError, match="unknown data spec"):
        train(prepare_run(tmp_path / "r2", "small", {"data": "mnist-ish"}), tmp_path / "r2", quiet=True)


# ------------------------------------------------------------------ signals
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_saves_and_exits_nonzero(tmp_path, tiny, sig):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "repvgg", "train", "--output", str(out), "--recipe", "small",
           "--data", "fashion-mnist", "--data-dir", str(tiny), "--image-size", "16", "--no-small-input",
           "--batch-size", "8", "--epochs", "50", "--threads", "1", "--no-amp", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "train.log").exists():       # written once the handlers are installed
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() else "timeout"
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), err
    assert f"stopped by {sig}" in err and "--resume" in err
    st = load_state(out / "last.state.pt")
    assert st["step"] >= 1 and st["epoch"] < 50
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "no temp files left behind"
    if sig == "SIGINT":                           # and it resumes from there
        r = subprocess.run([sys.executable, "-m", "repvgg", "train", "--output", str(out), "--resume",
                            "--quiet", "--stop-at-step", str(st["step"] + 3)],
                           capture_output=True, text=True, timeout=120, env={**os.environ})
        assert r.returncode == 130 and "stopped by stop request" in r.stderr, r.stderr
        assert load_state(out / "last.state.pt")["step"] == st["step"] + 3


def test_gradient_checkpointing_matches_plain_backward():
    from repvgg.train import GradCheckpointed

    torch.manual_seed(0)
    model = create_model("repvgg_a0", num_classes=10, in_chans=1)
    twin = create_model("repvgg_a0", num_classes=10, in_chans=1)
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(x), y).backward()
    nn.functional.cross_entropy(GradCheckpointed(twin)(x), y).backward()
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=n)
    for (n, b), c in zip(model.named_buffers(), twin.buffers()):   # BN stats updated once, not twice
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-6, msg=n)


def test_train_subset_keeps_the_augmentation_settings():
    from repvgg.data import build_datasets
    from repvgg.data import train_subset as _subset

    train, _, _ = build_datasets("fashion-mnist-builtin", crop_padding=1, erasing=0.4)
    sub = _subset(train, 50, seed=0)
    assert len(sub) == 50 and sub.padding == 1 and sub.erasing == 0.4 and sub.train
    assert len(train) == 6000                                       # the full set is untouched


# ------------------------------------------------------------------ amp: auto on a CPU
@pytest.mark.parametrize("fp32_s, bf16_s, want", [(1.0, 0.6, torch.bfloat16), (1.0, 0.95, None), (1.0, 1.2, None)])
def test_cpu_amp_probe_keeps_bf16_only_where_clearly_faster(monkeypatch, fp32_s, bf16_s, want):
    from repvgg.train import amp

    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(amp, "time_train_steps", lambda m, x, y, dtypes, rounds: {None: fp32_s, torch.bfloat16: bf16_s})
    dtype, speedup, per_image = amp.probe_cpu_amp(create_model("repvgg_a0", num_classes=10), (256, 3, 32, 32), 10)
    assert dtype == want and speedup == pytest.approx(fp32_s / bf16_s)
    assert per_image["fp32"] == pytest.approx(fp32_s / amp.PROBE_BATCH)      # probe batch capped
    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: False)
    assert amp.probe_cpu_amp(create_model("repvgg_a0", num_classes=10), (8, 3, 32, 32), 10)[0] is None


def test_cpu_amp_probe_leaves_the_model_and_the_rng_alone(monkeypatch):
    from repvgg.train import amp

    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: True)     # time both dtypes on any CPU
    model = create_model("repvgg_a0", num_classes=10, drop_rate=0.5).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    dtype, speedup, per_image = amp.probe_cpu_amp(model, (4, 3, 16, 16), 10, channels_last=True)
    assert torch.equal(torch.rand(3), expected), "the probe consumed the global RNG"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert speedup > 0 and per_image["fp32"] > 0 and per_image["bf16"] > 0
    assert (dtype is torch.bfloat16) == (speedup >= amp.BF16_MIN_SPEEDUP)


def test_amp_auto_is_settled_once_and_saved_for_resume(tmp_path, tiny, monkeypatch):
    from repvgg.train import loop

    calls = []
    def fake_probe(model, shape, num_classes, channels_last=False):
        calls.append(shape)
        return None, 0.85, {"fp32": 1e-3, "bf16": 1.2e-3}
    monkeypatch.setattr(loop, "probe_cpu_amp", fake_probe)
    out = tmp_path / "r"
    with pytest.raises(TrainingInterrupted):
        train(prepare_run(out, "small", tiny_overrides(tiny, amp="auto")), out, quiet=True, stop_at_step=2)
    assert calls == [(32, 1, 16, 16)]
    assert yaml.safe_load((out / "config.yaml").read_text())["amp"] is False
    assert "bf16 training steps ran 0.85x the fp32 speed on this CPU -> fp32" in (out / "train.log").read_text()
    cfg = prepare_run(out, overrides={"amp": "auto"}, resume=True)      # `auto` again is not a conflict
    train(cfg, out, resume=True, quiet=True)
    assert len(calls) == 1, "resume keeps the saved choice instead of timing again"
    with pytest.raises(ValueError, match="amp='bf16' differs"):
        prepare_run(out, overrides={"amp": "bf16"}, resume=True)


def test_deterministic_seeding_does_not_nan_fill_new_tensors():
    """use_deterministic_algorithms also turns on NaN-filling of every new tensor, a 6% cost per
    training step on CPU that changes no result; seed_everything keeps determinism without it."""
    import torch

    from repvgg.train.state import seed_everything

    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]
