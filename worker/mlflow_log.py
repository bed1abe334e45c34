"""Log a succeeded job to MLflow, so that a pipeline need not copy metrics and files by hand.

When the operator sets ``CAKE_MLFLOW_TRACKING_URI``, or the job's spec names its own
``mlflow_tracking_uri`` (tenants in ``CAKE_MLFLOW_SPEC_TENANTS`` only; the spec's wins), the
worker logs, right before it records the job ``succeeded`` (so a pipeline that waits for the
job, or for its webhook, finds the run):

- one run in the experiment ``metadata["mlflow_experiment"]``, else ``CAKE_MLFLOW_EXPERIMENT``
  (default ``cake-distill``), named after the job, tagged with the job id, tenant, teacher id,
  preset, attempt and the cake version;
- the resolved spec as params, flattened (``synthesis.steps``);
- the job's final metrics (step 0), the training history per epoch (``training.<name>``, step
  = epoch) and the synthesis log per chunk (``synthesis.<name>``, step = chunk), both from the
  job's ``manifest.json``;
- every file the job produced, at the run's artifact root;
- the student (``student.pt``) as a new version of the registered model
  :func:`model_name` picks: ``metadata["mlflow_model_name"]``, else ``metadata["name"]``, else
  ``cake-<teacher id>``.

MLflow is optional and never decides a job's outcome: :func:`log_job` does not raise. A call
that cannot reach the server is retried with the project's one policy
(:mod:`cake_shared.retry`) a few times, each HTTP request limited to ``CAKE_MLFLOW_TIMEOUT_S``
(MLflow's own retries are turned off so the two do not multiply), and no new try starts
``CAKE_MLFLOW_BUDGET_S`` after the logging began; what went wrong becomes a ``mlflow`` warning
event, and success an ``info`` event with the run and the model version. ``mlflow`` (the
``[mlflow]`` extra: ``mlflow-skinny``) is imported only when a job is to be logged.

A server named in a job spec is the tenant's, not the operator's: it gets none of the worker's
``MLFLOW_TRACKING_*`` credentials, and the worker uploads files only through it (never to a
``file://``, ``s3://`` or other-host artifact location it answers).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

from cake_core import __version__
from cake_shared.mlflow_spec import MlflowURIError, check_mlflow_uri
from cake_shared.models import Job
from cake_shared.retry import backoff_delay, call_with_retries
from cake_shared.services import Services
from cake_shared.settings import Settings

__all__ = [
    "EVENT_TYPE",
    "MlflowTarget",
    "experiment_name",
    "find_target",
    "log_job",
    "metric_series",
    "mlflow_environment",
    "model_name",
    "proxied_artifacts",
    "spec_params",
    "wanted",
]

log = logging.getLogger("cake.worker")
T = TypeVar("T")

EVENT_TYPE = "mlflow"
#: What to install when MLflow is configured but missing (the worker image has it).
INSTALL_HINT = "install cake-distill[mlflow]"
#: MLflow's limits of one ``log_batch`` request.
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
#: MLflow's limit on a param's value; longer values are cut (a spec value never is).
MAX_PARAM_CHARS = 6000
#: How much of an error message goes into an event.
MAX_ERROR_CHARS = 600
#: The artifact registered as the model version's source.
STUDENT_FILE = "student.pt"
#: Spec keys that are the service's, not the engine's: not params.
_SERVICE_KEYS = ("mlflow_tracking_uri", "teacher_id", "eval_dataset_id", "metadata")


class EventSink(Protocol):
    """:meth:`worker.tracker.JobTracker.event`: appends one event to the job's log."""

    def __call__(self, type: str, message: str, level: str = "info", **data: Any) -> None: ...


@dataclass(frozen=True)
class MlflowTarget:
    """Where and under which names one job is logged."""

    tracking_uri: str
    from_spec: bool
    experiment: str
    model_name: str
    tags: dict[str, str]


class _GaveUp(Exception):
    """The time budget ran out before a call could be (re)tried."""


# --------------------------------------------------------------------------------------------
# names and values: pure functions of the job
# --------------------------------------------------------------------------------------------


