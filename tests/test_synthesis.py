"""Tests for cake_core.synthesis: batched CAKE synthesis against the one-at-a-time reference.

Teachers are tiny TorchScript models (an MLP on 6 features trained for a moment on Gaussian
blobs, and a random CNN on [1, 6, 6] images), so every test runs in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
import torch
from torch import nn

from bench.reference_synthesis import reference_synthesize
from cake_core.config import LossWeights, SynthesisSpec
from cake_core.device import Runtime
from cake_core.errors import JobCanceled, SynthesisDivergedError
from cake_core.schedule import step_sizes
from cake_core.synthesis import (
    SyntheticChunk,
    initial_batch,
    plan_synthesis,
    synthesize,
)

CPU = torch.device("cpu")
RUNTIME = Runtime(device=CPU)
MLP_SHAPE = (6,)
MLP_CLASSES = 5
CNN_SHAPE = (1, 6, 6)
CNN_CLASSES = 4

Teacher = Callable[[torch.Tensor], torch.Tensor]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# teachers
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, MLP_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 6 * 6, CNN_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _freeze_and_script(module: nn.Module) -> torch.jit.ScriptModule:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return torch.jit.script(module)


@pytest.fixture(scope="module")
def mlp() -> torch.jit.ScriptModule:
    """An MLP trained on 5 Gaussian blobs in 6-D: every class has a region of its own."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn((MLP_CLASSES, 6), generator=gen) * 2.0
    y = torch.arange(MLP_CLASSES).repeat_interleave(80)
    x = centers[y] + 0.7 * torch.randn((len(y), 6), generator=gen)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert accuracy > 0.9
    return _freeze_and_script(model)


@pytest.fixture(scope="module")
def cnn() -> torch.jit.ScriptModule:
    torch.manual_seed(1)
    return _freeze_and_script(CNN())


