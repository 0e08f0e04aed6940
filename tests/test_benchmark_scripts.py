"""The side-by-side report compares like with like and refuses anything else."""
import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_side_by_side.py"


@pytest.fixture
def sbs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_side_by_side", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
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