def _text(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return value.strip() if isinstance(value, str) and value.strip() else None


def model_name(metadata: Mapping[str, Any], teacher_id: str) -> str:
    """The registered model the student becomes a version of: the job's
    ``metadata["mlflow_model_name"]``, else its ``metadata["name"]``, else
    ``cake-<teacher id>`` (students of one teacher are versions of one model by default)."""
    return _text(metadata, "mlflow_model_name") or _text(metadata, "name") or f"cake-{teacher_id}"


def experiment_name(metadata: Mapping[str, Any], settings: Settings) -> str:
    """``metadata["mlflow_experiment"]``, else ``CAKE_MLFLOW_EXPERIMENT``."""
    return _text(metadata, "mlflow_experiment") or settings.mlflow_experiment


def _spec_uri(job: Job) -> str | None:
    value = (job.spec or {}).get("mlflow_tracking_uri")
    return value if isinstance(value, str) and value else None


def wanted(settings: Settings, job: Job) -> bool:
    """Whether ``job`` is to be logged at all (the operator's URI, or one in its spec): every
    other job costs one row read, not a manifest parse or an import."""
    return bool(settings.mlflow_tracking_uri) or _spec_uri(job) is not None


def find_target(settings: Settings, job: Job, preset: str | None) -> MlflowTarget | None:
    """Where ``job`` is logged, or None when MLflow is not configured for it.

    The spec's URI wins over the operator's (the tenant asked for its own server) and is
    checked again here, as the worker is the one that dials it: the operator may have removed
    the tenant from ``CAKE_MLFLOW_SPEC_TENANTS`` since, or its host may resolve elsewhere now.
    Raises :class:`MlflowURIError` for a spec URI this worker will not dial.
    """
    spec_uri = _spec_uri(job)
    if spec_uri is not None:
        uri, from_spec = check_mlflow_uri(spec_uri, job.tenant, settings), True
    elif settings.mlflow_tracking_uri:
        uri, from_spec = settings.mlflow_tracking_uri, False
    else:
        return None
    metadata = job.job_metadata or {}
    tags = {
        "cake.job_id": job.id,
        "cake.tenant": job.tenant,
        "cake.teacher_id": job.teacher_id,
        "cake.preset": preset or "none",
        "cake.attempt": str(job.attempts),
        "cake.version": __version__,
    }
    return MlflowTarget(
        tracking_uri=uri,
        from_spec=from_spec,
        experiment=experiment_name(metadata, settings),
        model_name=model_name(metadata, job.teacher_id),
        tags=tags,
    )


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM_CHARS]


def spec_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The spec flattened to MLflow params: ``{"synthesis": {"steps": 10}}`` becomes
    ``{"synthesis.steps": "10"}`` (non-strings as JSON: ``true``, ``null``, ``[3, 4]``)."""
    params: dict[str, str] = {}
    for key, value in spec.items():
        if not prefix and key in _SERVICE_KEYS:
            continue
        if isinstance(value, Mapping):
            params.update(spec_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = _param_value(value)
    return params


def _number(value: Any) -> float | None:
    """A finite float, or None for what is not a number (bools, text, NaN: MLflow has no use
    for them as metrics)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _series(rows: Any, prefix: str, step_key: str, first_step: int) -> list[tuple[str, float, int]]:
    points: list[tuple[str, float, int]] = []
    if not isinstance(rows, list):
        return points
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            continue
        step_value = _number(row.get(step_key))
        step = int(step_value) if step_value is not None else index + first_step
        for key, value in row.items():
            number = _number(value)
            if key != step_key and number is not None:
                points.append((f"{prefix}.{key}", number, step))
    return points


def metric_series(
    metrics: Mapping[str, Any], manifest: Mapping[str, Any]
) -> list[tuple[str, float, int]]:
    """``(name, value, step)`` for every metric: the final ones at step 0, the training history
    as ``training.<name>`` per epoch (``manifest["history"]``, step = epoch, from 1) and the
    synthesis log as ``synthesis.<name>`` per chunk (``manifest["synthesis"]``, step = chunk,
    from 0)."""
    points = [(k, n, 0) for k, v in metrics.items() if (n := _number(v)) is not None]
    points += _series(manifest.get("history"), "training", "epoch", 1)
    points += _series(manifest.get("synthesis"), "synthesis", "chunk", 0)
    return points


