"""Real HTTP servers on loopback for the synthesis tests: a fast scripted teacher behind critkit's
own OpenAI-compatible server, and a fault-injecting proxy to put in front of it.

Both bind 127.0.0.1 only, and both stop by themselves: the proxy after `max_requests` requests or
`lifetime` seconds, whichever comes first, so a runaway client loop cannot keep them busy.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from critkit.engine.serve import serve


def scripted_reply(conversation) -> str:
    """The scripted teacher's answer: a deterministic function of the prompt."""
    user = conversation[-1]["content"]
    if "NOVERDICT" in user:
        return "I looked at it and cannot decide."
    digest = hashlib.sha256(user.encode()).hexdigest()[:8]
    verdict = "right" if int(digest, 16) % 2 == 0 else "wrong"
    return f"Critique {digest}: the steps were checked one by one against the question.\nConclusion: {verdict} [END]"


def write_reply(handler: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes) -> None:
    """Send one complete HTTP reply from a test handler."""
    handler.send_response(status)
    for name, value in {"Content-Length": str(len(body)), **headers}.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


class InThread:
    """An HTTP server on loopback served from a daemon thread, shut down by `stop()` or after
    `lifetime` seconds, whichever comes first, so a runaway client loop cannot keep it busy."""

    def __init__(self, server, lifetime: float):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime, server.shutdown)
        self.timer.daemon = True
        self.timer.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}/v1"

    def stop(self) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class ScriptedTeacher:
    """A backend object for `critkit.engine.serve.serve`: instant (or `delay` seconds per call), counted.

    `sign` is written before every reply, so that tests with two teachers can tell whose reply a record holds.
    """

    def __init__(self, name: str = "scripted", delay: float = 0.0, sign: str = ""):
        self.name, self.delay, self.sign = name, delay, sign
        self.calls = 0  # serve() holds a lock around generate, so this count is exact

    def generate(self, conversations, sampling, desc=""):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return [[self.sign + scripted_reply(c)] * sampling.n for c in conversations]


class ScriptedServer:
    """critkit's OpenAI-compatible server in a thread, answering with `scripted_reply`."""

    def __init__(self, delay: float = 0.0, sign: str = ""):
        self.teacher = ScriptedTeacher(delay=delay, sign=sign)
        self.server, self.thread = serve(self.teacher)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


FAULTS = ("429", "500", "timeout", "malformed", "truncated", "cut", "reset")


class _ProxyHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with srv.lock:
            srv.count += 1
            over = srv.count > srv.max_requests
            fault = srv.rng.choice(FAULTS) if srv.rng.random() < srv.rate else None
            if srv.poison and srv.poison.encode() in body:
                fault = "poison"
            if fault:
                srv.faults[fault] += 1
        if over:
            self.close_connection = True  # the bound is reached: no more answers
            return
        if fault in ("429", "500", "poison"):
            status = 429 if fault == "429" else 500
            headers = {"Retry-After": "0"} if status == 429 else {}
            return self._send(status, json.dumps({"error": {"message": f"injected {fault}"}}).encode(), headers)
        if fault == "timeout":
            time.sleep(srv.hang)  # longer than the client's timeout; then hang up without a word
            self.close_connection = True
            return
        if fault == "malformed":
            return self._send(200, b'{"choices": [{"message": {"content": "Conclusion: ri')
        if fault == "reset":
            # SO_LINGER 0: close() sends a TCP RST, which the client sees as "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        status, reply = self._forward(body)
        if fault == "truncated":
            # Announce the whole body, send half, hang up: the client reads an incomplete reply.
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply[: len(reply) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if fault == "cut":
            # A well-formed reply whose answer stopped at max_tokens: legal, and must be reported.
            data = json.loads(reply)
            for choice in data["choices"]:
                text = choice["message"]["content"]
                choice["message"]["content"] = text[: len(text) // 2]
                choice["finish_reason"] = "length"
            reply = json.dumps(data).encode()
        self._send(status, reply)

    def _forward(self, body: bytes) -> tuple[int, bytes]:
        req = urllib.request.Request(f"{self.server.upstream}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the injected resets make the handler's own final flush fail; that is the point


class FaultProxy:
    """Forwards to `upstream`; a `rate` share of requests gets one of FAULTS instead.

    Requests whose body contains `poison` always get HTTP 500 (a record that can never succeed).
    """

    def __init__(self, upstream: str, rate: float = 0.3, seed: int = 0, hang: float = 1.5, poison: str | None = None,
                 max_requests: int = 5000, lifetime: float = 120.0):
        self.server = srv = _ProxyServer(("127.0.0.1", 0), _ProxyHandler)
        srv.upstream, srv.rate, srv.hang, srv.poison, srv.max_requests = upstream, rate, hang, poison, max_requests
        srv.rng, srv.lock, srv.count, srv.faults = random.Random(seed), threading.Lock(), 0, Counter()
        self.served = InThread(srv, lifetime)  # stops by itself, whatever the test does
        self.url = self.served.url

    @property
    def faults(self) -> Counter:
        return self.server.faults

    @property
    def count(self) -> int:
        return self.server.count

    def stop(self) -> None:
        self.served.stop()
