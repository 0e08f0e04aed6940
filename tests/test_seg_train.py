"""Segmentation training end to end on tiny fmnist-scenes: run folder, resume, fusion check, CLI verbs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from repvgg.cli import main
from repvgg.seg import load_segmenter
from repvgg.seg.train import SegTrainer, poly_lr, prepare_seg_run, train_segmenter
from repvgg.train import TrainingInterrupted

TINY = {"scenes": {"size": 48, "num_train": 48, "num_test": 8}, "epochs": 2, "batch_size": 8,
        "head_channels": 16, "threads": 1, "val_split": 0.17}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPVGG_CACHE", str(tmp_path / "cache"))


def _cfg(out, **kw):
    return prepare_seg_run(out, "scenes", {"model": "pspnet_repvgg_a0", **TINY, **kw})


def test_train_writes_a_fused_deploy_checkpoint_that_agrees(tmp_path):
    out = tmp_path / "run"
    summary = train_segmenter(_cfg(out), out, quiet=True)
    assert summary["fusion_ok"] and summary["pixel_agreement_pct"] >= 99.99
    assert abs(summary["train_miou"] - summary["deploy_miou"]) <= 0.01
    for f in ("best.safetensors", "last.safetensors", "deploy.safetensors", "summary.json", "samples.png",
              "curves.png", "metrics.csv"):
        assert (out / f).is_file(), f
    deployed = load_segmenter(out / "deploy.safetensors")
    assert deployed.aux_head is None and deployed.spec["deployed"]
    assert not any(k.startswith("aux_head") for k in load_file(out / "deploy.safetensors"))
    x = torch.randn(2, 3, 48, 48)
    trained = load_segmenter(out / "best.safetensors")
    assert torch.equal(trained(x).argmax(1), deployed(x).argmax(1))


def test_resume_after_a_stop_continues_bit_for_bit(tmp_path):
    # precision pinned: `amp: auto` is settled by a timing probe, which a busy CPU can tip either way
    a, b = tmp_path / "a", tmp_path / "b"
    SegTrainer(_cfg(a, amp=False), a, quiet=True).run()
    with pytest.raises(TrainingInterrupted, match="--resume"):
        SegTrainer(_cfg(b, amp=False), b, quiet=True).run(stop_at_step=4)
    cfg = prepare_seg_run(b, "scenes", {}, resume=True)
    SegTrainer(cfg, b, resume=True, quiet=True).run()
    wa, wb = load_file(a / "last.safetensors"), load_file(b / "last.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_an_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.safetensors").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--resume"):
        _cfg(out)
    assert (out / "best.safetensors").read_bytes() == b"precious"


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown segmenter"):
        prepare_seg_run(tmp_path / "x", "scenes", {"model": "pspnet_nope"})
    with pytest.raises(ValueError, match="scale"):
        prepare_seg_run(tmp_path / "x", "scenes", {"scale": [2.0, 1.0]})
    with pytest.raises(ValueError, match="unknown setting"):
        prepare_seg_run(tmp_path / "x", "scenes", {"bins": 3})


def test_a_block_variant_trains_and_fuses_to_the_same_plain_network(tmp_path):
    """block: identity_no_bn (paper Table 7) trains a different train-time form of the same deploy segmenter;
    the checkpoints say so, load back, and the fused form agrees with the trained one."""
    out = tmp_path / "run"
    summary = train_segmenter(_cfg(out, block="identity_no_bn", epochs=1, amp=False), out, quiet=True)
    assert summary["fusion_ok"] and summary["pixel_agreement_pct"] >= 99.99
    trained = load_segmenter(out / "best.safetensors")
    assert trained.spec["block"] == "identity_no_bn"
    assert not any(k.endswith("identity.bn.weight") for k in trained.state_dict())
    deployed = load_segmenter(out / "deploy.safetensors")
    plain = load_segmenter(out / "best.safetensors", deploy=True)
    assert deployed.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(trained(x).argmax(1), deployed(x).argmax(1))
    # a backbone checkpoint trained with the paper's block does not fit, and says which keys are extra
    from repvgg import create_model
    from repvgg.checkpoint import CheckpointError, save_checkpoint
    from repvgg.seg import create_segmenter
    save_checkpoint(create_model("repvgg_a0", num_classes=10), tmp_path / "paper_block.safetensors")
    with pytest.raises(CheckpointError, match="unexpected keys .*identity.bn"):
        create_segmenter("pspnet_repvgg_a0", 3, head_channels=8, block="identity_no_bn",
                         backbone_checkpoint=tmp_path / "paper_block.safetensors")
    with pytest.raises(ValueError, match="unknown block variant 'nope'"):
        prepare_seg_run(tmp_path / "x", "scenes", {"block": "nope"})
    with pytest.raises(ValueError, match="ResNet backbone"):
        prepare_seg_run(tmp_path / "x", "scenes", {"model": "pspnet_resnet18", "block": "identity_no_bn"})


def test_bad_data_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    cfg = prepare_seg_run(out, "scenes", {"data": "cityscapes", "data_dir": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="no train split"):
        SegTrainer(cfg, out, quiet=True)
    assert not out.exists()


def test_time_budget_fits_the_poly_schedule(tmp_path):
    out = tmp_path / "run"
    t = SegTrainer(_cfg(out, time_budget_min=0.5), out, quiet=True)
    t.step, t.train_time = 12, 3.0
    t._fit_budget([0.5] * 12)        # 27 s left at 0.5 s per step
    assert t.total_steps == 12 + 54
    t.step, t.train_time = 40, 29.8          # refitted after every step: a spent budget ends the run now
    t._fit_budget([0.5] * 12)
    assert t.total_steps == 40
    assert poly_lr(0.01, 0, 10, 0.9) == 0.01 and poly_lr(0.01, 10, 10, 0.9) == 0.0


def test_a_spent_time_budget_ends_training_within_the_epochs(tmp_path, monkeypatch):
    """A 0.03 s budget is spent by the calibration steps: the run stops there, not at 40 epochs
    (the refit once allowed one more step after every step, so a budget never ended a run)."""
    import repvgg.seg.train as seg_train

    monkeypatch.setattr(seg_train, "_CALIBRATION_STEPS", 3)
    out = tmp_path / "run"
    t = SegTrainer(_cfg(out, epochs=40, time_budget_min=0.0005), out, quiet=True)
    t.run()
    assert 3 <= t.step <= 4 < 40 * t.steps_per_epoch


def test_cli_train_eval_predict(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(json.dumps({**TINY, "epochs": 1}))
    out = tmp_path / "run"
    assert main(["seg", "train", "--recipe", str(recipe), "--output", str(out), "--quiet"]) == 0
    assert main(["seg", "eval", "--checkpoint", str(out / "deploy.safetensors")]) == 0
    assert "mIoU" in capsys.readouterr().out
    img = tmp_path / "shop.png"
    Image.fromarray(np.random.randint(0, 255, (30, 44, 3), dtype=np.uint8)).save(img)
    assert main(["seg", "predict", "--checkpoint", str(out / "deploy.safetensors"), str(img),
                 "-o", str(tmp_path / "pred")]) == 0
    mask = np.array(Image.open(tmp_path / "pred" / "shop_mask.png"))
    assert mask.shape == (30, 44) and mask.max() < 11
    assert Image.open(tmp_path / "pred" / "shop_overlay.png").size == (44, 30)
    before = (tmp_path / "pred" / "shop_mask.png").read_bytes()
    assert main(["seg", "predict", "--checkpoint", str(out / "deploy.safetensors"), str(img),
                 "-o", str(tmp_path / "pred")]) == 2
    assert "--force" in capsys.readouterr().err
    assert (tmp_path / "pred" / "shop_mask.png").read_bytes() == before
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["seg", "predict", "--checkpoint", str(out / "deploy.safetensors"), str(bad),
                 "-o", str(tmp_path / "pred2")]) == 2
    assert "bad.png: unreadable image" in capsys.readouterr().err
    assert not (tmp_path / "pred2").exists()


def test_cli_refuses_a_classification_checkpoint_for_seg_eval(tmp_path, capsys):
    from repvgg import create_model, save_checkpoint

    ck = save_checkpoint(create_model("repvgg_a0", num_classes=10), tmp_path / "cls.safetensors")
    assert main(["seg", "eval", "--checkpoint", str(ck)]) == 2
    assert "not a segmenter checkpoint" in capsys.readouterr().err


def test_onnx_export_of_the_fused_segmenter(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from repvgg.deploy.export import export_model
    from repvgg.seg import create_segmenter

    train_form = create_segmenter("pspnet_repvgg_a0", 5, head_channels=16).eval()
    with pytest.raises(ValueError, match="reparameterize"):
        export_model(train_form, tmp_path / "x.onnx", image_size=(48, 48))
    assert not (tmp_path / "x.onnx").exists()
    out = tmp_path / "run"
    train_segmenter(_cfg(out, epochs=1), out, quiet=True)
    assert main(["export", "--checkpoint", str(out / "best.safetensors"), "--out", str(tmp_path / "s.onnx")]) == 0
    text = capsys.readouterr()
    assert "train-time segmenter checkpoint" in text.out + text.err
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "s.onnx")).graph.node}
    assert ops <= {"Conv", "Relu", "AveragePool", "Resize", "Concat", "ReduceMean"}
    assert main(["export", "--checkpoint", str(out / "deploy.safetensors"), "--out", str(tmp_path / "t.onnx"),
                 "--image-size", "50", "50"]) == 2
    assert "multiple of every bin" in capsys.readouterr().err


def test_cli_bench_prints_the_pair_and_refuses_unknown_names(capsys):
    assert main(["seg", "bench", "pspnet_repvgg_a0", "pspnet_resnet18", "--size", "48", "--repeats", "1",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| pspnet_repvgg_a0 |" in out and "| pspnet_resnet18 |" in out and "1.00x" in out
    assert main(["seg", "bench", "pspnet_vgg16"]) == 2
    assert "unknown segmenter" in capsys.readouterr().err
    pytest.importorskip("onnxruntime")
    assert main(["seg", "bench", "pspnet_repvgg_a0", "--size", "48", "--repeats", "1", "--threads", "1",
                 "--runtime", "onnxruntime"]) == 0
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["seg", "bench", "pspnet_repvgg_a0", "--device", "cuda", "--runtime", "onnxruntime"]) == 2
    assert "onnxruntime" in capsys.readouterr().err


def _scenes_summary(miou: float) -> str:
    """A finished segmentation run's summary.json, as `repvgg seg train` writes it, with this test mIoU."""
    return json.dumps({"deploy_miou": miou, "train_miou": miou, "pixel_acc": 90.0, "val_miou": "49.0",
                       "pixel_agreement_pct": 100.0, "fusion_ok": True, "train_time_s": 60.0, "best_epoch": "3",
                       "per_class_iou": {}})


