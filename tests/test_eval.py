"""Evaluation: metrics, confusion PNG, `repvgg eval`, label-count errors, the deploy check."""
import pytest
import torch
from PIL import Image

from repvgg.cli import main
from repvgg.evaluate import compare_predictions, evaluate
from repvgg.train import finish_run, prepare_run, train
from repvgg.train.evalcmd import evaluate_checkpoint
from tests.test_train import make_tiny_fmnist, tiny_overrides


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_tiny_fmnist(tmp_path_factory.mktemp("fmnist"))
    out = tmp_path_factory.mktemp("run") / "a0"
    train(prepare_run(out, "small", tiny_overrides(data, epochs=1, channels_last=True)), out, quiet=True)
    return out, data


def test_eval_reports_top1_top5_per_class_and_png(run, tmp_path):
    out, data = run
    res = evaluate_checkpoint(out / "best.safetensors", "fashion-mnist", data_dir=data, output=tmp_path,
                              quiet=True)
    assert res["n"] == 64 and 0 <= res["top1"] <= res["top5"] <= 100
    assert len(res["per_class"]) == 10 and res["confusion"].sum() == 64
    assert res["confusion"].diag().sum().item() == pytest.approx(res["top1"] * 0.64)
    png = tmp_path / "confusion_best.png"
    assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"
    dep = evaluate_checkpoint(out / "best.safetensors", "fashion-mnist", data_dir=data, deploy=True,
                              output=tmp_path, quiet=True)
    assert dep["top1"] == res["top1"] and torch.equal(dep["confusion"], res["confusion"])


def test_eval_cli(run, tmp_path, capsys):
    out, data = run
    rc = main(["eval", "--checkpoint", str(out / "deploy.safetensors"), "--data", "fashion-mnist",
               "--data-dir", str(data), "--output", str(tmp_path)])
    text = capsys.readouterr().out
    assert rc == 0 and "deploy (fused)" in text and "top-5" in text and "Ankle boot" in text
    assert (tmp_path / "confusion_deploy.png").is_file()


def test_label_count_mismatch_is_a_clear_error(run, tmp_path, capsys):
    out, _ = run
    for split in ("train", "val"):
        for c in ("cat", "dog", "fox"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            Image.new("RGB", (16, 16), (10, 20, 30)).save(tmp_path / "imgs" / split / c / "a.png")
    with pytest.raises(ValueError, match="label-count mismatch.*10 classes.*has 3"):
        evaluate_checkpoint(out / "best.safetensors", f"imagefolder:{tmp_path / 'imgs'}", quiet=True)
    rc = main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", f"imagefolder:{tmp_path / 'imgs'}"])
    assert rc == 2 and "label-count mismatch" in capsys.readouterr().err
    rc = main(["eval", "--checkpoint", str(tmp_path / "missing.safetensors"), "--data", "fashion-mnist"])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_run_outputs(run):
    out, _ = run
    for f in ("config.yaml", "best.safetensors", "last.safetensors", "last.state.pt", "deploy.safetensors",
              "metrics.jsonl", "metrics.csv", "curves.png", "confusion.png", "train.log", "summary.json"):
        assert (out / f).is_file(), f
    assert "val_top1" in (out / "metrics.csv").read_text().splitlines()[0]
    log = (out / "train.log").read_text()
    assert "test top-1: train-time" in log and "fused deploy" in log and "final epoch's weights" in log


def test_finish_run_refuses_a_deploy_model_that_changed(run, monkeypatch):
    """The train-time vs deploy check lives in the code path: a wrong fusion cannot ship."""
    out, data = run
    import repvgg.train.run_folder as run_folder
    from repvgg.data import build_datasets

    real = run_folder.reparameterize

    def broken(model):
        fused = real(model)
        with torch.no_grad():
            fused.head.fc.weight.neg_()                          # argmax becomes argmin
            fused.head.fc.bias.neg_()
        return fused

    monkeypatch.setattr(run_folder, "reparameterize", broken)
    _, test_ds, info = build_datasets("fashion-mnist", data, 16)
    good = (out / "deploy.safetensors").read_bytes()
    summary = finish_run(out, test_ds, info, log=lambda m: None)
    assert summary["fusion_ok"] is False and "does not compute" in summary["fusion_problem"]
    assert (out / "deploy.safetensors").read_bytes() == good          # the wrong fusion is not written


def test_compare_predictions_allows_only_ties():
    labels = torch.tensor([0, 1, 2, 3])
    a = torch.tensor([[5.0, 1, 0], [0, 5, 1], [1, 2, 2.000001], [3, 0, 0]])
    labels = labels[:4].clamp(max=2)
    b = a.clone()
    b[2] = torch.tensor([1, 2.000001, 2.0])                      # a tie flipped by rounding
    info = compare_predictions({"logits": a}, {"logits": b}, labels)
    assert info["ok"] and info["flips"] == 1 and info["tie_flips"] == 1 and info["agreement"] == 75.0
    b[0] = torch.tensor([0.0, 5, 1])                              # a real change
    info = compare_predictions({"logits": a}, {"logits": b}, labels)
    assert not info["ok"] and "does not compute" in info["reason"]


def test_evaluate_counts_top5_and_confusion():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    logits = torch.eye(6) * 10 + torch.arange(6.0)   # image i predicts class i; top-5 drops class 0
    x = logits[:, None, None, :]
    y = torch.tensor([0, 1, 2, 3, 4, 0])               # image 5 is wrong, and class 0 is its 6th choice
    res = evaluate(Fixed(), [(x, y)], 6)
    assert res["top1"] == pytest.approx(500 / 6) and res["confusion"][0, 5] == 1
    assert res["top5"] == pytest.approx(500 / 6)
    assert res["per_class"][0] == pytest.approx(50.0) and res["per_class"][5] == 0
