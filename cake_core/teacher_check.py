"""Probing a loaded teacher: does it behave like a classifier synthesis can use?

:func:`check_teacher` runs the model on random inputs and checks that it returns finite
floating-point logits ``[B, C]`` with ``C >= 2`` for any batch size, differentiable with respect
to the input (data-free synthesis optimises the inputs through the teacher). It is the
behavioural half of vetting a teacher, apart from the file checks (:mod:`cake_core.teacher_files`)
and the loading (:mod:`cake_core.teacher`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from cake_core.errors import TeacherInvalidError
from cake_core.shapes import (
    PROBE_BATCH,
    format_shape,
    type_phrase,
)
from cake_core.teacher_reason import _short_reason


def check_teacher(
    module: torch.nn.Module,
    input_shape: Sequence[int],
    *,
    probe_batch: int = PROBE_BATCH,
    expected_num_classes: int | None = None,
    generator_seed: int = 0,
) -> int:
    """Probe ``module`` with standard-normal inputs and return its number of classes ``C``.

    Checks, in order, for a batch of ``probe_batch``: the forward pass runs; the output is a
    tensor (not a tuple/list/dict); it is floating point; it has shape ``[probe_batch, C]`` with
    ``C >= 2``; it is finite; ``C`` equals ``expected_num_classes`` when given; a random linear
    combination of the logits has a finite, not identically zero gradient w.r.t. the input
    (a random combination rather than ``logits.sum()``, so a model that outputs softmax
    probabilities, whose sum is constant, is not rejected). Then a batch of 1 must give
    ``[1, C]``, which catches models with a batch size baked in by tracing or reshapes.

    The module should be in eval mode (as :func:`load_teacher` returns it); in train mode the
    probe would update batch-norm statistics. Parameters are not touched.

    Raises:
        TeacherInvalidError: any check fails; the message names the check and the shapes.
    """
    shape = tuple(int(d) for d in input_shape)
    if probe_batch < 2:
        raise ValueError("probe_batch must be at least 2 to tell the batch from the class dim")
    device = _module_device(module)
    gen = torch.Generator().manual_seed(generator_seed)

    x = torch.randn((probe_batch, *shape), generator=gen, dtype=torch.float32).to(device)
    x.requires_grad_(True)
    with torch.enable_grad():
        out = _run(module, x)
        num_classes = _check_output(out, probe_batch, x.shape)
        if expected_num_classes is not None and num_classes != expected_num_classes:
            raise TeacherInvalidError(
                f"the model has {num_classes} output classes but {expected_num_classes} were "
                "expected"
            )
        _check_gradient(out, x, gen)

    x1 = torch.randn((1, *shape), generator=gen, dtype=torch.float32).to(device)
    with torch.no_grad():
        out1 = _run(module, x1, hint=" (is the batch size fixed in the model?)")
    if not isinstance(out1, torch.Tensor) or tuple(out1.shape) != (1, num_classes):
        got = format_shape(out1.shape) if isinstance(out1, torch.Tensor) else type_phrase(out1)
        raise TeacherInvalidError(
            f"for an input of shape {format_shape(x1.shape)} the output is {got}, expected "
            f"[1, {num_classes}]: the model must accept any batch size (was it traced or "
            "reshaped with a fixed batch size?)"
        )
    if not bool(torch.isfinite(out1).all()):
        raise TeacherInvalidError(
            "logits contain NaN or Inf for a standard-normal input of shape "
            f"{format_shape(x1.shape)}"
        )
    return num_classes


def _module_device(module: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer; CPU for a stateless module."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _run(module: torch.nn.Module, x: torch.Tensor, hint: str = "") -> Any:
    """Call the module, turning any failure into a short, path-free TeacherInvalidError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return module(x)
    except Exception as exc:
        raise TeacherInvalidError(
            f"the model failed on an input of shape {format_shape(x.shape)}{hint}: "
            + _short_reason(exc)
        ) from None


def _check_output(out: Any, batch: int, in_shape: torch.Size) -> int:
    """Validate the probe output's type, dtype, shape and values; return the class count."""
    if not isinstance(out, torch.Tensor):
        raise TeacherInvalidError(f"model returned {type_phrase(out)}, expected a tensor of logits")
    if not out.is_floating_point():
        dtype = str(out.dtype).removeprefix("torch.")
        raise TeacherInvalidError(f"logits are {dtype}, expected a floating-point tensor")
    if out.dim() != 2:
        raise TeacherInvalidError(
            f"output has shape {format_shape(out.shape)}, expected [batch, classes]"
        )
    if out.shape[0] != batch:
        raise TeacherInvalidError(
            f"output has shape {format_shape(out.shape)} for an input of shape "
            f"{format_shape(in_shape)}, expected [{batch}, classes]: the first output dimension "
            "must be the batch"
        )
    num_classes = int(out.shape[1])
    if num_classes < 2:
        plural = "class" if num_classes == 1 else "classes"
        raise TeacherInvalidError(
            f"the model has {num_classes} output {plural}; a classifier needs at least 2"
        )
    finite = torch.isfinite(out.detach())
    if not bool(finite.all()):
        what = "NaN" if bool(torch.isnan(out.detach()).any()) else "Inf"
        raise TeacherInvalidError(
            f"logits contain {what} for a standard-normal input of shape {format_shape(in_shape)}"
        )
    return num_classes


def _check_gradient(out: torch.Tensor, x: torch.Tensor, gen: torch.Generator) -> None:
    """Check that a gradient flows from the logits back to the input, finite and non-zero."""
    no_grad_msg = (
        "the output does not depend differentiably on the input (no gradient reaches the "
        "input): remove .detach(), torch.no_grad() and non-differentiable ops from forward()"
    )
    if not out.requires_grad:
        raise TeacherInvalidError(no_grad_msg)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float32).to(
        device=out.device, dtype=out.dtype
    )
    try:
        (grad,) = torch.autograd.grad((out * weights).sum(), x, allow_unused=True)
    except Exception as exc:
        raise TeacherInvalidError(
            "the backward pass through the model failed: " + _short_reason(exc)
        ) from None
    if grad is None:
        raise TeacherInvalidError(no_grad_msg)
    if not bool(torch.isfinite(grad).all()):
        raise TeacherInvalidError(
            "the gradient of the logits with respect to the input contains NaN or Inf for a "
            f"standard-normal input of shape {format_shape(x.shape)}"
        )
    if not bool((grad != 0).any()):
        raise TeacherInvalidError(
            "the output does not depend differentiably on the input (the gradient with respect "
            f"to the input is zero everywhere for a standard-normal input of shape "
            f"{format_shape(x.shape)})"
        )
