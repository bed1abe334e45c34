"""Webhook attempts connect to the address that was checked, not to a second lookup's answer.

A fake DNS (``socket.getaddrinfo`` patched for names under ``.test``; every other name and IP
literal goes to the real resolver) lets a name answer a public address to the check and
127.0.0.1 a moment later: DNS rebinding, the way a hostile receiver would steer a callback into
the service's own network. Every TCP connection is recorded, and one to a public address is
refused on the spot, so nothing leaves the machine. The receivers are real HTTP(S) servers on
loopback (``webhook_receiver_support``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from webhook_receiver_support import WebhookReceiver, webhook_receiver

from cake_shared import webhooks

PUBLIC = "93.184.216.34"  # a global address (is_global); never actually dialed here


@dataclass
class FakeDNS:
    """Scripted answers per name: the n-th lookup gets ``answers[n]`` (the last one repeats)."""

    answers: dict[str, list[list[str]]] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)

    def script(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = [list(a) for a in answers]
        self.lookups = [n for n in self.lookups if n != name]

    def count(self, name: str) -> int:
        return self.lookups.count(name)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in fake.answers:
            return real(host, port, *args, **kwargs)
        seen = fake.count(name)
        fake.lookups.append(name)
        script = fake.answers[name]
        infos = []
        for address in script[min(seen, len(script) - 1)]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (
                (address, int(port), 0, 0) if family == socket.AF_INET6 else (address, int(port))
            )
            infos.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return infos

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


@pytest.fixture
def dialed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every ``socket.create_connection`` target: an IP address that is not loopback is
    refused on the spot (no traffic leaves); names and loopback addresses connect for real."""
    seen: list[tuple[str, int]] = []
    real: Callable[..., socket.socket] = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        host = str(address[0])
        seen.append((host, int(address[1])))
        with contextlib.suppress(ValueError):  # a name: resolved (by the fake DNS) and dialed
            if not ipaddress.ip_address(host).is_loopback:
                raise ConnectionRefusedError(111, "refused by the test (no traffic leaves)")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as server:
        yield server


def test_a_name_rebound_to_loopback_after_the_check_never_reaches_the_listener(
    dns: FakeDNS, dialed: list[tuple[str, int]], receiver: WebhookReceiver
) -> None:
    url = f"http://rebind.test:{receiver.port}/hook"
    dns.script("rebind.test", [PUBLIC], ["127.0.0.1"])

    result = webhooks.post_once(url, b"{}", {}, timeout_s=5, allow_private=False)

    assert not result.ok and result.status_code is None, result
    assert "ConnectError" in (result.error or ""), result
    assert dns.count("rebind.test") == 1  # one lookup: the check's; no second one to rebind
    assert dialed == [(PUBLIC, receiver.port)]  # the checked address, nothing else
    assert receiver.at("/hook") == []

    # The control: a check followed by a client that looks the name up again (what the sender
    # did before) is steered to the loopback listener by the very same DNS script.
    dns.script("rebind.test", [PUBLIC], ["127.0.0.1"])
    webhooks.refuse_non_public(url)
    assert httpx.post(url, content=b"{}", trust_env=False).status_code == 200
    assert dns.count("rebind.test") == 2
    (reached,) = receiver.at("/hook")
    assert reached.headers["host"] == f"rebind.test:{receiver.port}"


