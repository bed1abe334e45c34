"""`cake keys`, `cake tenants` and `cake serve`'s loopback rule, as an administrator runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def cake(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    return subprocess.run(
        [sys.executable, "-m", "cake_cli.main", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_keys_create_list_revoke(tmp_path):
    created = cake("keys", "create", "--tenant", "acme", "--name", "ci", data_dir=tmp_path)
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert secret.startswith("cake_") and len(secret) > 40
    assert "not shown again" in created.stderr

    listed = cake("keys", "list", "--json", data_dir=tmp_path)
    [key] = json.loads(listed.stdout)
    assert (key["tenant"], key["name"], key["revoked_at"]) == ("acme", "ci", None)
    assert secret not in listed.stdout and secret.startswith(key["prefix"])
    db = (tmp_path / "cake.db").read_bytes()
    assert secret.encode() not in db  # only the hash is stored

    bad = cake("keys", "create", "--tenant", "Not A Name", data_dir=tmp_path)
    assert bad.returncode == 2 and "tenant names" in bad.stderr

    revoked = cake("keys", "revoke", key["prefix"], "--json", data_dir=tmp_path)
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"]
    missing = cake("keys", "revoke", "key_nope", data_dir=tmp_path)
    assert missing.returncode == 2 and "no key" in missing.stderr


def test_tenants_set_and_show_limits(tmp_path):
    out = cake(
        "tenants", "set", "acme", "--max-running-jobs", "1", "--max-queued-jobs", "0",
        "--json", data_dir=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [acme] = json.loads(out.stdout)
    assert (acme["max_running_jobs"], acme["max_queued_jobs"]) == (1, 0)
    assert acme["max_stored_bytes"] == 20 << 30  # the default
    back = cake("tenants", "set", "acme", "--max-running-jobs", "-1", "--json", data_dir=tmp_path)
    assert json.loads(back.stdout)[0]["max_running_jobs"] == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_refuses_other_addresses_until_a_key_exists(tmp_path):
    refused = cake("serve", "--host", "0.0.0.0", "--no-worker", data_dir=tmp_path)
    assert refused.returncode == 2
    assert "no API keys are configured" in refused.stderr

    secret = cake("keys", "create", "--tenant", "acme", data_dir=tmp_path).stdout.strip()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAKE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cake_cli.main", "serve", "--host", "0.0.0.0", "--port",
         str(port), "--no-worker", "--data-dir", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "cake serve did not answer"
                time.sleep(0.2)
        assert response.status_code == 401
        auth = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers=auth).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
