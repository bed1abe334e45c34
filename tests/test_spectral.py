"""cake_core.spectral: the Fourier parameterization of synthetic images (synthesis with it is
tested in test_synthesis)."""

from __future__ import annotations

import pytest
import torch

from cake_core.spectral import SpectralBasis

CPU = torch.device("cpu")


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
