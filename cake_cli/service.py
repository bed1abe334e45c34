"""``cake serve``, ``cake worker`` and ``cake db``: run and migrate the service.

``cake serve`` with no configuration runs the whole service on one machine: SQLite and a local
store under ``CAKE_DATA_DIR`` (default ``./cake-data`` of the folder it is started in),
migrations applied, a real Celery worker process on the filesystem broker (no broker server),
and the API on 127.0.0.1:8000, with the logs of both in one console. The data folder, database
URL and store URL are resolved to absolute values once, when the settings are read, and handed
to the worker (``python -m cake_cli.main worker`` of the installed package) through its
environment, so both open the same database from any working folder. Each command reads its
settings once (:func:`read_settings`) and passes them to what it builds: the API
(``create_app(settings)``), the worker's services, the migrations. Ctrl-C or SIGTERM stops
both: the worker hands its running job back to the queue (it resumes from its checkpoints on
the next start) and exits.

``cake serve --no-worker`` plus ``cake worker`` on other machines split it for a deployment
(PostgreSQL, Redis and S3 configured through ``CAKE_*`` variables).

Heavy imports (Celery, uvicorn, Alembic, the API) happen inside the commands, so ``cake
distill`` stays fast and works without the service's dependencies.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cake_shared.queue_names import QUEUES

if TYPE_CHECKING:
    from alembic.config import Config

    from cake_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
#: Where the ``migrations`` package is installed (beside this one in a checkout or a wheel).
MIGRATIONS_DIR = ROOT / "migrations"
COMMANDS = ("serve", "worker", "db")
#: Seconds the worker gets to hand its job back and exit before it is stopped harder.
WORKER_STOP_GRACE_S = 30.0
#: Seconds uvicorn waits for open connections (event streams) before it closes them.
SERVE_SHUTDOWN_GRACE_S = 10
#: How often a worker started by ``cake serve`` checks that it still has that parent.
PARENT_POLL_S = 1.0

log = logging.getLogger("cake.serve")


# -- migrations -----------------------------------------------------------------------------
def alembic_config(url: str | None = None) -> Config:
    """An Alembic configuration built in code, so migrations run from any working folder,
    on the database at ``url`` (without one, ``migrations/env.py`` reads the ``CAKE_*``
    settings, as for a hand-run ``alembic``)."""
    from alembic.config import Config

    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise FileNotFoundError(
            "the migrations folder is not installed; run from a source checkout "
            "(pip install -e .) or install a build that ships migrations/"
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(revision: str = "head", *, url: str) -> None:
    """Migrate the database at ``url`` up to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade_database(revision: str = "-1", *, url: str) -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def database_revisions(url: str) -> tuple[str | None, str | None]:
    """(the current revision of the database at ``url``, the migrations' head): equal when
    migrated."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from cake_shared.db import make_engine

    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    return current, head


def schema_problem(current: str | None, head: str | None, url: str) -> str | None:
    """One line saying why a worker cannot use the database at ``current`` with code at
    ``head``; None when they match."""
    if current == head:
        return None
    where = f"the database {_shown_url(url)}"
    if current is None:
        return f"{where} has no schema (no migration applied); run `cake db upgrade` first"
    return (
        f"{where} is at migration {current} but this code expects {head}; run `cake db "
        "upgrade` (with this code) first"
    )


def _shown_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# -- helpers -------------------------------------------------------------------------------------
def read_settings(data_dir: Path | None = None) -> Settings:
    """A command's settings, read once: the ``CAKE_*`` environment, with ``--data-dir`` (when
    given) over ``CAKE_DATA_DIR``. Raises pydantic's ValidationError (a ValueError) for
    invalid settings, e.g. an unknown queue name."""
    from cake_shared.settings import Settings

    return Settings() if data_dir is None else Settings(data_dir=data_dir)


def settings_error(exc: Exception) -> str:
    """A settings validation error as one line (``CAKE_DEFAULT_QUEUE is 'x'; it must...``)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc).splitlines()[0]
    parts = []
    for item in errors():
        msg = str(item.get("msg", "")).removeprefix("Value error, ")
        field = ".".join(str(x) for x in item.get("loc", ()))
        parts.append(msg if "CAKE_" in msg else f"CAKE_{field.upper()}: {msg}")
    return "invalid settings: " + "; ".join(parts)


def pin_settings(data_dir: Path | None = None) -> Settings:
    """:func:`read_settings`, with their absolute locations written into this process's
    environment so that every child (the worker, the check sandbox) gets them.

    Raises pydantic's ValidationError for invalid settings (e.g. an unknown queue name).
    """
    settings = read_settings(data_dir)
    settings.pin_environment()
    return settings


