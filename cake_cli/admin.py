"""``cake keys`` and ``cake tenants``: administration on the service's database.

These talk to the database named by the ``CAKE_*`` settings (or ``--data-dir``), not to the
REST API: whoever can run them can already read the database. The database is migrated first,
so a fresh install can create its first key before the service ever started.

Once a key exists the service requires keys on every ``/v1`` request, and ``cake serve`` may
listen on addresses other than loopback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cake_shared.settings import Settings

COMMANDS = ("keys", "tenants")
LIMIT_FIELDS = ("max_running_jobs", "max_queued_jobs", "max_stored_bytes", "requests_per_minute")


def _session(settings: Settings) -> Any:
    """A session on the settings' database, migrated first."""
    from sqlalchemy.orm import Session

    from cake_cli.service import upgrade_database
    from cake_shared.db import make_engine

    url = settings.resolved_database_url()
    upgrade_database(url=url)
    return Session(make_engine(url), expire_on_commit=False)


def _key_out(row: Any) -> dict[str, Any]:
    def ts(value: Any) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value is not None else None

    return {
        "id": row.id,
        "tenant": row.tenant,
        "name": row.name,
        "prefix": row.prefix,
        "created_at": ts(row.created_at),
        "last_used_at": ts(row.last_used_at),
        "revoked_at": ts(row.revoked_at),
    }


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from cake_shared import tenants

    with _session(settings) as session:
        if args.keys_command == "create":
            try:
                created = tenants.create_key(session, args.tenant, args.name)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            if args.json:
                print(json.dumps({**_key_out(created.row), "key": created.secret}))
            else:
                print(created.secret)
                print(
                    f"key {created.row.id} for tenant {args.tenant!r}: store it now, it is not "
                    "shown again (only its hash is kept)",
                    file=sys.stderr,
                )
            return 0
        if args.keys_command == "list":
            rows = tenants.list_keys(session, args.tenant)
            if args.json:
                print(json.dumps([_key_out(r) for r in rows]))
            else:
                print(f"{'ID':<32} {'TENANT':<16} {'PREFIX':<12} {'STATE':<8} NAME")
                for r in rows:
                    state = "revoked" if r.revoked_at else "active"
                    print(f"{r.id:<32} {r.tenant:<16} {r.prefix:<12} {state:<8} {r.name or ''}")
            return 0
        row = tenants.revoke_key(session, args.key)
        if row is None:
            print(f"error: no key with id or prefix {args.key!r}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps(_key_out(row)))
        else:
            print(f"revoked {row.id} ({row.prefix}..., tenant {row.tenant!r})")
        return 0


def _tenants(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy import select

    from cake_shared.limits import limits_for, stored_bytes
    from cake_shared.models import Tenant
    from cake_shared.tenants import TENANT_NAME, get_or_create_tenant

    with _session(settings) as session:
        if args.tenants_command == "set":
            if not TENANT_NAME.match(args.tenant):
                print(f"error: invalid tenant name {args.tenant!r}", file=sys.stderr)
                return 2
            row = get_or_create_tenant(session, args.tenant)
            for name in LIMIT_FIELDS:
                value = getattr(args, name)
                if value is not None:
                    if value < -1:
                        print(f"error: --{name.replace('_', '-')} must be >= -1", file=sys.stderr)
                        return 2
                    setattr(row, name, None if value == -1 else value)
            session.commit()
            names = [args.tenant]
        else:
            names = [args.tenant] if args.tenant else list(session.scalars(select(Tenant.name)))
        out = [
            {
                "tenant": name,
                **asdict(limits_for(session, settings, name)),
                "stored_bytes": stored_bytes(session, name),
            }
            for name in names
        ]
    if args.json:
        print(json.dumps(out))
    else:
        for item in out:
            print(", ".join(f"{k}={v}" for k, v in item.items()))
    return 0


def add_parsers(sub: Any) -> None:
    keys_p = sub.add_parser(
        "keys",
        help="create, list and revoke API keys (on the service's database)",
        description="Manage API keys. Once one exists, every /v1 request needs a key.",
    )
    keys_sub = keys_p.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key; prints it once")
    create.add_argument("--tenant", required=True, help="the tenant the key acts for")
    create.add_argument("--name", help="a label for the key (who or what uses it)")
    listing = keys_sub.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys")
    revoke = keys_sub.add_parser("revoke", help="revoke a key by id or prefix")
    revoke.add_argument("key", help="key id (key_...) or the prefix shown by list")

    tenants_p = sub.add_parser(
        "tenants",
        help="show tenants and set their limits (on the service's database)",
        description="Per-tenant limits override the CAKE_TENANT_MAX_* defaults; 0 means no "
        "limit, -1 goes back to the default.",
    )
    tenants_sub = tenants_p.add_subparsers(dest="tenants_command", required=True)
    show = tenants_sub.add_parser("show", help="limits and usage (all tenants, or one)")
    show.add_argument("tenant", nargs="?")
    setter = tenants_sub.add_parser("set", help="set a tenant's limits")
    setter.add_argument("tenant")
    for name in LIMIT_FIELDS:
        setter.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)

    for parser in (create, listing, revoke, show, setter):
        parser.add_argument("--data-dir", type=Path, help="root of the embedded defaults")
        parser.add_argument("--json", action="store_true", help="machine-readable output")


def dispatch(args: argparse.Namespace) -> int:
    from cake_cli.service import read_settings

    try:
        settings = read_settings(args.data_dir)
        return _keys(args, settings) if args.command == "keys" else _tenants(args, settings)
    except Exception as exc:  # database unreachable, migration failed...
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
