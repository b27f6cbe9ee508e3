"""A small OpenAI-compatible chat-completions server for any critkit backend.

Built on the standard library's `http.server` on purpose: it adds no dependency, and it is enough
for tests and for serving a small model from a laptop to `OpenAIBackend` or any OpenAI client.
It handles one generation at a time. With a GPU, serve the model with vLLM or SGLang instead:
they speak the same protocol, so the client side does not change.

Endpoints: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .backends import BackendError, Sampling

__all__ = ["serve", "make_server", "run_server"]

MAX_BODY_BYTES = 16 * 1024 * 1024  # a chat request is text; anything bigger is a mistake or abuse
DEFAULT_MAX_TOKENS = 512


class RequestError(ValueError):
    """A client mistake: answered with HTTP 400 and an OpenAI-style error body."""


# ------------------------------------------------------------------------------------- parsing


def _text(content) -> str:
    # OpenAI clients may send content as a list of parts; only text parts mean anything here.
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError("message content must be a string or a list of text parts")


def _messages(value) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RequestError("'messages' must be a non-empty list")
    out = []
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise RequestError("each message needs a string 'role' and a 'content'")
        out.append({"role": m["role"], "content": _text(m["content"])})
    return out


def _number(key: str, value, default, kind, low, high=None):
    if value is None:
        return default
    # bool is an int in Python, but `"n": true` is a client bug, not a count. Python's json also
    # accepts NaN and Infinity, which would slip through the range checks below.
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and not math.isfinite(value)) or (kind is int and value != int(value)):
        raise RequestError(f"'{key}' must be " + ("an integer" if kind is int else "a finite number"))
    if value < low or (high is not None and value > high):
        raise RequestError(f"'{key}' must be between {low} and {high}" if high is not None else f"'{key}' must be >= {low}")
    return kind(value)


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise RequestError("'stop' must be a string or a list of strings")


def parse_request(body) -> tuple[list[dict[str, str]], Sampling]:
    """The conversation and sampling settings of one chat-completions request body."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if body.get("stream"):
        # Answering a streaming client with one JSON document would break it in a confusing way.
        raise RequestError("streaming is not supported by this server")
    messages = _messages(body.get("messages"))
    # Defaults follow the OpenAI API (temperature 1), not critkit's greedy default.
    # Newer OpenAI clients send max_completion_tokens; older ones and vLLM use max_tokens.
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    sampling = Sampling(
        temperature=_number("temperature", body.get("temperature"), 1.0, float, 0.0, 2.0),
        top_p=_number("top_p", body.get("top_p"), 1.0, float, 0.0, 1.0),
        max_new_tokens=_number("max_tokens", max_tokens, DEFAULT_MAX_TOKENS, int, 1),
        n=_number("n", body.get("n"), 1, int, 1, 128),
        seed=_number("seed", body.get("seed"), 0, int, 0, 2**63 - 1),
        stop=_stop(body.get("stop")),
    )
    if sampling.top_p == 0:
        raise RequestError("'top_p' must be > 0")
    return messages, sampling


# ------------------------------------------------------------------------------------ replying


def _count_tokens(backend, text: str) -> int:
    tokenizer = getattr(backend, "tokenizer", None)
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prompt_text(backend, messages) -> str:
    render = getattr(backend, "render", None)
    return render(messages) if render else "\n".join(m["content"] for m in messages)


def complete(backend, messages, sampling: Sampling) -> dict:
    """Generate and build the chat.completion reply. The caller holds the generation lock."""
    reasons: list[str] = []
    if hasattr(backend, "generate_each"):  # critkit's backends say why each answer ended
        reply = backend.generate_each([messages], sampling, desc="serve")[0]
        if not reply.ok:
            raise BackendError(reply.error)
        texts, reasons = reply.texts, reply.finish_reasons
    else:
        texts = backend.generate([messages], sampling, desc="serve")[0]
    counts = [_count_tokens(backend, t) for t in texts]
    if len(reasons) != len(texts):
        reasons = [""] * len(texts)
    # Where a backend returns only text, "length" is judged by re-tokenizing it: close, not exact.
    reasons = [reason or ("length" if count >= sampling.max_new_tokens else "stop")
               for reason, count in zip(reasons, counts)]
    prompt_tokens = _count_tokens(backend, _prompt_text(backend, messages))
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
        for i, (text, reason) in enumerate(zip(texts, reasons))
    ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": backend.name,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(counts),
                  "total_tokens": prompt_tokens + sum(counts)},
    }


