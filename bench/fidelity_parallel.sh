#!/usr/bin/env bash
# The fidelity zoo as one bench.fidelity process per teacher, side by side, merged into one table
# and JSON (bench.fidelity --merge). Meant for a GPU: one small job leaves it mostly idle while it
# launches kernels, so several at once take little longer than one. Timings then include the
# sharing. Each process's log and JSON stay under OUT_DIR/runs.
#
#   bash bench/fidelity_parallel.sh OUT_DIR [bench.fidelity flags ...]
#   TEACHERS="digits_cnn wine_mlp" PER_TEACHER_TIMEOUT=600 bash bench/fidelity_parallel.sh /tmp/z --presets default
#
# PYTHON (default python) runs the benchmark; PER_TEACHER_TIMEOUT (seconds, default 0: none)
# stops a teacher that runs too long, and the merge then reports the ones that finished.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: bash bench/fidelity_parallel.sh OUT_DIR [bench.fidelity flags ...]" >&2
    exit 2
fi
out=$1
shift
python=${PYTHON:-python}
teachers=${TEACHERS:-$("$python" -c 'from bench.zoo import ZOO; print(" ".join(ZOO))')}
mkdir -p "$out/runs"
for teacher in $teachers; do
    timeout "${PER_TEACHER_TIMEOUT:-0}" "$python" -m bench.fidelity --teachers "$teacher" \
        --out "$out/runs/$teacher" "$@" >"$out/runs/$teacher.log" 2>&1 &
done
failed=0
for job in $(jobs -p); do
    wait "$job" || failed=$((failed + 1))
done
[ "$failed" = 0 ] || echo "$failed teacher run(s) failed or timed out: see $out/runs/*.log" >&2
shopt -s nullglob
results=("$out"/runs/*/fidelity-*.json)
if [ ${#results[@]} = 0 ]; then
    echo "no teacher finished" >&2
    exit 1
fi
"$python" -m bench.fidelity --merge "${results[@]}" --out "$out"
