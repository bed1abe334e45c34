"""Decorrelated (Fourier) parameterization of synthetic images.

Adam on raw pixels moves every pixel by about the same step, so the cheapest way to change a
teacher's answer is a high-frequency pattern that no other network reads the same way. Here a
sample is held as its 2-D spectrum scaled by ``1 / frequency`` (feature visualization's
"decorrelated" space, Olah et al. 2017): an equal step on every coefficient moves coarse
structure much further than fine detail, so samples grow smooth shapes first. The decoded image
is what the teacher, the loss terms and the student see; only the optimizer's coordinates change.
"""

from __future__ import annotations

import torch


class SpectralBasis:
    """Maps images ``[..., H, W]`` to scaled real spectra ``[..., H, W // 2 + 1, 2]`` and back.

    ``decode(encode(x)) == x`` (up to rounding), so a sample starts exactly where the pixel
    parameterization starts it. The scale is normalised so that white noise in the spectral
    coordinates decodes to unit-variance pixels: a step size means a comparable pixel distance
    in both parameterizations.
    """

    def __init__(self, height: int, width: int, device: torch.device) -> None:
        self.size = (height, width)
        fy = torch.fft.fftfreq(height, device=device).view(-1, 1)
        frequency = (fy**2 + torch.fft.rfftfreq(width, device=device).view(1, -1) ** 2).sqrt()
        self.scale = 1.0 / frequency.clamp_min(1.0 / max(height, width))
        # The decoded pixels' spread under unit white noise, measured on a fixed draw (the
        # half spectrum's Hermitian bookkeeping makes a closed form fiddly).
        probe = torch.randn(
            (64, *self.scale.shape, 2), generator=torch.Generator().manual_seed(0)
        ).to(device)
        self.scale = self.scale / float(self.decode(probe).std())  # [H, W // 2 + 1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.fft.rfft2(x.float(), norm="ortho") / self.scale
        return torch.view_as_real(spectrum).contiguous()

    def decode(self, coefficients: torch.Tensor) -> torch.Tensor:
        spectrum = torch.view_as_complex(coefficients) * self.scale
        return torch.fft.irfft2(spectrum, s=self.size, norm="ortho")
