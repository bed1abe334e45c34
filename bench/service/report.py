"""The summary tables: one row per polling row (database, processes, auth, schedule, latency,
the API's CPU per request) and one per other check, each with its target and verdict."""

from __future__ import annotations

from typing import Any

from bench.common import console, new_table
from bench.service.stats import (
    LONG_POLL_DELAY_TARGET_S,
    LONG_POLL_IDLE_CORES_TARGET,
    QUEUE_TARGET_S,
    RANDOM_P99_TARGET_S,
    RSS_TARGET_MIB,
    SYNC_CPU_TARGET_MS,
    SYNC_P99_TARGET_S,
    ms,
)

DATABASE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
#: The set-up the polling targets are judged on (the issue's: one process, the embedded
#: defaults, an API key); every other row is informative.
JUDGED = {"database": "sqlite", "api_processes": 1, "auth": "key"}
POLLING_TITLE = (
    "Polling GET /v1/jobs/{id}: targets judged only for SQLite, 1 API process, API key "
    f"(synchronized: p99 < {SYNC_P99_TARGET_S * 1000:.0f} ms and API CPU < "
    f"{SYNC_CPU_TARGET_MS:g} ms/request; random phase (ticker): p99 < "
    f"{RANDOM_P99_TARGET_S * 1000:.0f} ms; both 0 errors); other rows are informative"
)


def verdict(ok: bool | None) -> str:
    if ok is None:
        return "[dim]info[/]"
    return "[green]PASS[/]" if ok else "[red]FAIL[/]"


def _polling_details(p: dict[str, Any]) -> str:
    cpu = p["cpu"]
    parts = [
        f"{p['requests_per_second']:,.0f} req/s, p50 {ms(p['p50_s'])}, max {ms(p['max_s'])}, "
        f"{p['errors']} errors"
        + (
            f" ({', '.join(f'{k} x{v}' for k, v in p['error_kinds'].items())})"
            if p["errors"]
            else ""
        )
    ]
    if p.get("warm_up_errors"):
        parts.append(f"warm-up burst errors {sum(p['warm_up_errors'].values())}")
    if p.get("server_pool_timeouts_logged"):
        parts.append(f"server logged {p['server_pool_timeouts_logged']} DB pool timeouts")
    parts.append(
        f"CPU cores: server {cpu['server_cores']:.2f}, load generator "
        f"{cpu['load_generator_cores']:.2f}, others {cpu['others_cores']:.2f}"
    )
    s = p.get("server_side")
    if s and s.get("requests"):
        parts.append(
            f"in the app: p50 <= {ms(s['p50_at_most_s'])}, p99 <= {ms(s['p99_at_most_s'])}"
        )
    return "; ".join(parts)


def polling_target(p: dict[str, Any]) -> tuple[str, bool | None]:
    """The target of a polling row, and its verdict (None: informative)."""
    judged = all(p.get(k) == v for k, v in JUDGED.items())
    p99, cpu = p["p99_s"], p.get("server_cpu_ms_per_request")
    if p["schedule"] == "synchronized":
        target = f"p99<{SYNC_P99_TARGET_S * 1000:g}ms,cpu<{SYNC_CPU_TARGET_MS:g}ms"
        ok = (
            p99 is not None
            and p99 < SYNC_P99_TARGET_S
            and cpu is not None
            and cpu < SYNC_CPU_TARGET_MS
            and p["errors"] == 0
        )
    elif p["schedule"] == "ticker":
        target = f"p99<{RANDOM_P99_TARGET_S * 1000:g}ms"
        ok = p99 is not None and p99 < RANDOM_P99_TARGET_S and p["errors"] == 0
    else:
        return "-", None
    return (target, ok) if judged else (target, None)  # the result column then says "info"


