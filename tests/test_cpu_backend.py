"""oneDNN is turned off for CPU training only where its convolution backward is known to crash (x86 without AVX-512)."""
import torch

from repvgg import cpu_backend


def test_which_cpus_train_without_onednn(monkeypatch):
    monkeypatch.delenv(cpu_backend.ENV, raising=False)
    assert not cpu_backend.onednn_training_ok("AVX2", "x86_64")
    assert cpu_backend.onednn_training_ok("AVX512", "x86_64")
    assert cpu_backend.onednn_training_ok("DEFAULT", "aarch64")
    monkeypatch.setenv(cpu_backend.ENV, "1")
    assert cpu_backend.onednn_training_ok("AVX2", "x86_64")
    monkeypatch.setenv(cpu_backend.ENV, "0")
    assert not cpu_backend.onednn_training_ok("AVX512", "x86_64")


def test_the_guard_turns_onednn_off_inside_and_restores_it(monkeypatch):
    monkeypatch.setenv(cpu_backend.ENV, "0")
    said, before = [], torch.backends.mkldnn.enabled
    with cpu_backend.cpu_training_backend("cpu", said.append):
        assert torch.backends.mkldnn.enabled is False
    assert torch.backends.mkldnn.enabled == before and len(said) == 1 and cpu_backend.ENV in said[0]
    monkeypatch.setenv(cpu_backend.ENV, "1")
    with cpu_backend.cpu_training_backend("cpu", said.append):
        assert torch.backends.mkldnn.enabled == before
    assert len(said) == 1
