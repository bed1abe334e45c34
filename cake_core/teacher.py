"""Loading and checking teacher models.

A teacher is a user-supplied TorchScript archive (``torch.jit.save``) of a classifier that maps
an input batch ``[B, *input_shape]`` to logits ``[B, C]``. The file is untrusted, so:

* it is only ever opened with :func:`torch.jit.load`, never with ``torch.load`` or ``pickle``
  (TorchScript archives are interpreted by the TorchScript runtime and unpickled with a restricted
  unpickler; plain pickles can run arbitrary code);
* a cheap structural check (:func:`sniff_archive`) runs first, so the common mistakes (a
  ``torch.save`` checkpoint, a truncated upload, a text file) get a precise message instead of a
  miniz error, and obviously hostile zips (members past the end of the file, zip bombs) never
  reach the C++ reader;
* the loaded module is probed (:func:`check_teacher`) before synthesis relies on it: it must
  return finite floating-point logits ``[B, C]`` with ``C >= 2`` for any batch size, and the
  logits must be differentiable with respect to the input, because data-free synthesis optimises
  the inputs through the teacher.

Every failure raises :class:`~cake_core.errors.TeacherInvalidError` with a message the user can
act on. Messages never contain the server-side path of the file or a stack trace.

The file checks live in :mod:`cake_core.teacher_files` (no torch), the probing in
:mod:`cake_core.teacher_check` and the reduction of errors to a safe reason in
:mod:`cake_core.teacher_reason`; this module loads and inspects, and every public name of those
is importable from here.

This module is pure (no time limits, no subprocesses): the service runs it in a child process
(:mod:`api.teacher_check`, through :mod:`api.sandbox`) and enforces limits there.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from cake_core.errors import TeacherInvalidError
from cake_core.shapes import (
    MAX_DIM,
    MAX_INPUT_ELEMENTS,
    MAX_RANK,
    PROBE_BATCH,
    parse_input_shape,
)
from cake_core.teacher_check import check_teacher
from cake_core.teacher_files import (
    _EXPORT_HINT,
    _FORBIDDEN_OPS,
    _file_access_error,
    _scan_code,
    file_sha256,
    sniff_archive,
)
from cake_core.teacher_reason import _short_reason

__all__ = [
    "MAX_DIM",
    "MAX_INPUT_ELEMENTS",
    "MAX_RANK",
    "PROBE_BATCH",
    "ProbedTeacher",
    "TeacherInfo",
    "check_teacher",
    "file_sha256",
    "inspect_teacher",
    "load_teacher",
    "parse_input_shape",
    "probe_teacher",
    "sniff_archive",
]


@dataclass(frozen=True)
class TeacherInfo:
    """What the engine learned about a teacher that passed :func:`check_teacher`.

    Kept small and JSON-friendly because the service stores it with the job and shows it to the
    user (``sha256`` lets them confirm which file was used).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    parameters: int
    sha256: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (``input_shape`` as a list)."""
        return {
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "parameters": self.parameters,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
        }


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def load_teacher(
    path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> torch.jit.ScriptModule:
    """Load a teacher with :func:`torch.jit.load` only, in eval mode with frozen parameters.

    Parameters are frozen because synthesis differentiates with respect to the inputs only;
    leaving ``requires_grad`` on would accumulate useless gradients in the teacher.

    Raises:
        TeacherInvalidError: the file fails :func:`sniff_archive` or torch cannot load it.
        RuntimeError: ``device`` is a CUDA device but CUDA is not available (a server problem,
            not the teacher's fault, so not a ``TeacherInvalidError``).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} requested but CUDA is not available")
    sniff_archive(path)
    _scan_code(path)
    try:
        with warnings.catch_warnings():
            # torch.jit.* emits deprecation warnings on every call; they are noise for the user.
            warnings.simplefilter("ignore")
            module = torch.jit.load(os.fspath(path), map_location=dev)
    except Exception as exc:
        # Includes pickled payloads that TorchScript's restricted unpickler refuses (a global
        # outside its allow-list): nothing in them ran.
        raise TeacherInvalidError(
            "the TorchScript archive could not be loaded ("
            + _short_reason(exc, path).rstrip(" :")
            + f"); {_EXPORT_HINT}"
        ) from None
    if not isinstance(module, torch.jit.ScriptModule) or not _has_forward(module):
        raise TeacherInvalidError(f"the archive has no forward() method to call: {_EXPORT_HINT}")
    _check_ops(module)
    module.eval()
    for param in module.parameters():
        param.requires_grad_(False)
    return module


def _check_ops(module: torch.jit.ScriptModule) -> None:
    """Refuse a loaded module whose forward graph (calls inlined, forks included) uses a
    file-system operator: the second line behind :func:`_scan_code`."""
    try:
        graph = module.inlined_graph
    except Exception:  # pragma: no cover - every scripted module with forward has one
        return
    stack = [graph]
    while stack:
        block = stack.pop()
        for node in block.nodes():
            if node.kind() in _FORBIDDEN_OPS:
                raise _file_access_error(node.kind())
            stack.extend(node.blocks())
            if node.hasAttribute("Subgraph"):
                stack.append(node.g("Subgraph"))


def _has_forward(module: torch.jit.ScriptModule) -> bool:
    """Whether the scripted module defines ``forward`` (a module may export other methods only)."""
    cpp = getattr(module, "_c", None)
    if cpp is not None and hasattr(cpp, "_has_method"):
        return bool(cpp._has_method("forward"))
    return hasattr(module, "forward")


# --------------------------------------------------------------------------------------------
# inspection
# --------------------------------------------------------------------------------------------


class ProbedTeacher(NamedTuple):
    """A loaded teacher that passed :func:`check_teacher`, with what the probe learned."""

    module: torch.jit.ScriptModule
    input_shape: tuple[int, ...]
    num_classes: int
    parameters: int


def _no_report(_stage: str) -> None:
    return None


def probe_teacher(
    path: str | os.PathLike[str],
    input_shape: str | Sequence[int],
    *,
    device: torch.device | str = "cpu",
    expected_num_classes: int | None = None,
    probe_batch: int = PROBE_BATCH,
    report: Callable[[str], None] = _no_report,
) -> ProbedTeacher:
    """Parse the shape, load and check a teacher: :func:`inspect_teacher` short of hashing.

    The one sequence of checks both the engine and the service's sandboxed upload check run.
    ``report`` is told ``"loading"`` and then ``"probing"``, so a caller that kills a hung check
    can say which stage hung. The file is not hashed here: the service hashed the upload while
    it streamed, and hashing 500 MB again would cost seconds.

    Raises:
        SpecError: ``input_shape`` is invalid (before the file is opened).
        TeacherInvalidError: the file or the model fails a check.
    """
    shape = parse_input_shape(input_shape)
    report("loading")
    module = load_teacher(path, device)
    report("probing")
    num_classes = check_teacher(
        module, shape, probe_batch=probe_batch, expected_num_classes=expected_num_classes
    )
    parameters = sum(p.numel() for p in module.parameters())
    return ProbedTeacher(module, shape, num_classes, parameters)


def inspect_teacher(
    path: str | os.PathLike[str],
    input_shape: str | Sequence[int],
    *,
    device: torch.device | str = "cpu",
    expected_num_classes: int | None = None,
) -> tuple[torch.jit.ScriptModule, TeacherInfo]:
    """Load, check and describe a teacher: the engine's call before a job (:func:`probe_teacher`
    plus the file's fingerprint, which the job's manifest records).

    ``input_shape`` goes through :func:`parse_input_shape` first (a bad shape is the spec's
    fault, reported as ``SpecError`` before the file is even opened).

    Raises:
        SpecError: ``input_shape`` is invalid.
        TeacherInvalidError: the file or the model fails a check.
    """
    probed = probe_teacher(
        path, input_shape, device=device, expected_num_classes=expected_num_classes
    )
    info = TeacherInfo(
        input_shape=probed.input_shape,
        num_classes=probed.num_classes,
        parameters=probed.parameters,
        sha256=file_sha256(path),
        size_bytes=os.path.getsize(path),
    )
    return probed.module, info