def test_seg_scenes_benchmark_collects_finished_runs(tmp_path, monkeypatch):
    import sys

    from tests.conftest import load_benchmark

    mod = load_benchmark("seg_scenes")
    runs = tmp_path / "runs"
    for m, s, miou in (("pspnet_repvgg_a0", 0, 50.0), ("pspnet_repvgg_a0", 1, 52.0), ("pspnet_resnet18", 0, 40.0)):
        d = runs / f"{m}_s{s}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(_scenes_summary(miou))
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 3, "step": 120}) + "\n")
        (d / "config.yaml").write_text("lr: 0.001\namp: bf16\n" if m.endswith("a0") else "lr: 0.002\namp: false\n")
    pre = runs / "pspnet_resnet18_s0_pretrain"      # a pretrained backbone (summary as older runs wrote it)
    pre.mkdir()
    (pre / "summary.json").write_text(json.dumps({"val_top1": "87.2833", "deploy_top1": 86.5}))
    (pre / "harness.json").write_text(json.dumps({"pretrain_min": 42.8}))
    items = runs / "pspnet_repvgg_a0_s0_pretrain"    # one on fmnist-items at its own size
    items.mkdir()
    (items / "summary.json").write_text(json.dumps({"val_top1": 80.0, "deploy_top1": 79.0}))
    (items / "config.yaml").write_text("data: fmnist-items\nimage_size: null\n")
    # a seed added later by another command (--keep-finished): the table names both commands
    (runs / "pspnet_repvgg_a0_s1" / "harness.json").write_text(json.dumps({"command": "python seg_scenes.py --seeds 1"}))
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", ["seg_scenes.py", "--collect-only", "--runs", str(runs), "--seeds", "0", "1",
                                      "--models", "pspnet_repvgg_a0", "pspnet_resnet18", "--tag", "t"])
    assert mod.main() == 0
    md = (tmp_path / "benchmarks" / "results" / "seg_scenes_t.md").read_text()
    assert "| pspnet_repvgg_a0 | 51.00 +- 1.41 | 50.00, 52.00 | 49.00, 49.00 | 90.00 | 120/120 | 1.0/1.0 | yes" in md
    assert "| pspnet_resnet18 | 40.00 +- 0.00 | 40.00 | 49.00 |" in md
    assert "| pspnet_resnet18 | 0 | 42.8 | fashion-mnist | 28 px | 87.28 / 86.50 |" in md
    assert "| pspnet_repvgg_a0 | 0 | nan | fmnist-items | 64 px | 80.00 / 79.00 |" in md
    assert "- runs trained by: `python seg_scenes.py --seeds 1`" in md
    assert "recipe `scenes` (lr 0.001, 0.002; precision bf16, fp32)" in md    # what the runs trained with

    # a change of machine: seed 0's runs are gone, seed 1 is still here; the table keeps seed 0 as collected
    results = tmp_path / "benchmarks" / "results" / "seg_scenes_t.json"
    earlier = json.loads(results.read_text())
    earlier = {**earlier, "date": "2026-01-02 03:04 UTC",       # as files from before per-seed dates were kept
               "rows": [{**r, "runs": [{k: v for k, v in x.items() if k != "collected"} for x in r["runs"]]}
                        for r in earlier["rows"]]}
    shutil.rmtree(runs / "pspnet_repvgg_a0_s0")
    shutil.rmtree(runs / "pspnet_resnet18_s0")
    (runs / "pspnet_repvgg_a0_s1" / "summary.json").write_text(_scenes_summary(54.0))
    results.write_text(json.dumps(earlier))
    assert mod.main() == 0          # without --keep-earlier-seeds: only what is in --runs
    md = results.with_suffix(".md").read_text()
    assert "| pspnet_repvgg_a0 | 54.00 +- 0.00 | 54.00 |" in md and "| pspnet_resnet18 |" not in md
    results.write_text(json.dumps(earlier))
    monkeypatch.setattr(sys, "argv", sys.argv + ["--keep-earlier-seeds"])
    assert mod.main() == 0
    md = results.with_suffix(".md").read_text()
    assert "| pspnet_repvgg_a0 | 52.00 +- 2.83 | 50.00, 54.00 |" in md           # seed 0 kept, seed 1 new
    assert "| pspnet_resnet18 | 40.00 +- 0.00 | 40.00 |" in md
    assert "| pspnet_resnet18 | 0 | 42.8 | fashion-mnist | 28 px | 87.28 / 86.50 |" in md
    assert "- seeds 0 as collected on 2026-01-02 03:04 UTC (kept from this file's JSON" in md
    assert "- paired by seed, pspnet_repvgg_a0 - pspnet_resnet18: +10.00" not in md    # one shared seed: no interval


