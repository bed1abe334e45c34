"""Set-up shared by the fault tests: their support modules (``faults_infra_support``,
``faults_worker_support``) reuse the process helpers of the end-to-end tests, so
``tests/e2e`` (where ``e2e_support`` lives) is made importable here, once, before any module of
this folder is collected."""

from __future__ import annotations

import sys
from pathlib import Path

E2E_DIR = str(Path(__file__).resolve().parent.parent / "e2e")
if E2E_DIR not in sys.path:
    sys.path.insert(0, E2E_DIR)
