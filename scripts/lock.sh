#!/usr/bin/env bash
# Upgrade the lock: resolve the newest releases that pyproject.toml allows (the project and its
# [dev] extras) in a fresh virtual environment and write their exact versions, transitively, to
# constraints.txt (scripts/lock.py). torch stays at the version constraints.txt pins unless
# TORCH_VERSION says otherwise (`TORCH_VERSION=X.Y.Z bash scripts/lock.sh`).
#
# An upgrade is a deliberate commit: run this, then `bash scripts/test.sh` (which installs from
# the new lock), read `git diff constraints.txt`, and commit the file with the code it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE_PYTHON:-python3}
VENV=.venv-lock
TORCH_VERSION=${TORCH_VERSION:-$(sed -n 's/^torch==\([^ #]*\).*/\1/p' constraints.txt)}
echo "== fresh virtual environment $VENV"
"$BASE" -m venv --clear "$VENV"
trap 'rm -rf "$VENV"' EXIT
echo "== torch==$TORCH_VERSION, then the newest releases pyproject.toml allows"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$VENV/bin/python" scripts/lock.py
git --no-pager diff --stat -- constraints.txt 2>/dev/null || true