def test_seg_scenes_pairs_models_by_seed_with_a_t_interval():
    from tests.conftest import load_benchmark

    mod = load_benchmark("seg_scenes")
    assert mod.t975(1) == 12.706 and mod.t975(10) == 2.228 and abs(mod.t975(30) - 2.042) < 0.03
    rows = [{"model": m, "runs": [{"seed": s, "test_miou": v} for s, v in enumerate(vals)]}
            for m, vals in (("a", [51.0, 49.0, 50.0]), ("b", [52.0, 51.0, 50.0]))]
    line, = mod._paired_line({"rows": rows})
    # d = -1, -2, 0: mean -1, sd 1, half-width 4.303 / sqrt(3) = 2.48
    assert line == "- paired by seed, a - b: -1.00, -2.00, +0.00; mean -1.00 +- 1.00, 95% t-interval [-3.48, +1.48] (3 seeds)"
    assert mod._paired_line({"rows": rows[:1]}) == []


def test_seg_scenes_benchmark_can_add_seeds_to_finished_runs(tmp_path):
    from tests.conftest import load_benchmark

    mod = load_benchmark("seg_scenes")
    (tmp_path / "a_s0").mkdir()
    (tmp_path / "a_s0" / "summary.json").write_text("{}")
    assert mod.pending_runs(["a", "b"], [0, 1], tmp_path, keep_finished=True) == [("a", 1), ("b", 0), ("b", 1)]
    assert len(mod.pending_runs(["a", "b"], [0, 1], tmp_path, keep_finished=False)) == 4


