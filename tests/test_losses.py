"""Tests for cake_core.losses: every term against a hand-computed tiny case.

The expected values are worked out with plain Python loops over nested lists and ``math``, the
formulas of docs/CAKE.md written out term by term, never by calling vectorised torch code like
the one under test. Inputs use the ``[K, R, G, ...]`` layout: K mini-batches of R rows of G
samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch

from cake_core.losses import (
    classification_loss,
    contrastive_loss,
    entropy_loss,
    supports_total_variation,
    total_variation_loss,
)

K, R, G, C = 2, 3, 3, 4  # mini-batches, rows, groups, classes
IMAGE = (2, 3, 4)  # channels, height, width


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((K, R, G, C), generator=gen, dtype=torch.float64) * 2.0


def _targets(seed: int = 0) -> torch.Tensor:
    """Rows of distinct classes, as synthesis draws them."""
    gen = torch.Generator().manual_seed(seed + 100)
    return torch.stack(
        [torch.stack([torch.randperm(C, generator=gen)[:G] for _ in range(R)]) for _ in range(K)]
    )


def _images(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 200)
    return torch.randn((K, R, G, *IMAGE), generator=gen, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# hand-computed references (plain loops over Python lists)
# --------------------------------------------------------------------------------------------


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def hand_classification(logits: list, targets: list) -> list[float]:
    out = []
    for batch_logits, batch_targets in zip(logits, targets, strict=True):
        total, count = 0.0, 0
        for row_logits, row_targets in zip(batch_logits, batch_targets, strict=True):
            for sample, target in zip(row_logits, row_targets, strict=True):
                log_norm = math.log(sum(math.exp(v) for v in sample))
                total += log_norm - sample[target]
                count += 1
        out.append(total / count * len(batch_logits[0]))
    return out


def hand_contrastive(logits: list) -> list[float]:
    """0.5 * G^2 * mean over [R, G, G, C] of (f_i - f_j)^2, an explicit double loop over pairs."""
    out = []
    for batch in logits:
        rows, groups, classes = len(batch), len(batch[0]), len(batch[0][0])
        total = 0.0
        for row in batch:
            for i in range(groups):
                for j in range(groups):
                    for c in range(classes):
                        total += (row[i][c] - row[j][c]) ** 2
        out.append(0.5 * groups**2 * total / (rows * groups * groups * classes))
    return out


def hand_total_variation(x: list) -> list[float]:
    """Per image: mean |x[h,w] - x[h-1,w]| + mean |x[h,w] - x[h,w-1]|; averaged per batch."""
    out = []
    for batch in x:
        per_image = []
        for row in batch:
            for image in row:
                dh_sum, dh_n, dw_sum, dw_n = 0.0, 0, 0.0, 0
                for channel in image:
                    height, width = len(channel), len(channel[0])
                    for h in range(1, height):
                        for w in range(width):
                            dh_sum += abs(channel[h][w] - channel[h - 1][w])
                            dh_n += 1
                    for h in range(height):
                        for w in range(1, width):
                            dw_sum += abs(channel[h][w] - channel[h][w - 1])
                            dw_n += 1
                per_image.append(dh_sum / dh_n + dw_sum / dw_n)
        out.append(sum(per_image) / len(per_image))
    return out


def hand_entropy(logits: list) -> list[float]:
    """Mean over classes of p log p, p the mini-batch's average softmax."""
    out = []
    for batch in logits:
        probs = [_softmax(sample) for row in batch for sample in row]
        classes = len(probs[0])
        mean_p = [sum(p[c] for p in probs) / len(probs) for c in range(classes)]
        out.append(sum(p * math.log(p) for p in mean_p) / classes)
    return out


# --------------------------------------------------------------------------------------------
# values
# --------------------------------------------------------------------------------------------


def test_classification_matches_hand_computation() -> None:
    logits, targets = _logits(), _targets()
    got = classification_loss(logits, targets)
    assert got.shape == (K,)
    assert got.tolist() == pytest.approx(
        hand_classification(logits.tolist(), targets.tolist()), rel=1e-5
    )


