"""CAKE's synthesis loss terms, computed per mini-batch.

Every function takes a chunk of ``K`` mini-batches laid out as ``[K, rows, groups, ...]`` and
returns one value per mini-batch (shape ``[K]``). Summing those before ``backward`` gives each
mini-batch exactly the gradient it would get on its own, which is what lets the synthesizer run
many mini-batches as one large batch without changing the method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample against its drawn class, mean per mini-batch, times G.

    ``logits``: ``[K, R, G, C]``; ``targets``: ``[K, R, G]``. The factor ``G`` follows the
    reference, where the loss is scaled by the number of groups.
    """
    k, _, groups, classes = logits.shape
    ce = F.cross_entropy(logits.reshape(-1, classes).float(), targets.reshape(-1), reduction="none")
    return ce.view(k, -1).mean(dim=1) * groups


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Squared distance between the logits of every pair in a row (rows hold distinct classes).

    Equals ``0.5 * G**2 * mean((f_i - f_j)**2)`` over ``[R, G, G, C]``, the reference's scaled
    MSE over all ordered pairs, but uses
    ``sum_ij |f_i - f_j|^2 = 2G sum_i |f_i|^2 - 2|sum_i f_i|^2``, linear in ``G``, not quadratic.
    """
    _, rows, groups, classes = logits.shape
    f = logits.float()
    sum_sq = f.pow(2).sum(dim=(2, 3))  # [K, R]
    sq_sum = f.sum(dim=2).pow(2).sum(dim=2)  # [K, R]
    pair_sum = groups * sum_sq - sq_sum  # half the ordered-pair sum per row
    return pair_sum.sum(dim=1) / (rows * classes)


def total_variation_loss(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels, per image, averaged per mini-batch.

    ``x``: ``[K, R, G, C, H, W]``. Vertical and horizontal differences are averaged separately
    and added, as in the reference (kornia's ``reduction="mean"``).
    """
    k = x.shape[0]
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(-2, -1))
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(-2, -1))
    return (dh + dw).reshape(k, -1).mean(dim=1)


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean over classes of ``p log p`` of the mini-batch's average prediction.

    Minimising it maximises the entropy of the average prediction: it balances classes.
    """
    k, _, _, classes = logits.shape
    p = logits.float().softmax(dim=-1).reshape(k, -1, classes).mean(dim=1)
    return (p * p.clamp_min(1e-12).log()).mean(dim=1)


def supports_total_variation(input_shape: tuple[int, ...]) -> bool:
    """TV is defined for images ``[C, H, W]`` with at least two pixels along each side."""
    return len(input_shape) == 3 and input_shape[1] > 1 and input_shape[2] > 1
