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

This module is pure (no time limits, no subprocesses): the service runs it in a child process
and enforces limits there.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cake_core.errors import TeacherInvalidError
from cake_core.shapes import (
    MAX_DIM,
    MAX_INPUT_ELEMENTS,
    MAX_RANK,
    format_shape,
    parse_input_shape,
    type_phrase,
)
from cake_core.zipguard import (
    UnsafeZipError,
    ZipLimits,
    check_declared_sizes,
    open_zip,
)

__all__ = [
    "MAX_DIM",
    "MAX_INPUT_ELEMENTS",
    "MAX_RANK",
    "TeacherInfo",
    "check_teacher",
    "file_sha256",
    "inspect_teacher",
    "load_teacher",
    "parse_input_shape",
    "sniff_archive",
]

_CHUNK = 1 << 20
_SNIFF_BYTES = 512
_EXPORT_HINT = "export the model with torch.jit.save(torch.jit.script(model), path)"
_MAX_REASON_CHARS = 300

# A legacy (pre-zip, torch < 1.6) torch.save file is a pickle whose first object is this magic
# number, pickled as a LONG1 opcode: 0x1950a86a20f9469cfc6c.
_LEGACY_TORCH_MAGIC = b"\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"

# A TorchScript archive is read from memory by the C++ reader. torch.jit.save stores tensors and
# pickles uncompressed and deflates only the code files (about 2-4x), so declared sizes far
# beyond the file size mean a zip bomb: both the total and each compressed member are bounded.
# A real archive has a few entries per tensor and code file, far below the entry cap.
_ZIP_LIMITS = ZipLimits(
    max_entries=100_000,
    max_expansion=64,
    expansion_floor=64 << 20,
    max_member_ratio=100,
    member_floor=1 << 20,
)

# TorchScript operators that touch the file system: ``torch.from_file`` maps any readable file
# into a tensor (whose bytes a model could raise as its error message, i.e. hand back to the
# uploader), ``torch.save`` writes a file anywhere. A classifier needs neither. The source of an
# archive is scanned for them before loading (``__setstate__`` code runs during the load), and
# the loaded graph after. TorchScript has no sockets, subprocesses or imports at all.
_FORBIDDEN_OPS = frozenset({"aten::from_file", "aten::save", "debugprims::load_tensor"})
_FORBIDDEN_SOURCE = re.compile(r"\bfrom_file\b|\bload_tensor\b|\b(?:torch|aten)\s*\.\s*save\b")
_MAX_CODE_BYTES = 16 << 20

# Protocol 0/1 pickles (no PROTO opcode) start with a GLOBAL, MARK or EMPTY_* opcode; protocol 0
# is plain ASCII, so without this check it would be called "a text file".
_OLD_PICKLE = re.compile(
    rb"^(?:c[A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n|\((?:dp|lp|t|S'|V|I\d)|[}\]]q\x00)"
)


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
# archive sniffing
# --------------------------------------------------------------------------------------------