def test_seg_scenes_benchmark_pretrains_each_backbone_then_starts_the_segmenter_from_it(tmp_path, monkeypatch):
    import argparse
    import sys

    from tests.conftest import load_benchmark

    mod = load_benchmark("seg_scenes")
    assert [mod.backbone_of(m) for m in ("pspnet_repvgg_a0_fast", "pspnet_repvgg_b1g2", "pspnet_resnet18")] == \
        ["repvgg_a0", "repvgg_b1g2", "tv:resnet18"]
    args = argparse.Namespace(pretrain_epochs=2, data_dir=None, threads=1, budget_min=1.0, recipe="scenes", parallel=2,
                              models=["pspnet_resnet18", "pspnet_repvgg_a0"], seeds=[0], keep_finished=False,
                              amp="auto", lr=None, pretrain_size=None, pretrain_data="fashion-mnist", block="repvgg")
    pre, seg = mod.commands(args, "pspnet_resnet18", 0, tmp_path)
    assert pre[pre.index("--data") + 1] == "fashion-mnist"
    assert pre[pre.index("--model") + 1] == "tv:resnet18" and "--no-small-input" in pre and "--width" not in pre
    assert seg[seg.index("--backbone-checkpoint") + 1] == str(tmp_path / "pspnet_resnet18_s0_pretrain" / "best.safetensors")
    assert "--no-amp" not in pre and "--amp" not in seg           # auto: each run's own probe decides
    assert "--lr" not in seg                                      # the recipe's lr unless --lr is given
    seg = mod.commands(argparse.Namespace(**{**vars(args), "lr": 0.001}), "pspnet_resnet18", 0, tmp_path)[1]
    assert seg[seg.index("--lr") + 1] == "0.001"
    pre = mod.commands(argparse.Namespace(**{**vars(args), "pretrain_size": 56}), "pspnet_resnet18", 0, tmp_path)[0]
    assert pre[pre.index("--image-size") + 1] == "56"
    pre = mod.commands(argparse.Namespace(**{**vars(args), "pretrain_data": "fmnist-items"}), "pspnet_resnet18", 0,
                       tmp_path)[0]
    assert pre[pre.index("--data") + 1] == "fmnist-items" and "--image-size" not in pre
    pinned = mod.commands(argparse.Namespace(**{**vars(args), "amp": "fp32"}), "pspnet_resnet18", 0, tmp_path)
    assert all("--no-amp" in cmd for cmd in pinned)
    # a train-time block variant goes to the RepVGG segmenter and its pretraining, never to a ResNet
    variant = argparse.Namespace(**{**vars(args), "block": "identity_no_bn"})
    for cmd in mod.commands(variant, "pspnet_repvgg_a0", 0, tmp_path):
        assert cmd[cmd.index("--block") + 1] == "identity_no_bn"
    assert all("--block" not in cmd for cmd in mod.commands(variant, "pspnet_resnet18", 0, tmp_path))
    assert "--backbone-checkpoint" not in mod.commands(argparse.Namespace(**{**vars(args), "pretrain_epochs": 0}),
                                                       "pspnet_resnet18", 0, tmp_path)[0]
    # the chain: the segmenter starts only after its pretraining succeeded, and only once every pretraining
    # has ended (segmenters of a comparison start together); a failed pretraining stops its job
    marker, slow_done = tmp_path / "segmenter_ran_{}", tmp_path / "slow_pretraining_ended"
    def fake_commands(args, m, s, runs):
        (runs / f"{m}_s{s}_pretrain").mkdir()
        pretrain = ("raise SystemExit(0)" if m == "pspnet_repvgg_a0" else
                    f"import time; time.sleep(3); open({str(slow_done)!r}, 'w'); raise SystemExit(3)")
        return [[sys.executable, "-c", pretrain],
                [sys.executable, "-c", f"import os; assert os.path.exists({str(slow_done)!r}); "
                                       f"open({str(marker).format(m)!r}, 'w'); os.mkdir({str(runs / f'{m}_s{s}')!r})"]]
    monkeypatch.setattr(mod, "commands", fake_commands)
    mod.launch(args, tmp_path)
    assert (tmp_path / "segmenter_ran_pspnet_repvgg_a0").is_file()
    assert not (tmp_path / "segmenter_ran_pspnet_resnet18").exists()
    assert (tmp_path / "pspnet_repvgg_a0_s0_pretrain" / "harness.json").is_file()
    assert "command" in json.loads((tmp_path / "pspnet_repvgg_a0_s0" / "harness.json").read_text())


