"""A fake object store on loopback (stdlib only), for the answers the real emulators
never give: whatever the request (GCS's JSON API, Azure Blob's REST API, S3's), it
answers the one hostile way it was made to, and logs when each request came.

    store = FakeStore("unauthorized")      # then STORAGE_EMULATOR_HOST=store.url, or
    ... run the command against it ...     # BlobEndpoint=store.url/account, AWS_ENDPOINT_URL=store.url
    store.requests                         # [(method, path, time.monotonic()), ...]

Answers:
    unauthorized   401 with a JSON error body, as GCS sends for a bad or expired token
    error500       500 with a JSON error body, forever (an outage)
    cut            200 with a JSON body whose Content-Length promises twice what is sent,
                   then the connection closed mid-body (a HEAD, which has no body: closed unanswered)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWERS = ("unauthorized", "error500", "cut")
_ERRORS = {
    "unauthorized": (401, "Invalid Credentials", "authError"),
    "error500": (500, "Backend Error", "backendError"),
}


class FakeStore:
    def __init__(self, answer: str):
        assert answer in ANSWERS, answer
        self.answer = answer
        self.requests: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-store", daemon=True)
        self._thread.start()

    def first(self) -> float:
        """When the first request came (time.monotonic())."""
        with self._lock:
            assert self.requests, "no request reached the fake store"
            return self.requests[0][2]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(store: FakeStore):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with store._lock:
                store.requests.append((self.command, self.path, time.monotonic()))
            if store.answer in _ERRORS:
                status, message, reason = _ERRORS[store.answer]
                body = json.dumps(
                    {"error": {"code": status, "message": message, "errors": [{"message": message, "reason": reason}]}}
                ).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        self.wfile.write(body)
                    except OSError:  # the client gave up first (gcsfs asks twice at once, then cancels one)
                        pass
                return
            if self.command != "HEAD":
                body = json.dumps({"kind": "storage#object", "name": "x", "size": "4096", "pad": "p" * 512}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(2 * len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except OSError:  # the client gave up first
                    pass
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _answer

    return Handler
