"""`repvgg demo`, run on tiny data so the test stays fast (the real demo is timed in the README)."""
from repvgg.train.demo import demo
from tests.test_train import make_tiny_fmnist


def test_demo_trains_fuses_and_compares(tmp_path, capsys):
    data = make_tiny_fmnist(tmp_path / "data")
    out = tmp_path / "demo"
    res = demo(out, epochs=1, data="fashion-mnist",
               overrides={"data_dir": str(data), "image_size": 16, "batch_size": 32, "amp": False})
    text = capsys.readouterr().out
    assert res["train_top1"] == res["deploy_top1"] and res["agreement_pct"] >= 99.9
    assert "identical predictions on" in text and "speed-up" in text and "batch 1, ms" in text
    assert res["speed_batch64"]["train"] > 0 and res["speed_batch64"]["deploy"] > 0
    for f in ("deploy.safetensors", "best.safetensors", "curves.png", "metrics.csv", "train.log"):
        assert (out / f).is_file(), f
    assert str(out) in text


def test_demo_cli_has_no_required_arguments():
    from repvgg.cli import build_parser

    args = build_parser().parse_args(["demo"])
    assert args.output is None and args.epochs is None and callable(args.func)


def test_demo_plan_fits_the_budget():
    from repvgg.train.demo import MAX_EPOCHS, plan

    for per_image in (1 / 3000, 1 / 300, 1 / 60, 1 / 20):
        epochs, n = plan(per_image, 5400, 2000, 600, budget=150)
        cost = per_image * (epochs * (n + 600 / 3) + 3 * 2000 / 3)
        assert 1 <= epochs <= MAX_EPOCHS and 1024 <= n <= 5400
        assert cost <= 150 or n == 1024                 # over budget only at the floor of 1024 images
    # 18 s of training + 0.7 s validation per epoch; 6.7 s of test evaluation at the end: 7 epochs
    assert plan(1 / 300, 5400, 2000, 600, budget=150) == (7, 5400)
    assert plan(1 / 20, 5400, 2000, 600, budget=150)[0] == 1
