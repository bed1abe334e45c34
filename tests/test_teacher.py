"""Tests for cake_core.teacher: loading untrusted TorchScript teachers and checking them.

Every model here is built and saved in the test (tmp_path), so the tests exercise the real
torch.jit.save / torch.jit.load round trip, and every failure is asserted on its error type, a
key phrase of the message, and the absence of the server-side path.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from broken_teachers_support import IntOut, NaNOut, TupleOut, WrongShape
from torch import nn

from cake_core.errors import SpecError, TeacherInvalidError
from cake_core.teacher import (
    TeacherInfo,
    _check_ops,
    _short_reason,
    check_teacher,
    file_sha256,
    inspect_teacher,
    load_teacher,
    parse_input_shape,
    sniff_archive,
)

# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """[13] -> 3 classes: a tabular classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """[1, 8, 8] -> 10 classes, with batch norm so eval mode matters."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = torch.nn.functional.max_pool2d(h, 2)
        return self.fc(h.flatten(1))


class SoftmaxMLP(nn.Module):
    """Outputs probabilities: their sum is constant, the gradient check must still pass."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(x), dim=1)


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(x)}


class OneClass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class LogNegative(nn.Module):
    """NaN for only some inputs: log of a value that is negative for about half of them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.fc(x))


class InfOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / 0.0


class ConstantOut(nn.Module):
    """Returns a learned constant expanded to the batch: the input never matters."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.unsqueeze(0).expand(x.shape[0], 3)


class DetachedInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.detach())


class ZeroGradient(nn.Module):
    """Depends on the input only through a piecewise-constant op: the gradient is all zero."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x * 0.0)


class BakedBatchOne(nn.Module):
    """Reshapes with a batch size of 1 baked in: fails on the probe batch of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(1, 13))


