"""
Each relay keeps its own TLS level (issue 14): main.cf holds the primary's
level, the formula's TLS policy table holds every relay's, and Postfix applies
the fallback's own level when it falls back. Proven with a fallback at level
fingerprint: a certificate that is not listed is refused (the message stays
queued, nothing reaches the relay), the listed one is accepted. With main.cf's
level alone (encrypt) any certificate would do.

Run inside a private test host (scripts/test-host).
"""

import hashlib
import socket
import subprocess
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import MAILLOG, flush_queue, new_token, send_with_sendmail
from relay import free_port
from test_several_relays import (  # noqa: F401 (a module fixture, autouse)
    FAST_RETRY, apply_ok, entry, no_relay_password_leaked, postconf, start_relay,
)


def fingerprint(pem_path):
    """The certificate's sha256 fingerprint as openssl prints it."""
    with open(pem_path, "rb") as handle:
        cert = x509.load_pem_x509_certificate(handle.read())
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, 64, 2)).upper()


@pytest.fixture(scope="module")
def fallback(tmp_path_factory):
    relay = start_relay(tmp_path_factory.mktemp("tls-policy"), "fb1")
    yield relay
    relay.stop()


def closed_port():
    """A loopback port nothing listens on (the primary is down)."""
    port = free_port("127.0.0.1")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    return port


def apply_with_fingerprint(applier, fallback, fingerprints):
    flush_queue()
    data = applier.pillar(relay={"port": closed_port()}, main_cf=FAST_RETRY,
                          fallback_relays=[entry("fb1", fallback.port, tls="fingerprint",
                                                 fingerprints=fingerprints)])
    apply_ok(applier, data)


def test_policy_table_gives_the_fallback_its_own_level(applier, fallback):
    apply_with_fingerprint(applier, fallback, [fingerprint(fallback.certs["cert"])])
    assert postconf("smtp_tls_security_level") == ["encrypt"]  # the primary's
    policy = postconf("smtp_tls_policy_maps")[0]
    table = subprocess.run(["postconf", "-xh", "smtp_tls_policy_maps"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert policy and table
    answer = subprocess.run(["postmap", "-q", f"[127.0.0.1]:{fallback.port}", table],
                            capture_output=True, text=True, check=True).stdout
    assert answer.startswith("fingerprint match=")


def test_fallback_with_its_certificate_listed_gets_the_mail(applier, fallback):
    apply_with_fingerprint(applier, fallback, [fingerprint(fallback.certs["cert"])])
    token = new_token()
    send_with_sendmail("root", token)
    assert fallback.find(token, timeout=60), "the listed certificate was not accepted"


def test_fallback_with_another_certificate_gets_nothing(applier, fallback, tmp_path):
    other = start_relay(tmp_path, "fb2")  # a certificate of another relay
    try:
        apply_with_fingerprint(applier, fallback, [fingerprint(other.certs["cert"])])
    finally:
        other.stop()
    before = len(fallback.messages)
    token = new_token()
    send_with_sendmail("root", token)
    refused = (f"relay=127.0.0.1[127.0.0.1]:{fallback.port}, ",
               "status=deferred (Server certificate not verified)")
    deadline, lines = time.monotonic() + 30, []
    while time.monotonic() < deadline and not lines:
        log = MAILLOG.read_text(errors="replace") if MAILLOG.exists() else ""
        lines = [line for line in log.splitlines() if all(part in line for part in refused)]
        time.sleep(0.5)
    assert lines, "Postfix did not refuse the fallback's certificate"
    assert len(fallback.messages) == before, "mail went to a certificate not listed"
    queue = subprocess.run(["postqueue", "-j"], capture_output=True, text=True).stdout
    assert token and queue.strip(), "the message is not kept in the queue"
    flush_queue()
