"""The side-by-side report compares like with like and refuses anything else."""
import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import load_benchmark



@pytest.fixture
def sbs(tmp_path, monkeypatch):
    mod = load_benchmark("train_side_by_side")
    monkeypatch.setattr(mod, "RESULTS", tmp_path)
    return mod


def _write(dir: Path, tag: str, block: str, seed: int, top1: float, *, epochs=20, cpu="Xeon", rc=0):
    cfg = dict(epochs=epochs, seed=seed, amp=False)
    rows = [dict(epoch=e, elapsed_s=60.0 * e, test_top1=top1 - (epochs - e) * 0.1, img_per_s=600.0)
            for e in range(1, epochs + 1)]
    data = dict(exit_code=rc, wall_s=60.0 * epochs + 30, block=block, recipe="small", model="repvgg_a0",
                config=yaml.safe_dump(cfg), hardware=dict(cpu=cpu), versions=dict(torch="2.x"),
                time_to_accuracy=rows,
                final=dict(train_top1=top1, deploy_top1=top1, agreement_pct=100.0) if rc == 0 else {})
    (dir / f"train_fashion_mnist_{tag}.json").write_text(json.dumps(data))


def test_side_by_side_reports_the_difference_of_means(sbs, tmp_path, monkeypatch):
    _write(tmp_path, "r0", "repvgg", 0, 94.0)
    _write(tmp_path, "r1", "repvgg", 1, 93.8)
    _write(tmp_path, "p0", "plain", 0, 93.5)
    monkeypatch.setattr("sys.argv", ["x", "--runs", "r0", "r1", "p0", "--out", "cmp"])
    assert sbs.main() == 0
    md = (tmp_path / "cmp.md").read_text()
    assert "| repvgg | 2 | 93.90 | 94.00 93.80 |" in md
    assert "+0.40 points" in md
    assert (tmp_path / "cmp.png").stat().st_size > 0


@pytest.mark.parametrize("other, message", [
    (dict(epochs=18), "differ in epochs"),
    (dict(cpu="AMD EPYC"), "differ in cpu"),
    (dict(rc=1), "did not finish"),
])
def test_side_by_side_refuses_runs_that_are_not_comparable(sbs, tmp_path, monkeypatch, other, message):
    _write(tmp_path, "r0", "repvgg", 0, 94.0)
    _write(tmp_path, "p0", "plain", 0, 93.5, **other)
    monkeypatch.setattr("sys.argv", ["x", "--runs", "r0", "p0"])
    with pytest.raises(SystemExit, match=message):
        sbs.main()


def test_side_by_side_names_a_missing_run(sbs, monkeypatch):
    monkeypatch.setattr("sys.argv", ["x", "--runs", "nope", "p0"])
    with pytest.raises(SystemExit, match="no results for run 'nope'"):
        sbs.main()


_REAL_POPEN = subprocess.Popen


class _FakeTraining:
    """Stands in for the `repvgg train` child: writes a run folder's files and ends with ``rc``."""

    def __init__(self, rc: int, epochs: list[int]):
        self.rc, self.epochs, self.commands = rc, epochs, []

    def __call__(self, cmd, **kwargs):
        if "train" not in cmd:                          # e.g. the version probes of the report
            return _REAL_POPEN(cmd, **kwargs)
        self.commands.append(cmd)
        out = Path(cmd[cmd.index("--output") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "last.state.pt").write_bytes(b"state")
        (out / "config.yaml").write_text(yaml.safe_dump(dict(epochs=4, width=0.5)))
        with open(out / "metrics.jsonl", "a") as f:
            for e in self.epochs:
                f.write(json.dumps(dict(epoch=e, elapsed_s=100.0 * e, val_top1=90.0 + e, test_top1=89.5 + e,
                                         img_per_s=500.0)) + "\n")
        if self.rc == 0:
            (out / "summary.json").write_text(json.dumps(dict(train_top1=94.0, deploy_top1=94.0,
                                                              agreement_pct=100.0)))
        fake = self

        class Proc:
            stdout = iter([f"epochs {fake.epochs}\n"])

            def wait(self):
                return fake.rc
        return Proc()


def test_long_run_in_segments_resumes_and_reports_the_summed_training_time(tmp_path, monkeypatch):
    mod = load_benchmark("train_fashion_mnist")
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    argv = ["x", "--tag", "long", "--epochs", "4", "--resume", "--runs", str(tmp_path / "runs"), "--", "--width", "2"]
    monkeypatch.setattr("sys.argv", argv)
    first = _FakeTraining(143, [1, 2])                # SIGTERM after 2 epochs: resumable, no results yet
    monkeypatch.setattr(mod.subprocess, "Popen", first)
    assert mod.main() == 143
    assert "--overwrite" in first.commands[0] and "--resume" not in first.commands[0]
    assert first.commands[0][-2:] == ["--width", "2"]                # flags after -- go to `repvgg train`
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN     # the script's handlers are undone
    assert not (tmp_path / "results" / "train_fashion_mnist_long.md").exists()
    assert not (tmp_path / "results" / "train_fashion_mnist_long_failed.md").exists()
    second = _FakeTraining(0, [3, 4])
    monkeypatch.setattr(mod.subprocess, "Popen", second)
    assert mod.main() == 0
    assert "--resume" in second.commands[0] and "--overwrite" not in second.commands[0]
    log = (tmp_path / "results" / "train_fashion_mnist_long.log").read_text()
    assert "epochs [1, 2]" in log and "epochs [3, 4]" in log      # both segments' output
    md = (tmp_path / "results" / "train_fashion_mnist_long.md").read_text()
    assert "training time 6.7 min, summed over the run's segments" in md
    assert "| 4 | 6.7 | 94.00 | 93.50 | 500 |" in md                 # val (selects), test (reported)
    assert "--test-every-epoch" in first.commands[0]


def test_results_record_a_command_that_can_be_pasted_back(monkeypatch):
    """Arguments with spaces stay one argument; a niced run says so, an un-niced one does not claim it."""
    mod = load_benchmark("results_md")
    monkeypatch.setattr("sys.argv", ["benchmarks/seg_speed.py", "--out", "a b", "--size", "512"])
    monkeypatch.setattr("os.nice", lambda inc: 0)
    assert mod.this_command() == "python benchmarks/seg_speed.py --out 'a b' --size 512"
    monkeypatch.setattr("os.nice", lambda inc: 10)
    assert mod.this_command() == "nice -n 10 python benchmarks/seg_speed.py --out 'a b' --size 512"
