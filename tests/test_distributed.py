"""torchrun with 2 CPU processes (gloo): trains, only rank 0 writes, and resumes."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_train import make_tiny_fmnist

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")


def torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "repvgg", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_ddp_trains_writes_once_and_resumes(tmp_path):
    data = make_tiny_fmnist(tmp_path / "data")
    out = tmp_path / "ddp"
    common = ["--output", str(out), "--recipe", "small", "--data", "fashion-mnist", "--data-dir", str(data),
              "--image-size", "16", "--no-small-input", "--batch-size", "16", "--epochs", "2", "--amp", "auto",
              "--threads", "1", "--quiet"]
    # 115 training images (13 held out for validation) / (2 ranks x 16) = 3 steps per epoch; stop in
    # epoch 2, then resume
    r = torchrun(*common, "--stop-at-step", "4")
    assert r.returncode != 0, r.stderr[-3000:]
    assert "resumable state saved" in r.stderr, r.stderr[-3000:]
    assert "amp auto trains in fp32 under CPU DDP" in r.stderr or "bf16" not in r.stderr   # gloo+bf16 NaNs
    state = torch.load(out / "last.state.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    r = torchrun("--output", str(out), "--resume", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]                  # rank 0 alone wrote them
    log = (out / "train.log").read_text()
    assert log.count("epoch 2/2") == 1 and log.count("fused deploy") == 1
    assert "2 x batch 16, lr 0.025" in log                           # lr scaled by the global batch 32
    assert (out / "deploy.safetensors").is_file()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers                                  # no temp files from other ranks


def test_ddp_sync_bn_on_cpu_is_refused_before_writing(tmp_path):
    data = make_tiny_fmnist(tmp_path / "data")
    out = tmp_path / "ddp"
    r = torchrun("--output", str(out), "--recipe", "small", "--data", "fashion-mnist", "--data-dir", str(data),
                 "--image-size", "16", "--batch-size", "16", "--epochs", "1", "--sync-bn", "--quiet", timeout=120)
    assert r.returncode != 0 and "sync_bn needs CUDA" in r.stderr, r.stderr[-3000:]
    assert not out.exists()


def test_ddp_with_explicit_bf16_on_cpu_is_refused_before_writing(tmp_path):
    """bf16 autocast under CPU DDP (gloo) gave NaN losses: an explicit request is refused, clearly."""
    data = make_tiny_fmnist(tmp_path / "data")
    out = tmp_path / "ddp"
    r = torchrun("--output", str(out), "--recipe", "small", "--data", "fashion-mnist", "--data-dir", str(data),
                 "--image-size", "16", "--batch-size", "16", "--epochs", "1", "--amp", "bf16", "--quiet", timeout=120)
    assert r.returncode != 0 and "under CPU DDP" in r.stderr and "--no-amp" in r.stderr, r.stderr[-3000:]
    assert not (out / "config.yaml").exists()
