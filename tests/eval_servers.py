"""Loopback servers for the evaluation tests: a model that does sums behind critkit's own
OpenAI-compatible server, and a proxy that answers chosen requests with a fault instead; and two
wrappers of real backends, one that counts what it is asked and one stopped as by Ctrl-C; and a
tiny random model that says varied things.

The sums model answers "What is A + B?" with a worked sum that is wrong on the first A % 3 tries
(a try is the request's seed // 1000: self-critique-2stage shifts the seed by 1000 per solve), and
"Please critique ..." with a verdict on the solution it is shown, so the two-stage mode really
goes through several rounds. Equal requests always get equal replies: that is what lets a resumed
evaluation be compared with an uninterrupted one, record for record.

Both servers bind 127.0.0.1 only, and the proxy stops by itself after `lifetime` seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from critkit.engine.serve import serve
from synth_servers import InThread, write_reply

SUM = re.compile(r"What is (\d+) \+ (\d+)\?")


def sums_reply(conversation: list[dict], seed: int, k: int) -> str:
    text = conversation[-1]["content"]
    found = SUM.search(text)
    if found is None:
        return "I cannot tell."
    a, b = int(found.group(1)), int(found.group(2))
    if text.startswith("Please critique"):
        boxed = re.findall(r"\\boxed\{(\d+)\}", text)
        right = bool(boxed) and int(boxed[-1]) == a + b
        return "Each step checked.\nCritique Conclusion: " + ("Correct" if right else "Incorrect")
    total = a + b + (1 if (a + k) % 3 > seed // 1000 else 0)  # sample k of try seed // 1000
    return f"{a} + {b} makes {total}. \\boxed{{{total}}}"


class SumsModel:
    """A backend object for `critkit.engine.serve.serve`; counts the conversations it answers."""

    name = "sums"

    def __init__(self, delay: float = 0.0):
        self.delay, self.calls = delay, 0  # serve() holds a lock around generate: the count is exact

    def generate(self, conversations, sampling, desc=""):
        self.calls += len(conversations)
        if self.delay:
            time.sleep(self.delay)
        return [[sums_reply(c, sampling.seed, k) for k in range(sampling.n)] for c in conversations]


class SumsServer:
    def __init__(self, delay: float = 0.0):
        self.model = SumsModel(delay)
        self.server, self.thread = serve(self.model)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def sums_benchmark(path, n: int, poison: tuple[int, ...] = ()) -> list[dict]:
    """A benchmark file of n sums (records: id, question, gold); questions in `poison` say POISON."""
    rows = [{"id": f"s{i}", "question": f"What is {i} + {2 * i + 1}?" + (" POISON" if i in poison else ""),
             "gold": str(3 * i + 1)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# ------------------------------------------------------------------------------------ faults

FAULTS = ("429", "500", "empty", "malformed", "truncated", "reset", "timeout")


def first_tries_fail(rate: float, seed: int = 0, tries: int = 2, faults: tuple[str, ...] = FAULTS):
    """A policy: each of a request's first `tries` attempts gets a fault with probability `rate`,
    decided by a hash of (seed, body, attempt), the kinds taken in turn so that every one comes up;
    later attempts go through, so a client with more tries than that never fails for good.
    `POISON` requests always get HTTP 400 (not retried)."""
    turn = iter(range(10**9))

    def policy(body: bytes, attempt: int) -> str | None:  # called under the proxy's lock
        if b"POISON" in body:
            return "400"
        draw = int(hashlib.sha256(b"%d:%d:" % (seed, attempt) + body).hexdigest()[:8], 16) / 0xFFFFFFFF
        return faults[next(turn) % len(faults)] if attempt <= tries and draw < rate else None

    return policy


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        srv = self.server
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with srv.lock:
            srv.attempts[body] += 1
            fault = srv.policy(body, srv.attempts[body])
            srv.faults[fault or "none"] += 1
        if fault in ("400", "429", "500"):
            headers = {"Content-Type": "application/json", **({"Retry-After": "0"} if fault == "429" else {})}
            return write_reply(self, int(fault), headers, json.dumps({"error": {"message": f"injected {fault}"}}).encode())
        if fault == "empty":  # a 200 with no answer in it: what issue 16 saw stop a whole evaluation
            return write_reply(self, 200, {"Content-Type": "application/json"}, b'{"object": "chat.completion", "choices": []}')
        if fault == "malformed":
            return write_reply(self, 200, {"Content-Type": "application/json"}, b'{"choices": [{"message": {"content": "12')
        if fault == "timeout":
            time.sleep(srv.hang)  # longer than the client's timeout; then hang up without a word
            self.close_connection = True
            return
        if fault == "reset":
            # SO_LINGER 0: close() sends a TCP RST, which the client sees as "connection reset".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        req = urllib.request.Request(f"{srv.upstream}/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                status, reply = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, reply = exc.code, exc.read()
        if fault == "truncated":
            # Announce the whole body, send half, hang up: the client reads an incomplete reply.
            self.send_response(status)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply[: len(reply) // 2])
            self.close_connection = True
            return
        write_reply(self, status, {"Content-Type": "application/json"}, reply)
        if status == 200:
            with srv.lock:
                srv.answered += 1

    def log_message(self, format, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the injected resets make the handler's own final flush fail; that is the point


class FaultyProxy:
    """Forwards to `upstream`, except where `policy(body, attempt)` names one of FAULTS (or "400").

    `answered` counts the complete answers it passed on: the requests a client could use.
    """

    def __init__(self, upstream: str, policy, hang: float = 1.5, lifetime: float = 300.0):
        self.server = srv = _Server(("127.0.0.1", 0), _Handler)
        srv.upstream, srv.policy, srv.hang = upstream, policy, hang
        srv.lock, srv.attempts, srv.faults, srv.answered = threading.Lock(), Counter(), Counter(), 0
        self.served = InThread(srv, lifetime)  # stops by itself, whatever the test does
        self.url = self.served.url

    @property
    def answered(self) -> int:
        return self.server.answered

    @property
    def faults(self) -> Counter:
        return self.server.faults

    def stop(self) -> None:
        self.served.stop()


# ---------------------------------------------------------------------------------- wrappers


class StopAfter:
    """A real backend, stopped as by Ctrl-C after `replies` replies have been handed on.

    The reply that would come next is dropped with the exception, as a kill drops what is in flight.
    """

    def __init__(self, inner, replies: int):
        self.inner, self.name, self.left = inner, inner.name, replies

    def generate_each(self, conversations, sampling, on_result=None, desc=None):
        def relay(i, reply):
            if self.left == 0:
                raise KeyboardInterrupt
            self.left -= 1
            on_result(i, reply)

        return self.inner.generate_each(conversations, sampling, on_result=relay, desc=desc)


class Counting:
    """A real backend that counts the conversations it is asked to answer."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def generate_each(self, conversations, sampling, on_result=None, desc=None):
        self.calls += len(conversations)
        return self.inner.generate_each(conversations, sampling, on_result=on_result, desc=desc)


def make_chatty_model(path, tokenizer_source: str, seed: int = 0) -> str:
    """A tiny random Llama (2 layers) whose greedy answers are varied words, different per prompt:
    untied output weights drawn wide. (The shared tiny model answers blank lines, which would make
    any two runs look equal.)"""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, initializer_range=0.5)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
