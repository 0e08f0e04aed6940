"""benchmarks/pretrain_probe.py: the commands it runs and the table it writes (no training here)."""
from __future__ import annotations

import json

import yaml

from tests.conftest import load_benchmark


def test_probe_commands_differ_from_the_recipe_only_where_named(tmp_path):
    mod = load_benchmark("pretrain_probe")
    jobs = dict(mod.jobs(tmp_path, threads=1))
    assert set(jobs) == {"a0_w1_lr0.2", "r18_w1_lr0.2", "a0_w1_lr0.1", "r18_w1_lr0.1", "a0_w0.2_lr0.2",
                         "r18_w0.2_lr0.2", "a0_idnobn"}
    recipe = yaml.safe_load((tmp_path / "small_subset.yaml").read_text())
    assert recipe["train_subset"] == 12000 and recipe["warmup_epochs"] == 1
    a0 = jobs["a0_idnobn"]
    assert a0[a0.index("--block") + 1] == "identity_no_bn" and a0[a0.index("--model") + 1] == "repvgg_a0"
    r18 = jobs["r18_w1_lr0.1"]
    assert r18[r18.index("--model") + 1] == "tv:resnet18" and "--block" not in r18
    assert r18[len(r18) - 1 - r18[::-1].index("--lr") + 1] == "0.1"       # the setting's lr wins (given last)


def test_probe_table_from_finished_runs(tmp_path):
    mod = load_benchmark("pretrain_probe")
    run = tmp_path / "runs" / "a0_idnobn"
    run.mkdir(parents=True)
    run.joinpath("metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "val_top1": v, "train_acc": v - 5, "epoch_s": 80.0}) + "\n"
        for e, v in ((1, 30.0), (2, 43.5), (3, 51.25))))
    result = mod.collect(tmp_path / "runs")
    assert [r["setting"] for r in result["rows"]] == ["idnobn"]
    text = mod.write(result, tmp_path)
    assert "| RepVGG-A0 | idnobn (--block identity_no_bn) | 30.00 / 43.50 / 51.25 | 46.2 | 80 / 80 / 80 |" in text
    assert json.loads((tmp_path / "pretrain_probe.json").read_text())["rows"][0]["val_top1"][-1] == 51.25
