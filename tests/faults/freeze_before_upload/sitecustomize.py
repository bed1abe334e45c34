"""Freezes a ``cake worker`` in the instant between its last claim check and its artifact
upload, for ``test_faults_worker.py::test_a_worker_frozen_before_its_upload_...``.

Python imports ``sitecustomize`` at start-up from the path; only the worker that test starts
has this folder on ``PYTHONPATH``, and only with ``CAKE_TEST_FREEZE_BEFORE_UPLOAD=1`` does it do
anything. The window is microseconds wide in the real code, too narrow for a signal from
outside to hit; so the process stops itself (SIGSTOP, exactly what the OS or an operator
could do to it) on its first upload, after the runner's last ``tracker.owns()`` said yes. The
test thaws it with SIGCONT; it then uploads, and prints the keys it wrote with their SHA-256,
so the test can show that a stale upload did happen, where it landed, and that its bytes
differ from the winner's (so the same write under a shared key would have been caught).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

if os.environ.get("CAKE_TEST_FREEZE_BEFORE_UPLOAD") == "1":
    import worker.runner as _runner

    _upload = _runner.upload_artifacts
    _frozen: list[bool] = []

    def _upload_after_a_freeze(
        store: Any, job_id: str, attempt: int, artifacts: dict[str, Path]
    ) -> list[dict[str, Any]]:
        if not _frozen:
            _frozen.append(True)
            print(f"FREEZE job {job_id} attempt {attempt}: stopped before the upload", flush=True)
            os.kill(os.getpid(), signal.SIGSTOP)
            rows = _upload(store, job_id, attempt, artifacts)
            keys = " ".join(f"{row['storage_key']}={row['sha256']}" for row in rows)
            print(f"FREEZE job {job_id} attempt {attempt}: thawed, uploaded {keys}", flush=True)
            return rows
        return _upload(store, job_id, attempt, artifacts)

    _runner.upload_artifacts = _upload_after_a_freeze
