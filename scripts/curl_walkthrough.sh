#!/usr/bin/env bash
# The README's "Using the service" walk-through: kept as one copy, examples/curl.sh (upload the
# bundled wine teacher and its held-out split, create a `fast` job, poll it, print teacher vs
# student accuracy, download the artifacts and run the student with plain torch).
#
#   bash scripts/curl_walkthrough.sh http://127.0.0.1:8000 out/walkthrough
#
# Exits non-zero on any failure. WALKTHROUGH_TIMEOUT_S (default 900) bounds the wait for the job;
# every setting of examples/curl.sh (CAKE_API_KEY, SPEC, MIN_RATIO...) applies.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 BASE_URL OUTDIR" >&2
    exit 2
fi
exec bash "$(dirname "$0")/../examples/curl.sh" "$1" "$2"
