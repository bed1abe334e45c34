"""Turning an exception raised by an untrusted teacher into a short reason safe to show.

Both loading (:func:`cake_core.teacher.load_teacher`) and probing
(:func:`cake_core.teacher_check.check_teacher`) report errors raised by TorchScript and by the
user's own model; those embed stack traces and server-side paths that must not reach the user.
:func:`_short_reason` keeps only the reason; it lives on its own because both of them use it.
"""

from __future__ import annotations

import os
import re

_MAX_REASON_CHARS = 300
_TRACE_MARKERS = ("Exception raised from", "frame #0", "Traceback of TorchScript")
_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?\w*(?:Error|Exception)\s*:\s*(.+)$")
_ABS_PATH = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?(?:[/\\][\w.\-~+@]+){2,}[/\\]?")


def _short_reason(exc: BaseException, path: str | os.PathLike[str] | None = None) -> str:
    """Reduce an exception to one short line with no stack trace and no file-system paths.

    TorchScript errors embed the serialized and original source tracebacks (with the author's
    and our paths) and end with ``SomeError: reason``; C++ errors may append ``Exception raised
    from ...`` frames. Keep only the reason, so the message is safe to show to the user.
    """
    text = str(exc)
    if path is not None:
        for p in {os.fspath(path), os.path.abspath(os.fspath(path))}:
            if p:
                text = text.replace(p, "<file>")
    lines = [line.strip() for line in text.splitlines()]
    cut = next(
        (i for i, line in enumerate(lines) if line.startswith(_TRACE_MARKERS[:2])), len(lines)
    )
    lines = [line for line in lines[:cut] if line]
    reason = ""
    if any(line.startswith(_TRACE_MARKERS[2]) for line in lines) or len(lines) > 1:
        for line in reversed(lines):
            match = _ERROR_LINE.match(line)
            if match:
                reason = match.group(1)
                break
    if not reason:
        reason = lines[0] if lines else ""
    reason = _ABS_PATH.sub("<path>", reason).strip()
    reason = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in reason)
    if not reason:
        reason = type(exc).__name__
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3].rstrip() + "..."
    return reason