def _read_manifest(artifacts: Mapping[str, Path]) -> dict[str, Any]:
    """The job's ``manifest.json`` (empty when missing or unreadable: the final metrics and
    the files still get logged)."""
    path = artifacts.get("manifest.json")
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        log.warning("could not read %s for MLflow: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def redact(uri: str) -> str:
    """``uri`` without ``user:password@``: an operator's URI may carry credentials, and
    events are shown to the job's tenant."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI, for an http(s) tracking server."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    base = redact(tracking_uri).rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def _words(exc: BaseException, tracking_uri: str) -> str:
    """The error in one line, without the URI's credentials, cut to :data:`MAX_ERROR_CHARS`."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if tracking_uri != redact(tracking_uri):
        text = text.replace(tracking_uri, redact(tracking_uri))
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 1] + "…"
    return text


# --------------------------------------------------------------------------------------------
# talking to MLflow: bounded retries
# --------------------------------------------------------------------------------------------


def transient(exc: BaseException) -> bool:
    """Whether trying again may help: the server was unreachable, timed out, or answered 5xx or
    429. A refusal (4xx: a bad name, a missing endpoint) is not retried."""
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        code = status()
        if isinstance(code, int):
            return code >= 500 or code == 429
    return isinstance(exc, OSError | TimeoutError)


#: The worker's MLflow credentials (meant for the operator's server): never sent to a server
#: that a job spec names (MLflow reads them from the environment at every request).
CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
)


_ENVIRONMENT_LOCK = threading.Lock()


@contextlib.contextmanager
def mlflow_environment(settings: Settings, *, withhold_credentials: bool) -> Iterator[None]:
    """MLflow's HTTP timeout set to ``CAKE_MLFLOW_TIMEOUT_S`` and its own retries off while
    the job is logged (it reads these variables at every request; its defaults would wait up
    to two minutes per request and retry for minutes), and with ``withhold_credentials`` the
    :data:`CREDENTIAL_VARIABLES` removed; the previous values come back after."""
    values: dict[str, str | None] = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(settings.mlflow_timeout_s))),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    if withhold_credentials:
        values.update(dict.fromkeys(CREDENTIAL_VARIABLES))
    # One job's logging at a time per process: the environment is the process's, and two
    # interleaved jobs could otherwise put the operator's credentials back under a tenant's.
    with _ENVIRONMENT_LOCK:
        before = {name: os.environ.get(name) for name in values}
        _set_environment(values)
        try:
            yield
        finally:
            _set_environment(before)