class NaNAfter(nn.Module):
    """Answers like ``inner`` for the first ``calls`` forward passes, NaN afterwards."""

    def __init__(self, inner: Teacher, calls: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = calls
        self.count = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count += 1
        out = self.inner(x)
        return out * float("nan") if self.count > self.limit else out


def _spec(**overrides: object) -> SynthesisSpec:
    """Small MLP spec: 45 samples = 5 mini-batches of 10 (the last cut to 5), 2 rows of 5."""
    base = SynthesisSpec(
        num_samples=45,
        batch_size=10,
        groups=5,
        steps=20,
        weights=LossWeights(cls=1.0, contr=0.1, tv=0.0, entropy=0.5),
        noise=0.1,
        noise_decay_magnitude=2.0,
        optimizer="sgd",
        chunk_batches=2,
    )
    return replace(base, **overrides)


def _cnn_spec(**overrides: object) -> SynthesisSpec:
    """Small CNN spec: 44 samples = 4 mini-batches of 12 (the last cut to 8), 3 rows of 4."""
    base = _spec(
        num_samples=44,
        batch_size=12,
        groups=4,
        weights=LossWeights(cls=1.0, contr=0.1, tv=1.0, entropy=0.5),
    )
    return replace(base, **overrides)


def _run(
    teacher: Teacher,
    spec: SynthesisSpec,
    shape: tuple[int, ...] = MLP_SHAPE,
    classes: int = MLP_CLASSES,
    seed: int = 0,
    **kwargs: object,
) -> list[SyntheticChunk]:
    return list(synthesize(teacher, spec, shape, classes, seed=seed, runtime=RUNTIME, **kwargs))


def _cat(chunks: list[SyntheticChunk], name: str) -> torch.Tensor:
    return torch.cat([getattr(c, name) for c in chunks])


def _initial_x(
    spec: SynthesisSpec, shape: tuple[int, ...], classes: int, seed: int
) -> torch.Tensor:
    num_batches = math.ceil(spec.num_samples / spec.batch_size)
    xs = [initial_batch(spec, shape, classes, seed, b, CPU)[0] for b in range(num_batches)]
    return torch.cat([x.reshape(-1, *shape) for x in xs])[: spec.num_samples]


# --------------------------------------------------------------------------------------------
# prior draws: rows of distinct classes, p(y), p(x)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("classes", "groups"), [(7, 4), (5, 5), (10, 10), (3, 1)])
def test_rows_hold_distinct_classes(classes: int, groups: int) -> None:
    spec = SynthesisSpec(num_samples=1000, batch_size=groups * 50, groups=groups)
    for batch in range(3):
        x, targets = initial_batch(spec, MLP_SHAPE, classes, seed=5, batch=batch, device=CPU)
        assert x.shape == (50, groups, *MLP_SHAPE)
        assert targets.shape == (50, groups)
        assert targets.dtype == torch.int64
        assert int(targets.min()) >= 0 and int(targets.max()) < classes
        for row in targets.tolist():
            assert len(set(row)) == groups, row


def test_classes_are_uniform() -> None:
    classes, groups = 7, 4
    spec = SynthesisSpec(num_samples=1000, batch_size=groups * 250, groups=groups)
    targets = torch.cat(
        [initial_batch(spec, MLP_SHAPE, classes, seed=11, batch=b, device=CPU)[1] for b in range(4)]
    )  # 1000 rows of 4 = 4000 draws
    counts = torch.bincount(targets.reshape(-1), minlength=classes).double()
    expected = targets.numel() / classes
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30.0, counts  # df = 6: P(chi2 > 30) < 1e-4 under uniformity
    assert counts.min() / counts.max() > 0.85
    # every position in a row is uniform too (no class prefers the first slot)
    for position in range(groups):
        per_slot = torch.bincount(targets[:, position], minlength=classes).double()
        assert per_slot.min() > 0.6 * (len(targets) / classes)


def test_normal_prior() -> None:
    spec = SynthesisSpec(num_samples=2000, batch_size=2000, groups=10, prior="normal")
    x, _ = initial_batch(spec, MLP_SHAPE, 10, seed=3, batch=0, device=CPU)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.03
    assert abs(float(x.std()) - 1.0) < 0.03
    assert float(x.abs().max()) > 3.0  # tails: not uniform


def test_uniform_prior() -> None:
    spec = SynthesisSpec(num_samples=2000, batch_size=2000, groups=10, prior="uniform")
    x, _ = initial_batch(spec, MLP_SHAPE, 10, seed=3, batch=0, device=CPU)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert float(x.min()) < -0.99 and float(x.max()) > 0.99
    assert abs(float(x.mean())) < 0.03
    assert abs(float(x.std()) - 1.0 / math.sqrt(3.0)) < 0.02


def test_pink_prior_draws_smooth_unit_variance_images_and_normal_tables() -> None:
    pink = SynthesisSpec(num_samples=2000, batch_size=2000, groups=10, prior="pink")
    white = replace(pink, prior="normal")
    shape = (1, 16, 16)
    x, _ = initial_batch(pink, shape, 10, seed=3, batch=0, device=CPU)
    w, _ = initial_batch(white, shape, 10, seed=3, batch=0, device=CPU)
    assert x.shape == w.shape
    assert abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05
    # Neighbouring pixels are correlated (amplitude ~ 1/frequency), unlike white noise's.
    step = (x[..., 1:] - x[..., :-1]).abs().mean() / (w[..., 1:] - w[..., :-1]).abs().mean()
    assert float(step) < 0.7
    power = torch.fft.rfft2(x.squeeze(2)).abs().pow(2).mean(dim=(0, 1))
    assert float(power[1, 1]) > 10 * float(power[8, 8])  # low frequencies carry the energy
    # Inputs without a 2-D grid have no spectrum: the pink prior draws them as "normal" does.
    table, _ = initial_batch(pink, MLP_SHAPE, 10, seed=3, batch=0, device=CPU)
    assert torch.equal(table, initial_batch(white, MLP_SHAPE, 10, seed=3, batch=0, device=CPU)[0])


def test_initial_batch_depends_on_seed_and_batch_only() -> None:
    spec = _spec()
    a = initial_batch(spec, MLP_SHAPE, MLP_CLASSES, seed=1, batch=2, device=CPU)
    b = initial_batch(spec, MLP_SHAPE, MLP_CLASSES, seed=1, batch=2, device=CPU)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other_batch = initial_batch(spec, MLP_SHAPE, MLP_CLASSES, seed=1, batch=3, device=CPU)
    other_seed = initial_batch(spec, MLP_SHAPE, MLP_CLASSES, seed=2, batch=2, device=CPU)
    assert not torch.equal(a[0], other_batch[0])
    assert not torch.equal(a[0], other_seed[0])


# --------------------------------------------------------------------------------------------
# batched == one at a time
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "langevin"])
@pytest.mark.parametrize("chunk_batches", [2, 3, 5])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_batched_matches_reference(
    request: pytest.FixtureRequest, model: str, optimizer: str, chunk_batches: int
) -> None:
    """chunk_batches 2 and 3 leave an uneven last chunk (5 mini-batches in all).

    Langevin noise comes from one generator per mini-batch, so it matches exactly too.
    """
    teacher = request.getfixturevalue(model)
    if model == "mlp":
        spec, shape, classes = _spec(num_samples=50), MLP_SHAPE, MLP_CLASSES
    else:
        spec, shape, classes = _cnn_spec(num_samples=60), CNN_SHAPE, CNN_CLASSES
    langevin = optimizer == "langevin"
    spec = replace(
        spec,
        optimizer="sgd" if langevin else optimizer,
        langevin=langevin,
        noise=min(spec.noise, 1e-3) if langevin else spec.noise,
        chunk_batches=chunk_batches,
    )
    chunks = _run(teacher, spec, shape, classes, seed=4)
    assert [c.num_batches for c in chunks] == [
        min(chunk_batches, 5 - i * chunk_batches) for i in range(math.ceil(5 / chunk_batches))
    ]
    ref = list(reference_synthesize(teacher, spec, shape, classes, seed=4, runtime=RUNTIME))
    assert len(ref) == 5
    ref_x = torch.cat([r[0] for r in ref])
    ref_probs = torch.cat([r[1] for r in ref]).softmax(dim=1)

    x = _cat(chunks, "x")
    assert x.shape == ref_x.shape == (spec.num_samples, *shape)
    moved = (x - _initial_x(spec, shape, classes, seed=4)).abs().max()
    assert moved > 0.05  # the comparison is not between two untouched priors
    torch.testing.assert_close(x, ref_x, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_cat(chunks, "labels"), ref_probs, rtol=1e-4, atol=1e-5)
    assert torch.equal(_cat(chunks, "labels").argmax(dim=1), ref_probs.argmax(dim=1))


