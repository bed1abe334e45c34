# Sourced by the set-up, test and quick-start scripts (from the repository root): chooses the
# Python the project is installed into and puts its bin/ first on PATH (`cake`, and `python3`
# for examples/curl.sh), exporting PYTHON.
#
#   1. $PYTHON, when set (used as it is);
#   2. else the active virtual environment ($VIRTUAL_ENV);
#   3. else .venv at the repository root, which scripts/setup.sh creates on first use: a stock
#      Debian/Ubuntu Python refuses pip installs outside a virtual environment (PEP 668).
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        PYTHON="$VIRTUAL_ENV/bin/python"
    else
        VIRTUAL_ENV="$PWD/.venv"
        PYTHON="$VIRTUAL_ENV/bin/python"
    fi
    export VIRTUAL_ENV
    case ":$PATH:" in
        *":$VIRTUAL_ENV/bin:"*) ;;
        *) export PATH="$VIRTUAL_ENV/bin:$PATH" ;;
    esac
fi
export PYTHON
