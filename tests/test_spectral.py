"""The Fourier parameterization of synthetic images and the training-time translation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cake_core.config import LossWeights, SynthesisSpec, TrainingSpec
from cake_core.device import Runtime
from cake_core.distill import _targets, _translate
from cake_core.spectral import SpectralBasis
from cake_core.synthesis import synthesize

CPU = torch.device("cpu")
RUNTIME = Runtime(device=CPU)


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (7, 12)])
def test_decode_inverts_encode(size: tuple[int, int]) -> None:
    basis = SpectralBasis(*size, CPU)
    x = torch.randn(3, 2, 1, *size)
    torch.testing.assert_close(basis.decode(basis.encode(x)), x, rtol=0, atol=1e-5)


def test_unit_noise_decodes_to_unit_pixels_weighted_to_low_frequencies() -> None:
    basis = SpectralBasis(28, 28, CPU)
    gen = torch.Generator().manual_seed(1)
    images = basis.decode(torch.randn((500, *basis.scale.shape, 2), generator=gen))
    assert images.std().item() == pytest.approx(1.0, abs=0.05)
    # 1/f: neighbouring pixels are strongly correlated, unlike white noise (correlation ~0)
    left, right = images[:, :, :-1].flatten(), images[:, :, 1:].flatten()
    assert torch.corrcoef(torch.stack([left, right]))[0, 1].item() > 0.5
    assert basis.scale[0, 0] > 10 * basis.scale[14, 14]


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 3),
    ).eval()


def _spec(**overrides: object) -> SynthesisSpec:
    base = SynthesisSpec(
        num_samples=24,
        batch_size=6,
        groups=3,
        steps=30,
        weights=LossWeights(cls=1.0, contr=0.1, tv=0.1),
        noise=0.05,
        noise_decay_magnitude=1.0,
        optimizer="adam",
        chunk_batches=2,
    )
    return replace(base, **overrides)


def _run(teacher: torch.nn.Module, spec: SynthesisSpec, shape: tuple[int, ...]) -> torch.Tensor:
    chunks = synthesize(teacher, spec, shape, 3, seed=3, runtime=RUNTIME)
    return torch.cat([c.x for c in chunks])


def test_fourier_synthesis_starts_alike_and_ends_smoother() -> None:
    teacher = _cnn()
    shape = (1, 8, 8)
    start = _run(teacher, _spec(steps=1, noise=1e-9), shape)
    start_fourier = _run(teacher, _spec(steps=1, noise=1e-9, parameterization="fourier"), shape)
    torch.testing.assert_close(start_fourier, start, rtol=0, atol=1e-4)

    pixel = _run(teacher, _spec(), shape)
    fourier = _run(teacher, _spec(parameterization="fourier"), shape)
    moved_pixel, moved_fourier = pixel - start, fourier - start

    def roughness(d: torch.Tensor) -> float:  # high-frequency share of the change
        return float((d[..., 1:] - d[..., :-1]).pow(2).mean() / d.pow(2).mean())

    assert moved_fourier.abs().mean() > 0.1 * moved_pixel.abs().mean()
    assert roughness(moved_fourier) < 0.8 * roughness(moved_pixel)  # 8x8: 1/f spans 5.6x
    with torch.no_grad():
        logits = teacher(fourier)
    chunks = list(
        synthesize(teacher, _spec(parameterization="fourier"), shape, 3, seed=3, runtime=RUNTIME)
    )
    torch.testing.assert_close(torch.cat([c.labels for c in chunks]), logits.softmax(1))


def test_fourier_leaves_non_images_alone() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 3)).eval()
    plain = _run(mlp, _spec(weights=LossWeights(cls=1.0, contr=0.1, tv=0.0)), (5,))
    other = _run(
        mlp,
        _spec(weights=LossWeights(cls=1.0, contr=0.1, tv=0.0), parameterization="fourier"),
        (5,),
    )
    assert torch.equal(plain, other)


def test_translate_shifts_whole_pixels_with_edges_repeated() -> None:
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(200, 1, 1, 1)
    moved = _translate(x, 0.125, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape
    shift = (moved - x)[:, 0, 3, 3]  # interior pixel: moved by dx + 8 dy, |dx|, |dy| <= 1
    assert shift.abs().max() <= 9 + 1e-4
    assert shift.std() > 1.0
    assert moved.min() >= 0 and moved.max() <= 63  # edges repeated, nothing from outside


def test_translate_is_relabelled_and_skips_non_images() -> None:
    torch.manual_seed(0)
    teacher = _cnn()
    spec = TrainingSpec(relabel=True, translate=0.25)
    x = torch.randn(16, 1, 8, 8)
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
    gen = torch.Generator().manual_seed(0)
    moved, probs = _targets(teacher, student, x, torch.zeros(16), spec, 3, gen)
    assert not torch.allclose(moved, x)
    with torch.no_grad():
        torch.testing.assert_close(probs, teacher(moved).softmax(1))
    flat = torch.randn(16, 5)
    mlp = torch.nn.Linear(5, 3)
    same, _ = _targets(mlp, mlp, flat, torch.zeros(16), spec, 3, gen)
    assert torch.equal(same, flat)