def test_langevin_matches_reference_in_distribution(mlp: Teacher) -> None:
    """Langevin noise is drawn differently per layout: compare moments per mini-batch."""
    spec = _spec(
        num_samples=200,
        batch_size=50,
        steps=50,
        noise=0.02,
        noise_decay_magnitude=0.0,
        langevin=True,
        weights=LossWeights(cls=1.0, contr=0.1, tv=0.0, entropy=0.0),
        chunk_batches=2,
    )
    x = _cat(_run(mlp, spec, seed=1), "x").view(4, -1)
    ref = list(reference_synthesize(mlp, spec, MLP_SHAPE, MLP_CLASSES, seed=1, runtime=RUNTIME))
    ref_x = torch.cat([r[0] for r in ref]).view(4, -1)
    # the noise must show: a noise-free run stays near the prior's spread (about 0.8 here)
    assert float(x.std()) > 1.3
    for batch in range(4):
        assert float(ref_x[batch].std()) == pytest.approx(float(x[batch].std()), rel=0.15)
        assert abs(float(x[batch].mean()) - float(ref_x[batch].mean())) < 0.4


# --------------------------------------------------------------------------------------------
# Langevin noise scale
# --------------------------------------------------------------------------------------------


ZERO = LossWeights(cls=0.0, contr=0.0, tv=0.0, entropy=0.0)