def test_a_stable_allowed_name_is_reached_at_the_pinned_address_with_its_host_header(
    dns: FakeDNS, dialed: list[tuple[str, int]], receiver: WebhookReceiver
) -> None:
    """Local mode (private targets allowed) keeps working: one lookup, the connection to its
    answer, the name in ``Host``; a refused first address falls through to the next one."""
    dns.script("pinned.test", ["127.0.0.1"])
    url = f"http://pinned.test:{receiver.port}/pinned?x=1"
    result = webhooks.post_once(url, b'{"a":1}', {"X-Test": "1"}, timeout_s=5, allow_private=True)
    assert (result.ok, result.status_code, result.error) == (True, 200, None)
    (request,) = receiver.at("/pinned?x=1")
    assert request.headers["host"] == f"pinned.test:{receiver.port}"
    assert (request.body, request.headers["x-test"]) == (b'{"a":1}', "1")
    assert dns.count("pinned.test") == 1
    assert dialed == [("127.0.0.1", receiver.port)]

    # Nothing listens on 127.0.0.2 (the receiver is bound to 127.0.0.1 only): like
    # "localhost" answering ::1 first, the next checked address is tried.
    dialed.clear()
    dns.script("two.test", ["127.0.0.2", "127.0.0.1"])
    result = webhooks.post_once(
        f"http://two.test:{receiver.port}/two", b"{}", {}, timeout_s=5, allow_private=True
    )
    assert (result.ok, result.status_code) == (True, 200), result
    assert dialed == [("127.0.0.2", receiver.port), ("127.0.0.1", receiver.port)]
    assert dns.count("two.test") == 1
    assert [r.headers["host"] for r in receiver.at("/two")] == [f"two.test:{receiver.port}"]


def test_one_internal_address_among_public_ones_refuses_the_attempt_before_any_connection(
    dns: FakeDNS, dialed: list[tuple[str, int]], receiver: WebhookReceiver
) -> None:
    dns.script("mixed.test", [PUBLIC, "127.0.0.1"])
    url = f"http://mixed.test:{receiver.port}/mixed"
    result = webhooks.post_once(url, b"{}", {}, timeout_s=5, allow_private=False)
    assert not result.ok and result.status_code is None
    assert result.error == (
        "refused: host 'mixed.test' resolves to 127.0.0.1, which is not a public address; "
        "this service only calls public addresses"
    )
    assert (dialed, receiver.at("/mixed"), dns.count("mixed.test")) == ([], [], 1)


# --------------------------------------------------------------------------------------------
# https: the pinned connection still presents and checks the URL's host name
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThrowawayCA:
    """A throwaway CA (``cryptography``, which moto already brings in) and its client trust."""

    key: Any
    cert: Any

    def client_context(self) -> ssl.SSLContext:
        from cryptography.hazmat.primitives.serialization import Encoding

        return ssl.create_default_context(cadata=self.cert.public_bytes(Encoding.PEM).decode())

    def server_context(
        self, name: str, tmp_path: Any, seen_sni: list[str | None]
    ) -> ssl.SSLContext:
        """A server context whose certificate names only ``name`` (no IP address), recording
        the SNI each handshake asks for."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = tmp_path / f"{name}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pem)
        context.sni_callback = lambda _sock, sni, _ctx: seen_sni.append(sni)
        return context


@pytest.fixture(scope="module")
def ca() -> ThrowawayCA:
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cake webhook test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return ThrowawayCA(key, cert)


def test_https_to_a_pinned_address_keeps_sni_host_and_the_certificate_check(
    dns: FakeDNS, dialed: list[tuple[str, int]], ca: ThrowawayCA, tmp_path: Any
) -> None:
    sni: list[str | None] = []
    with webhook_receiver(tls=ca.server_context("pinned.test", tmp_path, sni)) as server:
        dns.script("pinned.test", ["127.0.0.1"])
        url = f"https://pinned.test:{server.port}/tls"
        result = webhooks.post_once(
            url, b"{}", {}, timeout_s=5, allow_private=True, verify=ca.client_context()
        )
        assert (result.ok, result.status_code, result.error) == (True, 200, None)
        (request,) = server.at("/tls")
        assert request.headers["host"] == f"pinned.test:{server.port}"
        assert sni == ["pinned.test"]  # the name, not the pinned IP, in the handshake
        assert dialed == [("127.0.0.1", server.port)]

    # A certificate for another name at that address is refused: the check is against the
    # URL's host, so the pin cannot be used to skip it.
    sni.clear()
    with webhook_receiver(tls=ca.server_context("other.test", tmp_path, sni)) as server:
        url = f"https://pinned.test:{server.port}/tls"
        result = webhooks.post_once(
            url, b"{}", {}, timeout_s=5, allow_private=True, verify=ca.client_context()
        )
        assert not result.ok and result.status_code is None
        assert "CERTIFICATE_VERIFY_FAILED" in (result.error or ""), result
        assert server.at("/tls") == []
        assert sni == ["pinned.test"]