def test_seg_scenes_total_budget_gives_each_segmenter_what_its_pretraining_left(tmp_path, monkeypatch, capsys):
    import argparse
    import sys

    from tests.conftest import load_benchmark

    mod = load_benchmark("seg_scenes")
    cmd = ["repvgg", "seg", "train", "--time-budget-min", "30.0", "--output", "x"]
    assert mod.with_budget(cmd, 32.25) == ["repvgg", "seg", "train", "--time-budget-min", "32.250", "--output", "x"]
    # the chain with --total-budget-min: each segmenter's budget is the total less its own pretraining
    seen = tmp_path / "budgets.txt"
    def fake_commands(args, m, s, runs):
        (runs / f"{m}_s{s}_pretrain").mkdir()
        wait = {"pspnet_repvgg_a0": 0.0, "pspnet_resnet18": 6.0}[m]
        return [[sys.executable, "-c", f"import time; time.sleep({wait})"],
                [sys.executable, "-c", f"import sys; open({str(seen)!r}, 'a').write({m!r} + ' ' + sys.argv[-1] + '\\n')",
                 "--time-budget-min", "999"]]
    monkeypatch.setattr(mod, "commands", fake_commands)
    args = argparse.Namespace(models=["pspnet_repvgg_a0", "pspnet_resnet18"], seeds=[0], keep_finished=False,
                              parallel=2, total_budget_min=0.2)
    mod.launch(args, tmp_path)
    got = dict(line.split() for line in seen.read_text().splitlines())
    pre = {m: json.loads((tmp_path / f"{m}_s0_pretrain" / "harness.json").read_text())["pretrain_min"] for m in got}
    for m, minutes in got.items():
        assert float(minutes) == pytest.approx(0.2 - pre[m], abs=1e-3)
    assert float(got["pspnet_repvgg_a0"]) > float(got["pspnet_resnet18"])   # the faster pretraining leaves more
    # a pretraining that used up the total trains no segmenter, and says so
    for f in tmp_path.iterdir():
        if f.is_dir():
            for g in f.iterdir():
                g.unlink()
            f.rmdir()
    seen.unlink()
    mod.launch(argparse.Namespace(**{**vars(args), "total_budget_min": 0.07}), tmp_path)
    assert seen.read_text().split() == ["pspnet_repvgg_a0", f"{float(seen.read_text().split()[1]):.3f}"]
    assert "pspnet_resnet18_s0: its pretraining took all of --total-budget-min 0.07" in capsys.readouterr().err


