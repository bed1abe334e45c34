"""The deployment files (``docker-compose.yml``, ``docker/*.Dockerfile``), checked without Docker.

No Docker engine runs here, so nothing is built or started. What can be checked is: the compose
file parses and wires the services together as documented; every command a container runs is a
real ``cake`` subcommand with real flags (parsed by the CLI's own argparse parser); every
``CAKE_*`` variable it sets is a field of the settings; each Dockerfile copies files that exist,
installs torch before the project and runs as a non-root user.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from cake_cli import service
from cake_cli.main import _parser
from cake_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"

SERVICES = {"postgres", "redis", "minio", "minio-setup", "migrate", "api", "worker"}
#: Variables other than CAKE_* that a service may set: those its image or a library reads.
ALLOWED_ENV_PREFIXES = ("AWS_", "POSTGRES_", "MINIO_", "PYTHON", "PIP_")
ENV_PREFIX = Settings.model_config.get("env_prefix", "")


# -- helpers -----------------------------------------------------------------------------------
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def env_of(svc: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment``, mapping or list form."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def argv_of(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: the file ends in a continuation line"
    return result


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT arguments: exec form (JSON) or shell form."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def last(instrs: list[tuple[str, str]], keyword: str) -> str | None:
    found = [args for kw, args in instrs if kw == keyword]
    return found[-1] if found else None


def env_instructions(instrs: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for kw, args in instrs:
        if kw == "ENV":
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"use ENV KEY=value, not {args!r}"
                env[key] = value
    return env


def base_image(instrs: list[tuple[str, str]]) -> str:
    """The (last) FROM image, with ARG defaults declared before the first FROM filled in."""
    args: dict[str, str] = {}
    image = ""
    for kw, rest in instrs:
        if kw == "ARG" and not image:
            name, _, default = rest.partition("=")
            args[name] = default
        if kw == "FROM":
            image = shlex.split(rest)[-3 if " AS " in rest.upper() else -1]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
    return image


def copies(instrs: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY/ADD."""
    result = []
    for kw, args in instrs:
        if kw in ("COPY", "ADD"):
            parts = json.loads(args) if args.startswith("[") else shlex.split(args)
            parts = [p for p in parts if not p.startswith("--")]
            result.append((parts[:-1], parts[-1]))
    return result


def workdir(instrs: list[tuple[str, str]]) -> str:
    return last(instrs, "WORKDIR") or "/"


def copied_to(instrs: list[tuple[str, str]], source: str) -> str | None:
    """Where the Dockerfile puts repository path ``source`` (a file or a whole folder)."""
    cwd = "/"
    for kw, args in instrs:
        if kw == "WORKDIR":
            cwd = str(PurePosixPath(cwd) / args)
        if kw in ("COPY", "ADD"):
            (sources, dest) = copies([(kw, args)])[0]
            if source in (s.rstrip("/") for s in sources):
                target = PurePosixPath(cwd) / dest
                is_dir = dest.endswith("/") or len(sources) > 1 or dest in (".", "./")
                return str(target / PurePosixPath(source).name if is_dir else target)
    return None


