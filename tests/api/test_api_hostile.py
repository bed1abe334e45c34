"""Hostile and broken teacher uploads against a real uvicorn server.

Every input is built here, byte for byte: pickles whose ``__reduce__`` would run a shell
command, ``torch.save`` checkpoints, TorchScript archives with a malicious ``data.pkl``, zip
bombs, path-traversal names, lying central directories, truncated archives, and teachers whose
forward pass hangs, eats memory or returns the wrong thing. Each must be refused with a 4xx, a
``code`` and a ``detail`` that says what is wrong, must never execute anything (a marker file
that the payloads would create stays absent), and must leave the API answering other requests.
The teacher check's child process is also checked directly: its resource limits and that it
cannot reach the network.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import socket
import struct
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from api_support import (
    EXAMPLES,
    BundledTeacher,
    LiveServer,
    TestClient,
    assert_no_leak,
    assert_problem,
    live_server,
    upload_teacher,
)
from broken_teachers_support import Hang, IntOut, NaNOut, TupleOut, WrongShape
from torch import nn

from api import sandbox
from cake_core.config import CHOICES, LIMITS

CHECK_TIMEOUT_S = 8
MEMORY_CAP = 1 << 30
UPLOAD_CAP = 8 << 20
WINE = EXAMPLES / "wine_mlp.pt"
DIGITS = EXAMPLES / "digits_cnn.pt"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(
        tmp_path_factory.mktemp("hostile"),
        CAKE_TEACHER_CHECK_TIMEOUT_S=str(CHECK_TIMEOUT_S),
        CAKE_TEACHER_CHECK_MEMORY_BYTES=str(MEMORY_CAP),
        CAKE_MAX_UPLOAD_BYTES=str(UPLOAD_CAP),
    ) as live:
        yield live


def _upload(
    server: LiveServer, path: Path, shape: str = "[13]", timeout: float = 60
) -> httpx.Response:
    with open(path, "rb") as fh:
        return httpx.post(
            server.url + "/v1/teachers",
            files={"file": (path.name, fh)},
            data={"input_shape": shape},
            timeout=timeout,
        )


def _problem(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code, body
    assert_no_leak(r.text)
    return str(body["detail"])


# --------------------------------------------------------------------------------------------
# hostile files
# --------------------------------------------------------------------------------------------


class _Shell:
    """Unpickling this runs a shell command: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., int], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class Tabular(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), str(path))
    return path


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip, replacing the members whose name ends with a key of ``replace``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = next(
                (v for k, v in replace.items() if info.filename.endswith(k)), zin.read(info)
            )
            zout.writestr(info.filename, data)
    return dst


def _patch_central(data: bytes, member: str, **fields: int) -> bytes:
    """Overwrite fields of ``member``'s central-directory record (sizes, flags)."""
    offsets = {"flags": (8, "<H"), "compressed": (20, "<I"), "uncompressed": (24, "<I")}
    buf = bytearray(data)
    pos = buf.find(b"PK\x01\x02")
    while pos != -1:
        name_len = struct.unpack_from("<H", buf, pos + 28)[0]
        name = bytes(buf[pos + 46 : pos + 46 + name_len]).decode()
        if name.endswith(member):
            for key, value in fields.items():
                off, fmt = offsets[key]
                struct.pack_into(fmt, buf, pos + off, value)
            return bytes(buf)
        pos = buf.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(f"no member {member}")


def _declare_entries(data: bytes, count: int) -> bytes:
    """Make the zip64 end record (torch.jit.save writes one) claim ``count`` entries."""
    pos = data.rfind(b"PK\x06\x06")
    assert pos != -1
    buf = bytearray(data)
    struct.pack_into("<QQ", buf, pos + 24, count, count)
    return bytes(buf)


def _torchscript_shaped(path: Path, extra: dict[str, bytes], deflate: bool = False) -> Path:
    """A zip with the members a TorchScript archive has, plus ``extra`` (name -> bytes)."""
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are written on purpose
        with zipfile.ZipFile(path, "w", compression=method) as zf:
            zf.writestr("m/data.pkl", b"\x80\x02}q\x00.")
            zf.writestr("m/constants.pkl", b"\x80\x02)q\x00.")
            zf.writestr("m/code/__torch__.py", b"")
            zf.writestr("m/version", b"3\n")
            for name, data in extra.items():
                zf.writestr(name.split("#", 1)[0], data)
    return path


