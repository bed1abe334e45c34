"""The summary table: one row per check, with its target and verdict."""

from __future__ import annotations

from typing import Any

from bench.common import console, new_table
from bench.service.stats import POLL_TARGET_S, QUEUE_TARGET_S, RSS_TARGET_MIB, ms


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
                "check": "burst of GET /v1/jobs/{id}: answered",
                "setup": f"{b['clients']} new clients at once x{len(b['bursts'])}, {n} API "
                f"process{'es' if n > 1 else ''}",
                "measured": f"{answered}/{total}",
                "details": details,
                "target": "all, 0 errors",
                "pass": answered == total,
            }
        )
    for p in results.get("polling", []):
        n = p["api_processes"]
        rows.append(
            {
                "check": "poll GET /v1/jobs/{id}: p99",
                "setup": f"{p['clients']} clients {p['mode']}, {n} API process"
                f"{'es' if n > 1 else ''}, PostgreSQL",
                "measured": ms(p["p99_s"]),
                "details": _polling_details(p),
                "target": "< 50 ms, 0 errors",
                "pass": p["p99_s"] is not None and p["p99_s"] < POLL_TARGET_S and p["errors"] == 0,
            }
        )
    u = results.get("upload")
    if u:
        rows.append(
            {
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
                    "check": f"POST /v1/jobs -> running: {stat}",
                    "setup": f"{q['broker']} broker, idle worker, {q['jobs']} jobs: {q['setup']}",
                    "measured": ms(value),
                    "details": details,
                    "target": "< 1 s",
                    "pass": value is not None and value < QUEUE_TARGET_S,
                }
            )
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    table = new_table(
        "Service benchmarks (real uvicorn API, cake worker, PostgreSQL, Redis; all on 127.0.0.1)",
        ["check", "setup", ("measured", "right"), ("target", "right"), "result", "details"],
    )
    for row in rows:
        table.add_row(
            row["check"],
            row["setup"],
            row["measured"],
            row["target"],
            verdict(row["pass"]),
            row["details"],
        )
    console.print(table)