def _settings_or_report(data_dir: Path | None, *, pin: bool) -> Settings | None:
    """The command's settings (:func:`pin_settings` with ``pin``, else :func:`read_settings`),
    or None after one line on stderr saying what is invalid.

    ``serve``, ``worker`` and ``db`` refuse invalid settings alike (exit code 2), so the
    message is made in one place.
    """
    try:
        return pin_settings(data_dir) if pin else read_settings(data_dir)
    except ValueError as exc:  # pydantic's ValidationError
        print(f"error: {settings_error(exc)}", file=sys.stderr)
        return None


def _queues_or_report(text: str) -> str | None:
    """:func:`parse_queues`, or None after one line on stderr (``serve`` and ``worker``)."""
    try:
        return parse_queues(text)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def parse_queues(text: str) -> str:
    """``--queues`` to a clean comma-separated list; a name no queue has is refused (exit 2)
    here, since a worker consuming it would wait forever for jobs nobody publishes there."""
    queues = [q.strip() for q in text.split(",") if q.strip()]
    unknown = [q for q in queues if q not in QUEUES]
    if not queues or unknown:
        raise ValueError(f"--queues takes a comma-separated subset of {', '.join(QUEUES)}")
    return ",".join(dict.fromkeys(queues))


def worker_argv(queues: str, concurrency: int, loglevel: str = "INFO") -> list[str]:
    """Arguments of ``celery worker``: one job at a time per process, no chatter between nodes.

    Concurrency 1 uses the ``solo`` pool: the job runs in the process that receives the
    shutdown signal, so it can hand its job back at once; more uses ``prefork``.
    """
    return [
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        "solo" if concurrency == 1 else "prefork",
        "--loglevel",
        loglevel,
        "--hostname",
        f"cake-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]


def _child_env(settings: Settings) -> dict[str, str]:
    """The worker child's environment: this one with the settings' absolute locations."""
    return {**os.environ, **settings.child_env()}


def worker_command(queues: str, concurrency: int = 1) -> list[str]:
    """``python -m cake_cli.main worker ...`` of the package this process runs from.

    ``-P`` keeps the working folder off the child's import path (a folder named ``api`` or
    ``worker`` there must not shadow the installed packages), unless this very package is
    imported from the working folder (a checkout run without installing). ``--parent-pid``
    makes the worker stop when this process is gone, however it ended.
    """
    safe = ["-P"] if Path.cwd().resolve() != ROOT else []
    return [
        sys.executable,
        *safe,
        "-m",
        "cake_cli.main",
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--parent-pid",
        str(os.getpid()),
    ]


def start_worker_process(
    settings: Settings, queues: str = "cpu,gpu", concurrency: int = 1
) -> subprocess.Popen[bytes]:
    """A real Celery worker (``cake worker``) as a child process that writes to this console.

    It gets the absolute locations of ``settings`` through its environment and keeps this
    process's working folder; it needs neither ``PYTHONPATH`` nor a source checkout. It runs in
    its own session so that a Ctrl-C in the terminal reaches only ``cake serve``, which then
    stops the worker in order (see :func:`stop_worker_process`).
    """
    return subprocess.Popen(
        worker_command(queues, concurrency), env=_child_env(settings), start_new_session=True
    )


def stop_worker_process(proc: subprocess.Popen[bytes], grace_s: float = WORKER_STOP_GRACE_S) -> int:
    """SIGTERM (warm shutdown: the job is handed back at its next step), then SIGQUIT (cold),
    then SIGKILL, each after a grace period; returns the exit code."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGQUIT, 10.0)):
        if proc.poll() is not None:
            return proc.returncode
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            log.warning("worker did not stop after %s; stopping it harder", sig.name)
    proc.kill()
    return proc.wait()


def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Stop this worker (SIGTERM to itself: a warm shutdown) once ``parent_pid`` is gone.

    ``cake serve`` stops its worker on Ctrl-C or SIGTERM, but the worker runs in a session of
    its own (so a terminal's Ctrl-C reaches only ``cake serve``), and a ``cake serve`` that is
    killed outright cannot: without this the worker lived on, orphaned, running queued jobs at
    full CPU with nobody to serve their results. An orphan's parent becomes another process, so
    a change of ``os.getppid()`` is the signal; it is polled, which works on every POSIX system.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        log.warning("the cake serve process %d is gone: stopping this worker", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def _watch_worker(proc: subprocess.Popen[bytes], stopping: threading.Event) -> None:
    code = proc.wait()
    if not stopping.is_set():
        log.error(
            "the worker process exited (code %s); new jobs will stay queued until a worker runs",
            code,
        )


def _keys_configured(url: str) -> bool:
    from sqlalchemy.orm import Session

    from cake_shared.db import make_engine
    from cake_shared.tenants import keys_configured

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            return keys_configured(session)
    finally:
        engine.dispose()


class _Terminate(Exception):
    """Raised by the SIGTERM handler so ``cake serve`` unwinds through its ``finally``."""


def _raise_terminate(signum: int, frame: Any) -> None:
    raise _Terminate()


# -- commands ----------------------------------------------------------------------------------
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    with_worker: bool = True,
    data_dir: Path | None = None,
    allow_remote: bool = False,
    queues: str = "cpu,gpu",
    log_level: str = "info",
    api_processes: int = 1,
    access_log: bool = True,
) -> int:
    """Run the API (and, unless ``with_worker`` is False, one worker process).

    ``api_processes`` > 1 runs that many API processes on the one port (uvicorn's supervisor),
    each building its app from the pinned ``CAKE_*`` environment: one process answers requests
    with one core's worth of Python, so a busy API on a many-core machine needs several.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     [%(name)s] %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        import uvicorn

        from api.main import create_app  # fail early, before starting a worker
    except ImportError as exc:
        print(f"error: the API cannot be loaded: {exc}", file=sys.stderr)
        return 1

    settings = _settings_or_report(data_dir, pin=True)
    if settings is None:
        return 2
    url = settings.resolved_database_url()
    log.info("data folder %s", settings.data_dir)
    log.info("database %s: applying migrations", _shown_url(url))
    upgrade_database(url=url)
    if not is_loopback(host) and not allow_remote and not _keys_configured(url):
        print(
            f"error: refusing to listen on {host}: no API keys are configured, so the service "
            "is in single-user local mode and anyone who can reach the port could use it. "
            "Create a key first (cake keys create --tenant NAME), or pass --allow-remote to "
            "listen anyway",
            file=sys.stderr,
        )
        return 2

    worker: subprocess.Popen[bytes] | None = None
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, _raise_terminate)
    try:
        if with_worker:
            worker = start_worker_process(settings, queues, 1)
            threading.Thread(
                target=_watch_worker, args=(worker, stopping), name="worker-watch", daemon=True
            ).start()
            log.info("worker started (pid %d, queues %s)", worker.pid, queues)
        # open event streams must not hold the shutdown (and the worker's) forever
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "log_level": log_level,
            "access_log": access_log,
            "timeout_graceful_shutdown": SERVE_SHUTDOWN_GRACE_S,
        }
        if api_processes > 1:
            log.info("%d API processes", api_processes)
            uvicorn.run("api.main:create_app", factory=True, workers=api_processes, **common)
        else:
            uvicorn.run(create_app(settings), **common)
    except (KeyboardInterrupt, _Terminate):
        pass
    finally:
        stopping.set()
        if worker is not None:
            log.info("stopping the worker")
            stop_worker_process(worker)
        signal.signal(signal.SIGTERM, previous)
    return 0


