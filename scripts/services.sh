#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) answer, starting them when
# they do not: the end-to-end tests (tests/e2e) run against both. `.ci/run` calls this before
# `scripts/test.sh`. Bounded: gives up after SERVICES_TIMEOUT_S seconds (default 60).
set -euo pipefail

TIMEOUT_S=${SERVICES_TIMEOUT_S:-60}

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q >/dev/null 2>&1; }
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null || true)" = "PONG" ]; }

if pg_up; then
    echo "== PostgreSQL already answers on 127.0.0.1:5432"
else
    echo "== starting PostgreSQL"
    # shellcheck disable=SC2046  # one cluster version folder under /etc/postgresql
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start ||
        echo "warning: pg_ctlcluster failed (maybe it is starting already); waiting for it" >&2
fi

if redis_up; then
    echo "== Redis already answers on 127.0.0.1:6379"
else
    echo "== starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log ||
        echo "warning: redis-server failed to start (maybe it is starting already); waiting" >&2
fi

deadline=$((SECONDS + TIMEOUT_S))
until pg_up && redis_up; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        pg_up || echo "error: PostgreSQL does not answer on 127.0.0.1:5432 after ${TIMEOUT_S}s" >&2
        redis_up || echo "error: Redis does not answer on 127.0.0.1:6379 after ${TIMEOUT_S}s" >&2
        exit 1
    fi
    sleep 0.5
done
echo "== PostgreSQL and Redis answer on 127.0.0.1"
