#!/usr/bin/env bash
# The README's first command: the service, as a user meets it.
#
#   1. installs what the service needs, from the lock (scripts/setup.sh --service: into .venv
#      unless a virtual environment is active; no test tools, no browser);
#   2. starts `cake serve` on its embedded defaults (SQLite, a local object store and a Celery
#      worker, under ./cake-data or $CAKE_DATA_DIR) on 127.0.0.1:$PORT (default 8000);
#   3. submits the bundled digits teacher (examples/digits_cnn.pt, a CNN trained on
#      scikit-learn's 8x8 digits) and its held-out real split through the REST API (`cake
#      submit`, the Python client), shows the job's progress to the end and the student's
#      accuracy, and downloads the student to $OUT/student.pt;
#   4. prints the dashboard's URL and leaves the service running until Ctrl-C.
#
# Arguments are passed on to `cake submit` (e.g. `--preset default`, `--spec my.json`). The
# service's log goes to $OUT/serve.log (OUT defaults to out). QUICKSTART_STOP=1 stops the service
# once the job has ended instead of waiting for Ctrl-C (what the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/_env.sh
source scripts/_env.sh
bash scripts/setup.sh --service

PORT=${PORT:-8000}
URL="http://127.0.0.1:$PORT"
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
OUT=${OUT:-out}
mkdir -p "$OUT"
LOG=$OUT/serve.log

probe() {
    "$PYTHON" - "$1" <<'EOF'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except Exception:
    sys.exit(1)
EOF
}

if probe "$URL/healthz"; then
    echo "error: something already answers on $URL; stop it or choose another port (PORT=8001)" >&2
    exit 1
fi

echo "== starting cake serve on $URL (data in ./cake-data, log in $LOG)"
# setsid: Ctrl-C reaches this script only, which stops the service once, cleanly (SIGTERM).
setsid "$PYTHON" -m cake_cli.main serve --port "$PORT" >"$LOG" 2>&1 &
SERVER=$!
stop() {
    trap - INT TERM EXIT
    if kill -0 "$SERVER" 2>/dev/null; then
        echo
        echo "== stopping the service"
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

deadline=$((SECONDS + READY_TIMEOUT_S))
until probe "$URL/readyz"; do
    if ! kill -0 "$SERVER" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
        echo "error: the service did not become ready; the end of $LOG:" >&2
        tail -n 40 "$LOG" >&2
        exit 1
    fi
    sleep 0.5
done
echo "== the service is ready: $URL (dashboard), $URL/docs (API)"

echo "== submitting examples/digits_cnn.pt with its held-out split (preset fast)"
set +e
"$PYTHON" -m cake_cli.main submit examples/digits_cnn.pt --url "$URL" --input-shape 1,8,8 \
    --student lenet5 --width 0.5 --preset fast --eval examples/digits_cnn_test.npz \
    --name digits-quickstart --wait -o "$OUT/student.pt" "$@"
status=$?
set -e
JOB=$("$PYTHON" - "$URL" <<'EOF' || true
import sys
from cake_client import Client

with Client(sys.argv[1]) as client:
    print(next(iter(client.jobs.list()), None).id)
EOF
)
echo
if [ "$status" -eq 0 ]; then
    echo "== done: the student is $OUT/student.pt (TorchScript: torch.jit.load runs it)"
else
    echo "== the job did not succeed (exit $status); the service log: $LOG" >&2
fi
echo "== dashboard: $URL/${JOB:+#/jobs/$JOB}"
if [ "${QUICKSTART_STOP:-0}" = 1 ]; then
    exit "$status"
fi
echo "== the service keeps running; Ctrl-C stops it"
wait "$SERVER"