def _set_environment(values: Mapping[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def proxied_artifacts(artifact_uri: str, tracking_uri: str) -> bool:
    """Whether a run's artifacts go through the tracking server itself: ``mlflow-artifacts:``
    without a host of its own (``mlflow server --serve-artifacts``, the default), or an
    http(s) URL on the tracking server's own host.

    A server named in a job spec is the tenant's: were the worker to follow any artifact
    location it answers, it could be told to write ``file:///`` on its own disk, or to
    ``s3://`` with the service's own credentials, or to another host (SSRF)."""
    parts = urlsplit(artifact_uri)
    scheme = parts.scheme.lower()
    if scheme == "mlflow-artifacts":
        return not parts.netloc
    tracking = urlsplit(tracking_uri)
    return scheme == tracking.scheme.lower() and parts.netloc.lower() == tracking.netloc.lower()


class ArtifactLocationRefused(Exception):
    """The tenant's server keeps artifacts somewhere the worker will not write to."""


class _Calls:
    """Runs MLflow calls with the project's retry policy inside one time budget."""

    def __init__(self, settings: Settings, started: float) -> None:
        self.settings = settings
        self.deadline = started + settings.mlflow_budget_s
        self.step = "start"

    def __call__(self, step: str, call: Callable[[], T]) -> T:
        """``call()`` as ``step`` (named in the warning if it fails), retried on transient
        errors while attempts and time remain."""
        self.step = step
        if time.monotonic() >= self.deadline:
            raise _GaveUp(f"gave up after {self.settings.mlflow_budget_s:g} s")
        settings = self.settings

        def retryable(exc: BaseException) -> bool:
            return transient(exc) and time.monotonic() < self.deadline

        def on_retry(exc: BaseException, wait: float, failures: int) -> None:
            log.info("MLflow %s failed (try %d), again in %.1f s: %s", step, failures, wait, exc)

        return call_with_retries(
            call,
            attempts=settings.mlflow_retry_attempts,
            retryable=retryable,
            delay=lambda n: backoff_delay(
                n, settings.mlflow_retry_backoff_s, settings.mlflow_retry_backoff_max_s
            ),
            sleep=time.sleep,
            on_retry=on_retry,
        )


def _batches(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _experiment_id(client: Any, name: str) -> str:
    """The experiment's id, created when it does not exist yet (a concurrent creation by
    another worker is read back)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise
        return str(client.get_experiment_by_name(name).experiment_id)


def _ensure_registered_model(client: Any, name: str) -> None:
    """Create the registered model unless it exists (a retry after a lost answer finds it)."""
    try:
        client.create_registered_model(name, description="Students distilled by cake-distill.")
    except Exception as exc:
        if getattr(exc, "error_code", None) != "RESOURCE_ALREADY_EXISTS":
            raise


@dataclass
class _Logged:
    """What has been logged so far, for the final event."""

    experiment_id: str | None = None
    run_id: str | None = None
    params: int = 0
    metrics: int = 0
    artifacts: tuple[str, ...] = ()
    model_version: str | None = None
    finished: bool = False


def _log_run(
    mlflow: Any,
    target: MlflowTarget,
    calls: _Calls,
    logged: _Logged,
    params: dict[str, str],
    points: list[tuple[str, float, int]],
    artifacts: Mapping[str, Path],
) -> None:
    """Experiment, run, params, metrics and files, in that order; ``logged`` says how far it
    got when a call fails."""
    from mlflow.entities import Metric, Param

    client = mlflow.MlflowClient(tracking_uri=target.tracking_uri, registry_uri=target.tracking_uri)
    experiment_id = calls("experiment", lambda: _experiment_id(client, target.experiment))
    logged.experiment_id = experiment_id
    run = calls(
        "create run",
        lambda: client.create_run(
            experiment_id, tags=target.tags, run_name=target.tags["cake.job_id"]
        ),
    )
    run_id = str(run.info.run_id)
    logged.run_id = run_id
    try:
        artifact_uri = str(run.info.artifact_uri or "")
        if target.from_spec and not proxied_artifacts(artifact_uri, target.tracking_uri):
            calls.step = "artifact location"
            raise ArtifactLocationRefused(
                f"the server keeps this run's artifacts at {artifact_uri!r}; for a tracking "
                "server named in a job spec the worker only uploads through the server itself "
                "(mlflow server --serve-artifacts, mlflow-artifacts:/ locations)"
            )
        param_list = [Param(k, v) for k, v in params.items()]
        for batch in _batches(param_list, PARAMS_PER_BATCH):
            calls("params", lambda b=batch: client.log_batch(run_id, params=list(b)))
        logged.params = len(param_list)
        now_ms = int(time.time() * 1000)
        metric_list = [Metric(name, value, now_ms, step) for name, value, step in points]
        for batch in _batches(metric_list, METRICS_PER_BATCH):
            calls("metrics", lambda b=batch: client.log_batch(run_id, metrics=list(b)))
        logged.metrics = len(metric_list)
        for name, path in sorted(artifacts.items()):
            calls(f"artifact {name}", lambda p=path: client.log_artifact(run_id, str(p)))
            logged.artifacts = (*logged.artifacts, name)
        calls("finish run", lambda: client.set_terminated(run_id, "FINISHED"))
    except Exception as exc:
        # A server that answers but refused something: mark the run FAILED (one try), so it
        # does not look like a job still running. One that is down is not asked again.
        if not transient(exc) and not isinstance(exc, _GaveUp):
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, "FAILED")
        raise
    logged.finished = True

    if STUDENT_FILE not in artifacts:
        return
    calls("register model", lambda: _ensure_registered_model(client, target.model_name))
    version = calls(
        "model version",
        lambda: client.create_model_version(
            target.model_name,
            source=f"runs:/{run_id}/{STUDENT_FILE}",
            run_id=run_id,
            tags={"cake.job_id": target.tags["cake.job_id"]},
            description=f"cake-distill job {target.tags['cake.job_id']}: the TorchScript "
            f"student of teacher {target.tags['cake.teacher_id']}",
            await_creation_for=0,  # the server answers READY; never wait minutes for it here
        ),
    )
    logged.model_version = str(version.version)


def _import_mlflow() -> Any:
    """``mlflow`` (from ``mlflow-skinny``), imported now: it takes seconds and is optional."""
    import mlflow

    return mlflow


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------


def _load_job(services: Services, job_id: str) -> Job | None:
    """The job's row, detached (tenant, teacher, spec, metadata, attempt)."""

    def read() -> Job | None:
        with services.session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None:
                session.expunge(job)
            return job

    return services.retrying(f"MLflow target of job {job_id}", read)


def log_job(
    services: Services,
    job_id: str,
    artifacts: Mapping[str, Path],
    metrics: Mapping[str, Any],
    event: EventSink,
) -> None:
    """Log the succeeded job ``job_id`` to MLflow when configured (see the module); never
    raises, so the job's outcome never depends on MLflow. ``artifacts``: the files the job
    produced (name to local path); ``metrics``: its final metrics; ``event``: appends to the
    job's log."""
    try:
        _log_job(services, job_id, artifacts, metrics, event)
    except Exception:  # even writing the event failed: the worker log has it, the job goes on
        log.exception("job %s: MLflow logging failed", job_id)


def _log_job(
    services: Services,
    job_id: str,
    artifacts: Mapping[str, Path],
    metrics: Mapping[str, Any],
    event: EventSink,
) -> None:
    started = time.monotonic()
    settings = services.settings
    target: MlflowTarget | None = None
    logged = _Logged()
    calls = _Calls(settings, started)
    try:
        job = _load_job(services, job_id)
        if job is None or not wanted(settings, job):
            return
        manifest = _read_manifest(artifacts)
        spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else job.spec or {}
        target = find_target(settings, job, spec.get("preset"))
        if target is None:
            return
        try:
            mlflow = _import_mlflow()
        except ImportError as exc:
            event(
                EVENT_TYPE,
                f"MLflow logging is configured but mlflow is not installed ({exc}); "
                f"{INSTALL_HINT} on the worker",
                level="warning",
            )
            return
        with mlflow_environment(settings, withhold_credentials=target.from_spec):
            _log_run(
                mlflow,
                target,
                calls,
                logged,
                spec_params(spec),
                metric_series(metrics, manifest),
                artifacts,
            )
    except MlflowURIError as exc:
        event(
            EVENT_TYPE,
            f"not logged to MLflow: the spec's mlflow_tracking_uri is refused ({exc})",
            level="warning",
        )
        return
    except Exception as exc:
        _failed(target, calls.step, logged, exc, time.monotonic() - started, event)
        return
    _succeeded(target, logged, time.monotonic() - started, event)


def _failed(
    target: MlflowTarget | None,
    step: str,
    logged: _Logged,
    exc: Exception,
    seconds: float,
    event: EventSink,
) -> None:
    """The warning event (and worker log line) of a logging that stopped at ``step``."""
    uri = target.tracking_uri if target is not None else ""
    words = _words(exc, uri) if target is not None else " ".join(str(exc).split())[:600]
    log.warning("MLflow logging stopped at %s: %s", step, words)
    where = f" at {redact(uri)}" if uri else ""
    if logged.finished:
        done = f" (run {logged.run_id} was logged; the student is not registered)"
    elif logged.run_id:
        done = f" (run {logged.run_id} is incomplete)"
    else:
        done = ""
    event(
        EVENT_TYPE,
        f"could not log the job to MLflow{where}: {step} failed: {words}{done}; "
        "the job's result is not affected",
        level="warning",
        step=step,
        error=words,
        seconds=round(seconds, 3),
        run_id=logged.run_id,
        tracking_uri=redact(uri) if uri else None,
    )


def _succeeded(
    target: MlflowTarget | None, logged: _Logged, seconds: float, event: EventSink
) -> None:
    """The info event of a logged job: where its run is and which model version it made."""
    if target is None or logged.run_id is None or logged.experiment_id is None:
        return
    url = run_url(target.tracking_uri, logged.experiment_id, logged.run_id)
    model = (
        f"; the student is version {logged.model_version} of model {target.model_name!r}"
        if logged.model_version is not None
        else ""
    )
    event(
        EVENT_TYPE,
        f"logged to MLflow: run {logged.run_id} in experiment {target.experiment!r}"
        + (f" ({url})" if url else "")
        + model,
        run_id=logged.run_id,
        experiment_id=logged.experiment_id,
        experiment=target.experiment,
        run_url=url,
        tracking_uri=redact(target.tracking_uri),
        model_name=target.model_name if logged.model_version is not None else None,
        model_version=logged.model_version,
        params=logged.params,
        metrics=logged.metrics,
        artifacts=list(logged.artifacts),
        seconds=round(seconds, 3),
    )
