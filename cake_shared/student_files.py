"""The three files a succeeded job's student comes as, and which one an output path asks for.

``student.pt`` (TorchScript), ``student.onnx`` (the same student as ONNX) and
``student.int8.onnx`` (its post-training int8 quantization, stored only when it keeps the
student's agreement with the teacher). ``cake distill -o``, ``cake submit --wait -o`` and
``cake jobs wait/download -o`` pick the file by the output's extension, by one rule written
here.

This module imports nothing but the standard library: the client SDK (``cake_client``), the
command line and the engine read the same names without each other's dependencies.
"""

from __future__ import annotations

import os
from pathlib import PurePath
from typing import Any

__all__ = [
    "DEPLOYMENT_KEYS",
    "STUDENT_FILES",
    "STUDENT_INT8_ONNX",
    "STUDENT_ONNX",
    "STUDENT_PT",
    "missing_reason",
    "student_file_for",
    "student_stem",
]

STUDENT_PT = "student.pt"
STUDENT_ONNX = "student.onnx"
STUDENT_INT8_ONNX = "student.int8.onnx"
#: Every form of the student, TorchScript first; each ends with its own suffix.
STUDENT_FILES = (STUDENT_PT, STUDENT_ONNX, STUDENT_INT8_ONNX)
#: Which entry of the manifest's ``deployment`` section says why an ONNX file is absent.
DEPLOYMENT_KEYS = {STUDENT_ONNX: "onnx", STUDENT_INT8_ONNX: "int8"}
_WHAT = {STUDENT_ONNX: "the ONNX export was not kept", STUDENT_INT8_ONNX: "int8 was not kept"}

# Longest suffix first: ``x.int8.onnx`` is the int8 file, not the fp32 one.
_BY_SUFFIX = ((".int8.onnx", STUDENT_INT8_ONNX), (".onnx", STUDENT_ONNX))


def student_file_for(output: str | os.PathLike[str]) -> str:
    """The student file an output path asks for: ``.int8.onnx`` -> ``student.int8.onnx``,
    ``.onnx`` -> ``student.onnx``, anything else (``.pt`` among them) -> ``student.pt``.

    The suffix is compared without regard to case (``MODEL.ONNX`` is an ONNX file).
    """
    name = PurePath(output).name.lower()
    for suffix, artifact in _BY_SUFFIX:
        if name.endswith(suffix) and len(name) > len(suffix):
            return artifact
    return STUDENT_PT


def student_stem(output: str | os.PathLike[str]) -> str:
    """The output's name without the suffix :func:`student_file_for` read from it:
    ``out/model.int8.onnx`` -> ``model``, ``model.onnx`` -> ``model``, ``model.pt`` -> ``model``.
    """
    path = PurePath(output)
    artifact = student_file_for(path)
    if artifact != STUDENT_PT:
        suffix = artifact.removeprefix("student")
        return path.name[: -len(suffix)]
    return path.stem


def missing_reason(manifest: Any, name: str) -> str:
    """Why a succeeded job has no ``name``, from its ``manifest.json`` (a parsed document):
    the ``reason`` of its ``deployment`` section's ``onnx`` or ``int8`` entry, e.g.
    ``int8 was not kept: agreement ratio 0.97 < 0.99``."""
    key = DEPLOYMENT_KEYS.get(name)
    if key is None:
        return "the job did not produce it"
    deployment = manifest.get("deployment") if isinstance(manifest, dict) else None
    if not isinstance(deployment, dict):
        return "the job's manifest has no deployment section (it ran before ONNX export existed)"
    entry = deployment.get(key)
    reason = entry.get("reason") if isinstance(entry, dict) else None
    return f"{_WHAT[name]}: {reason}" if reason else _WHAT[name]
