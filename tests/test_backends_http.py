"""OpenAIBackend against real HTTP servers on loopback: critkit's own server, and tiny canned ones.

Nothing is mocked: every request goes through urllib, a socket and http.server.
"""

from __future__ import annotations

import json
import pickle
import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from critkit.engine.backends import BackendError, OpenAIBackend, Sampling, TransformersBackend
from critkit.engine.serve import serve
from synth_servers import write_reply

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    [{"role": "system", "content": "You are a careful grader."}, {"role": "user", "content": "Is 7 prime?"}],
    [{"role": "user", "content": "Name a colour."}],
]
GREEDY = Sampling(temperature=0.0, max_new_tokens=8)
OK_REPLY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


# ------------------------------------------------------------------------- critkit's own server


@pytest.fixture(scope="module")
def served():
    import torch

    # On a small shared CPU, torch's intra-op threads spin against other processes and generation
    # gets several times slower; one thread is fastest there for a 135M model.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = TransformersBackend("embedded", batch_size=4, progress=False)
    server, thread = serve(backend)
    yield backend, server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    torch.set_num_threads(threads)


def client(port: int, **options) -> OpenAIBackend:
    return OpenAIBackend(model="embedded", base_url=f"http://127.0.0.1:{port}/v1", progress=False, timeout=60, **options)


def test_greedy_over_http_matches_local_generation(served):
    backend, port = served
    remote = client(port)
    over_http = remote.generate(CONVERSATIONS, GREEDY)
    # The server generates each request alone; locally the three share one left-padded batch.
    assert over_http == backend.generate(CONVERSATIONS, GREEDY)
    assert all(len(texts) == 1 and texts[0] for texts in over_http)
    assert remote.usage["prompt_tokens"] > 0 and remote.usage["completion_tokens"] > 0


def test_n_completions_per_conversation_are_sampled_with_the_seed(served):
    _, port = served
    remote = client(port)
    sampled = Sampling(temperature=0.8, max_new_tokens=8, n=2, seed=1)
    out = remote.generate(CONVERSATIONS, sampled)
    assert [len(texts) for texts in out] == [2, 2, 2]
    # The server samples: not the greedy answer everywhere, the same again with the same seed,
    # something else with another seed (a server that ignored temperature or seed fails one of these).
    first = CONVERSATIONS[:1]
    (greedy,) = remote.generate(first, Sampling(temperature=0.0, max_new_tokens=8))
    assert any(text != greedy[0] for text in out[0])
    assert remote.generate(first, sampled) == out[:1]
    assert remote.generate(first, Sampling(temperature=0.8, max_new_tokens=8, n=2, seed=2)) != out[:1]


def test_reply_is_a_standard_chat_completion(served):
    _, port = served
    body = {"model": "embedded", "messages": CONVERSATIONS[0], "max_tokens": 4, "temperature": 0}
    reply = post_json(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode())
    assert reply["object"] == "chat.completion" and reply["id"].startswith("chatcmpl-")
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in {"stop", "length"}
    usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert get_json(f"http://127.0.0.1:{port}/health") == {"status": "ok"}
    assert get_json(f"http://127.0.0.1:{port}/v1/models")["data"][0]["id"] == "embedded"


