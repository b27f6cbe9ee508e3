"""Greedy decoding with n > 1 through an OpenAI-compatible server that refuses it, as vLLM does.

vLLM's SamplingParams._verify_greedy_sampling answers a request with temperature 0 and n > 1 with
an error ("n must be 1 when using greedy sampling"); the transformers backend accepts it. The
HTTP backend asks for one greedy completion and repeats it, so `critkit eval --n 4` at temperature
0 works against a vLLM server too. The server here is a real HTTP server on loopback that answers
as vLLM does: 400 for greedy n > 1, else as many choices as asked.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from critkit.engine.backends import OpenAIBackend, Sampling
from synth_servers import write_reply


class _VllmLike(BaseHTTPRequestHandler):
    def do_POST(self):
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.payloads.append(payload)
        n, temperature = payload.get("n", 1), payload.get("temperature", 1.0)
        if temperature == 0 and n > 1:
            body = {"object": "error", "message": "n must be 1 when using greedy sampling.", "code": 400}
            write_reply(self, 400, {"Content-Type": "application/json"}, json.dumps(body).encode())
            return
        choices = [{"index": i, "message": {"role": "assistant", "content": f"answer {i} to {len(payload['messages'])}"},
                    "finish_reason": "stop"} for i in range(n)]
        body = {"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 3 * n}}
        write_reply(self, 200, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def log_message(self, format, *args):
        pass


@pytest.fixture
def vllm_like():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _VllmLike)
    server.payloads = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _backend(server) -> OpenAIBackend:
    return OpenAIBackend("m", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key_env="NO_SUCH_KEY",
                         progress=False, max_tries=1)


def test_greedy_n_asks_for_one_completion_and_repeats_it(vllm_like):
    replies = _backend(vllm_like).generate([[{"role": "user", "content": "2+2?"}]], Sampling(temperature=0, n=4))
    assert replies == [["answer 0 to 1"] * 4]
    assert [p["n"] for p in vllm_like.payloads] == [1]


def test_sampled_n_asks_for_n_completions(vllm_like):
    replies = _backend(vllm_like).generate([[{"role": "user", "content": "2+2?"}]], Sampling(temperature=0.7, n=3))
    assert replies == [[f"answer {i} to 1" for i in range(3)]]
    assert [p["n"] for p in vllm_like.payloads] == [3]


def test_the_server_refuses_greedy_n_as_vllm_does(vllm_like):
    """Negative control: the request the backend used to send is refused by this server."""
    import urllib.error
    import urllib.request

    url = f"http://127.0.0.1:{vllm_like.server_address[1]}/v1/chat/completions"
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0, "n": 4}).encode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, body, {"Content-Type": "application/json"}), timeout=5)
    assert err.value.code == 400