def run_worker(
    queues: str = "gpu,cpu",
    concurrency: int = 1,
    *,
    data_dir: Path | None = None,
    loglevel: str = "INFO",
    parent_pid: int | None = None,
) -> int:
    """Run a worker in this process (expects a migrated database; applies nothing).

    It refuses to start, with one line on stderr, when the database cannot be reached, has no
    schema or is at another migration than this code. It records its heartbeat (queues,
    device) from before the slow imports until it stops. With ``parent_pid`` (``cake serve``
    passes its own) it stops when that process is gone (:func:`watch_parent`).
    """
    if parent_pid is not None:
        if os.getppid() != parent_pid:
            print(f"error: the parent process {parent_pid} is already gone", file=sys.stderr)
            return 1
        watch_parent(parent_pid)
    settings = _settings_or_report(data_dir, pin=True)
    if settings is None:
        return 2
    url = settings.resolved_database_url()
    try:
        current, head = database_revisions(url)
    except Exception as exc:
        reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        print(
            f"error: cannot reach the database {_shown_url(url)} ({type(exc).__name__}: {reason})",
            file=sys.stderr,
        )
        return 1
    problem = schema_problem(current, head, url)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from cake_shared import workers
    from cake_shared.services import Services

    services = Services.from_settings(settings)
    # The device is found in the heartbeat's thread (NVML, no CUDA context before the pool
    # forks) while the main thread imports the worker (torch).
    heartbeat = workers.Heartbeat(services, workers.worker_name(), queues.split(","), concurrency)
    heartbeat.start()
    try:
        from worker.app import create_worker_app

        app = create_worker_app(services, heartbeat)
        app.worker_main(argv=worker_argv(queues, concurrency, loglevel))
    finally:
        if heartbeat.running:  # the worker's shutdown has stopped it already, unless it failed
            heartbeat.stop()
        services.close()
    return 0


