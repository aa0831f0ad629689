"""
A real SMTP smarthost for tests and the demo: aiosmtpd with STARTTLS or implicit
TLS, SASL AUTH (PLAIN, LOGIN, CRAM-MD5), a throwaway CA, and a record of every
message (envelope, headers in order, the mechanism the client used, TLS).

Library:
    with Relay(tls="starttls", mechanisms=("PLAIN", "LOGIN"), users={"u": "pw"}) as relay:
        ...; relay.wait_for(1); relay.messages[0]["auth_mechanism"]

    Relay(host="::1")                                    # IPv6 loopback
    Relay(port=465, tls="implicit")                      # the real submissions port
    Relay(reject={"RCPT": "550 5.1.1 <x>: no such user"})  # permanent refusal
    GreetingRefuser(port=p)                              # greets "421 ..." and closes

Script (prints "ready port=N ca_file=PATH" when listening; stops on SIGTERM):
    python test/relay.py --port 2525 --tls starttls --user demo --password pw --store x.jsonl
"""

import argparse
import base64
import datetime
import email.parser
import email.policy
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import secrets
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# XOAUTH2 is refused unless xoauth2_check is given (then bearer tokens are
# checked with it): on Debian 12, with no client plugin, it causes "No worthy
# mechs found" for real.
ALL_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2")
# aiosmtpd itself sets its deprecated Session.login_data on every AUTH and logs
# a warning about it, and logs failed TLS handshakes the tests cause on purpose.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)


