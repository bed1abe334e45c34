"""``cake submit``, ``cake jobs``, ``cake teachers``, ``cake datasets`` against a real service,
run as subprocesses the way a pipeline runs them: exit codes, ``--json``, one-line errors,
and Ctrl-C while waiting (a real terminal through a pty, and a pipe)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from client_support import (
    BIG_SPEC,
    TINY_SPEC,
    WINE,
    WINE_EVAL,
    CakeServer,
    accuracy,
    clean_env,
    free_port,
    one_line_error,
    run_cli,
)

from cake_client import Client

CANCEL_WAIT_S = 60
WINE_X = np.load(WINE_EVAL)["x"].astype(np.float32)


def _onnx_classes(path: Path) -> np.ndarray:
    """The top-1 classes an ONNX classifier gives the wine evaluation set (ONNX Runtime)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: WINE_X})[0]
    return np.asarray(logits).argmax(axis=1)


def _status(url: str, job_id: str, cwd: Path) -> str:
    shown = run_cli("jobs", "show", job_id, "--json", url=url, cwd=cwd)
    assert shown.returncode == 0, shown.stderr
    return str(json.loads(shown.stdout)["status"])


def _wait_status(url: str, job_id: str, cwd: Path, status: str) -> None:
    deadline = time.monotonic() + CANCEL_WAIT_S
    while (current := _status(url, job_id, cwd)) != status:
        assert time.monotonic() < deadline, f"job {job_id} still {current}"
        time.sleep(0.5)


def _cancel_and_settle(url: str, job_id: str) -> None:
    """Leave the single worker free for the next test."""
    with Client(url) as client:
        client.jobs.cancel(job_id)
        assert client.jobs.wait(job_id, timeout=CANCEL_WAIT_S).status == "canceled"


