#!/usr/bin/env bash
# Install cake-distill and its dev tools into the current Python (3.11+).
# torch is installed first, pinned to the CPU wheel that lies on disk, when it is missing:
# a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    echo "== installing torch==2.13.0 (CPU)"
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
echo "== installing cake-distill"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
# The dashboard's browser test drives Debian's chromium through Playwright (never
# `playwright install`, which downloads a browser build of its own).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing chromium (browser tests)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq chromium >/dev/null
    else
        echo "== note: /usr/bin/chromium is missing; tests/browser needs it (apt-get install chromium)"
    fi
fi