@pytest.mark.parametrize("chunk_batches", [1, 3])
def test_langevin_noise_scale(mlp: Teacher, chunk_batches: int) -> None:
    """No loss gradient: each element takes a random walk of ``steps`` steps of variance
    ``2 * eta``, so the change has std ``sqrt(2 * eta * steps)``, per mini-batch eta."""
    steps = 40
    spec = _spec(
        num_samples=300,
        batch_size=100,
        steps=steps,
        noise=0.01,
        noise_decay_magnitude=2.0,
        langevin=True,
        weights=ZERO,
        chunk_batches=chunk_batches,
    )
    chunks = _run(mlp, spec, seed=2)
    change = (_cat(chunks, "x") - _initial_x(spec, MLP_SHAPE, MLP_CLASSES, seed=2)).view(3, -1)
    etas = step_sizes(3, 0.01, 2.0, "linear")
    assert torch.equal(
        _cat(chunks, "step_sizes"), torch.tensor(etas).repeat_interleave(100).float()
    )
    for batch, eta in enumerate(etas):
        assert float(change[batch].std()) == pytest.approx(math.sqrt(2 * eta * steps), rel=0.1)
        assert abs(float(change[batch].mean())) < 0.15 * math.sqrt(2 * eta * steps)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_no_gradient_no_noise_leaves_prior(mlp: Teacher, optimizer: str) -> None:
    spec = _spec(weights=ZERO, optimizer=optimizer, langevin=False)
    x = _cat(_run(mlp, spec, seed=2), "x")
    assert torch.equal(x, _initial_x(spec, MLP_SHAPE, MLP_CLASSES, seed=2))


# --------------------------------------------------------------------------------------------
# chunking, resume, determinism, sizes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_chunking_does_not_change_results(mlp: Teacher, optimizer: str) -> None:
    runs = {
        chunk: _run(mlp, _spec(optimizer=optimizer, chunk_batches=chunk), seed=6)
        for chunk in (1, 3, 5, 0)
    }
    assert [len(runs[c]) for c in (1, 3, 5)] == [5, 2, 1]
    base = runs[1]
    for chunks in runs.values():
        torch.testing.assert_close(_cat(chunks, "x"), _cat(base, "x"), rtol=1e-4, atol=1e-5)
        assert torch.equal(_cat(chunks, "targets"), _cat(base, "targets"))
        assert torch.equal(_cat(chunks, "step_sizes"), _cat(base, "step_sizes"))
        torch.testing.assert_close(
            _cat(chunks, "labels"), _cat(base, "labels"), rtol=1e-4, atol=1e-5
        )


def test_cnn_chunking_does_not_change_results(cnn: Teacher) -> None:
    one = _run(cnn, _cnn_spec(chunk_batches=1), CNN_SHAPE, CNN_CLASSES, seed=6)
    three = _run(cnn, _cnn_spec(chunk_batches=3), CNN_SHAPE, CNN_CLASSES, seed=6)
    torch.testing.assert_close(_cat(one, "x"), _cat(three, "x"), rtol=1e-4, atol=1e-5)
    assert torch.equal(_cat(one, "targets"), _cat(three, "targets"))


@pytest.mark.parametrize("langevin", [False, True])
@pytest.mark.parametrize("start_chunk", [1, 2])
def test_resume_yields_tail_of_full_run(mlp: Teacher, start_chunk: int, langevin: bool) -> None:
    spec = _spec(langevin=langevin, optimizer="adam")
    full = _run(mlp, spec, seed=8)
    assert len(full) == 3
    tail = _run(mlp, spec, seed=8, start_chunk=start_chunk)
    assert [c.index for c in tail] == list(range(start_chunk, 3))
    assert len(tail) == len(full) - start_chunk
    for got, want in zip(tail, full[start_chunk:], strict=True):
        assert (got.index, got.first_batch, got.num_batches) == (
            want.index,
            want.first_batch,
            want.num_batches,
        )
        assert torch.equal(got.x, want.x)
        assert torch.equal(got.targets, want.targets)
        assert torch.equal(got.labels, want.labels)


