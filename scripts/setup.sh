#!/usr/bin/env bash
# Install cake-distill from the lock (constraints.txt: the exact version of every package).
#
#   bash scripts/setup.sh             # the service and the test tools (the [dev] extras)
#   bash scripts/setup.sh --service   # the service only (scripts/quickstart.sh)
#
# Where: $PYTHON when set, else the active virtual environment, else .venv at the repository
# root, created here when missing (a stock Debian/Ubuntu Python refuses pip installs outside a
# virtual environment: PEP 668). Needs Python 3.11+.
# torch is installed first, at the version constraints.txt pins (the CPU wheel on disk, where
# there is one): a bare `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=".[dev]"
case "${1:-}" in
    "") ;;
    --service) TARGET="." ;;
    *)
        echo "usage: $0 [--service]" >&2
        exit 2
        ;;
esac
# shellcheck source=scripts/_env.sh
source scripts/_env.sh

if [ -n "${VIRTUAL_ENV:-}" ] && [ "$PYTHON" = "$VIRTUAL_ENV/bin/python" ] && [ ! -x "$PYTHON" ]; then
    BASE=${BASE_PYTHON:-python3}
    if ! "$BASE" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "error: cake-distill needs Python 3.11 or newer; $BASE is $("$BASE" --version 2>&1)" >&2
        echo "       (set BASE_PYTHON to another interpreter)" >&2
        exit 1
    fi
    echo "== creating the virtual environment $VIRTUAL_ENV"
    if ! "$BASE" -m venv --clear "$VIRTUAL_ENV" >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv's pip (ensurepip) in a package of its own.
        pkg="python$("$BASE" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "== installing $pkg (Debian)"
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >/dev/null
            apt-get install -y -qq "$pkg" >/dev/null
            "$BASE" -m venv --clear "$VIRTUAL_ENV"
        else
            echo "error: '$BASE -m venv' failed; install $pkg (apt-get install $pkg)" >&2
            exit 1
        fi
    fi
fi

TORCH_VERSION=$(sed -n 's/^torch==\([^ #]*\).*/\1/p' constraints.txt)
if [ -z "$TORCH_VERSION" ]; then
    echo "error: constraints.txt pins no torch version" >&2
    exit 1
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" \
    >/dev/null 2>&1; then
    echo "== installing torch==$TORCH_VERSION (CPU)"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check -c constraints.txt "torch==$TORCH_VERSION"
fi
echo "== installing cake-distill${TARGET#.} (pinned by constraints.txt) into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$TARGET"
