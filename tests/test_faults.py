"""The HTTP client and the durable runner under faults, against real servers on loopback.

A fault-injecting proxy sits in front of a fast scripted teacher and answers 30% of requests with
429, 500, a hang past the client's timeout, malformed JSON, a truncated body, an answer cut at
max_tokens, or a connection reset. Every record must end done or failed with its reason; none may
be lost or duplicated, and no garbled reply may be taken for an answer.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from critkit.engine.backends import OpenAIBackend, RateLimiter, Sampling
from critkit.synth.jobs import format_summary, run_stage
from critkit.prompts import load_prompt, render
from synth_servers import FAULTS, FaultProxy, ScriptedServer, scripted_reply, write_reply

SAMPLING = Sampling(temperature=0.3, top_p=0.95, max_new_tokens=64)


def critique_messages(question: str, response: str) -> list[dict]:
    return [{"role": "system", "content": load_prompt("cft_critique_system")},
            {"role": "user", "content": render("cft_critique_user", question=question, response=response)}]


def write_input(path, n: int, poison: int = 0) -> dict[str, dict]:
    rows = {}
    for i in range(n):
        question = f"What is {i} + {i + 1}? POISON" if i < poison else f"What is {i} + {i + 1}?"
        rows[f"r{i}"] = {"id": f"r{i}", "question": question, "response": f"{i} + {i + 1} = {2 * i + 1}. \\boxed{{{2 * i + 1}}}"}
    lines = [json.dumps(r) for r in rows.values()]
    # Bad input: reported with its line, never stops the others.
    lines.insert(3, "{this is not json")
    lines.insert(7, json.dumps({"id": "no-question", "response": "4"}))
    path.write_text("\n".join(lines) + "\n")
    return rows


def read_output(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def upstream():
    server = ScriptedServer()
    yield server
    server.stop()


def test_thirty_percent_faults_every_record_done_or_failed_with_reason(tmp_path, upstream):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = write_input(inp, 90, poison=3)
    proxy = FaultProxy(upstream.url, rate=0.3, seed=7, hang=1.5, poison="POISON", max_requests=2000)
    try:
        client = OpenAIBackend("scripted", base_url=proxy.url, concurrency=8, timeout=1.0, max_tries=6, backoff=0.01,
                               backoff_max=0.05, progress=False)
        summary = run_stage("critique", inp, out, client, SAMPLING, progress=False)
        print(format_summary(summary))

        records = read_output(out)
        ids = [r["id"] for r in records]
        assert sorted(ids) == sorted(rows) and len(ids) == len(set(ids))  # none lost, none duplicated
        assert ids == list(rows)  # and in input order
        assert summary["counts"]["done"] + summary["counts"]["failed"] == 90
        assert [p.split(": ", 1)[0] for p in summary["bad_input"]] == [f"{inp}:4", f"{inp}:8"]
        assert set(proxy.faults) == {*FAULTS, "poison"}  # every kind of fault really happened

        for rec in records:
            job = rec["meta"]["jobs"]["critique"]
            expected = scripted_reply(critique_messages(rows[rec["id"]]["question"], rows[rec["id"]]["response"]))
            if job["status"] == "failed":
                assert job["error"] and rec["critique"] is None
            elif job.get("finish_reason") == "length":
                # Cut at max_tokens: kept, but marked, and never more than the real answer.
                assert expected.startswith(rec["critique"]) and rec["critique"] != expected
            else:
                assert job["status"] == "done" and rec["critique"] == expected
        failed = {r["id"] for r in records if r["meta"]["jobs"]["critique"]["status"] == "failed"}
        assert {"r0", "r1", "r2"} <= failed  # the poisoned ones can never succeed
        for rec in records[:3]:
            assert "HTTP 500" in rec["meta"]["jobs"]["critique"]["error"]
            assert "gave up after 6 tries" in rec["meta"]["jobs"]["critique"]["error"]
        assert summary["truncated_at_max_tokens"] == sum(
            1 for r in records if r["meta"]["jobs"]["critique"].get("finish_reason") == "length")

        # A plain rerun sends nothing: failed records stay failed until asked.
        before = proxy.count
        again = run_stage("critique", inp, out, client, SAMPLING, progress=False)
        assert proxy.count == before and again["counts"] == summary["counts"]
        assert read_output(out) == records

        # --retry-failed with the poison gone takes up exactly the failed ones.
        proxy.server.poison, proxy.server.rate = None, 0.0
        done_before = {r["id"]: r for r in records if r["id"] not in failed}
        retried = run_stage("critique", inp, out, client, SAMPLING, retry_failed=True, progress=False)
        assert retried["this_run"]["sent"] == len(failed)
        final = read_output(out)
        assert [r["id"] for r in final] == list(rows)
        assert all(r["meta"]["jobs"]["critique"]["status"] == "done" for r in final)
        assert {r["id"]: r for r in final if r["id"] in done_before} == done_before  # untouched
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- one request


class Sequence(BaseHTTPRequestHandler):
    """Answers with the next (status, headers, body) of `server.script`, the last one forever."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.seen += 1
            status, headers, body = self.server.script[min(self.server.seen, len(self.server.script)) - 1]
        write_reply(self, status, headers, body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def scripted_http():
    servers = []

    def start(*script):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Sequence)
        server.script, server.seen, server.lock = list(script), 0, threading.Lock()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