def test_classification_worked_example() -> None:
    """One mini-batch, one row of two samples: the numbers written out."""
    logits = torch.tensor([[[[2.0, 0.0], [1.0, 1.0]]]])  # [1, 1, 2, 2]
    targets = torch.tensor([[[0, 1]]])
    ce0 = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    ce1 = math.log(2.0)
    expected = (ce0 + ce1) / 2 * 2  # mean over samples, times G = 2
    assert classification_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)


def test_classification_scales_with_groups() -> None:
    """Same per-sample CE, G doubled: the loss doubles (the factor G of the reference)."""
    sample = torch.tensor([0.3, -1.0, 2.0, 0.5])
    one_row_two = sample.expand(1, 1, 2, 4).clone()
    one_row_four = sample.expand(1, 1, 4, 4).clone()
    t2 = torch.zeros((1, 1, 2), dtype=torch.long)
    t4 = torch.zeros((1, 1, 4), dtype=torch.long)
    ce = -math.log(_softmax(sample.tolist())[0])
    assert classification_loss(one_row_two, t2).item() == pytest.approx(2 * ce, rel=1e-6)
    assert classification_loss(one_row_four, t4).item() == pytest.approx(4 * ce, rel=1e-6)


def test_contrastive_matches_double_loop() -> None:
    logits = _logits(1)
    got = contrastive_loss(logits)
    assert got.shape == (K,)
    assert got.tolist() == pytest.approx(hand_contrastive(logits.tolist()), rel=1e-5)


def test_contrastive_worked_example() -> None:
    """Row of two samples f0 = (1, 0), f1 = (0, 2): ||f0 - f1||^2 = 5.

    Ordered pairs: (0,1) and (1,0) each give 5 summed over C -> total 10 over R*G*G*C = 8
    entries, mean 1.25, times 0.5 * G^2 = 2 -> 2.5.
    """
    logits = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])
    assert contrastive_loss(logits).item() == pytest.approx(2.5, rel=1e-6)


def test_contrastive_zero_for_identical_rows_and_single_group() -> None:
    same = torch.tensor([0.5, -1.0, 3.0]).expand(2, 3, 4, 3).clone()
    assert torch.all(contrastive_loss(same).abs() < 1e-5)
    single = torch.randn(2, 3, 1, 3)
    assert torch.all(contrastive_loss(single) == 0)


def test_contrastive_does_not_pair_across_rows() -> None:
    """Rows are the only pairing unit: row 0 all equal, row 1 all equal but different -> 0."""
    logits = torch.zeros(1, 2, 3, 2)
    logits[0, 1] = 5.0
    assert contrastive_loss(logits).abs().item() < 1e-5


def test_total_variation_matches_hand_computation() -> None:
    x = _images(2)
    got = total_variation_loss(x)
    assert got.shape == (K,)
    assert got.tolist() == pytest.approx(hand_total_variation(x.tolist()), rel=1e-9)


def test_total_variation_worked_example() -> None:
    """One 2x2 image [[0, 1], [3, 7]]: dh = |3|,|6| mean 4.5; dw = |1|,|4| mean 2.5 -> 7."""
    x = torch.tensor([[0.0, 1.0], [3.0, 7.0]]).view(1, 1, 1, 1, 2, 2)
    assert total_variation_loss(x).item() == pytest.approx(7.0)
    assert total_variation_loss(torch.full((1, 2, 2, 3, 4, 5), 0.7)).abs().max().item() == 0.0


def test_entropy_matches_hand_computation() -> None:
    logits = _logits(3)
    got = entropy_loss(logits)
    assert got.shape == (K,)
    assert got.tolist() == pytest.approx(hand_entropy(logits.tolist()), rel=1e-5)


