#!/usr/bin/env bash
# What the benchmarks need beyond scripts/setup.sh: Debian's Fashion-MNIST (IDX files under
# /usr/share/datasets/fashion-mnist/) for the fidelity zoo's 28x28 teachers. The tests do not
# need it; bench.fidelity skips those teachers, with a note, when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ ! -e /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing dataset-fashion-mnist (Debian)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "== note: run 'apt-get install dataset-fashion-mnist' as root for the 28x28 teachers"
    fi
fi