def _build_files(tmp: Path, marker: Path) -> list[tuple[str, Path, str]]:
    """(name, file, phrase the detail must contain) for every hostile or broken file."""
    good = _script(Tabular(), tmp / "good.pt")
    good_bytes = good.read_bytes()
    evil_pickle = pickle.dumps(_Shell(marker), protocol=2)
    cases: list[tuple[str, Path, str]] = []

    def add(name: str, data: bytes | Path, phrase: str) -> None:
        path = tmp / f"{name}.pt"
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif data != path:
            path.write_bytes(data.read_bytes())
        cases.append((name, path, phrase))

    add("empty", b"", "the teacher file is empty")
    add("text", b"import torch\nmodel = MyNet()\n" * 20, "file is a text file")
    # Seeded, so the bytes never happen to open like a pickle or gzip and fail one run in many.
    noise = np.random.default_rng(4096).bytes(4096).replace(b"PK", b"pk")
    add("random_bytes", noise, "unrecognised binary data")
    add("gzip_of_teacher", gzip.compress(good_bytes), "gzip-compressed")
    add("pickle_os_system", evil_pickle, "file is a pickle")
    add("pickle_protocol0_os_system", pickle.dumps(_Shell(marker), protocol=0), "file is a pickle")
    add("pickle_protocol1_dict", pickle.dumps({"w": [1.0]}, protocol=1), "file is a pickle")
    torch.save(Tabular().state_dict(), tmp / "state_dict.pt")
    add("torch_save_state_dict", tmp / "state_dict.pt", "torch.save checkpoint")
    torch.save(Tabular(), tmp / "full_model.pt")
    add("torch_save_full_model", tmp / "full_model.pt", "torch.save checkpoint")
    torch.save(Tabular().state_dict(), tmp / "legacy.pt", _use_new_zipfile_serialization=False)
    add("torch_save_legacy", tmp / "legacy.pt", "legacy torch.save checkpoint")
    add(
        "torchscript_evil_data_pkl",
        _rewrite(good, tmp / "evil_data.pt", {"/data.pkl": evil_pickle}),
        "Unknown type name 'posix.system'",
    )
    add(
        "torchscript_evil_constants_pkl",
        _rewrite(good, tmp / "evil_constants.pt", {"/constants.pkl": evil_pickle}),
        "Unknown type name 'posix.system'",
    )
    add(
        "torchscript_python_code",
        _rewrite(
            good,
            tmp / "evil_code.pt",
            # the scripted class's source: code/__torch__/<this module>.py
            {f"/{__name__}.py": f"import os\nos.system('touch {marker}')\n".encode()},
        ),
        "could not be loaded",
    )
    add(
        "zip_bomb_member",
        _torchscript_shaped(tmp / "bomb1.zip", {"m/data/0": bytes(8 << 20)}, deflate=True),
        "(a zip bomb?)",
    )
    add(
        "zip_bomb_total",
        _torchscript_shaped(
            tmp / "bomb2.zip",
            {f"m/data/{i}": bytes(1 << 20) for i in range(70)},
            deflate=True,
        ),
        "bytes of uncompressed data",
    )
    add(
        "declared_size_past_end",
        _patch_central(good_bytes, "/data.pkl", compressed=0x7FFFFFFF, uncompressed=0x7FFFFFFF),
        "extends past the end of the file",
    )
    add(
        "declared_size_lies",
        _patch_central(good_bytes, "/data.pkl", uncompressed=0x7FFFFFFF),
        "declares 2147483647 bytes but holds",
    )
    add("encrypted_flag", _patch_central(good_bytes, "/data.pkl", flags=1), "encrypted")
    for name, member in [
        ("path_traversal", "../../etc/cron.d/evil"),
        ("path_traversal_inner", "m/code/../../../evil.py"),
        ("absolute_name", "/etc/passwd"),
        ("windows_drive_name", "C:/Windows/evil.dll"),
        ("backslash_traversal", "..\\..\\evil"),
    ]:
        add(name, _torchscript_shaped(tmp / f"{name}.zip", {member: b"x"}), "unsafe entry name")
    add(
        "duplicate_member",
        _torchscript_shaped(tmp / "dup.zip", {"m/data.pkl#2": b"\x80\x02N."}),
        "twice",
    )
    add("entry_count_bomb", _declare_entries(good_bytes, 10_000_000), "declares 10000000 entries")
    add("truncated_half", good_bytes[: len(good_bytes) // 2], "truncated or corrupt")
    add("truncated_tail", good_bytes[:-10], "truncated or corrupt")
    add("truncated_head_only", good_bytes[:100], "truncated or corrupt")
    add("zip_of_text", _zip_of_text(tmp / "notes.zip"), "zip archive but not a TorchScript")
    return cases


def _zip_of_text(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes/readme.txt", "hello")
    return path


def test_hostile_files_are_refused_and_nothing_runs(server: LiveServer, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    cases = _build_files(tmp_path, marker)
    with ThreadPoolExecutor(max_workers=2) as pool:  # the server checks two at a time
        responses = list(pool.map(lambda case: _upload(server, case[1]), cases))
    outcomes = {}
    for (name, _, phrase), r in zip(cases, responses, strict=True):
        assert r.status_code == 422, (name, r.text)
        detail = _problem(r, 422, "teacher_invalid")
        assert phrase in detail, (name, detail)
        outcomes[name] = (r.status_code, r.json()["code"])
        if "pickle" in name or "torch_save" in name or "evil" in name:
            assert "torch.jit.save" in detail, (name, detail)
    assert len(outcomes) == len(cases) >= 25
    assert not marker.exists(), "a hostile payload was executed"
    assert httpx.get(server.url + "/v1/teachers").json()["data"] == []
    uploads = server.root / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == [], "temporary files are removed"
    assert _upload(server, WINE).status_code == 201  # and the service still works


# --------------------------------------------------------------------------------------------
# hostile models
# --------------------------------------------------------------------------------------------


class EatMemory(nn.Module):
    """Keeps allocating (and filling) 256 MiB blocks, all kept alive until the end."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks: list[torch.Tensor] = []
        for i in range(1024):
            blocks.append(torch.full([64 << 20], float(i)))
        total = torch.zeros(1)
        for block in blocks:
            total = total + block[-1]
        return self.fc(x) + total


class HugeAlloc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) + torch.zeros(1 << 40)[0]


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom from /home/attacker/model.py")


MODELS: list[tuple[type[nn.Module], str]] = [
    (EatMemory, "the teacher needs more than 1 GiB of memory while running a probe batch"),
    (HugeAlloc, "the teacher needs more than 1 GiB of memory"),
    (NaNOut, "logits contain NaN for a standard-normal input of shape [4, 13]"),
    (WrongShape, "output has shape [4, 3, 2], expected [batch, classes]"),
    (IntOut, "logits are int64, expected a floating-point tensor"),
    (TupleOut, "model returned a tuple, expected a tensor of logits"),
    (Raises, "the model failed on an input of shape [4, 13]: boom from <path>"),
]


@pytest.mark.parametrize(("model", "phrase"), MODELS, ids=[m.__name__ for m, _ in MODELS])
def test_misbehaving_models_are_refused(
    server: LiveServer, tmp_path: Path, model: type[nn.Module], phrase: str
) -> None:
    path = _script(model(), tmp_path / f"{model.__name__}.pt")
    detail = _problem(_upload(server, path), 422, "teacher_invalid")
    assert phrase in detail, detail


class ReadsFile(nn.Module):
    """Maps a server file into a tensor and raises its bytes as the error message."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.from_file(self.path, False, 16, dtype=torch.uint8)
        s = ""
        for i in range(t.size(0)):
            s = s + chr(int(t[i]))
        raise RuntimeError(s)


class WritesFile(nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


@pytest.mark.parametrize("model", [ReadsFile, WritesFile], ids=lambda m: m.__name__)
def test_models_touching_files_are_refused(
    server: LiveServer, tmp_path: Path, model: type[nn.Module]
) -> None:
    target = tmp_path / "secret.txt"
    target.write_text("s3cr3t-token-0123456789")
    before = target.read_bytes()
    path = _script(model(str(target)), tmp_path / f"{model.__name__}.pt")
    r = _upload(server, path)
    detail = _problem(r, 422, "teacher_invalid")
    assert "the model's code accesses files" in detail, detail
    assert "s3cr3t" not in r.text
    assert target.read_bytes() == before


def test_a_hanging_teacher_does_not_block_the_api(server: LiveServer, tmp_path: Path) -> None:
    path = _script(Hang(), tmp_path / "hang.pt")
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: result.setdefault("r", _upload(server, path)))
    start = time.monotonic()
    thread.start()
    latencies: list[float] = []
    other: httpx.Response | None = None
    while thread.is_alive():
        t0 = time.monotonic()
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(server.url + "/v1/teachers", timeout=5).status_code == 200
        latencies.append(time.monotonic() - t0)
        if other is None:  # a second upload is checked meanwhile (two check slots)
            other = _upload(server, WINE)
    thread.join()
    elapsed = time.monotonic() - start
    assert other is not None and other.status_code == 201, other and other.text
    assert latencies and max(latencies) < 2.0, latencies
    detail = _problem(result["r"], 422, "teacher_invalid")
    assert f"did not answer within {CHECK_TIMEOUT_S} s on a probe batch of shape [4, 13]" in detail
    assert CHECK_TIMEOUT_S <= elapsed < CHECK_TIMEOUT_S + 20


# --------------------------------------------------------------------------------------------
# oversized requests
# --------------------------------------------------------------------------------------------


def test_a_huge_declared_length_is_refused_before_the_body(server: LiveServer) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/teachers HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000000000000\r\n\r\n"
        )
        answer = b""
        while b"payload_too_large" not in answer and (chunk := sock.recv(4096)):
            answer += chunk  # headers and body may come in separate segments
    text = answer.decode("latin-1")
    assert text.startswith("HTTP/1.1 413"), text
    assert "payload_too_large" in text


def test_a_stream_over_the_cap_is_cut_and_nothing_is_kept(server: LiveServer) -> None:
    boundary = "hostileboundary"

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="input_shape"\r\n\r\n[13]'
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.pt"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        block = b"\0" * (1 << 20)
        for _ in range((UPLOAD_CAP >> 20) * 2):  # twice the cap, without a Content-Length
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(
        server.url + "/v1/teachers",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert f"{UPLOAD_CAP} bytes" in _problem(r, 413, "payload_too_large")
    assert list((server.root / "uploads").iterdir()) == []


# --------------------------------------------------------------------------------------------
# the check's child process
# --------------------------------------------------------------------------------------------


def test_the_check_child_has_limits_and_no_network() -> None:
    """A listener the test itself can reach is unreachable from the child (own net namespace).

    TorchScript has no socket operations, so a teacher cannot even try; this checks the second
    line of defence with plain Python in the same child.
    """
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # reachable from here
        result = sandbox.run(
            "api.sandbox:probe_isolation", "127.0.0.1", port, timeout_s=30, memory_bytes=MEMORY_CAP
        )
    assert result.outcome == "ok", result
    assert result.network_isolated is True
    assert result.value["connect"] != "connected", result.value
    limits = result.value["limits"]
    assert limits["as"] == [MEMORY_CAP, MEMORY_CAP]
    assert limits["cpu"] == [31, 32]  # ceil(timeout) + 1, then SIGKILL one second later
    assert limits["fsize"][0] <= 64 << 20


def test_cpu_time_is_capped_independently_of_the_wall_clock(tmp_path: Path) -> None:
    path = _script(Hang(), tmp_path / "hang.pt")
    start = time.monotonic()
    result = sandbox.run(
        "api.teacher_check:check_teacher_file",
        str(path),
        [13],
        None,
        timeout_s=60,
        memory_bytes=MEMORY_CAP,
        cpu_seconds=1,
    )
    assert result.outcome == "crashed", result
    assert sandbox.signal_name(result.exitcode) == "SIGXCPU"
    assert result.stage == "probing"
    assert time.monotonic() - start < 30


# --------------------------------------------------------------------------------------------
# hostile job specs (in-process app: every check before the queue is the real code)
# --------------------------------------------------------------------------------------------

_BOOLS = ("synthesis.langevin", "synthesis.soft_labels", "training.relabel")
_PLACEHOLDER = '"@@value@@"'


def _nest(path: str, value: object) -> dict[str, object]:
    data: dict[str, object] = {}
    node = data
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})  # type: ignore[assignment]
    node[leaf] = value
    return data


def _bad_values(path: str) -> list[tuple[str, str]]:
    """(raw JSON value, phrase of the message) that must be refused for ``path``."""
    if path in _BOOLS:
        return [('"yes"', "valid boolean"), ("1", "valid boolean")]
    if path in CHOICES:
        return [('"banana"', "Input should be"), ("3", "Input should be")]
    low, high = LIMITS[path]
    cases = [
        ('"1"', "valid"),
        ("NaN", "NaN is not a finite number"),
        ("Infinity", "Infinity is not a finite number"),
        ("-Infinity", "-Infinity is not a finite number"),
        ("1e999", "1e999 is not a finite number"),
        ("-1", "greater than or equal to"),
        ("[]", "valid"),
    ]
    if isinstance(low, int) and isinstance(high, int):  # integer fields
        if low > 0:
            cases.append(("0", "greater than or equal to"))
        cases += [(str(max(high + 1, 10**9)), "less than or equal to"), ("2.5", "valid integer")]
        cases.append((str(10**30), "less than or equal to"))
    else:
        if low > 0:
            cases.append(("0", "greater than or equal to"))
        cases.append((repr(float(high) * 1000), "less than or equal to"))
    return cases


def test_every_spec_field_refuses_hostile_values(client: TestClient, wine: BundledTeacher) -> None:
    teacher_id = upload_teacher(client, wine.path, [13]).json()["id"]
    fields = [*LIMITS, *CHOICES, *_BOOLS]
    tried = 0
    for path in fields:
        for raw, phrase in _bad_values(path):
            body = json.dumps({"teacher_id": teacher_id, **_nest(path, "@@value@@")})
            r = client.post(
                "/v1/jobs",
                content=body.replace(_PLACEHOLDER, raw),
                headers={"Content-Type": "application/json"},
            )
            problem = assert_problem(r, 422, "validation_error")
            assert problem["errors"][0]["loc"] == ["body", *path.split(".")], (path, raw, problem)
            assert problem["detail"].startswith(f"{path}: "), (path, raw, problem)
            assert phrase in problem["detail"], (path, raw, problem)
            tried += 1
    assert tried > 200
    for raw, loc, phrase in [
        ('{"teacher_id": 5}', ["body", "teacher_id"], "valid string"),
        ("{}", ["body", "teacher_id"], "Field required"),
        (f'{{"teacher_id": "{teacher_id}", "colour": 1}}', ["body", "colour"], "unknown field"),
        (f'{{"teacher_id": "{teacher_id}", "student": {{"arch": "gpt5"}}}}', None, "gpt5"),
        (f'{{"teacher_id": "{teacher_id}", "student": {{"arch": 5}}}}', None, "valid string"),
        (f'{{"teacher_id": "{teacher_id}", "preset": "turbo"}}', ["body", "preset"], "turbo"),
        (f'{{"teacher_id": "{teacher_id}", "metadata": [1]}}', None, "valid dictionary"),
        (
            f'{{"teacher_id": "{teacher_id}", "metadata": {{"a": [NaN]}}}}',
            ["body", "metadata", "a", 0],
            "NaN is not a finite number",
        ),
        ("[" * 100_000 + "]" * 100_000, ["body"], "nested too deeply"),
        (
            f'{{"teacher_id": "{teacher_id}", "metadata": ' + '{"a": ' * 40 + "1" + "}" * 41,
            None,
            "nested more than 32 levels deep",
        ),
    ]:
        r = client.post("/v1/jobs", content=raw, headers={"Content-Type": "application/json"})
        problem = assert_problem(r, 422, "validation_error")
        assert phrase in problem["detail"], (raw[:80], problem)
        if loc is not None:
            assert problem["errors"][0]["loc"] == loc, problem
    assert client.get("/v1/jobs").json()["data"] == []


def test_total_work_per_job_is_capped_by_settings(
    make_client: Callable[..., TestClient], wine: BundledTeacher
) -> None:
    client = make_client(
        max_job_synthesis_steps=1_000_000,
        max_job_training_samples=50_000_000,
        max_job_synthetic_bytes=10_000_000,
    )
    teacher_id = upload_teacher(client, wine.path, [13]).json()["id"]
    fast = {"teacher_id": teacher_id, "preset": "fast"}  # 3200 x 200 steps, 60 epochs
    assert client.post("/v1/jobs", json=fast).status_code == 202

    def refused(spec: dict[str, object], setting: str, locs: list[list[str]]) -> str:
        r = client.post("/v1/jobs", json={**fast, **spec})
        problem = assert_problem(r, 422, "validation_error")
        assert [e["loc"] for e in problem["errors"]] == locs, problem
        assert setting in problem["detail"], problem
        return str(problem["detail"])

    detail = refused(
        {"synthesis": {"steps": 1000}},
        "CAKE_MAX_JOB_SYNTHESIS_STEPS",
        [["body", "synthesis", "num_samples"], ["body", "synthesis", "steps"]],
    )
    assert "is 3,200,000 sample-steps, over this server's limit of 1,000,000" in detail
    refused(
        {"synthesis": {"num_samples": 6400, "steps": 100}, "training": {"epochs": 10_000}},
        "CAKE_MAX_JOB_TRAINING_SAMPLES",
        [
            ["body", "synthesis", "num_samples"],
            ["body", "synthesis", "snapshots"],
            ["body", "training", "epochs"],
        ],
    )
    refused(
        {"synthesis": {"num_samples": 6400, "steps": 100, "snapshots": 40}},
        "CAKE_MAX_JOB_SYNTHETIC_BYTES",
        [["body", "synthesis", "num_samples"], ["body", "synthesis", "snapshots"]],
    )

    # The one-shot form checks the same caps, with the locations inside its spec part.
    with open(wine.path, "rb") as fh:
        r = client.post(
            "/v1/jobs",
            files={"teacher": ("wine.pt", fh)},
            data={"input_shape": "[13]", "spec": '{"synthesis": {"steps": 1000}}'},
        )
    problem = assert_problem(r, 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["body", "spec", "synthesis", "num_samples"]
    with open(wine.path, "rb") as fh:
        r = client.post(
            "/v1/jobs",
            files={"teacher": ("wine.pt", fh)},
            data={"input_shape": "[13]", "spec": '{"training": {"lr": NaN}}'},
        )
    problem = assert_problem(r, 422, "validation_error")
    assert problem["errors"][0]["loc"] == ["body", "spec", "training", "lr"]
    assert len(client.get("/v1/jobs").json()["data"]) == 1


def test_hostile_data_sets_are_refused_from_the_directory(
    client: TestClient, tmp_path: Path
) -> None:
    """The .npz is checked in the API process, so bombs are refused before any member is read."""
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (20 << 20, 1)}
    np.lib.format.write_array_header_1_0(buf, header)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", buf.getvalue() + bytes(80 << 20))  # 80 MiB of zeros: ~80 KiB
        zf.writestr("y.npy", b"")
    many = tmp_path / "many.npz"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(100):
            zf.writestr(f"a{i}.npy", b"")
    cases = [(bomb, "a zip bomb?"), (many, "declares 100 entries")]
    for path, phrase in cases:
        with open(path, "rb") as fh:
            r = client.post("/v1/datasets", files={"file": (path.name, fh)})
        assert phrase in assert_problem(r, 422, "dataset_invalid")["detail"]
    assert client.get("/v1/datasets").json()["data"] == []
