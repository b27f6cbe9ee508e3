"""Client overhead of critkit's synthesis runner (stdlib + critkit only; not a test).

    python benchmarks/bench_synth_client.py [--requests 4000] [--records 100000]

1. Requests per second of `OpenAIBackend.generate_each` at concurrency 64 against an instant
   local server (critkit's own OpenAI-compatible server with a backend that answers at once, in
   a separate process so that client and server do not share one interpreter lock).
2. The same through the durable runner (`jobs.run_stage`): journal writes, fsyncs, the final
   rewrite and the summary included.
3. A 100K-record journal: the time to write it through the runner with an in-process instant
   teacher, the time to resume it when everything is done, and the time to resume it after a
   torn last line.

All traffic stays on 127.0.0.1 and every loop is bounded by the counts above.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from critkit.engine.backends import OpenAIBackend, Sampling
from critkit.synth.jobs import run_stage


class Instant:
    """A backend that answers at once with a fixed critique."""

    name = "instant"

    def generate(self, conversations, sampling, desc=""):
        return [["The steps check out.\nConclusion: right [END]"] * sampling.n for _ in conversations]


def serve_forever() -> None:
    from critkit.engine.serve import make_server

    server = make_server(Instant())
    server.request_queue_size = 256  # 64 clients connect at once; the default backlog of 5 drops SYNs
    print(server.server_address[1], flush=True)
    server.serve_forever()


def start_server() -> tuple[subprocess.Popen, str]:
    child = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    port = int(child.stdout.readline())
    return child, f"http://127.0.0.1:{port}/v1"


def write_input(path: Path, n: int) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"r{i}", "question": f"What is {i} + {i}?", "response": f"{i} + {i} = {2 * i}"}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve_forever()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}, load average {load:.1f} at start")
    sampling = Sampling(max_new_tokens=16)
    tmp = Path(tempfile.mkdtemp(prefix="critkit-bench-"))
    server, url = start_server()
    try:
        client = OpenAIBackend("instant", base_url=url, concurrency=args.concurrency, timeout=60, progress=False)
        convs = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(args.requests)]
        client.generate_each(convs[:200], sampling)  # warm up: threads, imports, the server's first connections
        start, cpu = time.perf_counter(), time.process_time()
        replies = client.generate_each(convs, sampling)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        failed = sum(not r.ok for r in replies)
        # CPU time of this (client) process alone: the server runs in another process.
        print(f"generate_each, concurrency {args.concurrency}: {args.requests} requests in {seconds:.2f} s = "
              f"{args.requests / seconds:.0f} requests/s ({failed} failed); client CPU {1000 * cpu / args.requests:.2f} ms/request")

        inp = tmp / "http_in.jsonl"
        write_input(inp, args.requests)
        start, cpu = time.perf_counter(), time.process_time()
        summary = run_stage("critique", inp, tmp / "http_out.jsonl", client, sampling, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        print(f"run_stage critique over HTTP, concurrency {args.concurrency}: {args.requests} records in {seconds:.2f} s = "
              f"{args.requests / seconds:.0f} records/s (done {summary['counts']['done']}, failed {summary['counts']['failed']}); "
              f"client CPU {1000 * cpu / args.requests:.2f} ms/record")
    finally:
        server.kill()
        server.wait()

    inp, out = tmp / "big_in.jsonl", tmp / "big_out.jsonl"
    write_input(inp, args.records)
    start = time.perf_counter()
    run_stage("critique", inp, out, Instant(), sampling, progress=False)
    first = time.perf_counter() - start
    size = out.stat().st_size
    print(f"{args.records} records through run_stage with an in-process instant teacher: {first:.1f} s "
          f"({args.records / first:.0f} records/s); journal {size / 1e6:.0f} MB")
    start = time.perf_counter()
    summary = run_stage("critique", inp, out, Instant(), sampling, progress=False)
    resume = time.perf_counter() - start
    assert summary["this_run"]["resumed"] == args.records and summary["this_run"].get("sent", 0) == 0
    print(f"resume of a finished {args.records}-record journal (read, key, check, rewrite, summarize): {resume:.1f} s")
    with open(out, "ab") as fh:
        fh.write(b'{"id": "torn", "question": "cut off mid-li')
    lines = out.read_bytes().splitlines()
    out.write_bytes(b"\n".join(lines[:-101]) + b"\n" + lines[-1])  # 100 records lost and a torn line
    start = time.perf_counter()
    summary = run_stage("critique", inp, out, Instant(), sampling, progress=False)
    torn = time.perf_counter() - start
    assert summary["this_run"]["done"] == 100 and summary["records"] == args.records
    print(f"resume after a kill (100 records missing, torn last line): {torn:.1f} s; {summary['journal_problems'][0]}")


if __name__ == "__main__":
    main()