@pytest.mark.parametrize("mode", ["sgd", "adam", "langevin"])
def test_same_seed_same_result_other_seed_differs(mlp: Teacher, mode: str) -> None:
    spec = (
        _spec(langevin=True, optimizer="sgd")
        if mode == "langevin"
        else _spec(optimizer=mode, langevin=False)
    )
    a, b = _run(mlp, spec, seed=3), _run(mlp, spec, seed=3)
    for name in ("x", "targets", "labels", "step_sizes"):
        assert torch.equal(_cat(a, name), _cat(b, name)), name
    c = _run(mlp, spec, seed=4)
    assert not torch.equal(_cat(a, "x"), _cat(c, "x"))
    assert not torch.equal(_cat(a, "targets"), _cat(c, "targets"))


@pytest.mark.parametrize(
    ("num_samples", "chunk_batches", "sizes"),
    [(45, 2, [20, 20, 5]), (45, 5, [45]), (41, 3, [30, 11]), (50, 2, [20, 20, 10]), (10, 1, [10])],
)
def test_exactly_num_samples(
    mlp: Teacher, num_samples: int, chunk_batches: int, sizes: list[int]
) -> None:
    spec = _spec(num_samples=num_samples, chunk_batches=chunk_batches, steps=3)
    chunks = _run(mlp, spec)
    assert [len(c.x) for c in chunks] == sizes
    for c in chunks:
        n = len(c.x)
        assert c.x.shape == (n, *MLP_SHAPE)
        assert c.targets.shape == (n,)
        assert c.labels.shape == (n, MLP_CLASSES)
        assert c.step_sizes.shape == (n,)
    assert sum(sizes) == num_samples
    plan = plan_synthesis(spec, MLP_SHAPE, RUNTIME)
    assert plan.num_batches == math.ceil(num_samples / 10)
    assert plan.num_chunks == len(sizes)


def test_chunk_metadata(mlp: Teacher) -> None:
    spec = _spec(chunk_batches=2)
    chunks = _run(mlp, spec, seed=9)
    assert [(c.index, c.first_batch, c.num_batches) for c in chunks] == [
        (0, 0, 2),
        (1, 2, 2),
        (2, 4, 1),
    ]
    etas = step_sizes(5, spec.noise, spec.noise_decay_magnitude, spec.noise_schedule)
    want_etas = torch.tensor(etas).repeat_interleave(10)[:45]
    torch.testing.assert_close(_cat(chunks, "step_sizes"), want_etas.float())
    targets = torch.cat(
        [initial_batch(spec, MLP_SHAPE, MLP_CLASSES, 9, b, CPU)[1].reshape(-1) for b in range(5)]
    )[:45]
    assert torch.equal(_cat(chunks, "targets"), targets)
    for c in chunks:
        assert set(c.losses) == {"cls", "contr", "entropy", "total"}  # no TV on tabular input
        assert all(math.isfinite(v) for v in c.losses.values())
        assert c.losses["total"] == pytest.approx(
            c.losses["cls"] + c.losses["contr"] + c.losses["entropy"], rel=1e-5
        )
        agree = (mlp(c.x).argmax(dim=1) == c.targets).float().mean().item()
        assert c.target_accuracy == pytest.approx(agree)


