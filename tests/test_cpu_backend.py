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


def test_the_guard_turns_onednn_off_for_backward_only_and_restores_it(monkeypatch):
    monkeypatch.setenv(cpu_backend.ENV, "0")
    said, before = [], torch.backends.mkldnn.enabled
    with cpu_backend.cpu_training_backend("cpu", said.append) as kernels:
        assert torch.backends.mkldnn.enabled == before        # forward passes keep oneDNN
        with kernels.backward():
            assert torch.backends.mkldnn.enabled is False
        assert torch.backends.mkldnn.enabled == before
    assert torch.backends.mkldnn.enabled == before and len(said) == 1 and cpu_backend.ENV in said[0]
    monkeypatch.setenv(cpu_backend.ENV, "1")
    with cpu_backend.cpu_training_backend("cpu", said.append) as kernels:
        with kernels.backward():
            assert torch.backends.mkldnn.enabled == before
    assert len(said) == 1


def test_onednn_forward_with_torch_backward_gives_the_same_gradients(monkeypatch):
    """A conv saved by oneDNN's forward and differentiated by torch's kernels: the gradients of a
    RepVGG block stack (3x3, 1x1, identity, groups, stride 2, odd sizes) equal those of an all-torch step."""
    import repvgg
    from tests.conftest import randomize_bn_, rel_err

    monkeypatch.setenv(cpu_backend.ENV, "0")
    torch.manual_seed(0)
    model = randomize_bn_(repvgg.create_model("repvgg_a0", num_classes=5, width=0.25, in_chans=3)).train()
    x, y = torch.randn(4, 3, 37, 37), torch.randint(0, 5, (4,))

    def grads(forward_onednn: bool):
        model.zero_grad(set_to_none=True)
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = forward_onednn and before
        try:
            with cpu_backend.cpu_training_backend("cpu") as kernels:
                loss = torch.nn.functional.cross_entropy(model(x), y)
                with kernels.backward():
                    loss.backward()
        finally:
            torch.backends.mkldnn.enabled = before
        return [p.grad.clone() for p in model.parameters()]

    mixed, plain = grads(True), grads(False)
    assert len(mixed) == len(plain) > 20
    # fp32 rounding differs between the kernels and train-mode BN (batch of 4) amplifies it: per-tensor max
    # errors reach ~2e-2 on an AVX-512 Xeon. A wrong gradient is off in direction or size, so test those.
    for a, b in zip(mixed, plain):
        assert torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0) > 0.9995
        assert abs(a.norm() / b.norm() - 1) < 1e-2
    flat = [torch.cat([g.flatten() for g in gs]) for gs in (mixed, plain)]
    assert rel_err(flat[0], flat[1]) < 1e-2