def _leave_nothing_running(url: str, proc: subprocess.Popen[Any]) -> None:
    """Whether a Ctrl-C test passed or failed: its client is gone and no job holds the worker
    (a large job left running would keep the module's single worker busy for every later
    test)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    with Client(url) as client:
        for job in client.jobs.list(limit=100):
            if not job.finished:
                client.jobs.cancel(job.id)


def test_submit_wait_writes_a_student_as_good_as_the_teacher(
    cake_server: CakeServer, tmp_path: Path
) -> None:
    """The issue's acceptance check: the wine MLP, preset fast, held-out real data."""
    result = run_cli(
        "submit", WINE, "--input-shape", "13", "--preset", "fast", "--eval", WINE_EVAL,
        "--wait", "-o", "student.pt",
        url=cake_server.url, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    student = tmp_path / "student.pt"
    assert student.is_file()
    assert "student_accuracy" in result.stdout and "verified" in result.stdout
    teacher_acc, student_acc = accuracy(WINE, WINE_EVAL), accuracy(student, WINE_EVAL)
    assert teacher_acc > 0.9
    assert student_acc >= 0.9 * teacher_acc, (teacher_acc, student_acc)
    # The file on disk is the one the service lists (the CLI said it verified it).
    with Client(cake_server.url) as client:
        job = next(iter(client.jobs.list(status="succeeded", limit=1)))
        sha = {a.name: a.sha256 for a in job.artifacts()}["student.pt"]
    assert sha in result.stdout


def test_submit_json_is_one_parseable_document(cake_server: CakeServer, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_SPEC))
    result = run_cli(
        "submit", WINE, "--input-shape", "[13]", "--spec", spec, "--student", "mlp",
        "--width", "0.25", "--seed", "7", "--input-range", "-3", "3", "--wait",
        "-o", "out/student.onnx", "--json",
        "--callback-url", "http://127.0.0.1:9/hook", url=cake_server.url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress chatter in machine mode
    doc = json.loads(result.stdout)
    assert doc["job"]["status"] == "succeeded"
    assert doc["job"]["callback_url"] == "http://127.0.0.1:9/hook"
    assert doc["job"]["spec"]["student"] == {
        "arch": "mlp",
        "width": 0.25,
        "width_reason": "given in the spec",
    }
    assert doc["job"]["spec"]["seed"] == 7
    assert doc["job"]["spec"]["input_range"] == [-3.0, 3.0]
    assert doc["teacher"]["id"].startswith("tch_") and doc["dataset"] is None
    # -o's extension picked the ONNX student: the file the service lists, and it runs
    assert doc["student"]["artifact"] == "student.onnx"
    assert Path(doc["student"]["path"]) == tmp_path / "out" / "student.onnx"
    with Client(cake_server.url) as client:
        shas = {a.name: a.sha256 for a in client.jobs.artifacts(doc["job"]["id"])}
    assert doc["student"]["sha256"] == shas["student.onnx"]
    onnx_classes = _onnx_classes(tmp_path / "out" / "student.onnx")
    assert onnx_classes.shape == (len(WINE_X),)

    url, job_id = cake_server.url, doc["job"]["id"]
    listed = run_cli("jobs", "list", "--json", "--limit", "1", url=url, cwd=tmp_path)
    assert [j["id"] for j in json.loads(listed.stdout)] == [job_id]
    events = run_cli("jobs", "events", job_id, "--json", url=url, cwd=tmp_path)
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    types = [line["type"] for line in lines]
    assert types[0] == "queued" and "succeeded" in types
    # the callback to a closed port is tried, recorded, and retried later
    assert set(types[types.index("succeeded") + 1 :]) <= {"webhook_attempt"}
    human = run_cli("jobs", "show", job_id, url=url, cwd=tmp_path)
    assert human.returncode == 0 and "succeeded" in human.stdout
    again = run_cli(
        "jobs", "download", job_id, "--artifact", "manifest.json", "-o", "m.json", "--json",
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["metrics"]

    # jobs download: -o by extension (.pt, .int8.onnx) and --artifact over it
    pt = run_cli("jobs", "download", job_id, "-o", "s.pt", url=url, cwd=tmp_path)
    assert pt.returncode == 0 and shas["student.pt"] in pt.stdout
    assert (tmp_path / "s.pt").read_bytes()[:2] == b"PK"  # a TorchScript (zip) archive
    explicit = run_cli(
        "jobs", "download", job_id, "--artifact", "manifest.json", "-o", "manifest.onnx",
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert explicit.returncode == 0, explicit.stderr
    assert json.loads((tmp_path / "manifest.onnx").read_text()) == manifest
    int8 = run_cli("jobs", "download", job_id, "-o", "s.int8.onnx", url=url, cwd=tmp_path)
    if manifest["deployment"]["int8"]["kept"]:
        assert int8.returncode == 0, int8.stderr
        assert shas["student.int8.onnx"] in int8.stdout
        assert (_onnx_classes(tmp_path / "s.int8.onnx") == onnx_classes).mean() >= 0.9
    else:  # the job refused it: the manifest's reason, exit 1, no file
        assert int8.returncode == 1
        assert manifest["deployment"]["int8"]["reason"] in one_line_error(int8)
        assert not (tmp_path / "s.int8.onnx").exists()


def test_submit_wait_says_so_when_the_student_is_larger_than_its_teacher(
    cake_server: CakeServer, tmp_path: Path
) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(TINY_SPEC))
    result = run_cli(
        "submit", WINE, "--input-shape", "13", "--spec", spec, "--width", "1", "--wait",
        "-o", "out/student.pt", url=cake_server.url, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: the student is larger than its teacher: mlp at width 1 " in result.stderr
    assert "compression" in result.stdout


def test_teachers_and_datasets_commands(cake_server: CakeServer, tmp_path: Path) -> None:
    url = cake_server.url
    uploaded = run_cli("teachers", "upload", WINE, "--input-shape", "13", "--json", url=url,
                       cwd=tmp_path)  # fmt: skip
    assert uploaded.returncode == 0, uploaded.stderr
    teacher_id = json.loads(uploaded.stdout)["id"]
    listed = run_cli("teachers", "list", "--json", url=url, cwd=tmp_path)
    assert teacher_id in [t["id"] for t in json.loads(listed.stdout)]
    shown = run_cli("teachers", "show", teacher_id, url=url, cwd=tmp_path)
    assert shown.returncode == 0 and teacher_id in shown.stdout
    assert run_cli("teachers", "delete", teacher_id, url=url, cwd=tmp_path).returncode == 0
    gone = run_cli("teachers", "show", teacher_id, url=url, cwd=tmp_path)
    assert gone.returncode == 2 and "not_found" in one_line_error(gone)

    dataset = run_cli("datasets", "upload", WINE_EVAL, "--json", url=url, cwd=tmp_path)
    assert dataset.returncode == 0, dataset.stderr
    assert json.loads(dataset.stdout)["input_shape"] == [13]
    archs = run_cli("architectures", "--json", url=url, cwd=tmp_path)
    assert "mlp" in [a["name"] for a in json.loads(archs.stdout)]


def test_bad_input_and_unreachable_exit_codes(cake_server: CakeServer, tmp_path: Path) -> None:
    url = cake_server.url
    missing = run_cli("submit", tmp_path / "nope.pt", "--input-shape", "13", url=url, cwd=tmp_path)
    assert missing.returncode == 2
    assert "not found" in one_line_error(missing)

    shape = run_cli("submit", WINE, "--input-shape", "13,x", url=url, cwd=tmp_path)
    assert shape.returncode == 2 and "input shape" in one_line_error(shape)

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"synthesis": {"bogus": 1}}))
    invalid = run_cli("submit", WINE, "--input-shape", "13", "--spec", spec, url=url, cwd=tmp_path)
    assert invalid.returncode == 2
    assert "synthesis.bogus: unknown field (validation_error)" in one_line_error(invalid)
    mlflow = run_cli(
        "submit", WINE, "--input-shape", "13", "--mlflow-tracking-uri", "http://127.0.0.1:9/",
        url=url, cwd=tmp_path,
    )  # fmt: skip
    assert mlflow.returncode == 2  # this service lets no tenant name its own MLflow server
    assert "mlflow_tracking_uri: " in one_line_error(mlflow)
    assert "CAKE_MLFLOW_SPEC_TENANTS" in one_line_error(mlflow)

    text = tmp_path / "text.pt"
    text.write_text("not a model")
    refused = run_cli("submit", text, "--input-shape", "13", "--json", url=url, cwd=tmp_path)
    assert refused.returncode == 2
    assert json.loads(one_line_error(refused))["error"]["code"] == "teacher_invalid"

    dead = f"http://127.0.0.1:{free_port()}"
    unreachable = run_cli("jobs", "list", "--retries", "1", url=dead, cwd=tmp_path)
    assert unreachable.returncode == 5
    assert "cannot reach the service" in one_line_error(unreachable)
    bad_url = run_cli("jobs", "list", "--url", "ht!tp://nowhere", url=None, cwd=tmp_path)
    assert bad_url.returncode == 5 and "invalid service URL" in one_line_error(bad_url)