class BakedBatchFour(nn.Module):
    """Always answers with 4 rows: passes the probe batch of 4, fails the batch of 1."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y.sum(0, keepdim=True).expand(4, 3) + y  # [1, 3] broadcasts to [4, 3]


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 13:
            raise ValueError("expected 13 features")
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _script(model: nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(model.eval())


def _trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(model.eval(), example, check_trace=False)


def _save(module: torch.jit.ScriptModule, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(module, str(path))
    return path


def _save_scripted(model: nn.Module, path: Path) -> Path:
    torch.manual_seed(0)
    return _save(_script(model), path)


def _assert_invalid(call: Callable[[], object], phrase: str, tmp_path: Path) -> TeacherInvalidError:
    """Run ``call``; it must raise TeacherInvalidError containing ``phrase`` and no tmp path."""
    with pytest.raises(TeacherInvalidError) as info:
        call()
    err = info.value
    assert phrase in err.message, err.message
    assert err.code == "teacher_invalid"
    for leak in (str(tmp_path), tmp_path.name, os.path.realpath(tmp_path)):
        assert leak not in err.message, err.message
    assert "Traceback" not in err.message
    assert "\n" not in err.message
    return err


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


# --------------------------------------------------------------------------------------------
# valid teachers
# --------------------------------------------------------------------------------------------


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_scripted_mlp_passes(tmp_path: Path) -> None:
    model = MLP()
    path = _save_scripted(model, tmp_path / "mlp.pt")
    module, info = inspect_teacher(path, [13])
    assert isinstance(info, TeacherInfo)
    assert info.input_shape == (13,)
    assert info.num_classes == 3
    assert info.parameters == _n_params(model) == 13 * 16 + 16 + 16 * 3 + 3
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size
    assert info.to_dict() == {
        "input_shape": [13],
        "num_classes": 3,
        "parameters": info.parameters,
        "sha256": info.sha256,
        "size_bytes": info.size_bytes,
    }
    # loaded in eval mode with frozen parameters, and it computes what the original computes
    assert not module.training
    assert all(not p.requires_grad for p in module.parameters())
    x = torch.randn(5, 13)
    torch.testing.assert_close(module(x), model(x))


def test_scripted_cnn_passes(tmp_path: Path) -> None:
    model = SmallCNN()
    path = _save_scripted(model, tmp_path / "cnn.pt")
    module, info = inspect_teacher(path, "1,8,8", expected_num_classes=10)
    assert info.input_shape == (1, 8, 8)
    assert info.num_classes == 10
    assert info.parameters == _n_params(model)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size
    assert not module.training
    # eval mode: probing did not touch the batch-norm running statistics
    torch.testing.assert_close(module.bn.running_mean, torch.zeros(4))


@pytest.mark.parametrize(
    ("model", "shape", "classes"),
    [(MLP(), (13,), 3), (SmallCNN(), (1, 8, 8), 10)],
    ids=["mlp", "cnn"],
)
def test_traced_modules_pass(tmp_path: Path, model: nn.Module, shape: tuple, classes: int) -> None:
    path = _save(_trace(model, torch.randn(2, *shape)), tmp_path / "traced.pt")
    _, info = inspect_teacher(path, list(shape))
    assert info.num_classes == classes
    assert info.parameters == _n_params(model)


def test_softmax_output_passes_gradient_check(tmp_path: Path) -> None:
    module = load_teacher(_save_scripted(SoftmaxMLP(), tmp_path / "softmax.pt"))
    assert check_teacher(module, (13,)) == 3


def test_check_teacher_works_under_no_grad_and_with_other_probe_batch(tmp_path: Path) -> None:
    module = load_teacher(_save_scripted(MLP(), tmp_path / "mlp.pt"))
    with torch.no_grad():
        assert check_teacher(module, [13], probe_batch=7, generator_seed=3) == 3


def test_file_sha256_streams_large_files(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert file_sha256(str(path)) == hashlib.sha256(data).hexdigest()


def test_teacher_info_is_frozen() -> None:
    info = TeacherInfo((13,), 3, 10, "ab", 5)
    with pytest.raises(AttributeError):
        info.num_classes = 4  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# files that are not TorchScript archives
# --------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_missing_file(tmp_path: Path) -> None:
    _assert_invalid(lambda: load_teacher(tmp_path / "nope.pt"), "does not exist", tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.pt", b"")
    _assert_invalid(lambda: load_teacher(path), "empty", tmp_path)


def test_text_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.py", b"import torch\nclass Net(torch.nn.Module): ...\n")
    err = _assert_invalid(lambda: load_teacher(path), "text file", tmp_path)
    assert "torch.jit.save(torch.jit.script(model), path)" in err.message


def test_random_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "random.pt", b"\x00\x01" + os.urandom(4096))
    _assert_invalid(lambda: load_teacher(path), "not a TorchScript archive", tmp_path)


def test_byte_0x80_without_a_pickle_protocol_is_not_called_a_pickle(tmp_path: Path) -> None:
    path = _write(tmp_path / "noise.pt", b"\x80\xa8" + bytes(range(256)) * 8)
    _assert_invalid(lambda: sniff_archive(path), "unrecognised binary data", tmp_path)


def test_plain_pickle(tmp_path: Path) -> None:
    path = tmp_path / "dict.pkl"
    with path.open("wb") as fh:
        pickle.dump({"weights": [1, 2, 3]}, fh)
    err = _assert_invalid(lambda: sniff_archive(path), "file is a pickle", tmp_path)
    assert "torch.jit.save(torch.jit.script(model), path)" in err.message
    _assert_invalid(lambda: load_teacher(path), "file is a pickle", tmp_path)


def test_torch_save_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "state.pt"
    torch.save(MLP().state_dict(), path)
    _assert_invalid(lambda: load_teacher(path), "torch.save checkpoint", tmp_path)


def test_torch_save_full_model(tmp_path: Path) -> None:
    path = tmp_path / "full.pt"
    torch.save(MLP(), path)
    _assert_invalid(lambda: load_teacher(path), "torch.save checkpoint", tmp_path)


def test_legacy_torch_save(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(MLP().state_dict(), path, _use_new_zipfile_serialization=False)
    _assert_invalid(lambda: load_teacher(path), "legacy torch.save checkpoint", tmp_path)


def test_zip_of_text_files(tmp_path: Path) -> None:
    path = tmp_path / "notes.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("notes/readme.txt", "hello")
        zf.writestr("notes/other.txt", "world " * 100)
    _assert_invalid(lambda: load_teacher(path), "zip archive but not a TorchScript", tmp_path)


def test_empty_zip(tmp_path: Path) -> None:
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w"):
        pass
    _assert_invalid(lambda: load_teacher(path), "empty zip archive", tmp_path)


def test_truncated_archive(tmp_path: Path) -> None:
    good = _save_scripted(MLP(), tmp_path / "good.pt")
    data = good.read_bytes()
    path = _write(tmp_path / "half.pt", data[: len(data) // 2])
    _assert_invalid(lambda: load_teacher(path), "truncated or corrupt", tmp_path)


def test_zip_bomb_is_rejected_before_loading(tmp_path: Path) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("m/data.pkl", b"\x00" * (80 << 20))
        zf.writestr("m/constants.pkl", b"")
        zf.writestr("m/code/__torch__.py", b"")
    _assert_invalid(lambda: sniff_archive(path), "corrupt or malicious", tmp_path)


def test_torchscript_zip_with_broken_member_fails_cleanly(tmp_path: Path) -> None:
    # passes the structural sniff, but torch cannot load it: the reason is short and path-free
    path = tmp_path / "fake.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fake/data.pkl", b"not a pickle")
        zf.writestr("fake/constants.pkl", b"not a pickle either")
        zf.writestr("fake/code/__torch__.py", b"garbage(")
        zf.writestr("fake/version", b"3\n")
    sniff_archive(path)
    err = _assert_invalid(lambda: load_teacher(path), "could not be loaded", tmp_path)
    assert len(err.message) < 400
    assert "torch.jit.save" in err.message


# --------------------------------------------------------------------------------------------
# models with the wrong behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "phrase"),
    [
        (TupleOut(), "model returned a tuple, expected a tensor of logits"),
        (DictOut(), "model returned a dict, expected a tensor of logits"),
        (IntOut(), "logits are int64, expected a floating-point tensor"),
        (WrongShape(), "output has shape [4, 3, 2], expected [batch, classes]"),
        (OneClass(), "the model has 1 output class; a classifier needs at least 2"),
        (NaNOut(), "logits contain NaN for a standard-normal input of shape [4, 13]"),
        (LogNegative(), "logits contain NaN for a standard-normal input of shape [4, 13]"),
        (InfOut(), "logits contain Inf"),
        (ConstantOut(), "does not depend differentiably on the input (no gradient reaches"),
        (DetachedInput(), "does not depend differentiably on the input (no gradient reaches"),
        (ZeroGradient(), "zero everywhere"),
        (BakedBatchOne(), "the model failed on an input of shape [4, 13]"),
        (BakedBatchFour(), "must accept any batch size"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else None,
)
def test_bad_models(tmp_path: Path, model: nn.Module, phrase: str) -> None:
    path = _save_scripted(model, tmp_path / "bad.pt")
    _assert_invalid(lambda: inspect_teacher(path, [13]), phrase, tmp_path)


def test_model_raising_on_declared_shape(tmp_path: Path) -> None:
    path = _save_scripted(MLP(), tmp_path / "mlp.pt")
    err = _assert_invalid(
        lambda: inspect_teacher(path, [1, 8, 8]),
        "the model failed on an input of shape [4, 1, 8, 8]: ",
        tmp_path,
    )
    assert "mat1 and mat2 shapes cannot be multiplied" in err.message
    assert "/" not in err.message.split(": ", 1)[1]  # no source paths from the traceback


def test_model_raising_python_exception(tmp_path: Path) -> None:
    path = _save_scripted(Raises(), tmp_path / "raises.pt")
    err = _assert_invalid(
        lambda: inspect_teacher(path, [12]),
        "the model failed on an input of shape [4, 12]",
        tmp_path,
    )
    assert "expected 13 features" in err.message


def test_traced_model_with_baked_batch_size(tmp_path: Path) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.view(int(x.shape[0]), 64))

    # tracing turns int(x.shape[0]) into the constant 4
    path = _save(_trace(Flat(), torch.randn(4, 1, 8, 8)), tmp_path / "flat.pt")
    _assert_invalid(lambda: inspect_teacher(path, [1, 8, 8]), "batch size", tmp_path)


def test_expected_num_classes_mismatch(tmp_path: Path) -> None:
    path = _save_scripted(SmallCNN(), tmp_path / "cnn.pt")
    err = _assert_invalid(
        lambda: inspect_teacher(path, [1, 8, 8], expected_num_classes=5), "10", tmp_path
    )
    assert "5" in err.message
    assert "expected" in err.message


def test_check_teacher_on_in_memory_module() -> None:
    assert check_teacher(_script(SmallCNN()), [1, 8, 8]) == 10
    with pytest.raises(TeacherInvalidError, match="model returned a tuple"):
        check_teacher(_script(TupleOut()), [13])
    # parameters still require grad here, so the output requires grad but the input gets none
    with pytest.raises(TeacherInvalidError, match="no gradient reaches the input"):
        check_teacher(_script(ConstantOut()), [13])


def test_short_reason_strips_traces_and_paths(tmp_path: Path) -> None:
    path = tmp_path / "teacher.pt"
    exc = RuntimeError(
        f"open file failed for {path}: bad\n"
        "Exception raised from readRecord at /opt/pytorch/caffe2/serialize/x.cpp:12\n"
        "frame #0: c10::Error::Error() + 0x1"
    )
    reason = _short_reason(exc, path)
    assert reason == "open file failed for <file>: bad"
    script_err = RuntimeError(
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript, original code (most recent call last):\n"
        '  File "/home/alice/model.py", line 5, in forward\n'
        "builtins.ValueError: bad value in /srv/cake/jobs/42/teacher.pt\n"
    )
    assert _short_reason(script_err) == "bad value in <path>"
    assert len(_short_reason(RuntimeError("x" * 5000))) <= 300
    assert _short_reason(RuntimeError("")) == "RuntimeError"


# --------------------------------------------------------------------------------------------
# parse_input_shape
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1,28,28", (1, 28, 28)),
        ("[1, 28, 28]", (1, 28, 28)),
        ("(3, 32, 32)", (3, 32, 32)),
        ("13", (13,)),
        (" 13 ", (13,)),
        ("(13,)", (13,)),
        ([1, 28, 28], (1, 28, 28)),
        ((13,), (13,)),
        (torch.Size([3, 8, 8]), (3, 8, 8)),
        ([1, 1, 64, 64], (1, 1, 64, 64)),
        ([4096, 1024], (4096, 1024)),
    ],
)
def test_parse_input_shape_good(value: object, expected: tuple[int, ...]) -> None:
    assert parse_input_shape(value) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("", "empty"),
        ("[]", "empty"),
        ("1,,28", "empty entry"),
        ("1,a,28", "not an integer"),
        ("1.5,2", "not an integer"),
        ("0,28", "out of range"),
        ("-1", "out of range"),
        ("4097", "out of range"),
        ([1, 1, 1, 1, 1], "dimensions"),
        ([], "0 dimensions"),
        ([1.0, 28], "integers"),
        ([True, 28], "booleans"),
        (["1", "28"], "integers"),
        ([4096, 4096], "elements"),
        (13, "list of integers"),
        (None, "list of integers"),
        (b"1,2", "list of integers"),
    ],
)
def test_parse_input_shape_bad(value: object, phrase: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_input_shape(value)  # type: ignore[arg-type]
    assert info.value.field == "input_shape"
    assert phrase in info.value.reason, info.value.reason


def test_inspect_teacher_rejects_bad_shape_before_loading(tmp_path: Path) -> None:
    with pytest.raises(SpecError):
        inspect_teacher(tmp_path / "does-not-matter.pt", "0,0")


# --------------------------------------------------------------------------------------------
# hostile archives (the API-level counterparts are in tests/api/test_api_hostile.py)
# --------------------------------------------------------------------------------------------


def _shaped_zip(path: Path, extra: dict[str, bytes], deflate: bool = False) -> Path:
    """A zip with the members of a TorchScript archive plus ``extra`` (a '#' suffix is cut, so
    the same name can be added twice)."""
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            for name in ("m/data.pkl", "m/constants.pkl", "m/code/__torch__.py"):
                zf.writestr(name, b"")
            for name, data in extra.items():
                zf.writestr(name.split("#", 1)[0], data)
    return path


@pytest.mark.parametrize(
    ("extra", "phrase"),
    [
        ({"../evil": b"x"}, "unsafe entry name '../evil'"),
        ({"m/../../evil": b"x"}, "unsafe entry name"),
        ({"/etc/passwd": b"x"}, "unsafe entry name '/etc/passwd'"),
        ({"C:/evil.dll": b"x"}, "unsafe entry name"),
        ({"m\\..\\evil": b"x"}, "unsafe entry name"),
        ({"m/a\x01b": b"x"}, "unsafe entry name"),
        ({"m/data.pkl#again": b"x"}, "contains the entry 'm/data.pkl' twice"),
    ],
)
def test_unsafe_member_names(tmp_path: Path, extra: dict[str, bytes], phrase: str) -> None:
    path = _shaped_zip(tmp_path / "names.pt", extra)
    _assert_invalid(lambda: sniff_archive(path), phrase, tmp_path)


def test_member_with_a_high_compression_ratio_is_a_bomb(tmp_path: Path) -> None:
    path = _shaped_zip(tmp_path / "bomb.pt", {"m/data/0": bytes(4 << 20)}, deflate=True)
    _assert_invalid(lambda: sniff_archive(path), "(a zip bomb?)", tmp_path)
    # a small member compresses well without being a bomb (the ratio has a 1 MiB floor)
    sniff_archive(_shaped_zip(tmp_path / "ok.pt", {"m/data/0": bytes(1 << 19)}, deflate=True))


def test_stored_member_whose_sizes_disagree(tmp_path: Path) -> None:
    good = _save_scripted(MLP(), tmp_path / "good.pt").read_bytes()
    pos = good.find(b"PK\x01\x02")  # first central-directory record: a stored tensor
    data = bytearray(good)
    data[pos + 24 : pos + 28] = (1 << 30).to_bytes(4, "little")  # uncompressed size
    path = _write(tmp_path / "lie.pt", bytes(data))
    _assert_invalid(lambda: sniff_archive(path), f"declares {1 << 30} bytes but holds", tmp_path)


def test_declared_entry_count_is_checked_before_parsing(tmp_path: Path) -> None:
    good = _save_scripted(MLP(), tmp_path / "good.pt").read_bytes()
    pos = good.rfind(b"PK\x06\x06")  # torch.jit.save writes a zip64 end record
    data = bytearray(good)
    data[pos + 24 : pos + 40] = (5_000_000).to_bytes(8, "little") * 2
    path = _write(tmp_path / "many.pt", bytes(data))
    _assert_invalid(lambda: sniff_archive(path), "declares 5000000 entries", tmp_path)


def test_protocol_0_pickle_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path / "p0.pkl", pickle.dumps(os.getcwd, protocol=0))
    err = _assert_invalid(lambda: load_teacher(path), "pickle (protocol 0 or 1)", tmp_path)
    assert "torch.jit.save" in err.message


def test_malicious_data_pkl_is_refused_by_torchs_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Shell:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    good = _save_scripted(MLP(), tmp_path / "good.pt")
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            evil = pickle.dumps(Shell(), protocol=2)  # the protocol torch's unpickler reads
            data = evil if info.filename.endswith("/data.pkl") else zin.read(info)
            zout.writestr(info.filename, data)
    err = _assert_invalid(lambda: load_teacher(path), "could not be loaded", tmp_path)
    assert "Unknown type name 'posix.system'" in err.message
    assert "torch.jit.save" in err.message
    assert not marker.exists()


class ReadsFile(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8)
        return x[:, :3] + t.float()


class WritesFile(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, "/tmp/written-by-a-teacher.pt")
        return x[:, :3]


class SaveMethod(nn.Module):
    """Names that merely contain the operators' names are fine."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    @torch.jit.export
    def save_copy(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from_file_count = 1
        return self.fc(self.save_copy(x)) * from_file_count


@pytest.mark.parametrize(
    ("model", "op", "source"),
    [(ReadsFile(), "from_file", "from_file"), (WritesFile(), "save", "torch.save")],
)
def test_models_that_touch_files_are_refused(
    tmp_path: Path, model: nn.Module, op: str, source: str
) -> None:
    scripted = _script(model)
    with pytest.raises(TeacherInvalidError, match=f"accesses files \\(aten::{op}\\)"):
        _check_ops(scripted)  # the loaded graph
    path = _save(scripted, tmp_path / "files.pt")
    _assert_invalid(lambda: load_teacher(path), f"accesses files ({source})", tmp_path)


def test_names_like_file_ops_are_not_refused(tmp_path: Path) -> None:
    path = _save_scripted(SaveMethod(), tmp_path / "save_method.pt")
    _, info = inspect_teacher(path, [13])
    assert info.num_classes == 3