def test_seg_scenes_benchmark_reuses_a_finished_pretraining_of_the_same_kind(tmp_path):
    import argparse

    from tests.conftest import load_benchmark

    mod = load_benchmark("seg_scenes")
    args = argparse.Namespace(pretrain_epochs=3, data_dir=None, threads=1, budget_min=1.0, recipe="scenes",
                              keep_finished=True, amp="bf16", lr=None, pretrain_size=None,
                              pretrain_data="fashion-mnist", block="repvgg")
    pre = tmp_path / "pspnet_repvgg_a0_s0_pretrain"
    assert len(mod.commands(args, "pspnet_repvgg_a0", 0, tmp_path)) == 2      # nothing there yet: pretrain
    pre.mkdir()
    (pre / "best.safetensors").write_bytes(b"")
    (pre / "config.yaml").write_text("model: repvgg_a0\nseed: 0\ndata: fashion-mnist\nepochs: 3\namp: bf16\n")
    assert len(mod.commands(args, "pspnet_repvgg_a0", 0, tmp_path)) == 2      # unfinished: no harness.json
    (pre / "harness.json").write_text('{"pretrain_min": 7.0}')
    (seg,) = mod.commands(args, "pspnet_repvgg_a0", 0, tmp_path)
    assert seg[seg.index("--backbone-checkpoint") + 1] == str(pre / "best.safetensors")
    assert len(mod.commands(argparse.Namespace(**{**vars(args), "keep_finished": False}), "pspnet_repvgg_a0", 0,
                            tmp_path)) == 2
    for other in ({"pretrain_epochs": 1}, {"amp": "fp32"}, {"pretrain_size": 56}, {"pretrain_data": "fmnist-items"},
                  {"block": "identity_no_bn"}):
        with pytest.raises(SystemExit, match="finished pretraining with"):
            mod.commands(argparse.Namespace(**{**vars(args), **other}), "pspnet_repvgg_a0", 0, tmp_path)
    # copied in by hand
    (pre / "config.yaml").write_text("model: repvgg_a1\nseed: 0\ndata: fashion-mnist\nepochs: 3\namp: bf16\n")
    with pytest.raises(SystemExit, match="'model': 'repvgg_a1'"):
        mod.commands(args, "pspnet_repvgg_a0", 0, tmp_path)
    (pre / "config.yaml").write_text("model: repvgg_a0\nseed: 1\ndata: fashion-mnist\nepochs: 3\namp: bf16\n")
    with pytest.raises(SystemExit, match="'seed': 1"):
        mod.commands(args, "pspnet_repvgg_a0", 0, tmp_path)