def test_cancel_a_submitted_job(cake_server: CakeServer, tmp_path: Path) -> None:
    url = cake_server.url
    spec = tmp_path / "big.json"
    spec.write_text(json.dumps(BIG_SPEC))
    submitted = run_cli(
        "submit", WINE, "--input-shape", "13", "--spec", spec, "--json", url=url, cwd=tmp_path
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["job"]["id"]

    canceled = run_cli("jobs", "cancel", job_id, url=url, cwd=tmp_path)
    assert canceled.returncode == 0, canceled.stderr
    _wait_status(url, job_id, tmp_path, "canceled")

    download = run_cli("jobs", "download", job_id, "-o", "s.pt", url=url, cwd=tmp_path)
    assert download.returncode == 4
    assert "canceled" in one_line_error(download)
    assert not (tmp_path / "s.pt").exists()
    waited = run_cli("jobs", "wait", job_id, url=url, cwd=tmp_path)
    assert waited.returncode == 4 and "canceled" in one_line_error(waited)


def _submit_big(url: str, spec: Path) -> list[str]:
    return [sys.executable, "-m", "cake_cli.main", "submit", str(WINE), "--input-shape", "13",
            "--spec", str(spec), "--wait", "--url", url]  # fmt: skip


def test_ctrl_c_on_a_pipe_leaves_the_job_running(cake_server: CakeServer, tmp_path: Path) -> None:
    spec = tmp_path / "big.json"
    spec.write_text(json.dumps(BIG_SPEC))
    proc = subprocess.Popen(
        _submit_big(cake_server.url, spec),
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines = []
        while "synthesizing" not in "".join(lines):  # the job is running
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        message = one_line_error(result)
        job_id = next(w for w in message.split() if w.startswith("job_"))
        assert "keeps running" in message
        assert _status(cake_server.url, job_id, tmp_path) == "running"
        _cancel_and_settle(cake_server.url, job_id)
    finally:
        _leave_nothing_running(cake_server.url, proc)


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_ctrl_c_on_a_terminal_asks_and_cancels(cake_server: CakeServer, tmp_path: Path) -> None:
    import pty

    spec = tmp_path / "big.json"
    spec.write_text(json.dumps(BIG_SPEC))
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        _submit_big(cake_server.url, spec),
        cwd=tmp_path,
        env=clean_env(TERM="xterm", COLUMNS="120"),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    seen = b""

    def read_until(token: bytes, timeout: float = 60) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while token not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break

    try:
        read_until(b"synthesizing")
        proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal delivers
        read_until(b"[y/N]")
        os.write(controller, b"y\n")
        assert proc.wait(30) == 4
        read_until(b"cancel")
    finally:
        os.close(controller)
        _leave_nothing_running(cake_server.url, proc)
    text = seen.decode(errors="replace")
    job_id = text[text.index("cancel job ") + len("cancel job ") :].split()[0]
    with Client(cake_server.url) as client:
        assert client.jobs.wait(job_id, timeout=CANCEL_WAIT_S).status == "canceled"