def _models(backend) -> dict:
    return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": 0, "owned_by": "critkit"}]}


class Handler(BaseHTTPRequestHandler):
    """Routes requests to the backend stored on the server (`server.backend`, `server.lock`)."""

    server_version = "critkit-serve"

    def do_GET(self):
        path = self._path()
        if path == "/health":
            self._json(200, {"status": "ok"})
        elif path == "/v1/models":
            self._json(200, _models(self.server.backend))
        else:
            self._not_found(path, "/v1/chat/completions")

    def do_POST(self):
        path = self._path()
        if path != "/v1/chat/completions":
            return self._not_found(path, "/health", "/v1/models")
        try:
            messages, sampling = parse_request(self._body())
        except RequestError as exc:
            return self._error(400, str(exc), "invalid_request_error")
        try:
            # A transformers model is not thread-safe, and neither is its tokenizer: one at a time.
            with self.server.lock:
                reply = complete(self.server.backend, messages, sampling)
        except Exception as exc:  # the client gets a JSON error rather than a dropped connection
            return self._error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
        self._json(200, reply)

    def log_message(self, format, *args):
        if getattr(self.server, "log_requests", False):
            super().log_message(format, *args)

    def _path(self) -> str:
        return urlsplit(self.path).path.rstrip("/") or "/"

    def _body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError("bad Content-Length header") from None
        if length <= 0:
            raise RequestError("the request needs a JSON body with a Content-Length")
        if length > MAX_BODY_BYTES:
            raise RequestError(f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(self.rfile.read(length))
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            raise RequestError("the request body is not valid JSON") from None

    def _not_found(self, path: str, *known: str):
        # A known path asked with the wrong method deserves a clearer answer than "not found".
        if path in known:
            return self._error(405, f"method {self.command} is not allowed on {path}", "invalid_request_error")
        self._error(404, f"unknown path {path}", "invalid_request_error")

    def _error(self, status: int, message: str, kind: str):
        self._json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})

    def _json(self, status: int, payload: dict):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


# -------------------------------------------------------------------------------------- running


def make_server(backend, host: str = "127.0.0.1", port: int = 0, log_requests: bool = False) -> ThreadingHTTPServer:
    """A bound, not yet running server. Loopback by default: there is no authentication."""
    server = ThreadingHTTPServer((host, port), Handler)
    server.backend = backend
    server.lock = threading.Lock()
    server.log_requests = log_requests
    return server


def serve(backend, host: str = "127.0.0.1", port: int = 0, log_requests: bool = False):
    """Serve `backend` from a daemon thread; returns (server, thread). Stop with server.shutdown()."""
    server = make_server(backend, host, port, log_requests)
    thread = threading.Thread(target=server.serve_forever, name="critkit-serve", daemon=True)
    thread.start()
    return server, thread


def run_server(model: str = "embedded", host: str = "127.0.0.1", port: int = 8000, batch_size: int = 8) -> None:
    """`critkit serve`: load a local model and serve it in the foreground until Ctrl-C."""
    from .backends import TransformersBackend

    # Each request is one conversation generated alone (n samples come from one batch row), so
    # batch_size does not change throughput yet; it matters once concurrent requests are batched.
    backend = TransformersBackend(model, batch_size=batch_size, progress=False)
    server = make_server(backend, host, port, log_requests=True)
    bound_host, bound_port = server.server_address[:2]
    print(f"serving {model} at http://{bound_host}:{bound_port}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