def _long_poll_row(lp: dict[str, Any]) -> dict[str, Any]:
    errors = lp["errors"]
    details = (
        f"{lp['saw_change']}/{lp['clients']} saw it; delay p50 {ms(lp['delay_p50_s'])}, p99 "
        f"{ms(lp['delay_p99_s'])} (from the cancel POST; it answered in "
        f"{ms(lp['cancel_post_s'])}); idle: API {lp['idle_server_cores']:.3f} cores over "
        f"{lp['idle_s']:g} s, {lp['not_modified_answers']} 304 answers; {errors} errors"
        + (f" ({', '.join(f'{k} x{v}' for k, v in lp['error_kinds'].items())})" if errors else "")
        + f"; connecting took {lp['connect_seconds']:.1f} s"
    )
    if lp["changes_before_cancel"]:
        details += f"; {lp['changes_before_cancel']} 200s before the change"
    return {
        "kind": "longpoll",
        "check": "long poll ?wait: max delay to see a change",
        "setup": f"{lp['clients']} clients, wait={lp['wait_s']:g}, one queued job canceled, "
        f"{DATABASE_NAMES[lp['database']]}, 1 API process, auth {lp['auth']}",
        "measured": ms(lp["delay_max_s"]),
        "details": details,
        "target": f"< {LONG_POLL_DELAY_TARGET_S:g} s, all see it, 0 errors, idle < "
        f"{LONG_POLL_IDLE_CORES_TARGET:g} cores",
        "pass": lp["pass"],
    }


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for b in results.get("burst", []):
        n = b["api_processes"]
        answered = sum(x["answered"] for x in b["bursts"])
        total = b["clients"] * len(b["bursts"])
        details = "; ".join(
            f"last answer {ms(x['last_s'])}"
            + (f", {sum(x['errors'].values())} errors" if x["errors"] else "")
            for x in b["bursts"]
        )
        if b["server_pool_timeouts_logged"]:
            details += f"; server logged {b['server_pool_timeouts_logged']} DB pool timeouts"
        rows.append(
            {
                "kind": "burst",
                "check": "burst of GET /v1/jobs/{id}: answered",
                "setup": f"{b['clients']} new clients at once x{len(b['bursts'])}, {n} API "
                f"process{'es' if n > 1 else ''}, {DATABASE_NAMES[b['database']]}, auth "
                f"{b['auth']}",
                "measured": f"{answered}/{total}",
                "details": details,
                "target": "all, 0 errors",
                "pass": answered == total,
            }
        )
    for p in results.get("polling", []):
        n = p["api_processes"]
        target, ok = polling_target(p)
        cpu = p.get("server_cpu_ms_per_request")
        rows.append(
            {
                "kind": "polling",
                "check": "poll GET /v1/jobs/{id}: p99",
                "setup": f"{p['clients']} clients {p['mode']}, {n} API process"
                f"{'es' if n > 1 else ''}, {DATABASE_NAMES[p['database']]}, auth {p['auth']}",
                "database": p["database"],
                "api_processes": n,
                "auth": p["auth"],
                "schedule": p["schedule"],
                "interval_s": p["interval_s"],
                "clients": p["clients"],
                "requests_per_second": p["requests_per_second"],
                "p50_s": p["p50_s"],
                "p99_s": p["p99_s"],
                "max_s": p["max_s"],
                "server_cpu_ms_per_request": cpu,
                "errors": p["errors"],
                # cores over the measured window: the API's, the load generator's, the rest
                "cores": {
                    k: p["cpu"][f"{k}_cores"] for k in ("server", "load_generator", "others")
                },
                "measured": ms(p["p99_s"]),
                "details": _polling_details(p),
                "target": target,
                "pass": ok,
            }
        )
    if results.get("longpoll"):
        rows.append(_long_poll_row(results["longpoll"]))
    u = results.get("upload")
    if u:
        rows.append(
            {
                "kind": "upload",
                "check": "upload: API process peak RSS",
                "setup": f"{u['file_mib']:.0f} MiB TorchScript teacher, streamed",
                "measured": f"{u['api_rss_peak_mib']:.0f} MiB",
                "details": f"before {u['api_rss_before_mib']:.0f} MiB; HTTP {u['status']} in "
                f"{u['wall_seconds']:.1f} s = {u['mib_per_second']:.0f} MiB/s (body sent in "
                f"{u['body_sent_seconds']:.1f} s, then check + store "
                f"{u['after_body_seconds']:.1f} s); children: check process peak "
                f"{u['check_process_rss_peak_mib']:.0f} MiB, fork server "
                f"{u['fork_server_rss_peak_mib']:.0f} MiB, together "
                f"{u['children_rss_peak_sum_mib']:.0f} MiB (fork-shared pages counted twice)",
                "target": f"< {RSS_TARGET_MIB:.0f} MiB",
                "pass": u["api_rss_peak_mib"] < RSS_TARGET_MIB and u["status"] == 201,
            }
        )
    for q in results.get("queue", []):
        for stat in ("median", "max"):
            value = q[f"{stat}_s"]
            details = f"database started_at - created_at {stat} {ms(q[f'db_{stat}_s'])}"
            if stat == "median":
                details += (
                    f"; warm-up job {ms(q['warm_up_s'])} (not counted); "
                    f"{q['jobs_not_succeeded']} jobs did not succeed"
                )
            rows.append(
                {
                    "kind": "queue",
                    "check": f"POST /v1/jobs -> running: {stat}",
                    "setup": f"{q['broker']} broker, idle worker, {q['jobs']} jobs: {q['setup']}",
                    "measured": ms(value),
                    "details": details,
                    "target": "< 1 s",
                    "pass": value is not None and value < QUEUE_TARGET_S,
                }
            )
    return rows


