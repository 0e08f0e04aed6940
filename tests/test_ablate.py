"""`repvgg ablate`: variant parsing, the table, and a tiny real ablation through the trainer that is
resumable (finished runs are kept, an interrupted one continues)."""
import json

import pytest
import torch

import repvgg
from repvgg.train import ablate
from repvgg.archs import ARCHS
from repvgg.cli import main
from repvgg.data import InMemoryDataset
from repvgg.train import TrainingInterrupted, loop

# threads=1: OpenMP threads fighting other jobs on a shared CPU are ~10x slower (restored after)
SETTINGS = {"small_input": False, "amp": False, "batch_size": 64, "warmup_epochs": 0, "threads": 1}


@pytest.fixture
def tiny_data(monkeypatch):
    """The built-in Fashion-MNIST subset cut to 256 train / 128 test images (4 steps an epoch)."""
    real = loop.build_datasets

    def small(*args, **kw):
        train, test, info = real(*args, **kw)
        cut = [InMemoryDataset(d.images[:n], d.targets[:n], d.classes, mean=d.mean, std=d.std, train=d.train,
                               recipe_aug=d.recipe_aug) for d, n in ((train, 256), (test, 128))]
        return cut[0], cut[1], info

    monkeypatch.setattr(loop, "build_datasets", small)
    before, threads = set(ARCHS), torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    for k in set(ARCHS) - before:  # the scaled copies run_ablation registers
        del ARCHS[k]


def test_parse_variants():
    assert ablate.parse_variants("all") == list(repvgg.list_blocks())
    assert ablate.parse_variants("plain, repvgg,plain") == ["plain", "repvgg"]
    with pytest.raises(ValueError, match="'nope'"):
        ablate.parse_variants("plain,nope")
    assert set(ablate.PAPER_TOP1) == set(repvgg.list_blocks())
    assert [v for v in repvgg.list_blocks() if not ablate.convertible(v)] == ["relu_in_branches"]


def fake(variant, seed, top1):
    conv = ablate.convertible(variant)
    return dict(variant=variant, seed=seed, convertible=conv, top1_train_form=top1, top1_deploy=top1 if conv else None,
                train_img_s=100.0, infer_train_form_img_s=50.0, infer_deploy_img_s=80.0 if conv else None,
                params_train_form=1000, params_deploy=900 if conv else None, train_s=1.0)


def test_table_mean_std_not_convertible_and_paper_column(tmp_path):
    results = [fake("repvgg", 0, 90.0), fake("repvgg", 1, 92.0), fake("relu_in_branches", 0, 91.0)]
    rows = ablate.summarize(results, ["repvgg", "relu_in_branches", "qa"])
    assert rows[0]["top1_deploy_mean"] == 91.0 and rows[0]["top1_deploy_std"] == pytest.approx(2 ** 0.5)
    shown = ablate.table_rows(rows)
    assert shown[0]["top-1 deploy (%)"] == "91.00 ± 1.41"
    assert shown[1]["top-1 deploy (%)"] == shown[1]["infer img/s deploy"] == ablate.NOT_CONVERTIBLE
    assert shown[1]["top-1 train-time form (%)"] == "91.00 ± 0.00"
    assert shown[0]["deploy speed-up (paired)"] == "1.60x"  # 80 / 50 img/s, timed in the same run
    paper = "paper ImageNet top-1, RepVGG-B0 (paper's)"
    assert (shown[0][paper], shown[1][paper], shown[2][paper]) == ("75.14", "75.69", "not in paper")
    paths = ablate.write_summary(tmp_path, rows, "# header")
    assert [p.name for p in paths] == ["ablation.md", "ablation.csv", "ablation.png"]
    md = (tmp_path / "ablation.md").read_text()
    assert md.startswith("# header") and "n/a (not convertible)" in md
    assert "91.0,1.41" in (tmp_path / "ablation.csv").read_text().replace("1.4142135623730951", "1.41")


def test_tiny_ablation_end_to_end_and_resumable(tmp_path, tiny_data, monkeypatch):
    kw = dict(model="repvgg_a0", data="fashion-mnist-builtin", seeds=1, epochs=2, width=0.125,
              overrides=SETTINGS, log=lambda m: None)
    # interrupt the first run after its first epoch: a resumable state is left, no result
    real_run = loop.Trainer.run
    monkeypatch.setattr(loop.Trainer, "run", lambda self, stop_at_step=None: real_run(self, self.steps_per_epoch))
    with pytest.raises(TrainingInterrupted):
        ablate.run_ablation(tmp_path, variants="plain,relu_in_branches", **kw)
    plain = tmp_path / "runs" / "plain" / "seed0"
    assert (plain / "last.state.pt").is_file() and not (plain / "result.json").exists()
    assert not (plain / ".lock").exists()
    monkeypatch.setattr(loop.Trainer, "run", real_run)

    logs = []
    rows = ablate.run_ablation(tmp_path, variants="plain,relu_in_branches", **{**kw, "log": logs.append})
    assert any("[plain seed 0] resuming" in m for m in logs)
    res = json.loads((plain / "result.json").read_text())
    epochs = [json.loads(line)["epoch"] for line in (plain / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and res["top1_deploy"] == res["top1_train_form"] and res["deploy_agreement_pct"] > 99
    assert not list(plain.glob("*.safetensors"))  # weights removed unless --keep-checkpoints
    by = {r["variant"]: r for r in rows}
    assert by["plain"]["seeds"] == by["relu_in_branches"]["seeds"] == 1
    assert by["relu_in_branches"]["top1_deploy_mean"] is None and by["relu_in_branches"]["top1_train_form_mean"] > 0
    assert (tmp_path / "ablation.png").stat().st_size > 1000

    # finished runs are never rerun
    monkeypatch.setattr(loop.Trainer, "__init__", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert ablate.run_ablation(tmp_path, variants="plain,relu_in_branches", **kw) == rows
    assert main(["ablate", "--report-only", "--variants", "plain", "--seeds", "1", "--output", str(tmp_path)]) == 0


def test_lock_is_taken_once_and_stale_locks_are_reclaimed(tmp_path):
    run = tmp_path / "run"
    assert ablate._claim(run)
    assert not ablate._claim(run)  # held by a live process (this one)
    (run / ".lock").write_text("999999999")  # no such process
    assert ablate._claim(run)


@pytest.mark.parametrize("argv,msg", [
    (["--variants", "plain,nope"], "unknown variant"),
    (["--set", "lr"], "KEY=VALUE"),
    (["--seeds", "0"], "--seeds"),
    (["--width", "0"], "--width"),
])
def test_bad_arguments_are_one_clear_line(tmp_path, capsys, argv, msg):
    assert main(["ablate", "--output", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
