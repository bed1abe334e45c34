"""The job-spec flags `cake distill` and `cake submit` share, and reading a ``--spec`` file."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


class SpecFileError(ValueError):
    """The ``--spec`` file is missing or not a JSON object; the message says which."""


def add_spec_arguments(parser: argparse.ArgumentParser, student_help: str) -> None:
    parser.add_argument(
        "--input-shape", required=True, help="shape of one input without batch, e.g. 1,28,28"
    )
    parser.add_argument("--student", help=student_help)
    parser.add_argument("--width", type=float, help="student width multiplier (0.5 = 'Half')")
    parser.add_argument("--preset", help="named settings: fast, default, reference")
    parser.add_argument("--spec", type=Path, help="JSON job spec; flags override it")
    parser.add_argument("--eval", type=Path, help=".npz with x and y to report accuracy")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument(
        "--input-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="the range your preprocessing puts every input value in, e.g. -1 1 (optional; "
        "the presets then train the student on images in that range)",
    )


def read_spec_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpecFileError(f"spec file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecFileError(f"spec file {path} is not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise SpecFileError(f"spec file {path} must hold a JSON object")
    return spec