def test_tv_term_used_for_images(cnn: Teacher) -> None:
    chunks = _run(cnn, _cnn_spec(steps=2), CNN_SHAPE, CNN_CLASSES)
    assert "tv" in chunks[0].losses and chunks[0].losses["tv"] > 0
    no_tv = _run(
        cnn,
        _cnn_spec(steps=2, weights=LossWeights(cls=1.0, contr=0.0, tv=0.0)),
        CNN_SHAPE,
        CNN_CLASSES,
    )
    assert set(no_tv[0].losses) == {"cls", "total"}


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_soft_labels_are_teacher_softmax(request: pytest.FixtureRequest, model: str) -> None:
    teacher = request.getfixturevalue(model)
    spec, shape, classes = (
        (_spec(), MLP_SHAPE, MLP_CLASSES) if model == "mlp" else (_cnn_spec(), CNN_SHAPE, 4)
    )
    for c in _run(teacher, spec, shape, classes, seed=5):
        assert c.labels.dtype == torch.float32
        assert torch.all(c.labels >= 0)
        torch.testing.assert_close(c.labels.sum(dim=1), torch.ones(len(c.x)))
        with torch.no_grad():
            want = teacher(c.x).softmax(dim=1)
        torch.testing.assert_close(c.labels, want, rtol=1e-5, atol=1e-6)


def test_hard_labels_are_argmax(mlp: Teacher) -> None:
    soft = _run(mlp, _spec(soft_labels=True), seed=5)
    hard = _run(mlp, _spec(soft_labels=False), seed=5)
    for s, h in zip(soft, hard, strict=True):
        assert torch.equal(s.x, h.x)
        assert h.labels.dtype == torch.int64
        assert h.labels.shape == (len(h.x),)
        assert torch.equal(h.labels, s.labels.argmax(dim=1))
        with torch.no_grad():
            assert torch.equal(h.labels, mlp(h.x).argmax(dim=1))


# --------------------------------------------------------------------------------------------
# divergence and cancel
# --------------------------------------------------------------------------------------------


def test_huge_sgd_step_raises_naming_the_noise(mlp: Teacher) -> None:
    spec = _spec(
        noise=10.0,
        noise_decay_magnitude=0.0,
        weights=LossWeights(cls=1e3, contr=1e3, tv=0.0),
        steps=50,
        chunk_batches=1,
    )
    yielded: list[SyntheticChunk] = []
    with pytest.raises(SynthesisDivergedError) as info:
        for chunk in synthesize(mlp, spec, MLP_SHAPE, MLP_CLASSES, seed=0, runtime=RUNTIME):
            yielded.append(chunk)
    assert yielded == []
    assert info.value.code == "synthesis_diverged"
    assert "synthesis.noise" in str(info.value)
    assert "adam" in str(info.value)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("calls", [3, 10, 25, 40])
def test_nan_teacher_raises_and_yields_only_finite_chunks(
    mlp: Teacher, optimizer: str, calls: int
) -> None:
    """The teacher turns NaN after ``calls`` forward passes: mid-steps, in the final labelling
    pass (10 steps + 1 per chunk = 11 calls), or in a later chunk."""
    teacher = NaNAfter(mlp, calls)
    spec = _spec(steps=10, chunk_batches=1, optimizer=optimizer)
    yielded: list[SyntheticChunk] = []
    with pytest.raises(SynthesisDivergedError) as info:
        for chunk in synthesize(teacher, spec, MLP_SHAPE, MLP_CLASSES, seed=0, runtime=RUNTIME):
            yielded.append(chunk)
    assert "synthesis.noise" in str(info.value)
    assert len(yielded) == calls // 11
    for chunk in yielded:
        assert bool(torch.isfinite(chunk.x).all())
        assert bool(torch.isfinite(chunk.labels).all())


def test_divergence_stops_early(mlp: Teacher) -> None:
    """A run that went NaN stops within a few steps, not after all of them."""
    teacher = NaNAfter(mlp, 3)
    spec = _spec(steps=200, chunk_batches=1)
    with pytest.raises(SynthesisDivergedError, match="at step"):
        _run(teacher, spec)
    assert teacher.count <= 25


def test_should_stop_cancels(mlp: Teacher) -> None:
    with pytest.raises(JobCanceled):
        _run(mlp, _spec(steps=20), should_stop=lambda: True)


