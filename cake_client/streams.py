"""Following a job live: the Server-Sent Events stream of its log, reconnects after a drop,
and ``wait``'s fall-back to polling, with the progress reports they produce.

Split from :mod:`cake_client.client` (the typed endpoint methods) because this is the SDK's one
stateful protocol: deadlines checked at each heartbeat, ``Last-Event-ID`` resumption and monotone
progress have their own invariants and tests. ``Jobs.stream_events`` and ``Jobs.wait`` delegate
here.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
from httpx_sse import EventSource, SSEError

from cake_client._http import Transport
from cake_client.errors import NotReady, RateLimited, ServerError, ServiceUnreachable, WaitTimeout
from cake_client.models import Job, JobEvent, JobProgress
from cake_shared.status import TERMINAL_STATUSES, JobPhase, JobStatus

#: The service sends an SSE heartbeat every 10 s; no byte for this long means a dead stream.
SSE_READ_TIMEOUT_S = 45.0


@dataclass
class _StreamState:
    """What an SSE connection learned, kept across reconnects."""

    last_id: str | None = None
    ended: bool = False
    final_status: str | None = None


class _StreamBroken(Exception):
    """The SSE connection failed or closed mid-way (internal: triggers reconnect/polling)."""


@dataclass
class _Deadlined:
    """The part of a response that httpx-sse's ``EventSource`` reads (``headers`` and
    ``iter_text``), raising ``WaitTimeout`` once ``deadline`` has passed.

    Why: httpx-sse consumes heartbeat comments without yielding anything, so a loop over its
    events alone would not notice the deadline of ``wait(timeout=...)`` while the service sends
    nothing but heartbeats (a queued job), and the read timeout never fires either: every
    heartbeat is a successful read. Checking at each chunk of text sees every heartbeat.
    httpx-sse 0.4 reads exactly these two members of the response; should a later version read
    another, ``test_wait_times_out_while_only_heartbeats_arrive`` fails.
    """

    response: httpx.Response
    job_id: str
    deadline: float | None

    @property
    def headers(self) -> httpx.Headers:
        return self.response.headers

    def iter_text(self) -> Iterator[str]:
        for text in self.response.iter_text():
            if self.deadline is not None and time.monotonic() > self.deadline:
                raise WaitTimeout(self.job_id, 0.0)
            yield text


class _Tracker:
    """Turns job snapshots and events into ``JobProgress`` reports with monotone progress."""

    def __init__(self, job_id: str, callback: Callable[[JobProgress], None] | None) -> None:
        self.job_id = job_id
        self.callback = callback
        self.status: str = JobStatus.QUEUED
        self.phase: str = JobPhase.QUEUED
        self.progress = 0.0
        self.phase_progress: float | None = None

    def _emit(self, message: str, event: JobEvent | None) -> None:
        if self.callback is not None:
            self.callback(
                JobProgress(
                    self.job_id,
                    self.status,
                    self.phase,
                    self.progress,
                    self.phase_progress,
                    message,
                    event,
                )
            )

    def _phase(self, phase: str | None) -> None:
        if phase and phase != self.phase:
            self.phase = phase
            self.phase_progress = None

    def job(self, job: Job) -> None:
        self.status = job.status
        self._phase(job.phase)
        self.progress = max(self.progress, job.progress)
        if job.status == JobStatus.SUCCEEDED:
            self.phase_progress = 1.0
        message = job.error.message if job.error else ""
        self._emit(message, None)

    def event(self, event: JobEvent) -> None:
        if event.type in TERMINAL_STATUSES:
            self.status = event.type
            if event.type == JobStatus.SUCCEEDED:
                self.progress, self.phase_progress = 1.0, 1.0
        elif event.type in ("started", "phase", "progress", "metrics"):
            self.status = JobStatus.RUNNING
        self._phase(event.phase)
        if event.progress is not None:
            self.progress = max(self.progress, min(1.0, event.progress))
        if event.phase_progress is not None:
            self.phase_progress = event.phase_progress
        elif event.type == "phase":
            self.phase_progress = 0.0
        self._emit(event.message, event)


def open_stream(
    transport: Transport, job_id: str, state: _StreamState, deadline: float | None = None
) -> Iterator[JobEvent]:
    """One SSE connection: yield events until ``end`` (sets ``state.ended``) or a failure.

    Raises ``_StreamBroken`` on a transport failure or a close without ``end``, and
    ``WaitTimeout`` (with ``job_id``) when ``deadline`` passes.
    """
    read_s = SSE_READ_TIMEOUT_S
    if deadline is not None:
        read_s = max(0.1, min(read_s, deadline - time.monotonic() + 0.5))
    timeout = httpx.Timeout(transport.timeout, read=read_s)
    headers = {"Accept": "text/event-stream"}
    if state.last_id:
        headers["Last-Event-ID"] = state.last_id
    try:
        response = transport.send(
            "GET",
            f"/v1/jobs/{job_id}/events",
            params={"after": state.last_id},
            headers=headers,
            stream=True,
            timeout=timeout,
        )
    except (ServiceUnreachable, ServerError, NotReady, RateLimited) as exc:
        raise _StreamBroken(str(exc)) from exc
    try:
        source = EventSource(cast(httpx.Response, _Deadlined(response, job_id, deadline)))
        for message in source.iter_sse():
            if not message.data:
                # the reconnection hint, or a heartbeat that httpx-sse dispatches as an
                # empty message once an id was seen: nothing to report
                continue
            if message.event == "end":
                state.ended = True
                with contextlib.suppress(json.JSONDecodeError, AttributeError):
                    state.final_status = json.loads(message.data).get("status")
                return
            try:
                payload = json.loads(message.data)
            except json.JSONDecodeError:
                continue
            if not isinstance(payload, dict):
                continue
            event = JobEvent.from_json(payload)
            state.last_id = event.id or message.id or state.last_id
            yield event
    except SSEError as exc:  # the answer is not an event stream
        raise _StreamBroken(f"the service did not answer with an event stream: {exc}") from exc
    except httpx.ReadTimeout as exc:
        if deadline is not None and time.monotonic() >= deadline:
            raise WaitTimeout(job_id, 0.0) from None
        raise _StreamBroken(f"no data for {read_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise _StreamBroken(str(exc) or type(exc).__name__) from exc
    finally:
        response.close()
    raise _StreamBroken("the event stream closed before the job ended")


def stream_events(
    transport: Transport, job_id: str, after: str | None = None
) -> Iterator[JobEvent]:
    """Live events (Server-Sent Events) until the job ends, oldest first.

    Reconnects after a dropped connection from the last event seen (``Last-Event-ID``), so
    no event is lost or repeated; raises ``ServiceUnreachable`` after ``max_retries``
    reconnects in a row that delivered nothing.
    """
    state = _StreamState(last_id=after)
    failures = 0
    while True:
        try:
            for event in open_stream(transport, job_id, state):
                failures = 0
                yield event
            return
        except _StreamBroken as exc:
            if failures >= transport.max_retries:
                raise ServiceUnreachable(
                    f"lost the event stream of job {job_id}: {exc}", url=transport.base_url
                ) from None
            transport.sleep(transport.backoff(failures))
            failures += 1


#: Seconds a long poll of ``wait``'s fall-back asks the service to hold the answer.
LONG_POLL_S = 30.0
#: Extra seconds the read timeout of a long poll allows beyond ``wait``.
LONG_POLL_SLACK_S = 15.0


class JobPoller:
    """``GET /v1/jobs/{id}`` for ``wait``'s repeated reads: each one after the first sends the
    last ``ETag`` as ``If-None-Match``, and a ``304 Not Modified`` returns the ``Job`` already
    read, so a poll of an unchanged job costs the service no body and this client no parsing.
    With ``wait`` seconds it is a long poll: the service answers when the job changes, or with
    the 304 after ``wait`` seconds.
    """

    def __init__(self, transport: Transport, parse: Callable[[dict[str, Any]], Job]) -> None:
        self._t = transport
        self._parse = parse
        #: The last 200's job id, ETag and Job: what a 304 stands for.
        self._last: tuple[str, str, Job] | None = None

    def __call__(self, job_id: str, wait: float = 0.0) -> Job:
        path = f"/v1/jobs/{job_id}"
        last = self._last if self._last is not None and self._last[0] == job_id else None
        params: dict[str, Any] = {}
        timeout: httpx.Timeout | None = None
        if wait > 0:
            params["wait"] = round(wait, 3)
            base = self._t.http.timeout
            read = max(base.read or 0.0, wait + LONG_POLL_SLACK_S)
            timeout = httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)
        if last is None:
            response = self._t.send("GET", path, params=params, timeout=timeout)
        else:
            headers = {"If-None-Match": last[1]}
            response = self._t.send(
                "GET", path, params=params, headers=headers, timeout=timeout, ok_statuses=(304,)
            )
            if response.status_code == 304:
                return last[2]
        job = self._parse(self._t.decode(response, "GET", path))
        etag = response.headers.get("etag")
        self._last = (job_id, etag, job) if etag else None
        return job


def wait(
    transport: Transport,
    get: Callable[..., Job],
    job_id: str,
    timeout: float | None = None,
    on_progress: Callable[[JobProgress], None] | None = None,
    poll_interval: float = 1.0,
) -> Job:
    """:meth:`cake_client.client.Jobs.wait` (see there); ``get(job_id, wait=seconds)`` reads
    the job (:class:`JobPoller`)."""
    start = time.monotonic()
    deadline = None if timeout is None else start + timeout
    tracker = _Tracker(job_id, on_progress)
    job = get(job_id)
    tracker.job(job)
    state = _StreamState()
    use_stream = True
    broken = 0
    while not job.finished:
        try:
            if use_stream:
                try:
                    for event in open_stream(transport, job_id, state, deadline):
                        broken = 0
                        tracker.event(event)
                except _StreamBroken:
                    broken += 1
                    # Two failures in a row: the stream is not going to work (proxy that
                    # buffers, old server); polling always does.
                    use_stream = broken < 2
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(job_id, 0.0)
                job = get(job_id)
            else:
                job = _long_poll(get, job_id, job, poll_interval, deadline)
            tracker.job(job)
        except WaitTimeout:
            raise WaitTimeout(job_id, float(timeout or 0.0), last=job) from None
    return job


def _long_poll(
    get: Callable[..., Job], job_id: str, seen: Job, poll_interval: float, deadline: float | None
) -> Job:
    """One long poll (at most :data:`LONG_POLL_S`, never past ``deadline``). A service that
    answers an unchanged job early (one from before long polling, which ignores ``wait``) is
    asked again only after ``poll_interval``, as plain polling would."""
    asked = time.monotonic()
    hold = LONG_POLL_S if deadline is None else min(LONG_POLL_S, deadline - asked)
    if hold <= 0:
        raise WaitTimeout(job_id, 0.0)
    job = get(job_id, wait=hold)
    if job is seen:
        _sleep_until(max(0.0, poll_interval - (time.monotonic() - asked)), deadline)
    if deadline is not None and time.monotonic() >= deadline and not job.finished:
        raise WaitTimeout(job_id, 0.0)
    return job


def _sleep_until(interval: float, deadline: float | None) -> None:
    delay = interval
    if deadline is not None:
        delay = min(delay, max(0.0, deadline - time.monotonic()))
    time.sleep(delay)