def sniff_archive(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` is structurally a TorchScript archive, without loading it.

    Runs before :func:`torch.jit.load` so that common mistakes get an actionable message
    (torch's own errors talk about miniz internals) and so the C++ reader never sees a file that
    is plainly not an archive. Only the first bytes and the zip central directory are read;
    member contents are never read into memory.

    Raises:
        TeacherInvalidError: the file is missing, empty, not a zip, a ``torch.save`` checkpoint,
            a ``torch.export`` archive, truncated or corrupt.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TeacherInvalidError("the teacher file does not exist") from None
    except OSError as exc:
        raise TeacherInvalidError(
            f"the teacher file cannot be read ({exc.strerror or 'I/O error'})"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise TeacherInvalidError("the teacher is not a regular file")
    size = st.st_size
    if size == 0:
        raise TeacherInvalidError(f"the teacher file is empty: {_EXPORT_HINT}")

    try:
        with open(path, "rb") as fh:
            head = fh.read(_SNIFF_BYTES)
    except OSError as exc:
        raise TeacherInvalidError(
            f"the teacher file cannot be read ({exc.strerror or 'I/O error'})"
        ) from None

    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise TeacherInvalidError(_describe_non_zip(head))

    corrupt = TeacherInvalidError(
        "the file starts like a zip archive but is truncated or corrupt (its central "
        "directory cannot be read); upload the complete file written by torch.jit.save"
    )
    try:
        # The declared entry count is read first, so an archive declaring millions of entries
        # is refused before zipfile builds an object for each of them.
        with open_zip(path, _ZIP_LIMITS) as zf:
            infos = zf.infolist()
    except UnsafeZipError as exc:
        raise TeacherInvalidError(_unsafe_zip_message(exc)) from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error):
        raise corrupt from None
    _check_zip_entries(infos, size)
    try:
        check_declared_sizes(infos, size, _ZIP_LIMITS)
    except UnsafeZipError as exc:
        raise TeacherInvalidError(_unsafe_zip_message(exc)) from None


def _unsafe_zip_message(exc: UnsafeZipError) -> str:
    """What the zip guard found, said for a teacher file."""
    if exc.kind == "entries":
        return (
            f"the archive declares {exc.declared} entries; a TorchScript archive has far fewer "
            f"(at most {exc.limit} are accepted), so the file is corrupt or malicious"
        )
    if exc.kind == "member" and exc.member is not None:
        return (
            f"the archive entry {_member(exc.member)} expands from {exc.compressed} to "
            f"{exc.declared} bytes (a zip bomb?); TorchScript archives compress at most a few "
            "times, so the file is corrupt or malicious"
        )
    return (
        f"the archive declares {exc.declared} bytes of uncompressed data in a {exc.size}-byte "
        "file; TorchScript archives are stored uncompressed, so the file is corrupt or malicious"
    )


def _describe_non_zip(head: bytes) -> str:
    """Say what a file that is not a zip archive most likely is, and how to fix it."""
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # PROTO opcode, protocol 2-5
        if head[2 : 2 + len(_LEGACY_TORCH_MAGIC)] == _LEGACY_TORCH_MAGIC:
            return (
                "file is a legacy torch.save checkpoint (pre-1.6 format), not a TorchScript "
                f"archive: load the model in Python, then {_EXPORT_HINT}"
            )
        return f"file is a pickle, not a TorchScript archive: {_EXPORT_HINT}"
    if _OLD_PICKLE.match(head):
        return (
            "file is a pickle (protocol 0 or 1), not a TorchScript archive; pickles are never "
            f"loaded because they can run code: {_EXPORT_HINT}"
        )
    if len(head) >= 262 and head[257:262] == b"ustar":
        return (
            "file is a tar archive (a legacy torch.save checkpoint?), not a TorchScript "
            f"archive: {_EXPORT_HINT}"
        )
    if head.startswith(b"\x89HDF"):
        return f"file is an HDF5 file (a Keras model?), not a TorchScript archive: {_EXPORT_HINT}"
    if head.startswith(b"\x1f\x8b"):
        return "file is gzip-compressed, not a TorchScript archive: upload the .pt file itself"
    if len(head) >= 10 and head[8:10] == b'{"':
        return (
            "file looks like a safetensors file (weights only), not a TorchScript archive: "
            f"{_EXPORT_HINT}"
        )
    if _looks_like_text(head):
        return f"file is a text file, not a TorchScript archive: {_EXPORT_HINT}"
    return f"file is not a TorchScript archive (unrecognised binary data): {_EXPORT_HINT}"


def _looks_like_text(head: bytes) -> bool:
    """Heuristic: no NUL bytes and valid UTF-8 (allowing a multi-byte char cut at the end)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def _check_zip_entries(infos: list[zipfile.ZipInfo], size: int) -> None:
    """Validate the central directory of a zip that should be a TorchScript archive.

    Torch's reader takes the archive prefix from the first entry's name and looks up every record
    as ``<prefix>/<record>``, so the check does the same. Declared sizes (zip bombs) are
    checked after this, by the shared zip guard.
    """
    if not infos:
        raise TeacherInvalidError(
            f"file is an empty zip archive, not a TorchScript archive: {_EXPORT_HINT}"
        )
    names = [info.filename for info in infos]
    _check_member_names(infos)
    prefix = names[0].split("/", 1)[0] + "/" if "/" in names[0] else ""
    members = {n[len(prefix) :] for n in names if prefix and n.startswith(prefix)}
    has_data = "data.pkl" in members
    has_constants = "constants.pkl" in members
    has_code = any(m.startswith("code/") for m in members)

    if not (has_data and has_constants and has_code):
        if "archive_format" in members or any(m.startswith("models/") for m in members):
            raise TeacherInvalidError(
                f"file is a torch.export (.pt2) archive, not a TorchScript archive: {_EXPORT_HINT}"
            )
        if ".data/extern_modules" in members:
            raise TeacherInvalidError(
                f"file is a torch.package archive, not a TorchScript archive: {_EXPORT_HINT}"
            )
        if has_data:
            raise TeacherInvalidError(
                "file is a torch.save checkpoint (a state dict or pickled model), not a "
                f"TorchScript archive: {_EXPORT_HINT}"
            )
        raise TeacherInvalidError(
            "file is a zip archive but not a TorchScript archive (no data.pkl, constants.pkl "
            f"and code/ entries): {_EXPORT_HINT}"
        )

    for info in infos:
        if info.flag_bits & 0x1:
            raise TeacherInvalidError(
                "the archive contains encrypted entries; TorchScript archives are never encrypted"
            )
        if info.header_offset + info.compress_size > size:
            raise TeacherInvalidError(
                "the archive is corrupt: an entry extends past the end of the file (truncated "
                "upload?)"
            )
        if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
            raise TeacherInvalidError(
                f"the archive is corrupt or malicious: the stored entry {_member(info)} declares "
                f"{info.file_size} bytes but holds {info.compress_size}"
            )


def _member(info: zipfile.ZipInfo) -> str:
    """An entry's name for a message: quoted, printable, at most 60 characters."""
    name = info.filename if len(info.filename) <= 60 else info.filename[:57] + "..."
    return ascii(name)


def _check_member_names(infos: list[zipfile.ZipInfo]) -> None:
    """Refuse names that no torch.jit.save writes and that would escape an extraction folder.

    Torch reads members by name from memory and never extracts them, but the archive is also
    stored and may be unpacked by other tools; and a name like ``../x`` only ever comes from a
    crafted file. Names are checked on the raw central-directory name, before zipfile's
    normalisation.
    """
    seen: set[str] = set()
    for info in infos:
        raw = getattr(info, "orig_filename", info.filename)
        parts = raw.replace("\\", "/").split("/")
        bad = (
            raw.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", raw) is not None
            or ".." in parts
            or "\\" in raw
            or any(ord(ch) < 32 for ch in raw)
        )
        if bad:
            raise TeacherInvalidError(
                f"the archive contains an unsafe entry name {raw[:60]!a} (absolute, with "
                "'..', a backslash or control characters); torch.jit.save never writes such "
                "names, so the file is corrupt or malicious"
            )
        if raw in seen:
            raise TeacherInvalidError(
                f"the archive contains the entry {raw[:60]!a} twice; the file is corrupt "
                "or malicious"
            )
        seen.add(raw)


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


def _file_access_error(what: str) -> TeacherInvalidError:
    return TeacherInvalidError(
        f"the model's code accesses files ({what}); a teacher may only compute on its input, "
        "so torch.from_file, torch.save and the like are refused"
    )


def _scan_code(path: str | os.PathLike[str]) -> None:
    """Refuse an archive whose TorchScript source calls a file-system operator.

    Runs before :func:`torch.jit.load`, which compiles this source and runs any
    ``__setstate__`` in it. Only the ``code/`` members are read (sizes were bounded by
    :func:`sniff_archive`; all of them together at most ``_MAX_CODE_BYTES``).
    """
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            parts = info.filename.split("/")
            if "code" not in parts[:2] or not info.filename.endswith(".py"):
                continue
            total += info.file_size
            if total > _MAX_CODE_BYTES:
                raise TeacherInvalidError(
                    f"the archive holds more than {_MAX_CODE_BYTES >> 20} MiB of TorchScript "
                    "code; the file is corrupt or malicious"
                )
            try:
                text = zf.read(info).decode("utf-8", "replace")
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error):
                raise TeacherInvalidError(
                    f"the archive entry {_member(info)} is corrupt (truncated upload?)"
                ) from None
            match = _FORBIDDEN_SOURCE.search(text)
            if match:
                raise _file_access_error(re.sub(r"\s+", "", match.group(0)))


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
# checking
# --------------------------------------------------------------------------------------------


def check_teacher(
    module: torch.nn.Module,
    input_shape: Sequence[int],
    *,
    probe_batch: int = 4,
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


# --------------------------------------------------------------------------------------------
# inspection
# --------------------------------------------------------------------------------------------


def inspect_teacher(
    path: str | os.PathLike[str],
    input_shape: str | Sequence[int],
    *,
    device: torch.device | str = "cpu",
    expected_num_classes: int | None = None,
) -> tuple[torch.jit.ScriptModule, TeacherInfo]:
    """Load, check and describe a teacher: the one call the service makes on an upload.

    ``input_shape`` goes through :func:`parse_input_shape` first (a bad shape is the spec's
    fault, reported as ``SpecError`` before the file is even opened).

    Raises:
        SpecError: ``input_shape`` is invalid.
        TeacherInvalidError: the file or the model fails a check.
    """
    shape = parse_input_shape(input_shape)
    module = load_teacher(path, device)
    num_classes = check_teacher(module, shape, expected_num_classes=expected_num_classes)
    info = TeacherInfo(
        input_shape=shape,
        num_classes=num_classes,
        parameters=sum(p.numel() for p in module.parameters()),
        sha256=file_sha256(path),
        size_bytes=os.path.getsize(path),
    )
    return module, info


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed in 1 MiB chunks so large teachers never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

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