def test_should_stop_cancels_between_chunks(mlp: Teacher) -> None:
    stop = False
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return stop

    gen = synthesize(
        mlp,
        _spec(steps=20),
        MLP_SHAPE,
        MLP_CLASSES,
        seed=0,
        runtime=RUNTIME,
        should_stop=should_stop,
    )
    first = next(gen)
    assert first.index == 0
    assert calls > 0  # it is asked during the steps, not only between chunks
    stop = True
    with pytest.raises(JobCanceled):
        next(gen)


# --------------------------------------------------------------------------------------------
# synthesis works
# --------------------------------------------------------------------------------------------


def test_adam_reaches_the_drawn_classes(mlp: Teacher) -> None:
    """Reference loss weights, Adam on the inputs: the teacher assigns most samples to the class
    they were drawn for, far more than the prior does (about 1 in 5)."""
    spec = _spec(
        num_samples=100,
        batch_size=20,
        steps=100,
        optimizer="adam",
        noise=0.05,
        noise_decay_magnitude=1.0,
        weights=LossWeights(),
        chunk_batches=0,
    )
    chunks = _run(mlp, spec, seed=12)
    x, targets = _cat(chunks, "x"), _cat(chunks, "targets")
    with torch.no_grad():
        accuracy = (mlp(x).argmax(dim=1) == targets).float().mean().item()
        prior = _initial_x(spec, MLP_SHAPE, MLP_CLASSES, seed=12)
        prior_accuracy = (mlp(prior).argmax(dim=1) == targets).float().mean().item()
    assert accuracy > 0.8
    assert prior_accuracy < 0.5
    assert sum(c.target_accuracy * len(c.x) for c in chunks) / len(x) == pytest.approx(accuracy)
    # every class is reached
    reached = targets[mlp(x).argmax(dim=1) == targets]
    assert set(reached.tolist()) == set(range(MLP_CLASSES))


# --------------------------------------------------------------------------------------------
# beyond the reference: BatchNorm prior and shifted views
# --------------------------------------------------------------------------------------------


class BNCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, CNN_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


@pytest.fixture(scope="module")
def bn_cnn() -> torch.jit.ScriptModule:
    """A CNN whose BatchNorm saw inputs around 0.5 with spread 0.3 (not the N(0, 1) prior)."""
    torch.manual_seed(2)
    model = BNCNN().train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.rand(64, *CNN_SHAPE) * 0.6 + 0.2)
    return _freeze_and_script(model)


def _bn_gap(teacher: torch.jit.ScriptModule, x: torch.Tensor) -> float:
    from cake_core.batchnorm import batchnorm_prior, tap_batchnorm

    tap = tap_batchnorm(teacher)
    assert tap is not None
    return float(batchnorm_prior(tap(x)[1], 1))


def test_batchnorm_prior_pulls_statistics_toward_the_running_ones(bn_cnn: Teacher) -> None:
    weights = LossWeights(cls=1.0, contr=0.0, tv=0.0, bn=0.0)
    without = _run(bn_cnn, _cnn_spec(weights=weights, optimizer="adam"), CNN_SHAPE, CNN_CLASSES)
    weights = replace(weights, bn=10.0)
    with_prior = _run(bn_cnn, _cnn_spec(weights=weights, optimizer="adam"), CNN_SHAPE, CNN_CLASSES)
    assert "bn" in with_prior[0].losses and "bn" not in without[0].losses
    gap_without = _bn_gap(bn_cnn, _cat(without, "x"))
    gap_with = _bn_gap(bn_cnn, _cat(with_prior, "x"))
    assert gap_with < 0.5 * gap_without, (gap_with, gap_without)


def test_batchnorm_prior_is_ignored_without_batchnorm(cnn: Teacher) -> None:
    weights = replace(_cnn_spec().weights, bn=10.0)
    chunks = _run(cnn, _cnn_spec(weights=weights), CNN_SHAPE, CNN_CLASSES, seed=3)
    plain = _run(cnn, _cnn_spec(), CNN_SHAPE, CNN_CLASSES, seed=3)
    assert "bn" not in chunks[0].losses
    assert torch.equal(_cat(chunks, "x"), _cat(plain, "x"))


