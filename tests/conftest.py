"""Shared fixtures. ``randomize_bn`` is THE way tests make BN non-trivial: default BN statistics
(mean 0, var 1, gamma 1, beta 0) make a missing term in the fusion invisible."""
import pytest
import torch
import torch.nn as nn


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN random running stats and affine params, and every other param random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                shape, dt = m.running_mean.shape, m.running_mean.dtype
                m.running_mean.copy_((torch.randn(shape, generator=g) * 0.5).to(dt))
                m.running_var.copy_((torch.rand(shape, generator=g) * 1.5 + 0.5).to(dt))
                if m.affine:
                    m.weight.copy_((torch.rand(shape, generator=g) * 1.5 + 0.25).to(dt))
                    m.bias.copy_((torch.randn(shape, generator=g) * 0.3).to(dt))
        for name, p in model.named_parameters():
            if name.endswith(("dirac_alpha", "dirac_beta")):
                p.copy_((torch.rand(p.shape, generator=g) + 0.5).to(p.dtype))
    return model


@pytest.fixture
def randomize_bn():
    return randomize_bn_


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="module")
def one_thread():
    """Small models on 2 shared cores: one torch thread is ~3x faster than two fighting other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def load_benchmark(name: str):
    """A script of benchmarks/ imported as a module (they are scripts, not a package), for testing its parts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