def test_entropy_minimum_is_uniform_average() -> None:
    """Balanced predictions reach -log(C)/C, the minimum; one-hot on a single class gives 0."""
    balanced = torch.full((1, 1, C, C), -20.0)
    for i in range(C):
        balanced[0, 0, i, i] = 20.0
    assert entropy_loss(balanced).item() == pytest.approx(-math.log(C) / C, rel=1e-5)
    collapsed = torch.full((1, 1, C, C), -20.0)
    collapsed[..., 0] = 20.0
    assert entropy_loss(collapsed).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# independence of mini-batches
# --------------------------------------------------------------------------------------------

LOGIT_TERMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "cls": lambda logits: classification_loss(logits, _targets()),
    "contr": contrastive_loss,
    "entropy": entropy_loss,
}


@pytest.mark.parametrize("name", sorted(LOGIT_TERMS))
def test_changing_one_mini_batch_leaves_the_other_alone(name: str) -> None:
    term = LOGIT_TERMS[name]
    logits = _logits(4)
    before = term(logits)
    changed = logits.clone()
    changed[1] = changed[1] * 3.0 + 1.0
    after = term(changed)
    assert after[0].item() == before[0].item()
    assert after[1].item() != pytest.approx(before[1].item())


def test_total_variation_mini_batches_independent() -> None:
    x = _images(5)
    before = total_variation_loss(x)
    changed = x.clone()
    changed[1] = changed[1] * 2.0
    after = total_variation_loss(changed)
    assert after[0].item() == before[0].item()
    assert after[1].item() != pytest.approx(before[1].item())


@pytest.mark.parametrize("name", sorted(LOGIT_TERMS))
def test_gradient_of_sum_equals_gradient_alone(name: str) -> None:
    """Summing the per-mini-batch losses gives mini-batch 0 exactly its own gradient."""
    term = LOGIT_TERMS[name]
    logits = _logits(6).requires_grad_(True)
    (grad_all,) = torch.autograd.grad(term(logits).sum(), logits)

    alone = logits.detach()[0:1].clone().requires_grad_(True)
    loss_alone = classification_loss(alone, _targets()[0:1]) if name == "cls" else term(alone)
    (grad_alone,) = torch.autograd.grad(loss_alone.sum(), alone)
    assert grad_all[0].abs().sum() > 0
    torch.testing.assert_close(grad_all[0:1], grad_alone, rtol=1e-6, atol=1e-9)


def test_total_variation_gradient_of_sum_equals_gradient_alone() -> None:
    x = _images(7).requires_grad_(True)
    (grad_all,) = torch.autograd.grad(total_variation_loss(x).sum(), x)
    alone = x.detach()[0:1].clone().requires_grad_(True)
    (grad_alone,) = torch.autograd.grad(total_variation_loss(alone).sum(), alone)
    assert grad_all[0].abs().sum() > 0
    torch.testing.assert_close(grad_all[0:1], grad_alone, rtol=1e-6, atol=1e-9)


def test_contrastive_gradient_matches_double_loop_autograd() -> None:
    """The closed form's gradient equals the gradient of the explicit pairwise formula."""
    logits = _logits(8).requires_grad_(True)
    (grad_fast,) = torch.autograd.grad(contrastive_loss(logits).sum(), logits)
    pair_total = torch.zeros((), dtype=torch.float64)
    for k in range(K):
        for r in range(R):
            for i in range(G):
                for j in range(G):
                    pair_total = pair_total + ((logits[k, r, i] - logits[k, r, j]) ** 2).sum()
    slow = 0.5 * G**2 * pair_total / (R * G * G * C)
    (grad_slow,) = torch.autograd.grad(slow, logits)
    torch.testing.assert_close(grad_fast.double(), grad_slow, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# supports_total_variation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 6, 6), True),
        ((3, 32, 32), True),
        ((1, 2, 2), True),
        ((6,), False),
        ((13,), False),
        ((1, 1, 6), False),
        ((1, 6, 1), False),
        ((6, 6), False),
        ((1, 2, 6, 6), False),
    ],
)
def test_supports_total_variation(shape: tuple[int, ...], expected: bool) -> None:
    assert supports_total_variation(shape) is expected