def dockerignore_patterns() -> list[str]:
    path = ROOT / ".dockerignore"
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    parts = PurePosixPath(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "negated .dockerignore patterns are not checked here"
        variants = {pattern, pattern.removeprefix("**/")}
        if any(fnmatch(p, v) for p in prefixes for v in variants):
            return True
    return False


def dockerfiles() -> dict[str, Path]:
    """Service name to the Dockerfile it builds (context + dockerfile)."""
    result = {}
    for name, svc in services().items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = ROOT / build.get("context", ".")
        result[name] = context / build.get("dockerfile", "Dockerfile")
    return result


def effective_argv(name: str) -> list[str]:
    """What the container of service ``name`` runs: compose entrypoint/command over the image's."""
    svc = services()[name]
    image_entry: list[str] = []
    image_cmd: list[str] = []
    dockerfile = dockerfiles().get(name)
    if dockerfile is not None:
        instrs = instructions(dockerfile)
        entry, cmd = last(instrs, "ENTRYPOINT"), last(instrs, "CMD")
        image_entry = exec_form(entry) if entry else []
        image_cmd = exec_form(cmd) if cmd else []
    entrypoint = argv_of(svc.get("entrypoint"))
    command = argv_of(svc.get("command"))
    if entrypoint is not None:
        return entrypoint + (command or [])
    return image_entry + (command if command is not None else image_cmd)


def parse_cake(argv: list[str]) -> Any:
    """``cake ARGS`` parsed by the real CLI parser, with the checks its dispatcher adds."""
    assert argv and argv[0] == "cake", argv
    try:
        args = _parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse reports an unknown subcommand or flag this way
        pytest.fail(f"`{shlex.join(argv)}` is not a valid cake command (exit {exc.code})")
    if args.command in ("serve", "worker"):
        service.parse_queues(args.queues)
    if args.command == "worker":
        assert args.concurrency >= 1
    if args.command == "serve":
        assert args.allow_remote or service.is_loopback(args.host), "non-loopback host"
    return args


def healthcheck_text(check: dict[str, Any] | None) -> str:
    assert check, "no healthcheck"
    test = check["test"]
    return " ".join(test) if isinstance(test, list) else str(test)


# -- the compose file --------------------------------------------------------------------------
def test_compose_has_the_services_with_healthchecks_and_named_volumes():
    data = compose()
    svcs = data["services"]
    assert set(svcs) >= SERVICES
    assert "pg_isready" in healthcheck_text(svcs["postgres"].get("healthcheck"))
    assert "redis-cli ping" in healthcheck_text(svcs["redis"].get("healthcheck"))
    assert healthcheck_text(svcs["minio"].get("healthcheck"))
    assert "/healthz" in healthcheck_text(svcs["api"].get("healthcheck"))
    assert svcs["postgres"]["image"].startswith("postgres:16")
    assert svcs["redis"]["image"].startswith("redis:7")
    assert svcs["minio"]["image"].startswith("minio/minio")
    assert svcs["minio-setup"]["image"].startswith("minio/mc")
    named = set(data.get("volumes") or {})
    for name in ("postgres", "redis", "minio"):
        mounts = svcs[name].get("volumes") or []
        sources = {str(m).split(":", 1)[0] for m in mounts}
        assert sources & named, f"{name} keeps its data in a named volume"


def test_compose_start_order():
    svcs = services()

    def conditions(name: str) -> dict[str, str]:
        deps = svcs[name].get("depends_on") or {}
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        return {dep: spec["condition"] for dep, spec in deps.items()}

    assert conditions("migrate")["postgres"] == "service_healthy"
    assert conditions("minio-setup")["minio"] == "service_healthy"
    for name in ("api", "worker"):
        deps = conditions(name)
        assert deps["migrate"] == "service_completed_successfully", name
        assert deps["minio-setup"] == "service_completed_successfully", name
        assert deps["redis"] == "service_healthy", name
    for name in ("migrate", "minio-setup"):
        assert svcs[name].get("restart", "no") == "no", f"{name} is a one-shot"
    assert svcs["migrate"]["image"] == svcs["api"]["image"], "migrate runs the api image"


def test_worker_reserves_an_nvidia_gpu():
    devices = services()["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and d.get("count") == 1 and "gpu" in d.get("capabilities", [])
        for d in devices
    )


def test_every_cake_variable_is_a_setting_and_the_rest_are_allowed():
    fields = {name.lower() for name in Settings.model_fields}
    seen = {(name, key) for name, svc in services().items() for key in env_of(svc)}
    for name, path in dockerfiles().items():
        seen |= {(name, key) for key in env_instructions(instructions(path))}
    assert seen
    for name, key in sorted(seen):
        if key.upper().startswith(ENV_PREFIX.upper()):
            field = key[len(ENV_PREFIX) :].lower()
            assert field in fields, f"{name}: {key} is not read by cake_shared.settings"
        else:
            assert key.startswith(ALLOWED_ENV_PREFIXES), f"{name}: unexpected variable {key}"


def test_service_settings_point_at_the_compose_services(monkeypatch):
    """The API's and the worker's settings, as pydantic-settings reads them from the env."""
    svcs = services()
    api_env = env_of(svcs["api"])
    assert env_of(svcs["worker"]) == api_env, "the API and the worker share their settings"
    assert env_of(svcs["migrate"])["CAKE_DATABASE_URL"] == api_env["CAKE_DATABASE_URL"]
    for key in list(Settings.model_fields):
        monkeypatch.delenv(f"{ENV_PREFIX}{key.upper()}", raising=False)
    for key, value in api_env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.database_url and settings.database_url.startswith("postgresql://")
    assert "@postgres:" in settings.database_url
    assert settings.broker_url and settings.broker_url.startswith("redis://redis:")
    assert settings.store_url and settings.store_url.startswith("s3://")
    assert settings.s3_endpoint_url and settings.s3_endpoint_url.startswith("http://minio:")
    assert settings.s3_region
    # boto3 signs with MinIO's root credentials, and minio-setup creates the store's bucket.
    minio_env = env_of(svcs["minio"])
    assert api_env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert api_env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    bucket = settings.store_url.removeprefix("s3://").split("/", 1)[0]
    setup = " ".join(effective_argv("minio-setup"))
    assert re.search(rf"mc mb\b.*\s\S+/{re.escape(bucket)}(\s|$)", setup), setup


# -- commands ------------------------------------------------------------------------------------
def test_every_cake_command_exists_in_the_cli():
    commands = [effective_argv(name) for name in services()]
    for path in set(dockerfiles().values()):
        instrs = instructions(path)
        commands += [exec_form(args) for kw, args in instrs if kw in ("CMD", "ENTRYPOINT")]
    cake_commands = [argv for argv in commands if argv and argv[0] == "cake"]
    assert len(cake_commands) >= 3
    for argv in cake_commands:
        parse_cake(argv)


def test_each_service_runs_the_right_command():
    migrate = parse_cake(effective_argv("migrate"))
    assert (migrate.command, migrate.db_command, migrate.revision) == ("db", "upgrade", "head")

    api = parse_cake(effective_argv("api"))
    assert api.command == "serve" and api.no_worker
    assert api.host == "0.0.0.0" and api.allow_remote
    ports = [str(p) for p in services()["api"]["ports"]]
    assert any(p.rsplit(":", 1)[-1] == str(api.port) for p in ports), ports
    instrs = instructions(dockerfiles()["api"])
    assert str(api.port) in (last(instrs, "EXPOSE") or "").split()
    assert f":{api.port}/healthz" in healthcheck_text(services()["api"]["healthcheck"])

    worker = parse_cake(effective_argv("worker"))
    assert worker.command == "worker"
    assert set(service.parse_queues(worker.queues).split(",")) == {"gpu", "cpu"}


def test_cake_cli_module_help_runs_for_each_subcommand():
    """The same commands through ``python -m cake_cli.main`` (imports, no service needed)."""
    for sub in (["serve"], ["worker"], ["db", "upgrade"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cake_cli.main", *sub, "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr


# -- the images ------------------------------------------------------------------------------------
def test_each_dockerfile_exists_and_copies_files_that_exist():
    paths = dockerfiles()
    assert set(paths) >= {"api", "migrate", "worker"}
    patterns = dockerignore_patterns()
    for name, path in paths.items():
        assert path.is_file(), f"{name}: {path} is missing"
        for sources, _dest in copies(instructions(path)):
            for src in sources:
                assert not src.startswith("--from"), src
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
                assert not ignored(src.rstrip("/"), patterns), f"{src} is in .dockerignore"


def test_each_image_can_pip_install_the_project():
    """``pip install .`` needs pyproject.toml, its readme and every package it lists."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"]]
    needed += [p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]]
    for path in set(dockerfiles().values()):
        instrs = instructions(path)
        installed_from = workdir(instrs)
        for rel in needed:
            where = copied_to(instrs, rel)
            assert where == str(PurePosixPath(installed_from) / rel), f"{path.name}: {rel}"


TORCH_INSTALL = re.compile(r"pip install\s[^&;|]*\btorch(==|\s|$)")
#: ``pip install .``, or with extras: ``pip install ".[mlflow]"``.
PROJECT_INSTALL = re.compile(r"pip install\s[^&;|]*\s[\"']?\.(\[[\w,-]+\])?[\"']?(\s|$)")
LOCK = "constraints.txt"


def test_images_install_torch_before_the_project():
    for name in ("api", "worker"):
        path = dockerfiles()[name]
        runs = [args for kw, args in instructions(path) if kw == "RUN"]
        project = [i for i, run in enumerate(runs) if PROJECT_INSTALL.search(run)]
        assert len(project) == 1, f"{path.name}: one `pip install .`"
        torch = [i for i, run in enumerate(runs) if TORCH_INSTALL.search(run)]
        assert torch and torch[0] < project[0], f"{path.name}: torch before the project"
        if name == "api":
            assert "download.pytorch.org/whl/cpu" in runs[torch[0]], "api: the CPU build"
        else:
            assert "whl/cpu" not in runs[torch[0]], "worker: the default (CUDA) build"
            assert "torch.version.cuda" in runs[torch[0]], "worker: checks it is a CUDA build"


def test_the_worker_image_has_the_mlflow_extra():
    """Jobs log to MLflow when CAKE_MLFLOW_TRACKING_URI is set: the worker image installs the
    ``[mlflow]`` extra (the API never talks to MLflow, so its image does not)."""
    installs = {
        name: [
            match.group(1) or ""
            for kw, args in instructions(dockerfiles()[name])
            if kw == "RUN" and (match := PROJECT_INSTALL.search(args))
        ]
        for name in ("api", "worker")
    }
    assert installs == {"api": [""], "worker": ["[mlflow]"]}


def test_images_install_everything_from_the_lock():
    """One torch for checking and running: both images install torch and the project with
    ``-c constraints.txt``, where torch is pinned, and name no torch version of their own."""
    for name in ("api", "worker"):
        path = dockerfiles()[name]
        instrs = instructions(path)
        assert copied_to(instrs, LOCK) == str(PurePosixPath(workdir(instrs)) / LOCK), path.name
        runs = [args for kw, args in instrs if kw == "RUN"]
        for run in runs:
            if TORCH_INSTALL.search(run) or PROJECT_INSTALL.search(run):
                assert re.search(rf"pip install\s+(-c|--constraint)\s+{LOCK}\s", run), run
        text = path.read_text()
        assert not re.search(r"torch\s*==|TORCH_VERSION|pytorch/pytorch:", text), path.name
        # the lock reaches the image before its first pip install
        lock_at = next(i for i, (kw, a) in enumerate(instrs) if kw == "COPY" and LOCK in a)
        first_pip = next(i for i, (kw, a) in enumerate(instrs) if kw == "RUN" and "pip " in a)
        assert lock_at < first_pip, path.name


def test_base_images():
    """Both images start from the same slim Python as the lock's (3.11); the worker gets its
    CUDA runtime with torch's default build, not from its base image."""
    for name in ("api", "worker"):
        image = base_image(instructions(dockerfiles()[name]))
        assert image.startswith("python:3.11") and "slim" in image, (name, image)


def test_images_run_as_non_root_and_find_the_migrations():
    """``cake db upgrade``/``cake worker`` look for migrations/ beside the ``cake_cli`` they
    import; the images import the copied source tree (``PYTHONPATH``), so it must hold the
    folder there too (the wheel carries it as well: tests/e2e/test_wheel_install.py)."""
    rel = service.MIGRATIONS_DIR.relative_to(service.ROOT).as_posix()
    for path in set(dockerfiles().values()):
        instrs = instructions(path)
        user = last(instrs, "USER")
        assert user and user.split(":")[0] not in ("root", "0"), f"{path.name}: USER {user}"
        source_root = env_instructions(instrs).get("PYTHONPATH", "").split(":")[0]
        assert source_root, f"{path.name}: PYTHONPATH names the copied source tree"
        assert copied_to(instrs, "cake_cli") == f"{source_root}/cake_cli", path.name
        assert copied_to(instrs, rel) == f"{source_root}/{rel}", path.name


def test_api_image_healthcheck_targets_healthz_without_curl():
    instrs = instructions(dockerfiles()["api"])
    check = last(instrs, "HEALTHCHECK")
    assert check and "/healthz" in check and "urllib" in check and "curl" not in check


def test_dockerignore_keeps_local_state_out_of_the_context():
    patterns = dockerignore_patterns()
    for path in (".git", "cake-data", "out", "tests/x.py", "api/__pycache__/m.pyc", ".env"):
        assert ignored(path, patterns), path
    assert not ignored("README.md", patterns)