def make_certs(cert_dir, hostname, names=None):
    """A throwaway CA and a server certificate for names (default: hostname,
    localhost and 127.0.0.1; an entry that parses as an IP becomes an IP SAN)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postfix_relay test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names = [_general_name(n) for n in (names or (hostname, "localhost", "127.0.0.1"))]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {name: os.path.join(cert_dir, f"{name}.pem") for name in ("ca", "cert", "key")}
    with open(paths["ca"], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["cert"], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths


def _general_name(name):
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def free_port(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class _Handler:
    """aiosmtpd handler: records messages, implements CRAM-MD5, injects faults."""

    def __init__(self, relay):
        self.relay = relay

    async def auth_CRAM__MD5(self, server, args):  # noqa: N802 (aiosmtpd naming)
        challenge = f"<{secrets.token_hex(8)}.{int(time.time())}@{self.relay.hostname}>"
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes) or b" " not in response:
            return AuthResult(success=False, handled=False)
        user, _, digest = response.decode(errors="replace").rpartition(" ")
        secret = self.relay.users.get(user)
        ok = secret is not None and not self.relay.reject_all and hmac.compare_digest(
            hmac.new(secret.encode(), challenge.encode(), hashlib.md5).hexdigest(), digest)
        self.relay._note_auth(server, "CRAM-MD5", user, ok)
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)

    async def auth_XOAUTH2(self, server, args):  # noqa: N802 (aiosmtpd naming)
        check = self.relay.xoauth2_check
        if check is None:  # advertised only: no client plugin on Debian 12
            self.relay._note_auth(server, "XOAUTH2", None, False)
            return AuthResult(success=False, handled=False)
        if len(args) > 1:
            response = base64.b64decode(args[1])
        else:
            response = await server.challenge_auth("", encode_to_b64=False)
        fields = dict(part.split("=", 1) for part in
                      response.decode(errors="replace").split("\x01") if "=" in part)
        user, token = fields.get("user"), fields.get("auth", "").removeprefix("Bearer ")
        ok = bool(user) and check(user, token)
        self.relay._note_auth(server, "XOAUTH2", user, ok)
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        if self.relay.xoauth2_challenge:
            # Gmail's way: the error as a JSON challenge, the 535 after the
            # client's empty answer
            error = json.dumps({"status": "400", "schemes": "Bearer",
                                "scope": "https://mail.google.com/"})
            if await server.challenge_auth(error) is MISSING:
                return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=self.relay.xoauth2_reject)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        if not self.relay.mechanisms:
            # aiosmtpd always lists AUTH; a relay without AUTH must not mention it.
            responses = [r for r in responses if not r.startswith("250-AUTH")]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.relay._should_drop():
            server.transport.close()
            return "421 4.3.0 flaky relay drops the connection"
        refusal = self.relay._refuse("MAIL", address, envelope)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        refusal = self.relay._refuse("RCPT", address, envelope)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.relay._should_drop():
            server.transport.close()
            return "421 4.3.0 flaky relay drops the connection"
        refusal = self.relay._refuse("DATA", None, envelope)
        if refusal:
            return refusal
        self.relay._record(server, session, envelope)
        return "250 2.0.0 OK: queued"


class Relay:
    """A test smarthost on loopback. See the module docstring."""

    def __init__(self, host="127.0.0.1", port=0, tls="starttls", mechanisms=("PLAIN", "LOGIN"),
                 users=None, cert_dir=None, hostname="relay.test", auth_require_tls=True,
                 store=None, reject_all=False, flaky=0.0, seed=1, cert_names=None,
                 xoauth2_check=None, reject=None):
        if tls not in ("starttls", "implicit", "none"):
            raise ValueError(f"tls must be starttls, implicit or none, not {tls!r}")
        if set(reject or {}) - {"MAIL", "RCPT", "DATA"}:
            raise ValueError(f"reject stages are MAIL, RCPT, DATA, not {sorted(reject)}")
        unknown = set(mechanisms) - set(ALL_MECHANISMS)
        if unknown:
            raise ValueError(f"unsupported mechanisms: {sorted(unknown)}")
        self.host, self.port, self.tls = host, port, tls
        self.mechanisms = tuple(mechanisms)
        self.users = dict(users or {})
        self.hostname = hostname
        self.cert_names = cert_names
        self.xoauth2_check = xoauth2_check  # (user, access_token) -> bool
        self.xoauth2_reject = None  # the reply to a refused token (None: aiosmtpd's 535)
        self.xoauth2_challenge = False  # refuse Gmail's way: a 334 JSON error first
        self.auth_require_tls = auth_require_tls
        self.store = store
        self.reject_all = reject_all
        self.flaky = flaky
        # stage (MAIL, RCPT, DATA) -> the reply that refuses it, e.g. "550 5.7.1 ..."
        self.reject = dict(reject or {})
        self.refusals = []  # every refused command: stage, reply, sender, address, data
        self._random = random.Random(seed)
        self._tmp = None
        self.cert_dir = cert_dir
        self.messages = []
        self.auth_attempts = []
        self.dropped = 0
        self.open_sessions = 0  # SMTP connections open now (Postfix caches idle ones)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._controller = None

    # -- lifecycle -----------------------------------------------------------
    def start(self):
        if self.cert_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="relay-certs.")
            self.cert_dir = self._tmp
        os.makedirs(self.cert_dir, exist_ok=True)
        names = self.cert_names
        if names is None and self.host not in ("127.0.0.1", "localhost"):
            names = (self.hostname, "localhost", "127.0.0.1", self.host)  # e.g. ::1
        self.open_sessions = 0
        self.certs = make_certs(self.cert_dir, self.hostname, names)
        self.ca_file = self.certs["ca"]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.certs["cert"], self.certs["key"])
        if not self.port:
            self.port = free_port(self.host)
        kwargs = {
            "server_hostname": self.hostname,
            "authenticator": self._authenticate,
            "auth_exclude_mechanism": [m for m in ALL_MECHANISMS if m not in self.mechanisms],
            # Implicit TLS is encrypted from the first byte; aiosmtpd only knows STARTTLS.
            "auth_require_tls": self.auth_require_tls and self.tls == "starttls",
        }
        if self.tls == "starttls":
            kwargs["tls_context"] = context
        controller_kwargs = {"ssl_context": context} if self.tls == "implicit" else {}
        relay = self

        class _Controller(Controller):
            def factory(self):
                return _RelaySMTP(relay, self.handler, **self.SMTP_kwargs)

        self._controller = _Controller(_Handler(self), hostname=self.host, port=self.port,
                                       **controller_kwargs, **kwargs)
        self._controller.start()
        return self

    def find(self, token, timeout=60):
        """The record of the first message whose data holds token, waiting up
        to timeout seconds for it; None if it did not come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in list(self.messages):
                if token in record["data"]:
                    return record
            time.sleep(0.1)
        return None

    def wait_idle(self, timeout=30):
        """Wait until no SMTP session is open (Postfix closes a cached idle
        one after smtp_connection_cache_time_limit); False if one still is."""
        deadline = time.monotonic() + timeout
        while self.open_sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.open_sessions

    def stop(self):
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- results -------------------------------------------------------------
    def wait_for(self, count, timeout=30):
        """Wait until count messages arrived; return the messages list."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.messages)} of {count} messages arrived")
                self._cond.wait(left)
            return list(self.messages)

    def reset(self):
        with self._lock:
            self.messages.clear()
            self.auth_attempts.clear()
            self.refusals.clear()
            self.dropped = 0

    # -- internals -------------------------------------------------------------
    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        user = auth_data.login.decode(errors="replace")
        password = auth_data.password.decode(errors="replace")
        expected = self.users.get(user)
        ok = (not self.reject_all and expected is not None
              and hmac.compare_digest(expected, password))
        self._note_auth(server, mechanism, user, ok)
        session.relay_mechanism = mechanism if ok else None
        # handled=False: aiosmtpd answers 535 itself (True would leave the client hanging).
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def _note_auth(self, server, mechanism, user, ok):
        tls = server.transport.get_extra_info("ssl_object") is not None
        if ok:
            server.session.relay_mechanism = mechanism
        with self._lock:
            self.auth_attempts.append({"mechanism": mechanism, "user": user,
                                       "success": ok, "tls": tls})

    def _refuse(self, stage, address, envelope):
        """The refusal configured for stage (noted in refusals), or None."""
        reply = self.reject.get(stage)
        if reply is None:
            return None
        content = envelope.content if stage == "DATA" else None
        if isinstance(content, bytes):
            content = content.decode("utf-8", errors="replace")
        with self._lock:
            self.refusals.append({"stage": stage, "reply": reply, "address": address,
                                  "mail_from": address if stage == "MAIL"
                                  else envelope.mail_from, "data": content,
                                  "at": time.time()})
        return reply

    def _should_drop(self):
        with self._lock:
            if self.flaky and self._random.random() < self.flaky:
                self.dropped += 1
                return True
        return False

    def _record(self, server, session, envelope):
        data = envelope.content.decode("utf-8", errors="replace") \
            if isinstance(envelope.content, bytes) else envelope.content
        message = email.parser.Parser(policy=email.policy.compat32).parsestr(
            data, headersonly=True)
        ssl_object = server.transport.get_extra_info("ssl_object")
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "data": data,
            "headers": [(k, str(v).strip()) for k, v in message.items()],
            "auth_mechanism": getattr(session, "relay_mechanism", None)
            if session.authenticated else None,
            "auth_user": session.auth_data.login.decode(errors="replace")
            if session.authenticated and session.auth_data else None,
            "tls": ssl_object is not None,
            "tls_version": ssl_object.version() if ssl_object else None,
            "peer": list(session.peer) if session.peer else None,
            "received_at": time.time(),
        }
        with self._cond:
            self.messages.append(record)
            if self.store:
                with open(self.store, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            self._cond.notify_all()
        if getattr(self, "print_messages", False):
            headers = dict((k.lower(), v) for k, v in record["headers"])
            print(f"relay: from={record['mail_from']} to={','.join(record['rcpt_tos'])} "
                  f"reply-to={headers.get('reply-to')} auth={record['auth_mechanism']} "
                  f"tls={record['tls_version']}", flush=True)



class GreetingRefuser:
    """A smarthost that answers every connection with one greeting (default a
    421: overloaded, shutting down) and closes it, as a relay refusing service
    does. Counts the connections, so a test can tell it was really tried.

        with GreetingRefuser(port=port) as refuser: ...; refuser.connections
    """

    def __init__(self, host="127.0.0.1", port=0,
                 reply="421 4.3.2 relay.test Service not available, closing transmission channel"):
        self.host, self.port, self.reply = host, port, reply
        self.connections = 0
        self._sock = None
        self._stop = threading.Event()
        self._thread = None

    def start(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(64)
        sock.settimeout(0.1)  # accept() wakes up to see stop()
        self._sock, self.port = sock, sock.getsockname()[1]
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self.connections += 1
                try:
                    conn.sendall(self.reply.encode() + b"\r\n")
                except OSError:
                    pass  # the client gave up first

    def stop(self):
        """Close the port (connections are then refused)."""
        if self._sock is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

class _RelaySMTP(SMTP):
    """Notes AUTH attempted in clear (the password would have been exposed)."""

    def __init__(self, relay, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._relay = relay

    def connection_made(self, transport):
        # (called again on the same connection once STARTTLS is done)
        if not getattr(self, "_counted", False):
            self._counted = True
            with self._relay._lock:
                self._relay.open_sessions += 1
        super().connection_made(transport)

    def connection_lost(self, error):
        if getattr(self, "_counted", False):
            self._counted = False
            with self._relay._lock:
                self._relay.open_sessions -= 1
        super().connection_lost(error)

    async def smtp_AUTH(self, arg):  # noqa: N802 (aiosmtpd naming)
        if self.transport.get_extra_info("ssl_object") is None:
            with self._relay._lock:
                self._relay.auth_attempts.append({"mechanism": (arg or "").split(" ")[0],
                                                  "user": None, "success": None,
                                                  "tls": False})
        await super().smtp_AUTH(arg)


def main(argv=None):
    parser = argparse.ArgumentParser(description="test SMTP relay with TLS and AUTH")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--tls", default="starttls", choices=("starttls", "implicit", "none"))
    parser.add_argument("--user", default="demo")
    parser.add_argument("--password", default=None, help="default: $RELAY_PASSWORD")
    parser.add_argument("--mechanisms", default="PLAIN,LOGIN")
    parser.add_argument("--hostname", default="relay.test")
    parser.add_argument("--store", default=None)
    parser.add_argument("--cert-dir", default=None)
    parser.add_argument("--print", dest="print_messages", action="store_true")
    args = parser.parse_args(argv)
    password = args.password or os.environ.get("RELAY_PASSWORD")
    if not password:
        parser.error("--password or RELAY_PASSWORD is required")
    relay = Relay(host=args.host, port=args.port, tls=args.tls,
                  mechanisms=tuple(m for m in args.mechanisms.upper().split(",") if m),
                  users={args.user: password}, cert_dir=args.cert_dir,
                  hostname=args.hostname, store=args.store)
    relay.print_messages = args.print_messages
    relay.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"ready port={relay.port} ca_file={relay.ca_file}", flush=True)
    stop.wait()
    relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