# -- argument parsing (registered by cake_cli.main) ------------------------------------------------
def add_parsers(sub: Any) -> None:
    """Register ``serve``, ``worker`` and ``db`` on the ``cake`` command's sub-parsers."""
    serve_p = sub.add_parser(
        "serve",
        help="run the REST service (API and a worker) on this machine",
        description="Run the REST API, with one worker process unless --no-worker is given. "
        "With no configuration: SQLite, a local store and a broker without a server, "
        "all under --data-dir.",
    )
    serve_p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve_p.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve_p.add_argument("--no-worker", action="store_true", help="run the API only")
    serve_p.add_argument("--data-dir", type=Path, help="root of the embedded defaults")
    serve_p.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen on a non-loopback --host even with no API keys configured",
    )
    serve_p.add_argument(
        "--queues", default="cpu,gpu", help="queues the embedded worker serves (gpu,cpu)"
    )
    serve_p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="API processes on the port (default 1); the per-key rate limit is shared by "
        "them only with a Redis broker (CAKE_BROKER_URL), else each counts its own",
    )
    serve_p.add_argument(
        "--no-access-log",
        action="store_true",
        help="no line per request on stderr (a tenth of the CPU of a status poll; the request "
        "counts and latencies stay on /metrics)",
    )

    worker_p = sub.add_parser(
        "worker",
        help="run a worker that takes jobs from the queue",
        description="Run a Celery worker for the gpu and/or cpu queues. It expects a migrated "
        "database (cake db upgrade) and the same CAKE_* settings as the API.",
    )
    worker_p.add_argument("--queues", default="gpu,cpu", help="comma-separated: gpu, cpu")
    worker_p.add_argument(
        "--concurrency", type=int, default=1, help="jobs at once (processes); default 1"
    )
    worker_p.add_argument("--data-dir", type=Path, help="root of the embedded defaults")
    worker_p.add_argument("--loglevel", default="INFO", help="DEBUG, INFO, WARNING...")
    worker_p.add_argument(
        "--parent-pid",
        type=int,
        help="stop when the process with this id is no longer this worker's parent "
        "(cake serve passes its own)",
    )

    db_p = sub.add_parser("db", help="migrate the service's database")
    db_sub = db_p.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations (default: to the latest)")
    up.add_argument("revision", nargs="?", default="head")
    up.add_argument("--data-dir", type=Path, help="root of the embedded defaults")
    down = db_sub.add_parser("downgrade", help="revert migrations (default: the last one)")
    down.add_argument("revision", nargs="?", default="-1", help="e.g. -1 or base")
    down.add_argument("--data-dir", type=Path, help="root of the embedded defaults")


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed ``serve``/``worker``/``db`` command; returns the exit code."""
    if args.command == "serve":
        queues = _queues_or_report(args.queues)
        if queues is None:
            return 2
        if args.workers < 1:
            print(f"error: --workers must be at least 1, not {args.workers}", file=sys.stderr)
            return 2
        return serve(
            args.host,
            args.port,
            with_worker=not args.no_worker,
            data_dir=args.data_dir,
            allow_remote=args.allow_remote,
            queues=queues,
            api_processes=args.workers,
            access_log=not args.no_access_log,
        )
    if args.command == "worker":
        queues = _queues_or_report(args.queues)
        if queues is None:
            return 2
        if args.concurrency < 1:
            print("error: --concurrency must be at least 1", file=sys.stderr)
            return 2
        return run_worker(
            queues,
            args.concurrency,
            data_dir=args.data_dir,
            loglevel=args.loglevel,
            parent_pid=args.parent_pid,
        )
    if args.command == "db":
        settings = _settings_or_report(args.data_dir, pin=False)
        if settings is None:
            return 2
        database = settings.resolved_database_url()
        url = _shown_url(database)
        try:
            if args.db_command == "upgrade":
                upgrade_database(args.revision, url=database)
                print(f"database {url} upgraded to {args.revision}")
            else:
                downgrade_database(args.revision, url=database)
                print(f"database {url} downgraded to {args.revision}")
        except Exception as exc:
            print(f"error: migration failed: {exc}", file=sys.stderr)
            return 1
        return 0
    return 2
