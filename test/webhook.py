"""
A tiny webhook for tests: an HTTP server on loopback that answers every POST
with 204 and records it (path, headers, body, the body parsed as JSON when it
is JSON), so a test can check what a reactor sent.

    with Webhook() as hook:
        ...  # point the sender at hook.url
        alert = hook.wait_for(1, timeout=30)[0]
        alert["json"]["condition"]
"""

import http.server
import json
import threading
import time


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server naming)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", errors="replace")
        self.server.hook.record(self.path, dict(self.headers.items()), body)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        """Quiet: the records are the log."""


class Webhook:
    """An HTTP endpoint on host:port (port 0: a free one) that records POSTs."""

    def __init__(self, host="127.0.0.1", port=0, path="/hook"):
        self.host, self.port, self.path = host, port, path
        self.posts = []
        self._cond = threading.Condition()
        self._server = None
        self._thread = None

    @property
    def url(self):
        return f"http://{self.host}:{self.port}{self.path}"

    def start(self):
        self._server = http.server.ThreadingHTTPServer((self.host, self.port), _Handler)
        self._server.hook = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def record(self, path, headers, body):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        with self._cond:
            self.posts.append({"path": path, "headers": headers, "body": body,
                               "json": parsed, "at": time.time()})
            self._cond.notify_all()

    def wait_for(self, count, timeout=30, match=None):
        """The recorded POSTs for which match(post) is true (all when None),
        once there are count of them; TimeoutError after timeout seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [p for p in self.posts if match is None or match(p)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(found)} of {count} POSTs arrived at {self.url}")
                self._cond.wait(left)

    def reset(self):
        with self._cond:
            self.posts.clear()
