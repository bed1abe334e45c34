#!/usr/bin/env bash
# Set up (scripts/setup.sh: the project and its test tools, from the lock), install what only
# the tests need (Debian's chromium for the browser tests), lint, and run the whole test suite.
# `.ci/run` runs exactly this, in a fresh virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_env.sh
source scripts/_env.sh
bash scripts/setup.sh
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
echo "== ruff"
"$PYTHON" -m ruff check .
"$PYTHON" -m ruff format --check .
echo "== pytest"
"$PYTHON" -m pytest -q "$@"
