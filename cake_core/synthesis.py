"""CAKE synthesis: diffuse random inputs toward the teacher's decision boundary.

The reference runs ``M`` mini-batches one after the other. They are independent, so this module
runs a *chunk* of ``K`` of them as one large batch: each keeps its own step size, its own
optimizer state and its own loss (losses are summed per mini-batch, so gradients do not mix).
Initial inputs and classes come from a generator seeded per mini-batch, so a mini-batch's
starting point does not depend on how the work is chunked, and an interrupted run resumes at any
chunk boundary with the same result.

``synthesize`` yields finished chunks: memory is bounded by the chunk, and the caller can start
training or checkpoint while later chunks are still being made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from cake_core.batchnorm import BatchNormTap, batchnorm_prior, tap_batchnorm
from cake_core.config import SynthesisSpec
from cake_core.device import Runtime
from cake_core.errors import JobCanceled, SynthesisDivergedError
from cake_core.losses import (
    classification_loss,
    contrastive_loss,
    entropy_loss,
    supports_total_variation,
    total_variation_loss,
)
from cake_core.schedule import step_sizes
from cake_core.spectral import SpectralBasis

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
FINITE_CHECK_EVERY = 10
_SEED_STRIDE = 1_000_003


@dataclass
class SyntheticChunk:
    """Finished samples of mini-batches ``[first_batch, first_batch + num_batches)``.

    With ``snapshots`` > 1 the chunk holds each sample once per snapshot, earliest first.
    """

    index: int
    first_batch: int
    num_batches: int
    x: torch.Tensor  # [n, *input_shape], float32, CPU
    targets: torch.Tensor  # [n] the classes drawn for synthesis
    labels: torch.Tensor  # [n, C] teacher softmax (soft) or [n] argmax (hard)
    step_sizes: torch.Tensor  # [n] step size each sample was made with
    losses: dict[str, float]  # weighted terms at the last step, averaged over mini-batches
    target_accuracy: float  # share of samples the teacher assigns to their drawn class


@dataclass(frozen=True)
class SynthesisPlan:
    """How ``num_samples`` splits into mini-batches and chunks."""

    num_batches: int
    batch_size: int
    chunk_batches: int

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.num_batches / self.chunk_batches)

    def chunk_bounds(self, chunk: int) -> tuple[int, int]:
        first = chunk * self.chunk_batches
        return first, min(self.num_batches, first + self.chunk_batches)


def plan_synthesis(
    spec: SynthesisSpec, input_shape: tuple[int, ...], runtime: Runtime
) -> SynthesisPlan:
    """Pick the chunk size: as many mini-batches at once as fit a per-device budget of inputs."""
    num_batches = math.ceil(spec.num_samples / spec.batch_size)
    if spec.chunk_batches > 0:
        chunk = spec.chunk_batches
    else:
        elements = spec.batch_size * math.prod(input_shape)
        # On the CPU large chunks fall out of cache and lose to small ones (bench/synthesis:
        # K=4 is 1.7x the reference loop on LeNet-5 28x28, K=26 only 1.0x).
        budget = 2**26 if runtime.is_cuda else 2**18
        max_samples = 1 << 16 if runtime.is_cuda else 4096
        chunk = max(1, min(budget // max(1, elements), max_samples // spec.batch_size))
    return SynthesisPlan(num_batches, spec.batch_size, max(1, min(chunk, num_batches)))


def batch_generator(seed: int, batch: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * _SEED_STRIDE + batch) % (2**63 - 1))
    return gen


def initial_batch(
    spec: SynthesisSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    batch: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior draw of one mini-batch: inputs ``[R, G, *shape]`` and classes ``[R, G]``.

    Each row's classes are a random permutation of all classes cut to ``G``, so the classes in a
    row are distinct.
    """
    gen = batch_generator(seed, batch, device)
    rows, groups = spec.batch_size // spec.groups, spec.groups
    shape = (rows, groups, *input_shape)
    if spec.prior == "pink" and supports_total_variation(input_shape):
        basis = SpectralBasis(input_shape[-2], input_shape[-1], device)
        white = torch.randn((*shape[:-2], *basis.scale.shape, 2), generator=gen, device=device)
        x = basis.decode(white)
    elif spec.prior in ("normal", "pink"):
        x = torch.randn(shape, generator=gen, device=device)
    else:
        x = torch.rand(shape, generator=gen, device=device) * 2.0 - 1.0
    keys = torch.rand((rows, num_classes), generator=gen, device=device)
    targets = keys.argsort(dim=1)[:, :groups]
    return x, targets