OK = (200, {}, json.dumps({"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode())
CONV = [[{"role": "user", "content": "hello"}]]


class FakeClock:
    """Time that moves only when someone sleeps: the client's waits, checked without waiting.

    Given to OpenAIBackend as `clock` and `sleep`, it is what the token buckets read and what the
    backoff between tries sleeps on, so a client that recorded a wait without sleeping it (or slept
    without recording it) shows here. With concurrency 1 there is one sleeper at a time.
    """

    def __init__(self):
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def fake_time_client(url: str, **options) -> tuple[OpenAIBackend, FakeClock]:
    clock = FakeClock()
    client = OpenAIBackend("m", base_url=url, progress=False, timeout=10, concurrency=1, clock=clock, sleep=clock.sleep,
                           **options)
    return client, clock


@pytest.mark.parametrize("headers, expected", [({"Retry-After": "0.3"}, 0.3), ({"retry-after-ms": "250"}, 0.25)])
def test_retry_after_is_honoured(scripted_http, headers, expected):
    url, server = scripted_http((429, headers, b'{"error": {"message": "slow down"}}'), OK)
    client, clock = fake_time_client(url, max_tries=3, backoff=5.0)
    (reply,) = client.generate_each(CONV, Sampling(max_new_tokens=4))
    # The wait is the server's, not the (here much longer) backoff; it was slept, and recorded as slept.
    assert reply.ok and reply.texts == ["fine"] and reply.tries == 2 and server.seen == 2
    assert clock.slept == [pytest.approx(expected)] and reply.waited == pytest.approx(expected)
    assert client.usage == {"prompt_tokens": 5, "completion_tokens": 1}


def test_backoff_is_full_jitter_under_the_cap_and_every_wait_is_slept(scripted_http):
    url, server = scripted_http((503, {}, b"busy"), (503, {}, b"busy"), (503, {}, b"busy"), OK)
    client, clock = fake_time_client(url, max_tries=4, backoff=1.0, backoff_max=1.5)
    (reply,) = client.generate_each(CONV, Sampling(max_new_tokens=4))
    assert reply.ok and reply.tries == 4 and server.seen == 4
    assert len(clock.slept) == 3  # one wait between each two tries
    for k, (wait, cap) in enumerate(zip(clock.slept, [1.0, 1.5, 1.5]), start=1):  # min(backoff_max, backoff * 2**(k-1))
        assert 0 <= wait <= cap, (k, wait)
    assert reply.waited == pytest.approx(sum(clock.slept)) == pytest.approx(clock.now)


def test_client_errors_are_not_retried_and_failures_are_per_request(scripted_http):
    url, server = scripted_http((400, {}, b'{"error": {"message": "bad model"}}'))
    client, clock = fake_time_client(url, max_tries=5, backoff=0.01)
    replies = client.generate_each(CONV * 3, Sampling(max_new_tokens=4))
    assert [r.tries for r in replies] == [1, 1, 1] and server.seen == 3 and clock.slept == []
    assert all(not r.ok and "HTTP 400" in r.error and "bad model" in r.error for r in replies)


def test_server_errors_are_retried_up_to_max_tries(scripted_http):
    url, server = scripted_http((503, {}, b"busy"))
    client, clock = fake_time_client(url, max_tries=4, backoff=0.01, backoff_max=0.02)
    (reply,) = client.generate_each(CONV, Sampling(max_new_tokens=4))
    assert not reply.ok and reply.tries == 4 and server.seen == 4 and len(clock.slept) == 3
    assert "HTTP 503" in reply.error and "gave up after 4 tries" in reply.error


def test_requests_per_minute_bind(scripted_http):
    url, server = scripted_http(OK)
    client, clock = fake_time_client(url, rpm=2)  # a minute's budget of 2 at once, then one every 30 s
    replies = client.generate_each(CONV * 5, Sampling(max_new_tokens=4))
    assert all(r.ok for r in replies) and server.seen == 5
    assert [r.waited for r in replies] == [0, 0, pytest.approx(30), pytest.approx(30), pytest.approx(30)]
    assert clock.now == pytest.approx(90)


def usage_reply(usage: dict | None) -> tuple:
    body = {"choices": [{"message": {"content": "fine"}, "finish_reason": "stop"}]}
    return 200, {}, json.dumps({**body, **({"usage": usage} if usage else {})}).encode()


def test_tokens_per_minute_are_corrected_from_the_replys_usage(scripted_http):
    """Each request is charged its estimate before it is sent ("hello": 5 / 4 characters + 100
    max tokens = 101.25 of a 150-token bucket), then refunded down to the 6 tokens the reply's usage
    says it cost, so the next requests go at once. Without usage in the reply nothing is refunded
    and the same requests wait for the bucket (the control)."""
    url, server = scripted_http(usage_reply({"prompt_tokens": 5, "completion_tokens": 1}))
    client, clock = fake_time_client(url, tpm=150)
    replies = client.generate_each(CONV * 3, Sampling(max_new_tokens=100))
    assert all(r.ok for r in replies) and server.seen == 3
    assert clock.now == 0 and [r.waited for r in replies] == [0, 0, 0]
    assert client.tpm.level == pytest.approx(150 - 3 * 6)  # the bucket is down by what usage says was spent

    url, _ = scripted_http(usage_reply(None))
    client, clock = fake_time_client(url, tpm=150)
    replies = client.generate_each(CONV * 3, Sampling(max_new_tokens=100))
    # 48.75 left after the first: the second waits (101.25 - 48.75) / 2.5 tokens per second, the third 101.25 / 2.5.
    assert [r.waited for r in replies] == [0, pytest.approx(21), pytest.approx(40.5)]
    assert clock.now == pytest.approx(61.5)


def test_token_bucket_keeps_the_rate():
    clock = FakeClock()
    bucket = RateLimiter(60, clock=clock, sleep=clock.sleep)  # 60 per minute = 1 per second
    for _ in range(60):
        bucket.acquire()
    assert clock.now == 0  # a minute's budget may go at once, as providers count per minute
    for _ in range(30):
        bucket.acquire()
    assert clock.now == pytest.approx(30)  # then one per second
    tokens = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    start = clock.now
    tokens.acquire(5000)  # larger than the bucket: let through when full, leaving a debt
    tokens.acquire(500)
    assert clock.now - start == pytest.approx((4000 + 500) / (1000 / 60))
    tokens.refund(4000)  # the request used less than estimated: the debt is paid back
    assert tokens.level == pytest.approx(1000)