@pytest.mark.parametrize("body", [b"this is not json", b"\xff\xfe\xfd",
                                  b'{"model": "embedded"}', b'{"messages": "hello"}', b'{"messages": [], "n": 1}',
                                  b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'])
def test_serve_rejects_bad_requests_with_400(served, body):
    _, port = served
    with pytest.raises(urllib.error.HTTPError) as info:
        post_json(f"http://127.0.0.1:{port}/v1/chat/completions", body)
    assert info.value.code == 400
    error = json.loads(info.value.read())["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


# ------------------------------------------------------------------------------ canned servers


class Canned(BaseHTTPRequestHandler):
    """Records each request on the server and answers with `server.reply` (status, headers, body)."""

    def do_POST(self):
        self._answer()

    def do_GET(self):
        self._answer()

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.server.seen.append({"method": self.command, "path": self.path,
                                 "authorization": self.headers.get("Authorization"), "body": self.rfile.read(length)})
        status, headers, body = self.server.reply
        if status is None:  # not HTTP at all
            self.wfile.write(body)
            return
        write_reply(self, status, headers, body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def canned():
    """Start canned servers: canned(status, body, headers) -> (base_url, list of seen requests)."""
    servers = []

    def start(status, body, headers=None):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
        server.reply, server.seen = (status, headers or {}, body), []
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", server.seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_api_key_is_sent_as_bearer_and_never_stored(canned, monkeypatch):
    monkeypatch.setenv("CRITKIT_TEST_KEY", "sk-test-123")
    url, seen = canned(200, json.dumps(OK_REPLY).encode())
    backend = OpenAIBackend(model="m", base_url=url, api_key_env="CRITKIT_TEST_KEY", progress=False, timeout=10)
    assert backend.generate(CONVERSATIONS[:1], GREEDY) == [["hi"]]
    assert [r["authorization"] for r in seen] == ["Bearer sk-test-123"]
    assert b"sk-test-123" not in seen[0]["body"]
    assert "sk-test-123" not in repr(backend)
    assert all("sk-test-123" not in repr(v) for v in vars(backend).values())
    assert "sk-test-123" not in json.dumps(vars(backend), default=repr)
    assert b"sk-test-123" not in pickle.dumps(backend)


def test_api_key_is_not_forwarded_on_redirect(canned, monkeypatch):
    monkeypatch.setenv("CRITKIT_TEST_KEY", "sk-test-123")
    elsewhere, seen_elsewhere = canned(200, json.dumps(OK_REPLY).encode())
    url, seen = canned(302, b"", {"Location": f"{elsewhere}/chat/completions"})
    backend = OpenAIBackend(model="m", base_url=url, api_key_env="CRITKIT_TEST_KEY", progress=False, timeout=10)
    backend.generate(CONVERSATIONS[:1], GREEDY)
    assert seen[0]["authorization"] == "Bearer sk-test-123"
    assert [r["authorization"] for r in seen_elsewhere] == [None]


@pytest.mark.parametrize("status, body, expected", [
    (500, b'{"error": {"message": "boom"}}', "HTTP 500"),
    (200, b"<html>gateway says hello</html>", "not JSON"),
    (200, b"\x1f\x8b\x08\x00\xff\xfe", "not JSON"),  # e.g. a gzip body urllib does not decode
    (200, b'{"id": "x", "object": "chat.completion"}', "no choices"),
    (200, b'{"choices": []}', "no choices"),
    (200, b"[1, 2]", "no choices"),
    (None, b"garbage\r\n", "garbage"),  # not an HTTP reply at all
])
def test_bad_replies_raise_backend_error_naming_the_url(canned, status, body, expected):
    url, _ = canned(status, body)
    with pytest.raises(BackendError, match=expected) as info:
        OpenAIBackend(model="m", base_url=url, progress=False, timeout=10).generate(CONVERSATIONS[:1], GREEDY)
    assert url in str(info.value)


class FailFirstThenSlow(BaseHTTPRequestHandler):
    """The first request gets HTTP 500 at once; every later one an answer after `server.delay` s."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.seen += 1
            first = self.server.seen == 1
        if first:
            return write_reply(self, 500, {}, b'{"error": {"message": "overloaded"}}')
        time.sleep(self.server.delay)
        write_reply(self, 200, {}, json.dumps(OK_REPLY).encode())

    def log_message(self, format, *args):
        pass


def test_first_failure_cancels_queued_requests():
    """Exact arithmetic: one try per request and 2 in flight, so the client has submitted 4 of the
    30 (its window, 2 x concurrency: 2 sent, 2 waiting) when the first reply, a 500, ends
    `generate`. The other request in flight, and the one the freed worker may take in that instant,
    are sent and answered slowly; the 4th must be cancelled. Without cancellation it is sent too
    (4 requests); with retries (the default 3 tries) the count would not tell the two apart."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FailFirstThenSlow)
    server.seen, server.lock, server.delay = 0, threading.Lock(), 1.0
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        backend = OpenAIBackend(model="m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", concurrency=2,
                                max_tries=1, progress=False, timeout=10)
        with pytest.raises(BackendError, match="HTTP 500"):
            backend.generate(CONVERSATIONS * 10, GREEDY)
        assert 2 <= server.seen <= 3  # of 30 conversations, 4 queued: the 4th never sent
    finally:
        server.shutdown()
        server.server_close()


def test_closed_port_raises_backend_error():
    with socket.socket() as sock:  # bind then close: nothing listens on this port afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(BackendError) as info:
        OpenAIBackend(model="m", base_url=url, progress=False, timeout=10).generate(CONVERSATIONS[:1], GREEDY)
    assert url in str(info.value)


# ------------------------------------------------------------------------------------- helpers


def post_json(url: str, data: bytes) -> dict:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())
