"""Student training: the loss, the split, the options beyond the reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from cake_core.config import SynthesisSpec, TrainingSpec
from cake_core.device import Runtime
from cake_core.distill import (
    SyntheticSet,
    _contrast_within,
    _cutmix,
    _targets,
    _toward_disagreement,
    _translate,
    soft_cross_entropy,
    train_student,
)
from cake_core.errors import TrainingDivergedError
from cake_core.students import build_student
from cake_core.synthesis import synthesize

CPU = Runtime(device=torch.device("cpu"))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _linear_teacher(features: int = 4, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(features, classes).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def test_soft_cross_entropy_matches_hand_computation():
    student = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    log_z = math.log(math.exp(2.0) + math.exp(0.0) + math.exp(-1.0))
    expected = -(0.7 * (2.0 - log_z) + 0.2 * (0.0 - log_z) + 0.1 * (-1.0 - log_z))
    assert soft_cross_entropy(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    t = 2.0
    log_z_t = math.log(math.exp(1.0) + math.exp(0.0) + math.exp(-0.5))
    expected_t = -(0.7 * (1.0 - log_z_t) + 0.2 * (0.0 - log_z_t) + 0.1 * (-0.5 - log_z_t)) * t * t
    assert soft_cross_entropy(student, teacher, t).item() == pytest.approx(expected_t, rel=1e-6)


def test_split_is_disjoint_and_sized():
    data = SyntheticSet(torch.arange(200).float().view(200, 1), torch.zeros(200, dtype=torch.long))
    train, held = data.split(0.05, seed=1)
    assert len(train) == 190 and len(held) == 10
    values = set(train.x.flatten().tolist()) | set(held.x.flatten().tolist())
    assert len(values) == 200
    again, _ = data.split(0.05, seed=1)
    assert torch.equal(again.x, train.x)
    _, none_held = data.split(0.0, seed=1)
    assert len(none_held) == 0


def test_toward_disagreement_moves_half_the_batch_by_the_step():
    teacher = _linear_teacher()
    student = build_student("mlp", (4,), 3, 0.25).eval()
    x = torch.randn(8, 4)
    moved = _toward_disagreement(teacher, student, x, 0.3)
    assert torch.equal(moved[4:], x[4:])
    delta = (moved[:4] - x[:4]).abs()
    assert torch.allclose(delta[delta > 0], torch.full_like(delta[delta > 0], 0.3))
    assert (delta > 0).float().mean() > 0.9

    def kl(inp: torch.Tensor) -> torch.Tensor:
        t = teacher(inp).log_softmax(1)
        s = student(inp).log_softmax(1)
        return (t.exp() * (t - s)).sum(1)

    with torch.no_grad():
        assert kl(moved[:4]).sum() > kl(x[:4]).sum()


def test_student_learns_a_linear_teacher():
    teacher = _linear_teacher()
    spec = SynthesisSpec(
        num_samples=1200,
        batch_size=30,
        groups=3,
        steps=30,
        optimizer="adam",
        noise=0.05,
        noise_decay_magnitude=1,
        weights=SynthesisSpec().weights,
    )
    chunks = list(synthesize(teacher, spec, (4,), 3, seed=0, runtime=CPU))
    data = SyntheticSet(torch.cat([c.x for c in chunks]), torch.cat([c.labels for c in chunks]))
    train, held = data.split(0.1, seed=0)
    torch.manual_seed(0)
    student = build_student("mlp", (4,), 3, 0.25)
    history = train_student(
        student,
        teacher,
        train,
        held,
        TrainingSpec(epochs=8, lr=0.05, relabel=True, mixup=1.0, input_noise=0.1, adversarial=0.1),
        CPU,
        seed=0,
        num_classes=3,
    )
    assert len(history) == 8
    assert history[-1]["loss"] < history[0]["loss"]
    probe = torch.randn(500, 4)
    with torch.no_grad():
        agree = (student(probe).argmax(1) == teacher(probe).argmax(1)).float().mean()
    assert agree > 0.85


def test_snapshots_keep_earlier_states_with_their_own_labels():
    teacher = _linear_teacher()
    base = dict(num_samples=60, batch_size=30, groups=3, steps=12, optimizer="adam", noise=0.05)
    one = list(synthesize(teacher, SynthesisSpec(**base), (4,), 3, seed=0, runtime=CPU))
    three = list(
        synthesize(teacher, SynthesisSpec(**base, snapshots=3), (4,), 3, seed=0, runtime=CPU)
    )
    x1 = torch.cat([c.x for c in one])
    x3 = torch.cat([c.x for c in three])
    assert len(x3) == 3 * len(x1)
    chunk = three[0]
    n = len(chunk.x) // 3
    torch.testing.assert_close(chunk.x[2 * n :], one[0].x)  # the last snapshot is the final state
    assert not torch.allclose(chunk.x[:n], chunk.x[2 * n :])  # earlier states differ
    with torch.no_grad():
        torch.testing.assert_close(chunk.labels, teacher(chunk.x).softmax(1), rtol=1e-4, atol=1e-5)


def test_exploding_learning_rate_is_reported():
    teacher = _linear_teacher()
    x = torch.randn(64, 4) * 1e3
    data = SyntheticSet(x, teacher(x).softmax(1))
    student = build_student("mlp", (4,), 3, 0.25)
    with pytest.raises(TrainingDivergedError, match=r"training\.lr"):
        train_student(
            student,
            teacher,
            data,
            SyntheticSet(x[:2], data.labels[:2]),
            TrainingSpec(epochs=3, lr=1e30, optimizer="sgd", batch_size=16),
            CPU,
            seed=0,
            num_classes=3,
        )


def test_adversarial_step_with_a_final_batch_of_two_and_batchnorm():
    """A last batch of 2 leaves one sample to move: BatchNorm must not see it in train mode."""
    teacher = _linear_teacher()
    student = build_student("mlp", (4,), 3, 0.25)
    assert any(isinstance(m, nn.BatchNorm1d) for m in student.modules())
    torch.manual_seed(0)
    train = SyntheticSet(torch.randn(10, 4), torch.randint(0, 3, (10,)))
    held = SyntheticSet(torch.randn(4, 4), torch.randint(0, 3, (4,)))
    spec = TrainingSpec(epochs=2, batch_size=8, lr=0.01, relabel=True, adversarial=0.1)
    history = train_student(student, teacher, train, held, spec, CPU, seed=0, num_classes=3)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert student.training is False  # left in eval mode after training, as before


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
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 3)).eval()
    spec = TrainingSpec(relabel=True, translate=0.25)
    x = torch.randn(16, 1, 8, 8)
    student = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    gen = torch.Generator().manual_seed(0)
    moved, probs = _targets(teacher, student, x, torch.zeros(16), spec, 3, gen)
    assert not torch.allclose(moved, x)
    with torch.no_grad():
        torch.testing.assert_close(probs, teacher(moved).softmax(1))
    flat = torch.randn(16, 5)
    mlp = nn.Linear(5, 3)
    same, _ = _targets(mlp, mlp, flat, torch.zeros(16), spec, 3, gen)
    assert torch.equal(same, flat)


def test_noise_mix_replaces_the_batch_tail_with_relabelled_noise() -> None:
    torch.manual_seed(0)
    teacher = nn.Linear(5, 3).eval()
    x = torch.full((8, 5), 7.0)  # far from any standard-normal draw
    spec = TrainingSpec(relabel=True, noise_mix=0.25)
    gen = torch.Generator().manual_seed(0)
    mixed, probs = _targets(teacher, teacher, x, torch.zeros(8), spec, 3, gen)
    assert torch.equal(mixed[:6], x[:6])
    assert mixed[6:].abs().max() < 7.0 and mixed[6:].std() > 0.3
    with torch.no_grad():
        torch.testing.assert_close(probs, teacher(mixed).softmax(1))
    again, _ = _targets(teacher, teacher, x, torch.zeros(8), spec, 3, gen)
    assert not torch.equal(again[6:], mixed[6:])  # fresh noise for every batch


def test_cutmix_pastes_one_box_of_another_sample_into_each_image() -> None:
    n = 64
    x = torch.arange(float(n)).view(n, 1, 1, 1).expand(n, 2, 8, 8).contiguous()
    mixed = _cutmix(x, torch.Generator().manual_seed(0))
    assert mixed.shape == x.shape
    for image, original in zip(mixed, x, strict=True):
        assert len(image.unique()) <= 2  # its own value and the pasted sample's
        pasted = image != original
        if pasted.any():  # one axis-aligned box, the same in every channel
            assert torch.equal(pasted[0], pasted[1])
            rows, cols = pasted[0].any(1).nonzero(), pasted[0].any(0).nonzero()
            box = pasted[0][rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert bool(box.all())
    changed = (mixed != x).flatten(1).any(1).float().mean()
    assert 0.5 < changed < 1.0  # most images get a box; a sample may draw itself or an empty box


def test_cutmix_replaces_mixup_on_image_batches_and_is_relabelled() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 3)).eval()
    spec = TrainingSpec(relabel=True, mixup=1.0, cutmix=1.0)
    x = torch.randn(16, 1, 8, 8)
    gen = torch.Generator().manual_seed(0)
    mixed, probs = _targets(teacher, teacher, x, torch.zeros(16), spec, 3, gen)
    rows = mixed.flatten(1)
    originals = x.flatten(1)
    for row in rows:  # every pixel comes from some sample: a paste, not a blend
        assert bool(((row.unsqueeze(0) - originals).abs() < 1e-6).any(0).all())
    with torch.no_grad():
        torch.testing.assert_close(probs, teacher(mixed).softmax(1))


def test_contrast_within_stretches_each_image_about_its_mean_and_clips_to_the_range() -> None:
    x = torch.linspace(-0.2, 0.2, 64).view(1, 1, 8, 8).repeat(32, 1, 1, 1) + 0.1
    x[-1] = torch.linspace(-4, 3.4, 64).view(1, 8, 8)  # a synthetic sample far out of range
    out = _contrast_within(x, 2.0, (-1.0, 1.0), torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert out[-1].min() == -1.0 and out[-1].max() == 1.0
    inside = out[:-1]  # small images stay inside: stretched by a factor in [1, 2], mean kept
    factors = (inside - 0.1).flatten(1).std(1) / (x[:-1] - 0.1).flatten(1).std(1)
    assert factors.min() >= 1.0 - 1e-5 and factors.max() <= 2.0 + 1e-5
    assert factors.std() > 0.1  # one factor per image, not one per batch
    torch.testing.assert_close(inside.mean(dim=(1, 2, 3)), torch.full((31,), 0.1))


def test_training_images_are_kept_in_the_input_range_only_when_it_is_given() -> None:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 3)).eval()
    x = 3 * torch.randn(16, 1, 8, 8)
    spec = TrainingSpec(relabel=True, cutmix=1.0, range_contrast=2.0)

    def batch(bounds: tuple[float, float] | None, spec: TrainingSpec) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(0)
        return _targets(teacher, teacher, x, torch.zeros(16), spec, 3, gen, bounds)

    kept, probs = batch((-1.0, 1.0), spec)
    assert kept.min() == -1.0 and kept.max() == 1.0
    with torch.no_grad():
        torch.testing.assert_close(probs, teacher(kept).softmax(1))  # relabelled after the clip
    unknown, _ = batch(None, spec)
    off, _ = batch((-1.0, 1.0), TrainingSpec(relabel=True, cutmix=1.0))
    assert unknown.abs().max() > 3 and torch.equal(unknown, off)  # no range or factor 1: as is
    flat = torch.randn(16, 5) * 3  # not images: left as they are
    table = nn.Linear(5, 3).eval()
    gen = torch.Generator().manual_seed(0)
    rows, _ = _targets(table, table, flat, torch.zeros(16), spec, 3, gen, (-1.0, 1.0))
    assert torch.equal(rows, flat)
