"""The BatchNorm tap: the rewritten TorchScript graph is the teacher, plus its BN statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.zoo import ResNetBN
from cake_core.batchnorm import batchnorm_prior, tap_batchnorm
from cake_core.students import build_student
from examples.teachers import DigitsCNN


def _warmed(module: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Running statistics that are not the initial zeros and ones, then eval mode."""
    torch.manual_seed(0)
    module.train()
    with torch.no_grad():
        for _ in range(3):
            module(torch.randn(16, *shape) * 2 + 0.5)
    return module.eval()


def _export(module: nn.Module, shape: tuple[int, ...], how: str) -> torch.jit.ScriptModule:
    if how == "script":
        return torch.jit.script(module)
    return torch.jit.trace(module, torch.randn(4, *shape))


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize(
    ("build", "shape", "layers"),
    [
        (lambda: ResNetBN(1, 10), (1, 8, 8), 15),
        (lambda: build_student("mlp", (13,), 3, 0.25), (13,), 2),
    ],
    ids=["resnet-bn2d", "mlp-bn1d"],
)
def test_tap_returns_the_teachers_logits_and_input_gradients(build, shape, layers, how) -> None:
    teacher = _export(_warmed(build(), shape), shape, how)
    tap = tap_batchnorm(teacher)
    assert tap is not None and tap.layers == layers

    x = torch.randn(12, *shape, requires_grad=True)
    expected = teacher(x)
    (expected_grad,) = torch.autograd.grad(expected.pow(2).sum(), x)
    logits, stats = tap(x)
    (grad,) = torch.autograd.grad(logits.pow(2).sum(), x, retain_graph=True)
    assert torch.equal(logits, expected)
    assert torch.equal(grad, expected_grad)

    # The statistics are the layers' own: the first BN sees a batch with the first layer's
    # channel count, and its running mean is the module's buffer.
    first_input, running_mean, running_var = stats[0]
    assert first_input.shape[0] == 12
    assert running_mean.shape == running_var.shape == (first_input.shape[1],)
    buffers = [b for name, b in teacher.named_buffers() if name.endswith("running_mean")]
    assert any(torch.equal(running_mean, b) for b in buffers)

    prior = batchnorm_prior(stats, minibatches=2)
    assert prior.shape == (2,) and bool((prior > 0).all())
    (prior_grad,) = torch.autograd.grad(prior.sum(), x)
    assert prior_grad.abs().sum() > 0


def test_prior_is_computed_per_mini_batch() -> None:
    teacher = torch.jit.script(_warmed(ResNetBN(1, 10), (1, 8, 8)))
    tap = tap_batchnorm(teacher)
    assert tap is not None
    a, b = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8) * 3
    together = batchnorm_prior(tap(torch.cat([a, b]))[1], minibatches=2)
    alone = torch.cat([batchnorm_prior(tap(a)[1], 1), batchnorm_prior(tap(b)[1], 1)])
    torch.testing.assert_close(together, alone)


def test_prior_is_zero_for_inputs_with_the_running_statistics() -> None:
    bn = nn.BatchNorm1d(4).eval()
    x = torch.randn(64, 4)
    bn.running_mean.copy_(x.mean(0))
    bn.running_var.copy_(x.var(0, unbiased=False))
    tap = tap_batchnorm(torch.jit.script(bn))
    assert tap is not None
    assert float(batchnorm_prior(tap(x)[1], 1)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    ("build", "shape"),
    [(lambda: DigitsCNN(10), (1, 8, 8)), (lambda: build_student("vit", (1, 8, 8), 10, 0.5), None)],
    ids=["plain-cnn", "vit-layernorm"],
)
def test_teachers_without_batchnorm_get_no_tap(build, shape) -> None:
    assert tap_batchnorm(torch.jit.script(build().eval())) is None