@pytest.mark.parametrize("augment", [False, True])
def test_chunking_does_not_change_results_with_prior_and_shifts(
    bn_cnn: Teacher, augment: bool
) -> None:
    spec = _cnn_spec(weights=LossWeights(cls=1.0, contr=0.1, tv=1.0, bn=1.0), augment=augment)
    one = _run(bn_cnn, replace(spec, chunk_batches=1), CNN_SHAPE, CNN_CLASSES, seed=4)
    three = _run(bn_cnn, replace(spec, chunk_batches=3), CNN_SHAPE, CNN_CLASSES, seed=4)
    torch.testing.assert_close(_cat(one, "x"), _cat(three, "x"), rtol=1e-4, atol=1e-5)


def test_augment_changes_the_path_but_labels_the_stored_sample(cnn: Teacher) -> None:
    plain = _run(cnn, _cnn_spec(), CNN_SHAPE, CNN_CLASSES, seed=5)
    shifted = _run(cnn, _cnn_spec(augment=True, snapshots=2), CNN_SHAPE, CNN_CLASSES, seed=5)
    x = _cat(shifted, "x")
    assert not torch.allclose(x[: len(_cat(plain, "x"))], _cat(plain, "x"))
    with torch.no_grad():
        expected = cnn(x).softmax(dim=1)
    torch.testing.assert_close(_cat(shifted, "labels"), expected, rtol=1e-4, atol=1e-5)


def test_augment_leaves_non_images_alone(mlp: Teacher) -> None:
    plain = _run(mlp, _spec(), seed=5)
    augmented = _run(mlp, _spec(augment=True), seed=5)
    assert torch.equal(_cat(plain, "x"), _cat(augmented, "x"))


# --------------------------------------------------------------------------------------------
# Fourier parameterization
# --------------------------------------------------------------------------------------------


def _adam_spec(**overrides: object) -> SynthesisSpec:
    base = {"optimizer": "adam", "noise": 0.05, "noise_decay_magnitude": 1.0, "steps": 30}
    return _cnn_spec(**(base | overrides))


def test_fourier_synthesis_starts_alike_and_ends_smoother(cnn: Teacher) -> None:
    def final_x(spec: SynthesisSpec) -> torch.Tensor:
        return _cat(_run(cnn, spec, CNN_SHAPE, CNN_CLASSES, seed=3), "x")

    start = final_x(_adam_spec(steps=1, noise=1e-9))
    start_fourier = final_x(_adam_spec(steps=1, noise=1e-9, parameterization="fourier"))
    torch.testing.assert_close(start_fourier, start, rtol=0, atol=1e-4)

    pixel = final_x(_adam_spec())
    chunks = _run(cnn, _adam_spec(parameterization="fourier"), CNN_SHAPE, CNN_CLASSES, seed=3)
    fourier = _cat(chunks, "x")
    moved_pixel, moved_fourier = pixel - start, fourier - start

    def roughness(d: torch.Tensor) -> float:  # high-frequency share of the change
        return float((d[..., 1:] - d[..., :-1]).pow(2).mean() / d.pow(2).mean())

    assert moved_fourier.abs().mean() > 0.1 * moved_pixel.abs().mean()
    assert roughness(moved_fourier) < 0.8 * roughness(moved_pixel)  # small images: 1/f spans ~5x
    with torch.no_grad():
        expected = cnn(fourier).softmax(1)
    torch.testing.assert_close(_cat(chunks, "labels"), expected)


def test_fourier_leaves_non_images_alone(mlp: Teacher) -> None:
    plain = _run(mlp, _spec(), seed=5)
    other = _run(mlp, _spec(parameterization="fourier"), seed=5)
    assert torch.equal(_cat(plain, "x"), _cat(other, "x"))
