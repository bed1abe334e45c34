#!/usr/bin/env bash
# A whole distillation against a running cake-distill service with nothing but curl (and
# python3 to read the JSON answers and to run the student with plain torch):
#
#   1. upload a TorchScript teacher and its held-out real split (an .npz, reporting only),
#   2. create a job, poll it until it ends,
#   3. print teacher vs student accuracy on the held-out split, download the student,
#      report.md and curves.png, and run the student with torch alone.
#
#   bash examples/curl.sh [BASE_URL] [OUTDIR]    # defaults: $CAKE_URL or :8000, out/curl-example
#
# Exits 0 when the student reaches MIN_RATIO of the teacher's accuracy, 1 otherwise or on any
# failure. Settings (environment):
#   CAKE_API_KEY   sent as `Authorization: Bearer ...` when set
#   TEACHER        TorchScript teacher (default: the bundled examples/wine_mlp.pt)
#   INPUT_SHAPE    one input's shape as JSON (default [13])
#   EVAL_DATA      held-out .npz with x and y (default examples/wine_mlp_test.npz; empty: none)
#   SPEC           the job spec as JSON, without teacher_id (default {"preset": "fast"})
#   MIN_RATIO      student/teacher accuracy floor (default 0.9)
#   TIMEOUT_S      how long to wait for the job (default 900; WALKTHROUGH_TIMEOUT_S also works)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:-${CAKE_URL:-http://127.0.0.1:8000}}
BASE=${BASE%/}
OUTDIR=${2:-out/curl-example}
TEACHER=${TEACHER:-$ROOT/examples/wine_mlp.pt}
INPUT_SHAPE=${INPUT_SHAPE:-[13]}
EVAL_DATA=${EVAL_DATA-$ROOT/examples/wine_mlp_test.npz}
SPEC=${SPEC:-'{"preset": "fast"}'}
MIN_RATIO=${MIN_RATIO:-0.9}
TIMEOUT_S=${TIMEOUT_S:-${WALKTHROUGH_TIMEOUT_S:-900}}
mkdir -p "$OUTDIR"

AUTH=()
if [ -n "${CAKE_API_KEY:-}" ]; then
    AUTH=(-H "Authorization: Bearer $CAKE_API_KEY")
fi
# curl that fails on HTTP errors but still prints the problem document.
api() { curl -sS --fail-with-body --max-time 120 ${AUTH[@]+"${AUTH[@]}"} "$@"; }
# One field of the JSON document on stdin: `field id`, `field metrics`.
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

echo "== 2. upload the teacher: POST /v1/teachers ($TEACHER, input_shape $INPUT_SHAPE)"
teacher_json=$(api -F "file=@$TEACHER" -F "input_shape=$INPUT_SHAPE" -F 'name=example' \
    "$BASE/v1/teachers") || fail "upload refused: $teacher_json"
echo "$teacher_json"
teacher_id=$(field id <<<"$teacher_json")
echo "teacher_id=$teacher_id"

dataset_id=""
if [ -n "$EVAL_DATA" ]; then
    echo "== 3. upload the held-out split: POST /v1/datasets ($EVAL_DATA)"
    dataset_json=$(api -F "file=@$EVAL_DATA" -F 'name=heldout' "$BASE/v1/datasets") ||
        fail "data set refused: $dataset_json"
    dataset_id=$(field id <<<"$dataset_json")
    echo "dataset_id=$dataset_id ($(field num_examples <<<"$dataset_json") examples)"
fi

# The spec with the teacher (and the data set) added.
body=$(python3 -c 'import json, sys
spec = json.loads(sys.argv[1])
spec["teacher_id"] = sys.argv[2]
if sys.argv[3]:
    spec["eval_dataset_id"] = sys.argv[3]
print(json.dumps(spec))' "$SPEC" "$teacher_id" "$dataset_id") || fail "SPEC is not a JSON object"
echo "== 4. create a job: POST /v1/jobs $body"
job_json=$(api -H 'Content-Type: application/json' -d "$body" "$BASE/v1/jobs") ||
    fail "job refused: $job_json"
job_id=$(field id <<<"$job_json")
echo "job_id=$job_id status=$(field status <<<"$job_json")"

echo "== 5. poll GET /v1/jobs/$job_id until it ends (at most ${TIMEOUT_S}s)"
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
metrics=$(field metrics <<<"$job_json")
echo "metrics: $metrics"

echo "== 6. download the artifacts: GET /v1/jobs/$job_id/artifacts/{name} -> $OUTDIR"
names=$(api "$BASE/v1/jobs/$job_id/artifacts" |
    python3 -c 'import json, sys; print(" ".join(a["name"] for a in json.load(sys.stdin)["data"]))') ||
    fail "could not list the artifacts"
for name in $names; do
    api -o "$OUTDIR/$name" "$BASE/v1/jobs/$job_id/artifacts/$name" || fail "download of $name failed"
    echo "  $OUTDIR/$name"
done
[ -s "$OUTDIR/student.pt" ] || fail "no student.pt among the artifacts: $names"

echo "== 7. run the student with plain torch"
shape=$(cd "$OUTDIR" && python3 -c 'import json, sys, torch
m = torch.jit.load("student.pt")
print(m(torch.zeros(2, *json.loads(sys.argv[1]))).shape)' "$(field input_shape <<<"$teacher_json")") ||
    fail "torch could not run the student"
echo "student output shape: $shape"
expected="torch.Size([2, $(field num_classes <<<"$teacher_json")])"
[ "$shape" = "$expected" ] || fail "expected $expected, got $shape"

if [ -n "$EVAL_DATA" ]; then
    echo "== 8. accuracy on the held-out split (computed by the service; never used to train)"
    python3 -c 'import json, sys
m, floor = json.loads(sys.argv[1]), float(sys.argv[2])
print("teacher accuracy: %.4f" % m["teacher_accuracy"])
print("student accuracy: %.4f" % m["student_accuracy"])
print("ratio: %.4f (required: %.2f)" % (m["accuracy_ratio"], floor))
if m["accuracy_ratio"] < floor:
    sys.exit("the student is below the required share of the teacher accuracy")' \
        "$metrics" "$MIN_RATIO" || fail "student below MIN_RATIO=$MIN_RATIO"
fi
echo "== done: $OUTDIR/student.pt, report in $OUTDIR/report.md"