def synthesis_losses(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    targets: torch.Tensor,
    spec: SynthesisSpec,
    input_shape: tuple[int, ...],
    runtime: Runtime,
    *,
    batchnorm: BatchNormTap | None = None,
    shifts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Weighted loss per mini-batch ``[K]``, the weighted terms, and the logits ``[K,R,G,C]``.

    ``x``: ``[K, R, G, *shape]``, ``targets``: ``[K, R, G]``. With ``batchnorm`` the teacher runs
    through the tap and the BatchNorm prior is added; ``shifts`` ``[K, 2]`` rolls each
    mini-batch's images before the teacher sees them (the TV term still judges ``x`` itself).
    """
    k, rows, groups = targets.shape
    seen = x if shifts is None else shift_images(x, shifts)
    flat = seen.reshape(-1, *input_shape)
    if runtime.channels_last and flat.dim() == 4:
        flat = flat.contiguous(memory_format=torch.channels_last)
    stats: list[tuple[torch.Tensor, ...]] = []
    with runtime.autocast_context():
        if batchnorm is not None:
            logits, stats = batchnorm(flat)
        else:
            logits = teacher(flat)
    logits = logits.float().view(k, rows, groups, -1)
    w = spec.weights
    terms: dict[str, torch.Tensor] = {"cls": w.cls * classification_loss(logits, targets)}
    if stats:
        terms["bn"] = w.bn * batchnorm_prior(stats, k)
    if w.contr > 0:
        terms["contr"] = w.contr * contrastive_loss(logits)
    if w.tv > 0 and supports_total_variation(input_shape):
        terms["tv"] = w.tv * total_variation_loss(x)
    if w.entropy > 0:
        terms["entropy"] = w.entropy * entropy_loss(logits)
    total = torch.stack(list(terms.values())).sum(dim=0)
    return total, terms, logits


def max_shift(input_shape: tuple[int, ...]) -> int:
    """Largest shift ``augment`` applies: an eighth of the shorter side, 0 for non-images."""
    if not supports_total_variation(input_shape):
        return 0
    return max(1, min(input_shape[1], input_shape[2]) // 8)


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Roll each mini-batch ``k`` of ``x`` ``[K, ..., H, W]`` by ``shifts[k]`` = (dy, dx)."""
    return torch.stack(
        [
            torch.roll(x[k], shifts=(int(dy), int(dx)), dims=(-2, -1))
            for k, (dy, dx) in enumerate(shifts.tolist())
        ]
    )


def _diverged(
    spec: SynthesisSpec, first_batch: int, step: int, eta: float
) -> SynthesisDivergedError:
    if spec.optimizer == "sgd":
        advice = (
            f"lower synthesis.noise (now {spec.noise:g}, e.g. to {spec.noise / 100:g}) "
            'or use synthesis.optimizer = "adam", whose steps do not grow with the gradient'
        )
    else:
        advice = f"lower synthesis.noise (now {spec.noise:g}) or the loss weights"
    return SynthesisDivergedError(
        f"synthesis diverged: inputs or loss became NaN/inf at step {step} of the chunk "
        f"starting at mini-batch {first_batch} (step size {eta:.3g}); {advice}"
    )


def synthesize_chunk(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    spec: SynthesisSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    first_batch: int,
    num_batches: int,
    etas: list[float],
    runtime: Runtime,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, dict[str, float]]:
    """Run ``spec.steps`` steps on mini-batches ``first_batch ..``.

    Returns ``(snapshots, targets, loss summary)``: ``snapshots`` holds ``(x, logits)`` after
    evenly spaced step counts, the final state last (only the final one when
    ``spec.snapshots == 1``). Tensors stay on the runtime device, laid out ``[K, R, G, ...]``.
    """
    device = runtime.device
    draws = [
        initial_batch(spec, input_shape, num_classes, seed, b, device)
        for b in range(first_batch, first_batch + num_batches)
    ]
    x = torch.stack([d[0] for d in draws])
    targets = torch.stack([d[1] for d in draws])
    # One noise generator per mini-batch, seeded as the reference loop seeds it, so Langevin
    # results do not depend on how mini-batches are chunked.
    noise_gens = (
        [
            batch_generator(seed + 7, b, device)
            for b in range(first_batch, first_batch + num_batches)
        ]
        if spec.langevin
        else []
    )
    batchnorm = tap_batchnorm(teacher) if spec.weights.bn > 0 else None  # type: ignore[arg-type]
    shift = max_shift(input_shape) if spec.augment else 0
    shift_gens = (
        [
            batch_generator(seed + 13, b, device)
            for b in range(first_batch, first_batch + num_batches)
        ]
        if shift
        else []
    )
    basis = (
        SpectralBasis(input_shape[-2], input_shape[-1], device)
        if spec.parameterization == "fourier" and supports_total_variation(input_shape)
        else None
    )
    # ``param`` is what the optimizer moves: the pixels themselves, or their scaled spectrum.
    param = x if basis is None else basis.encode(x)
    eta = torch.tensor(etas, device=device, dtype=torch.float32)
    eta = eta.view(-1, *[1] * (param.dim() - 1))
    noise_scale = (2.0 * eta).sqrt() if spec.langevin else None
    use_adam = spec.optimizer == "adam"
    if use_adam:
        m1 = torch.zeros_like(param)
        m2 = torch.zeros_like(param)
    beta1, beta2 = ADAM_BETAS

    snapshot_at = {round(spec.steps * j / spec.snapshots) for j in range(1, spec.snapshots)}
    snapshots: list[tuple[torch.Tensor, torch.Tensor]] = []
    for step in range(1, spec.steps + 1):
        param.requires_grad_(True)
        x = param if basis is None else basis.decode(param)
        shifts = (
            torch.stack(
                [
                    torch.randint(-shift, shift + 1, (2,), generator=g, device=device)
                    for g in shift_gens
                ]
            )
            if shift
            else None
        )
        total, _, logits = synthesis_losses(
            teacher, x, targets, spec, input_shape, runtime, batchnorm=batchnorm, shifts=shifts
        )
        if step - 1 in snapshot_at:
            if shifts is not None:  # label the sample as stored, not as the teacher saw it
                with torch.no_grad():
                    _, _, logits = synthesis_losses(teacher, x, targets, spec, input_shape, runtime)
            snapshots.append((x.detach().clone(), logits.detach()))
        (grad,) = torch.autograd.grad(total.sum(), param)
        param = param.detach()
        with torch.no_grad():
            if use_adam:
                m1.mul_(beta1).add_(grad, alpha=1 - beta1)
                m2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (m2 / (1 - beta2**step)).sqrt_().add_(ADAM_EPS)
                param.addcdiv_(m1 * (eta / (1 - beta1**step)), denom, value=-1.0)
            else:
                param.sub_(grad * eta)
            if noise_scale is not None:
                noise = torch.stack(
                    [torch.randn(param.shape[1:], generator=g, device=device) for g in noise_gens]
                )
                param.add_(noise * noise_scale)
        if step % FINITE_CHECK_EVERY == 0 or step == spec.steps:
            if not bool(torch.isfinite(total).all()) or not bool(torch.isfinite(param).all()):
                raise _diverged(spec, first_batch, step, etas[0])
            if should_stop is not None and should_stop():
                raise JobCanceled("canceled during synthesis")

    x = param.detach() if basis is None else basis.decode(param.detach())
    with torch.no_grad():
        total, terms, logits = synthesis_losses(
            teacher, x, targets, spec, input_shape, runtime, batchnorm=batchnorm
        )
    if not bool(torch.isfinite(logits).all()) or not bool(torch.isfinite(total).all()):
        raise _diverged(spec, first_batch, spec.steps, etas[0])
    summary = {name: float(value.mean()) for name, value in terms.items()}
    summary["total"] = float(total.mean())
    snapshots.append((x, logits))
    return snapshots, targets, summary


def synthesize(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    spec: SynthesisSpec,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int,
    runtime: Runtime,
    start_chunk: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[SyntheticChunk]:
    """Yield the synthetic set chunk by chunk, starting at ``start_chunk`` (for resuming).

    The last mini-batch is cut so that exactly ``spec.num_samples`` samples come out.
    """
    input_shape = tuple(input_shape)
    plan = plan_synthesis(spec, input_shape, runtime)
    all_etas = step_sizes(
        plan.num_batches, spec.noise, spec.noise_decay_magnitude, spec.noise_schedule
    )
    for chunk in range(start_chunk, plan.num_chunks):
        first, end = plan.chunk_bounds(chunk)
        snapshots, targets, summary = synthesize_chunk(
            teacher,
            spec,
            input_shape,
            num_classes,
            seed,
            first,
            end - first,
            all_etas[first:end],
            runtime,
            should_stop,
        )
        k = end - first
        keep = min(k * spec.batch_size, spec.num_samples - first * spec.batch_size)
        targets = targets.reshape(-1)[:keep].cpu()
        etas = torch.tensor(all_etas[first:end]).repeat_interleave(spec.batch_size)[:keep]
        xs = [x.reshape(-1, *input_shape)[:keep].float().cpu() for x, _ in snapshots]
        probs = [lg.reshape(-1, lg.shape[-1])[:keep].cpu().softmax(1) for _, lg in snapshots]
        final_classes = probs[-1].argmax(dim=1)
        all_probs = torch.cat(probs)
        yield SyntheticChunk(
            index=chunk,
            first_batch=first,
            num_batches=k,
            x=torch.cat(xs).contiguous(),
            targets=targets.repeat(len(snapshots)),
            labels=all_probs if spec.soft_labels else all_probs.argmax(dim=1),
            step_sizes=etas.repeat(len(snapshots)),
            losses=summary,
            target_accuracy=float((final_classes == targets).float().mean()),
        )