# ------------------------------------------------------------------ amp: auto on a CPU
def test_seg_amp_auto_is_settled_by_the_probe_and_saved(tmp_path, monkeypatch):
    """The scenes recipe says `amp: auto`: bf16 only where the probe finds it faster (a CPU without
    native bf16 trains over 6x slower in it), the choice logged and written to config.yaml."""
    import yaml

    from repvgg.seg import train as seg_train

    calls = []

    def fake_probe(model, shape, num_classes, dense=False):
        calls.append((shape, dense))
        return torch.bfloat16, 1.6, {"fp32": 1e-3, "bf16": 6e-4}
    monkeypatch.setattr(seg_train, "probe_cpu_amp", fake_probe)
    out = tmp_path / "run"
    cfg = _cfg(out, epochs=1)
    assert cfg["amp"] == "auto"
    trainer = SegTrainer(cfg, out, quiet=True)
    assert calls == [((8, 3, 48, 48), True)] and trainer.amp is torch.bfloat16
    assert yaml.safe_load((out / "config.yaml").read_text())["amp"] == "bf16"
    trainer.run()
    assert "bf16 training steps ran 1.60x the fp32 speed on this CPU -> bf16" in (out / "train.log").read_text()

    monkeypatch.setattr(seg_train, "probe_cpu_amp", lambda *a, **k: (None, 0.0, {}))
    out2 = tmp_path / "run2"
    trainer = SegTrainer(_cfg(out2, epochs=1), out2, quiet=True)
    assert trainer.amp is None and yaml.safe_load((out2 / "config.yaml").read_text())["amp"] is False


def test_cpu_amp_probe_times_a_segmenter_on_label_maps(monkeypatch):
    from repvgg.seg import create_segmenter
    from repvgg.train import amp

    monkeypatch.setattr(amp, "cpu_has_bf16", lambda: True)     # time both dtypes on any CPU
    seg = create_segmenter("pspnet_repvgg_a0", 5, head_channels=8).train()     # returns (main, aux)
    dtype, speedup, per_image = amp.probe_cpu_amp(seg, (2, 3, 24, 24), 5, rounds=1, dense=True)
    assert speedup > 0 and per_image["fp32"] > 0 and per_image["bf16"] > 0
    assert all(p.grad is None for p in seg.parameters())


def test_seg_amp_flags(tmp_path):
    from repvgg.seg.config import resolve_seg_config

    assert resolve_seg_config("scenes", {"amp": False})["amp"] is False
    with pytest.raises(ValueError, match="amp must be"):
        resolve_seg_config("scenes", {"amp": "int8"})
