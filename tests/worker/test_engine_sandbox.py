"""The engine's sandbox in the worker: hostile code in the engine child, and hostile teachers
that pass the upload check but misbehave when a job runs them.

TorchScript has no socket, environment or free file operations (and the static checks refuse
``torch.from_file``/``torch.save`` in a teacher), so the sandbox itself is tested with the
child's ``probe`` target: plain Python in the same child, with the same lock-down, trying each
of those. The teachers then do what TorchScript can: allocate without end, loop forever.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from worker_support import TINY_SPEC, Service

from cake_core.errors import TeacherInvalidError
from cake_core.teacher import probe_teacher
from cake_shared.sandbox import landlock_abi
from worker.engine_sandbox import EngineLimits, run_sandboxed
from worker.runner import process_job

MEMORY_CAP = 2 << 30
SECRET = "postgresql://cake:hunter2@db.internal/cake"


def _limits(**overrides: float) -> EngineLimits:
    values = {"timeout_s": 120.0, "stall_timeout_s": 60.0, "memory_bytes": MEMORY_CAP,
              "cpu_seconds": 240}  # fmt: skip
    values.update(overrides)
    return EngineLimits(**values)  # type: ignore[arg-type]


def _tree(root: Path, skip: Path) -> dict[str, bytes]:
    """Every file under ``root`` but ``skip``, with its content."""
    return {
        str(p): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents and p != skip
    }


def test_the_engine_child_has_no_network_secrets_or_files_outside_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CAKE_DATABASE_URL", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3-secret-key")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("the worker's secret")
    outside = tmp_path / "written-outside.txt"
    work = tmp_path / "job"
    work.mkdir()
    before = _tree(tmp_path, work)
    isolation: list[tuple[bool, bool]] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # reachable from the worker
        answer = run_sandboxed(
            work,
            {
                "target": "probe",
                "probe": {
                    "host": "127.0.0.1",
                    "port": port,
                    "read": str(secret_file),
                    "write": str(outside),
                    "environ_of": os.getpid(),
                    "signal": os.getpid(),
                },
            },
            _limits(),
            should_cancel=lambda: False,
            on_isolation=lambda network, files: isolation.append((network, files)),
        )
    assert isolation == [(True, True)]
    assert answer["connect"] == "ENETUNREACH", answer["connect"]
    assert answer["read"] == "EACCES"
    assert answer["write"] == "EACCES"
    assert answer["environ_of"] == "EACCES"  # the worker's /proc/<pid>/environ
    if landlock_abi() >= 6:
        assert answer["signal"] == "EPERM"
    assert answer["write_inside"] == "written"
    env = answer["env"]
    assert not [k for k in env if k.startswith(("CAKE_", "AWS_"))], env
    assert SECRET not in str(env) and "s3-secret-key" not in str(env)
    assert answer["cwd"] == str(work)
    assert (work / "inside.txt").read_text() == "ok"
    assert _tree(tmp_path, work) == before  # nothing outside the job folder changed
    assert not outside.exists()


def test_endless_allocation_and_endless_loop_in_the_child_are_stopped(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    with pytest.raises(TeacherInvalidError, match="more than 2048 MiB of memory"):
        run_sandboxed(
            tmp_path / "a",
            {"target": "probe", "probe": {"allocate": True}},
            _limits(),
            should_cancel=lambda: False,
        )
    (tmp_path / "b").mkdir()
    with pytest.raises(TeacherInvalidError, match="made no step for 3 s"):
        run_sandboxed(
            tmp_path / "b",
            {"target": "probe", "probe": {"spin": True}},
            _limits(stall_timeout_s=3),
            should_cancel=lambda: False,
        )


# --------------------------------------------------------------------------------------------
# hostile teachers through a whole job
# --------------------------------------------------------------------------------------------


class _BehavesOnTheProbe(nn.Module):
    """Answers the upload check's probe batch (4 rows) like any classifier; on a synthesis
    batch it runs ``misbehave`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        if x.shape[0] > 16:
            out = self.misbehave(out)
        return out

    def misbehave(self, out: torch.Tensor) -> torch.Tensor:
        return out


class AllocatesOnLargeBatches(_BehavesOnTheProbe):
    """On a synthesis batch keeps 256 MiB blocks alive for ever."""

    def misbehave(self, out: torch.Tensor) -> torch.Tensor:
        blocks: list[torch.Tensor] = []
        for i in range(1 << 20):  # a constant fill would be one tensor, hoisted by the JIT
            blocks.append(torch.full([64 << 20], float(i)))
        return out + blocks[-1][0]


class LoopsOnLargeBatches(_BehavesOnTheProbe):
    """On a synthesis batch never returns."""

    def misbehave(self, out: torch.Tensor) -> torch.Tensor:
        n = 0
        while n >= 0:
            n += 1
        return out


class _Hostile:
    """A scripted hostile teacher, as the worker tests' ``add_job`` expects one."""

    input_shape = (13,)
    num_classes = 3

    def __init__(self, model: nn.Module, path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model), str(path))
        self.path = path
        # It passes the upload check (the engine's probe), as a real upload would have to.
        probe_teacher(path, self.input_shape, device="cpu")


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (AllocatesOnLargeBatches, "needed more than 2048 MiB of memory"),
        (LoopsOnLargeBatches, "made no step for 5 s"),
    ],
)
def test_a_hostile_teacher_fails_its_job_and_the_worker_runs_the_next(
    make_service, wine_teacher, tmp_path: Path, model: type[nn.Module], message: str
) -> None:
    service: Service = make_service(CAKE_JOB_MEMORY_MB="2048", CAKE_JOB_STALL_TIMEOUT_S="5")
    hostile = _Hostile(model(), tmp_path / "hostile.pt")
    job_id = service.add_job(hostile, TINY_SPEC)
    before = _tree(service.data_dir, service.data_dir / "store" / "jobs")
    assert process_job(service.ctx, job_id) == "failed"
    job = service.get_job(job_id)
    assert job.error["code"] == "teacher_invalid", job.error
    assert message in job.error["message"]
    assert "CAKE_JOB_" in job.error["message"]  # names the setting
    assert service.events(job_id)[-1].data["phase"] == "synthesizing"  # past the probe
    # Only the job's own records changed: the database file and the job's store folder.
    after = _tree(service.data_dir, service.data_dir / "store" / "jobs")
    assert {k for k in after if not k.endswith((".db", ".db-wal", ".db-shm"))} == {
        k for k in before if not k.endswith((".db", ".db-wal", ".db-shm"))
    }
    assert service.store.list(f"jobs/{job_id}/") == []  # no checkpoint kept

    following = service.add_job(wine_teacher, TINY_SPEC)
    assert process_job(service.ctx, following) == "succeeded"
