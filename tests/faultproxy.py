"""A fault-injecting reverse proxy for S3 on loopback (stdlib only, one thread per
connection), put in front of the moto server: the job talks to the proxy
(AWS_ENDPOINT_URL) and the test, in its own process, decides which requests fail.

    proxy = FaultProxy("http://127.0.0.1:5000")
    proxy.fault("slowdown", method="PUT", path=r"/checkpoints/ckpt-", seconds=2)
    ... run the job against proxy.url ...
    proxy.faulted("slowdown")  # the requests it answered with 503 SlowDown

Faults:
    slowdown   503 SlowDown, S3's XML error body (throttling)
    error500   500 InternalError
    denied     403 AccessDenied (a permanent error, for contrast)
    drop       the connection closed without a response
    cut        forwarded, then the response cut short: its head and half its body
               (nothing, if it has no body: the request took effect, the client never hears)
    latency    the request forwarded after `delay` seconds

A fault applies to requests whose method matches `method` (None: any) and whose
path (/bucket/key?query, path-style) matches the regex `path`: the first `after`
matching requests pass, then it strikes the next `times` of them, or every one for
`seconds` from the first it strikes, or (neither given) every one until cleared.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = ("slowdown", "error500", "denied", "drop", "cut", "latency")
_ERRORS = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "error500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "denied": (403, "AccessDenied", "Access Denied"),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "expect",
}


@dataclass
class Fault:
    kind: str
    method: str | None
    path: re.Pattern
    after: int = 0
    times: int | None = None
    seconds: float | None = None
    delay: float = 0.0
    seen: int = 0  # matching requests so far
    struck: int = 0
    first: float | None = None  # when it first struck

    def strikes(self, method: str, path: str, now: float) -> bool:
        """Called under the proxy's lock for each request, in order."""
        if (self.method and method != self.method) or not self.path.search(path):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None and self.struck >= self.times:
            return False
        if self.seconds is not None and self.first is not None and now - self.first >= self.seconds:
            return False
        self.first = now if self.first is None else self.first
        self.struck += 1
        return True


@dataclass
class Logged:
    method: str
    path: str
    fault: str | None  # the fault kind that struck it, if any
    status: int | None = None  # what the client got (None: the connection was dropped)
    range: str | None = None  # the request's Range header (a ranged read), if any
    at: float = field(default_factory=time.monotonic)


class FaultProxy:
    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.faults: list[Fault] = []
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()

    def fault(
        self,
        kind: str,
        method: str | None = None,
        path: str = "",
        after: int = 0,
        times: int | None = None,
        seconds: float | None = None,
        delay: float = 0.0,
    ) -> Fault:
        assert kind in KINDS, kind
        fault = Fault(kind, method, re.compile(path), after, times, seconds, delay)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        """No faults from now on; the log starts afresh."""
        with self._lock:
            self.faults, self.log = [], []

    def requests(self, method: str | None = None, path: str = "") -> list[Logged]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method) and re.search(path, r.path)]

    def faulted(self, kind: str | None = None, path: str = "") -> list[Logged]:
        return [r for r in self.requests(path=path) if r.fault and (kind is None or r.fault == kind)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the request path

    def _decide(self, method: str, path: str) -> tuple[Fault | None, Logged]:
        with self._lock:
            now = time.monotonic()
            fault = next((f for f in self.faults if f.strikes(method, path, now)), None)
            entry = Logged(method, path, fault.kind if fault else None)
            self.log.append(entry)
            return fault, entry

    def _forward(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.getheaders(), resp.read()
        finally:
            conn.close()


def _handler(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as boto3 expects; answers Expect: 100-continue

        def log_message(self, *args) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _proxy(self) -> None:
            body = self._body()  # read whole first, so the client is never left writing
            fault, entry = proxy._decide(self.command, self.path)
            entry.range = self.headers.get("Range") or self.headers.get("x-ms-range")
            kind = fault.kind if fault else None
            if kind == "drop":
                return self._drop()
            if kind in _ERRORS:
                status, code, message = _ERRORS[kind]
                xml = (
                    f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
                    f"<RequestId>faultproxy</RequestId></Error>"
                ).encode()
                entry.status = status
                return self._respond(status, [("Content-Type", "application/xml")], xml)
            if kind == "latency":
                time.sleep(fault.delay)
            headers = [
                (k, v)
                for k, v in self.headers.items()
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"
            ]
            status, _, resp_headers, data = proxy._forward(self.command, self.path, headers, body)
            if kind == "cut" and not data:
                return self._drop()
            if kind == "cut":
                self.send_response(status)
                for k, v in resp_headers:
                    if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                return self._drop()
            entry.status = status
            keep = [(k, v) for k, v in resp_headers if k.lower() not in _HOP_BY_HOP]
            self._respond(status, keep, data)

        def _respond(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response(status)
            has_length = False
            for k, v in headers:
                has_length |= k.lower() == "content-length"
                self.send_header(k, v)
            if not has_length:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _drop(self) -> None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

    return Handler