def _print_polling(rows: list[dict[str, Any]]) -> None:
    clients = sorted({r["clients"] for r in rows})
    table = new_table(
        f"{POLLING_TITLE}; {', '.join(map(str, clients))} clients, a fresh server per row",
        [
            "database",
            ("procs", "right"),
            "auth",
            "schedule",
            ("req/s", "right"),
            ("p50", "right"),
            ("p99", "right"),
            ("API CPU/req", "right"),
            ("errors", "right"),
            ("target", "right"),
            "result",
            ("cores api/gen/rest", "right"),
        ],
    )
    for row in rows:
        cpu = row["server_cpu_ms_per_request"]
        c = row["cores"]
        schedule = row["schedule"]
        if row["interval_s"] > 0:
            schedule += f" {row['interval_s']:g}s"
        table.add_row(
            DATABASE_NAMES[row["database"]],
            str(row["api_processes"]),
            row["auth"],
            schedule,
            f"{row['requests_per_second']:,.0f}",
            ms(row["p50_s"]),
            ms(row["p99_s"]),
            "-" if cpu is None else f"{cpu:.2f} ms",
            str(row["errors"]),
            row["target"],
            verdict(row["pass"]),
            f"{c['server']:.2f}/{c['load_generator']:.2f}/{c['others']:.2f}",
        )
    console.print(table)


def print_summary(rows: list[dict[str, Any]]) -> None:
    """The polling rows in a table of their own (their columns are the matrix's), then every
    other check."""
    polling = [r for r in rows if r.get("kind") == "polling"]
    others = [r for r in rows if r.get("kind") != "polling"]
    if polling:
        _print_polling(polling)
    if not others:
        return
    table = new_table(
        "Service benchmarks (real uvicorn API processes, cake workers, SQLite, PostgreSQL, "
        "Redis; all on 127.0.0.1)",
        ["check", "setup", ("measured", "right"), ("target", "right"), "result", "details"],
    )
    for row in others:
        table.add_row(
            row["check"],
            row["setup"],
            row["measured"],
            row["target"],
            verdict(row["pass"]),
            row["details"],
        )
    console.print(table)
