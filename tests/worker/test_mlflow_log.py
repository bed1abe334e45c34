"""MLflow logging of succeeded jobs (``worker.mlflow_log``), against a real tracking server.

The module's ``mlflow_server`` fixture starts ``mlflow server`` (SQLite backend, proxied
artifacts under ``tmp``) on a free port, waits for its ``/health`` endpoint and stops it at the
end; jobs run through the real worker path (:func:`worker.runner.process_job`, the engine in
its sandbox) with the bundled wine teacher, and everything is read back through MLflow's own
client. Nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from worker_support import TINY_SPEC, Service, free_port

from cake_core import __version__
from cake_shared.mlflow_spec import MlflowURIError
from cake_shared.models import Artifact, Job, JobEvent
from cake_shared.settings import Settings
from worker.job_files import load_inputs
from worker.mlflow_log import find_target, log_job, metric_series, model_name, spec_params
from worker.runner import process_job

mlflow = pytest.importorskip("mlflow")

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_BIN = Path(sys.executable).with_name("mlflow")


@dataclass(frozen=True)
class Teacher:
    """The bundled wine MLP (``examples/``): no training in these tests."""

    path: Path = ROOT / "examples" / "wine_mlp.pt"
    eval_path: Path = ROOT / "examples" / "wine_mlp_test.npz"
    input_shape: tuple[int, ...] = (13,)
    num_classes: int = 3


WINE = Teacher()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (with the model registry and proxied artifacts); its URL."""
    if not MLFLOW_BIN.exists():
        pytest.skip("the mlflow server is not installed (the [dev] extra)")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = open(root / "server.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        [
            str(MLFLOW_BIN),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=root,
        # The server's background job runner (GenAI jobs) is not needed here.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers are stopped with it, as one process group
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text())
            time.sleep(0.2)
        yield url
    finally:
        _stop_group(proc)
        log_file.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group (the CLI and its uvicorn), SIGKILL to what is left
    after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        proc.poll()  # reaps the CLI itself once it exits
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _set_job(service: Service, job_id: str, **values: Any) -> None:
    with service.ctx.session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def _mlflow_events(service: Service, job_id: str) -> list[JobEvent]:
    return [e for e in service.events(job_id) if e.type == "mlflow"]


def _artifact_rows(service: Service, job_id: str) -> dict[str, Artifact]:
    with service.ctx.session_scope() as session:
        rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id))
        return {row.name: row for row in rows}


