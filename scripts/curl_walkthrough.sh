#!/usr/bin/env bash
# The README's "Using the service" walk-through as a script, with nothing but curl and python3:
# upload the bundled wine teacher, create a `fast` job, poll it until it ends, download the
# student and run it with plain torch.
#
#   bash scripts/curl_walkthrough.sh http://127.0.0.1:8000 out/walkthrough
#
# Exits non-zero on any failure. WALKTHROUGH_TIMEOUT_S (default 900) bounds the wait for the job.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BASE_URL OUTDIR" >&2
    exit 2
fi
BASE=${1%/}
OUTDIR=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TEACHER=$ROOT/examples/wine_mlp.pt
TIMEOUT_S=${WALKTHROUGH_TIMEOUT_S:-900}
mkdir -p "$OUTDIR"

# curl that fails on HTTP errors but still prints the problem document.
api() { curl -sS --fail-with-body --max-time 120 "$@"; }
# One field of the JSON document on stdin: `field id`, `field status`.
field() {
    python3 -c 'import json, sys
v = json.load(sys.stdin)[sys.argv[1]]
print(v if isinstance(v, str) else json.dumps(v))' "$1"
}
fail() {
    echo "error: $*" >&2
    exit 1
}

echo "== 1. the service is ready: GET $BASE/readyz"
api "$BASE/readyz" || fail "the service at $BASE is not ready"
echo

echo "== 2. upload the teacher: POST /v1/teachers ($TEACHER, input_shape [13])"
teacher_json=$(api -F "file=@$TEACHER" -F 'input_shape=[13]' -F 'name=wine' "$BASE/v1/teachers") ||
    fail "upload refused: $teacher_json"
echo "$teacher_json"
teacher_id=$(field id <<<"$teacher_json")
echo "teacher_id=$teacher_id"

echo "== 3. create a job: POST /v1/jobs {\"teacher_id\": \"$teacher_id\", \"preset\": \"fast\"}"
job_json=$(api -H 'Content-Type: application/json' \
    -d "{\"teacher_id\": \"$teacher_id\", \"preset\": \"fast\"}" "$BASE/v1/jobs") ||
    fail "job refused: $job_json"
job_id=$(field id <<<"$job_json")
echo "job_id=$job_id status=$(field status <<<"$job_json")"

echo "== 4. poll GET /v1/jobs/$job_id until it ends (at most ${TIMEOUT_S}s)"
deadline=$((SECONDS + TIMEOUT_S))
last=""
while :; do
    job_json=$(api "$BASE/v1/jobs/$job_id") || fail "polling failed: $job_json"
    line=$(python3 -c 'import json, sys; j = json.load(sys.stdin)
print(j["status"], j["phase"], "%.2f" % j["progress"])' <<<"$job_json")
    if [ "$line" != "$last" ]; then
        echo "  status phase progress: $line"
        last=$line
    fi
    status=${line%% *}
    case "$status" in
    succeeded | failed | canceled) break ;;
    esac
    if [ "$SECONDS" -ge "$deadline" ]; then
        fail "job $job_id still $status after ${TIMEOUT_S}s"
    fi
    sleep 2
done
if [ "$status" != "succeeded" ]; then
    echo "$job_json" >&2
    fail "job $job_id ended $status"
fi
echo "metrics: $(field metrics <<<"$job_json")"

echo "== 5. download the student: GET /v1/jobs/$job_id/student -> $OUTDIR/student.pt"
api -o "$OUTDIR/student.pt" "$BASE/v1/jobs/$job_id/student" || fail "download failed"
ls -l "$OUTDIR/student.pt"

echo "== 6. run it with plain torch"
shape=$(cd "$OUTDIR" && python3 -c \
    "import torch; m = torch.jit.load('student.pt'); print(m(torch.zeros(2, 13)).shape)") ||
    fail "torch could not run the student"
echo "student output shape: $shape"
[ "$shape" = "torch.Size([2, 3])" ] || fail "expected torch.Size([2, 3]), got $shape"
echo "== done: $OUTDIR/student.pt"
