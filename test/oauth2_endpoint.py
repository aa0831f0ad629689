"""
A test OAuth2 token endpoint (HTTPS on loopback, a throwaway CA): exchanges
one refresh token for short-lived access tokens, can revoke it, and tells a
test relay which access tokens are currently valid.

    with TokenEndpoint(refresh_token="r1", ttl=12, cert_dir=d) as endpoint:
        endpoint.url, endpoint.ca_file, endpoint.valid(user, token), endpoint.refreshes
        endpoint.revoke(), endpoint.reissue("r2"), endpoint.issued (access tokens)

Several providers at once (one endpoint per relay): ``client_secret=`` makes
the endpoint refuse any other secret (invalid_client), and
``endpoint.saw(refresh_token)`` tells whether that refresh token was ever
presented to it (only digests are kept).

Death by silence (issue 15): ``idle_limit=`` seconds revokes the refresh token
once it has not been used for that long, answering as the provider does
(``style="microsoft"``: invalid_grant with AADSTS700082; ``"google"``: "Token
has been expired or revoked."). ``endpoint.advance(seconds)`` moves the
endpoint's clock (access tokens expire, the refresh token ages) without
waiting; ``rotate=True`` hands out a new refresh token with every refresh (as
Microsoft does) and only the newest works (``endpoint.refresh_token``).
"""

import hashlib
import http.server
import json
import secrets
import ssl
import threading
import time
import urllib.parse

from relay import make_certs


class TokenEndpoint:
    def __init__(self, refresh_token, client_id="postfix-relay-test", ttl=12,
                 cert_dir=None, user=None, client_secret=None, idle_limit=None,
                 style="microsoft", rotate=False):
        self.refresh_token, self.client_id, self.ttl = refresh_token, client_id, ttl
        self.client_secret = client_secret  # None: any secret (or none) is taken
        self.user = user
        self.revoked = False
        self.issued = {}  # access token -> expiry (monotonic)
        self.refreshes = 0
        self.requests = []  # (grant_type, outcome): no secrets kept
        self.presented = set()  # digests of the refresh tokens presented
        self.clients = []  # the client_id of every request (not a secret)
        self.cert_dir = cert_dir
        self._server = None
        self.idle_limit, self.style, self.rotate = idle_limit, style, rotate
        self.offset = 0.0  # advance(): the simulated time that has passed
        self.last_used = self.now()  # when the refresh token was last used

    def revoke(self):
        """The refresh token stops working (as when an admin revokes the app's
        sessions); access tokens already issued stay valid until they expire."""
        self.revoked = True

    def reissue(self, refresh_token):
        """A new refresh token (what the admin gets from a new consent)."""
        self.refresh_token, self.revoked = refresh_token, False
        self.last_used = self.now()

    def now(self):
        """The endpoint's clock: monotonic time plus what advance() added."""
        return time.monotonic() + self.offset

    def advance(self, seconds):
        """Simulated silence: seconds pass for the endpoint at once."""
        self.offset += seconds

    def idle(self):
        """The refresh token has not been used for longer than idle_limit."""
        return self.idle_limit is not None and self.now() - self.last_used > self.idle_limit

    def _idle_answer(self):
        if self.style == "google":
            return 400, {"error": "invalid_grant",
                         "error_description": "Token has been expired or revoked."}
        return 400, {"error": "invalid_grant", "error_description": (
            "AADSTS700082: The refresh token has expired due to inactivity. The token was "
            "issued on 2026-01-01T00:00:00Z and was inactive for 90.00:00:00.\r\n"
            "Trace ID: 0b1d3c5e\r\nCorrelation ID: 7a9f\r\nTimestamp: 2026-04-01")}

    def valid(self, user, token):
        expiry = self.issued.get(token)
        return expiry is not None and expiry > self.now() and \
            (self.user is None or user == self.user)

    def saw(self, refresh_token):
        """Whether refresh_token was ever presented here, accepted or not."""
        return _digest(refresh_token) in self.presented

    def _grant(self, form):
        self.presented.add(_digest(form.get("refresh_token", "")))
        self.clients.append(form.get("client_id"))
        if form.get("grant_type") != "refresh_token" or form.get("client_id") != self.client_id:
            return 400, {"error": "invalid_client"}
        if self.client_secret is not None and not secrets.compare_digest(
                form.get("client_secret", ""), self.client_secret):
            return 401, {"error": "invalid_client",
                         "error_description": "AADSTS7000215: invalid client secret"}
        if self.revoked or not secrets.compare_digest(form.get("refresh_token", ""),
                                                      self.refresh_token):
            return 400, {"error": "invalid_grant",
                         "error_description": "AADSTS70000: the refresh token is revoked"}
        if self.idle():
            return self._idle_answer()
        token = secrets.token_urlsafe(24)
        self.issued[token] = self.now() + self.ttl
        self.refreshes += 1
        self.last_used = self.now()
        answer = {"access_token": token, "token_type": "Bearer", "expires_in": self.ttl}
        if self.rotate:  # the old one stops working: only a stored new one lives on
            self.refresh_token = answer["refresh_token"] = secrets.token_urlsafe(24)
        return 200, answer

    def start(self):
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("Content-Length") or 0)
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                code, body = endpoint._grant(form)
                endpoint.requests.append((form.get("grant_type"), code))
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # quiet: the tests read .requests
                pass

        certs = make_certs(self.cert_dir, "localhost")
        self.ca_file = certs["ca"]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs["cert"], certs["key"])
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _digest(value):
    return hashlib.sha256(value.encode()).hexdigest()
