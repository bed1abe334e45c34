"""The reference's synthesis loop: one mini-batch at a time, ``torch.optim`` on the inputs.

The baseline the engine's batched synthesis (:func:`cake_core.synthesis.synthesize`) is measured
against (``bench/synthesis``) and must agree with (tests/test_synthesis.py): same draws, same
losses, same step sizes, so any difference is the batching's. It lives here, not in the engine,
because no job runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from cake_core.config import SynthesisSpec
from cake_core.device import Runtime
from cake_core.schedule import step_sizes
from cake_core.synthesis import batch_generator, initial_batch, synthesis_losses


def reference_synthesize(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    spec: SynthesisSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int,
    runtime: Runtime,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The reference's loop: one mini-batch at a time with ``torch.optim`` on the inputs.

    Kept as the baseline for tests (batched results must match it) and for ``bench/synthesis``.
    Yields ``(x [b, *shape], logits [b, C])`` per mini-batch.
    """
    input_shape = tuple(input_shape)
    num_batches = math.ceil(spec.num_samples / spec.batch_size)
    etas = step_sizes(num_batches, spec.noise, spec.noise_decay_magnitude, spec.noise_schedule)
    for batch in range(num_batches):
        x0, targets = initial_batch(spec, input_shape, num_classes, seed, batch, runtime.device)
        x = x0.unsqueeze(0).requires_grad_(True)
        targets = targets.unsqueeze(0)
        optimizer_cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.SGD
        optimizer = optimizer_cls([x], lr=etas[batch])
        noise_gen = batch_generator(seed + 7, batch, runtime.device) if spec.langevin else None
        for _ in range(spec.steps):
            total, _, _ = synthesis_losses(teacher, x, targets, spec, input_shape, runtime)
            optimizer.zero_grad()
            total.sum().backward()
            optimizer.step()
            if noise_gen is not None:
                with torch.no_grad():
                    noise = torch.randn(x.shape, generator=noise_gen, device=x.device)
                    x.add_(noise * math.sqrt(2.0 * etas[batch]))
        with torch.no_grad():
            _, _, logits = synthesis_losses(teacher, x, targets, spec, input_shape, runtime)
        yield x.detach().reshape(-1, *input_shape), logits.reshape(-1, logits.shape[-1])