def test_a_succeeded_job_is_logged_to_a_real_mlflow_server(
    make_service: Callable[..., Service], mlflow_server: str, tmp_path: Path
) -> None:
    service = make_service(CAKE_MLFLOW_TRACKING_URI=mlflow_server)
    job_id = service.add_job(WINE, TINY_SPEC)
    metadata = {"mlflow_model_name": "wine-student", "mlflow_experiment": "cake-tests"}
    _set_job(service, job_id, job_metadata=metadata)

    assert process_job(service.ctx, job_id) == "succeeded"

    job = service.get_job(job_id)
    events = service.events(job_id)
    logged = _mlflow_events(service, job_id)
    assert [(e.level, e.type) for e in logged] == [("info", "mlflow")], [e.message for e in events]
    info = logged[0].data
    # Logged before the job was recorded succeeded: a pipeline that waits for it finds the run.
    assert [e.type for e in events].index("mlflow") < [e.type for e in events].index("succeeded")
    run_id = info["run_id"]
    assert info["model_name"] == "wine-student" and info["model_version"] == "1"
    assert info["run_url"] == (
        f"{mlflow_server}/#/experiments/{info['experiment_id']}/runs/{run_id}"
    )
    assert run_id in logged[0].message and "version 1 of model 'wine-student'" in logged[0].message
    print(f"\nMLflow logging took {info['seconds']:.2f} s of the job")

    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "cake-tests"
    assert {k: run.data.tags[k] for k in ("cake.job_id", "cake.tenant", "cake.version")} == {
        "cake.job_id": job_id,
        "cake.tenant": "local",
        "cake.version": __version__,
    }
    artifacts = _artifact_rows(service, job_id)
    manifest = json.loads(service.store.get_bytes(artifacts["manifest.json"].storage_key))
    assert run.data.tags["cake.teacher_id"] == job.teacher_id
    assert run.data.tags["cake.preset"] == (manifest["spec"]["preset"] or "none")

    # Params: the resolved spec, flattened (what the job asked for and what the engine chose).
    params = run.data.params
    assert params["synthesis.steps"] == "10" and params["training.epochs"] == "2"
    assert params["synthesis.num_samples"] == "400"
    assert "student.arch" in params and "seed" in params
    assert "mlflow_tracking_uri" not in params

    # Metrics: the final ones, and the per-epoch / per-chunk history from manifest.json.
    for name, value in job.metrics.items():
        if isinstance(value, float) and value == value:
            assert run.data.metrics[name] == pytest.approx(value), name
    losses = client.get_metric_history(run_id, "training.loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2]
    chunks = len(manifest["synthesis"])
    assert chunks >= 1
    total = client.get_metric_history(run_id, "synthesis.loss_total")
    assert sorted(m.step for m in total) == list(range(chunks))

    # Artifacts: every file the job produced, byte for byte.
    listed = {a.path for a in client.list_artifacts(run_id)}
    assert listed == set(artifacts) and {"student.pt", "manifest.json"} <= listed
    for name in ("student.pt", "manifest.json"):
        local = Path(client.download_artifacts(run_id, name, str(tmp_path)))
        assert local.read_bytes() == service.store.get_bytes(artifacts[name].storage_key), name

    # The student as a registered model version, pointing at the run.
    version = client.get_model_version("wine-student", "1")
    assert version.run_id == run_id and version.source == f"runs:/{run_id}/student.pt"
    assert version.tags["cake.job_id"] == job_id


def test_a_spec_uri_of_an_allowed_tenant_is_used_and_the_engine_never_sees_it(
    make_service: Callable[..., Service], mlflow_server: str
) -> None:
    """The spec's ``mlflow_tracking_uri`` (the operator's URI unset): the engine refuses
    unknown fields, so the job succeeding shows it never received it."""
    service = make_service(CAKE_MLFLOW_SPEC_TENANTS="acme, local")
    job_id = service.add_job(WINE, {**TINY_SPEC, "mlflow_tracking_uri": mlflow_server})
    _set_job(service, job_id, job_metadata={"name": "nightly wine"})
    inputs = load_inputs(service.ctx, job_id)
    assert inputs is not None and "mlflow_tracking_uri" not in inputs.spec

    assert process_job(service.ctx, job_id) == "succeeded"

    (event,) = _mlflow_events(service, job_id)
    assert event.level == "info", event.message
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(event.data["run_id"])
    assert run.data.tags["cake.job_id"] == job_id
    assert client.get_experiment(run.info.experiment_id).name == "cake-distill"
    assert event.data["model_name"] == "nightly wine"
    assert client.get_model_version("nightly wine", event.data["model_version"]).run_id == (
        run.info.run_id
    )


def test_a_refused_model_name_keeps_the_run_and_says_why(
    make_service: Callable[..., Service], mlflow_server: str, tmp_path: Path
) -> None:
    """A refusal (4xx) is not retried; the run is logged and finished, and the warning names
    the step and MLflow's reason. ``log_job`` on files laid out as a job leaves them."""
    service = make_service(CAKE_MLFLOW_TRACKING_URI=mlflow_server)
    job_id = service.add_job(WINE, TINY_SPEC)
    _set_job(service, job_id, job_metadata={"mlflow_model_name": "no/slashes"})
    files = {"student.pt": tmp_path / "student.pt", "manifest.json": tmp_path / "manifest.json"}
    files["student.pt"].write_bytes(b"not really a model")
    manifest = {"spec": {"preset": "fast"}, "history": [{"epoch": 1.0, "loss": 0.5}]}
    files["manifest.json"].write_text(json.dumps(manifest))
    seen: list[tuple[str, str, str, dict[str, Any]]] = []

    def event(type: str, message: str, level: str = "info", **data: Any) -> None:
        seen.append((type, level, message, data))

    log_job(service.ctx, job_id, files, {"agreement_synthetic": 0.5}, event)

    ((kind, level, message, data),) = seen
    assert (kind, level, data["step"]) == ("mlflow", "warning", "register model")
    assert "Invalid model name" in data["error"] and "not registered" in message
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(data["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["cake.preset"] == "fast"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == set(files)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "training.loss")] == [0.5]


def test_an_unreachable_server_costs_seconds_and_leaves_the_job_succeeded(
    make_service: Callable[..., Service], caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    service = make_service(CAKE_MLFLOW_TRACKING_URI=closed)
    job_id = service.add_job(WINE, TINY_SPEC)

    caplog.set_level(logging.INFO, logger="cake.worker")
    started = time.monotonic()
    assert process_job(service.ctx, job_id) == "succeeded"
    elapsed = time.monotonic() - started

    job = service.get_job(job_id)
    assert job.status == "succeeded" and job.error is None
    assert set(_artifact_rows(service, job_id)) >= {"student.pt", "manifest.json"}
    (event,) = _mlflow_events(service, job_id)
    assert event.level == "warning"
    assert "could not log the job to MLflow" in event.message
    assert "result is not affected" in event.message
    assert "Connection refused" in event.data["error"]
    assert event.data["step"] == "experiment" and event.data["run_id"] is None
    # Three tries with the default backoff (about 0.5-1 s, then 1-2 s): seconds, not minutes.
    retries = [r for r in caplog.records if "MLflow experiment failed (try" in r.getMessage()]
    assert len(retries) == 2
    assert 0.5 <= event.data["seconds"] < 15, event.data
    assert elapsed < 60


def test_a_server_that_never_answers_is_bounded_by_the_timeout(
    make_service: Callable[..., Service],
) -> None:
    """A listening socket that accepts connections and never answers (a hung server): each
    try ends at CAKE_MLFLOW_TIMEOUT_S, and MLflow's own retries do not multiply them."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        service = make_service(
            CAKE_MLFLOW_TRACKING_URI=url,
            CAKE_MLFLOW_TIMEOUT_S="1",
            CAKE_MLFLOW_RETRY_ATTEMPTS="2",
            CAKE_MLFLOW_RETRY_BACKOFF_S="0.2",
        )
        job_id = service.add_job(WINE, TINY_SPEC)
        seen: list[tuple[str, dict[str, Any]]] = []

        def event(type: str, message: str, level: str = "info", **data: Any) -> None:
            seen.append((level, data))

        before = os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT")
        started = time.monotonic()
        log_job(service.ctx, job_id, {}, {"agreement_synthetic": 0.5}, event)
        elapsed = time.monotonic() - started
    ((level, data),) = seen
    assert (level, data["step"]) == ("warning", "experiment")
    assert "timeout" in data["error"].lower() or "timed out" in data["error"].lower(), data
    assert 2.0 <= elapsed < 8.0  # two tries of 1 s and a short wait, not MLflow's 120 s ones
    assert os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") == before  # put back as it was


def _job_files(folder: Path) -> dict[str, Path]:
    """A student and a manifest laid out as a job leaves them (for ``log_job`` alone)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"student.pt": folder / "student.pt", "manifest.json": folder / "manifest.json"}
    files["student.pt"].write_bytes(b"a student")
    files["manifest.json"].write_text(json.dumps({"spec": {"preset": "fast"}}))
    return files


def _collect() -> tuple[list[tuple[str, str, dict[str, Any]]], Callable[..., None]]:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def event(type: str, message: str, level: str = "info", **data: Any) -> None:
        seen.append((level, message, data))

    return seen, event


def test_a_tenant_server_gets_no_files_outside_itself(
    make_service: Callable[..., Service], mlflow_server: str, tmp_path: Path
) -> None:
    """A server named in a spec answers where the run's artifacts go; the worker writes only
    through that server, never to a ``file://`` (or ``s3://``, other host) location it names.
    The operator's own server is trusted with the same answer (it writes there: the check is
    what stops the tenant's)."""
    client = mlflow.MlflowClient(mlflow_server)
    elsewhere = tmp_path / "elsewhere"
    client.create_experiment("points-elsewhere", artifact_location=elsewhere.as_uri())
    files = _job_files(tmp_path / "job")

    tenant = make_service(CAKE_MLFLOW_SPEC_TENANTS="*")
    job_id = tenant.add_job(WINE, {**TINY_SPEC, "mlflow_tracking_uri": mlflow_server})
    _set_job(tenant, job_id, job_metadata={"mlflow_experiment": "points-elsewhere"})
    seen, event = _collect()
    log_job(tenant.ctx, job_id, files, {}, event)
    ((level, message, data),) = seen
    assert (level, data["step"]) == ("warning", "artifact location"), message
    assert "mlflow-artifacts" in data["error"]
    assert not elsewhere.exists()
    assert client.get_run(data["run_id"]).info.status == "FAILED"

    operator = make_service(CAKE_MLFLOW_TRACKING_URI=mlflow_server)
    job_id = operator.add_job(WINE, TINY_SPEC)
    _set_job(operator, job_id, job_metadata={"mlflow_experiment": "points-elsewhere"})
    seen, event = _collect()
    log_job(operator.ctx, job_id, files, {}, event)
    ((level, message, data),) = seen
    assert level == "info", message
    assert sorted(p.name for p in elsewhere.rglob("*") if p.is_file()) == sorted(files)


def test_the_workers_mlflow_credentials_go_to_the_operators_server_only(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A listener that records each request's head: the operator's token reaches the
    operator's URI and never a URI from a job spec."""
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "operator-secret")
    heads: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.1)  # so that the thread sees `done` soon after the test ends
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    done = threading.Event()

    def record() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                heads.append(head)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    try:
        files = _job_files(tmp_path / "job")
        for env, spec in (
            ({"CAKE_MLFLOW_TRACKING_URI": url}, TINY_SPEC),
            ({"CAKE_MLFLOW_SPEC_TENANTS": "local"}, {**TINY_SPEC, "mlflow_tracking_uri": url}),
        ):
            service = make_service(CAKE_MLFLOW_RETRY_ATTEMPTS="1", **env)
            job_id = service.add_job(WINE, spec)
            seen, event = _collect()
            log_job(service.ctx, job_id, files, {}, event)
            assert [level for level, _, _ in seen] == ["warning"]
    finally:
        done.set()
        thread.join(5)
        listener.close()
    assert len(heads) == 2, heads
    assert b"Bearer operator-secret" in heads[0]
    assert b"authorization" not in heads[1].lower() and b"operator-secret" not in heads[1]
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "operator-secret"  # put back


def test_a_spec_uri_is_checked_again_at_the_worker() -> None:
    """A job row whose tenant is not (or no longer) allowed: the worker does not dial it."""
    job = Job(
        id="job_1",
        tenant="acme",
        teacher_id="tch_1",
        spec={"mlflow_tracking_uri": "http://127.0.0.1:5000"},
        job_metadata={},
        attempts=1,
    )
    allowed = Settings(mlflow_spec_tenants="acme")
    target = find_target(allowed, job, "default")
    assert target is not None and target.from_spec
    assert (target.tracking_uri, target.experiment) == ("http://127.0.0.1:5000", "cake-distill")
    with pytest.raises(MlflowURIError, match="CAKE_MLFLOW_SPEC_TENANTS"):
        find_target(Settings(mlflow_spec_tenants="other"), job, "default")
    with pytest.raises(MlflowURIError, match="public"):
        find_target(Settings(mlflow_spec_tenants="*", webhook_allow_private=False), job, None)
    # No spec URI and no operator URI: MLflow is off for the job.
    job.spec = {}
    assert find_target(allowed, job, None) is None
    operator = Settings(mlflow_tracking_uri="sqlite:///tmp/mlflow.db")
    target = find_target(operator, job, None)
    assert target is not None and not target.from_spec
    assert target.tags["cake.preset"] == "none"


def test_model_name_rule_params_and_metric_series() -> None:
    assert model_name({"mlflow_model_name": "a", "name": "b"}, "tch_1") == "a"
    assert model_name({"mlflow_model_name": " ", "name": "b"}, "tch_1") == "b"
    assert model_name({"name": 7}, "tch_1") == "cake-tch_1"
    assert model_name({}, "tch_1") == "cake-tch_1"

    spec = {"synthesis": {"steps": 10, "weights": {"bn": 1.0}}, "seed": None, "preset": "fast"}
    assert spec_params({**spec, "mlflow_tracking_uri": "http://x"}) == {
        "synthesis.steps": "10",
        "synthesis.weights.bn": "1.0",
        "seed": "null",
        "preset": "fast",
    }

    manifest = {
        "history": [{"epoch": 1.0, "loss": 2.0}, {"epoch": 2.0, "loss": 1.0}],
        "synthesis": [
            {"chunk": 0.0, "loss_total": 5.0},
            {"chunk": 1.0, "loss_total": float("nan")},
        ],
    }
    points = metric_series({"agreement": 0.9, "ok": True, "note": "x"}, manifest)
    assert points == [
        ("agreement", 0.9, 0),
        ("training.loss", 2.0, 1),
        ("training.loss", 1.0, 2),
        ("synthesis.loss_total", 5.0, 0),
    ]


def test_configured_but_not_installed_says_what_to_install(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sys.modules["mlflow"] = None`` is how Python spells a module that cannot be imported."""
    service = make_service(CAKE_MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    job_id = service.add_job(WINE, TINY_SPEC)
    monkeypatch.setitem(sys.modules, "mlflow", None)
    seen: list[tuple[str, str, str]] = []

    def event(type: str, message: str, level: str = "info", **data: Any) -> None:
        seen.append((type, level, message))

    log_job(service.ctx, job_id, {}, {"agreement_synthetic": 0.9}, event)
    assert len(seen) == 1
    assert seen[0][:2] == ("mlflow", "warning") and "cake-distill[mlflow]" in seen[0][2]
