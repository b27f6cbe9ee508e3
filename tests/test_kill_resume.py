"""`critkit critique` killed with SIGKILL at random points, resumed each time: the final output
equals an uninterrupted run's, record for record.

The CLI runs as a real subprocess against the scripted teacher on loopback, slowed a little per
request so that each kill lands mid-run. Kills are placed after a random number of new output
lines plus a random few milliseconds, so they fall between writes, in the middle of a write, or
during the final rewrite.

The scripted teacher's replies depend only on the prompt, so equal files alone would also come
from a resume that sent every record again. The teacher therefore counts what it is asked: at most
N requests plus, per kill, what the client had sent and not yet written (its window of
2 x concurrency requests).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

from critkit.engine.backends import OpenAIBackend, Sampling
from critkit.synth.jobs import run_stage
from synth_servers import ScriptedServer

N = 80


def count_lines(path) -> int:
    try:
        with open(path, "rb") as fh:
            return sum(1 for _ in fh)
    except FileNotFoundError:
        return 0


def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": f"k{i}", "question": f"What is {i} * 3?", "response": f"{i * 3}"}) + "\n"
                           for i in range(N)))
    server = ScriptedServer(delay=0.02)  # ~50 requests/s: a run takes a couple of seconds
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "critkit", "critique", "-i", str(inp), "-o", str(out), "--teacher", "scripted",
               "--base-url", server.url, "--concurrency", "4", "--timeout", "30", "--temperature", "0.3"]
    rng = random.Random(20250101)
    kills = 0
    try:
        for attempt in range(4):
            log = open(tmp_path / f"run{attempt}.log", "wb")
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            start_lines, grow = count_lines(out), rng.randint(8, 18)
            deadline = time.monotonic() + 60  # bounded: never wait forever on a stuck child
            while child.poll() is None and count_lines(out) < start_lines + grow and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                kills += 1
            child.wait(timeout=30)
            log.close()
        # The last run is left to finish.
        journaled = out.read_bytes().count(b"\n") if out.exists() else 0  # finished lines a resume must not redo
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{N} records" in done.stdout and "failed 0" in done.stdout
        asked = server.teacher.calls

        reference = tmp_path / "uninterrupted.jsonl"
        client = OpenAIBackend("scripted", base_url=server.url, concurrency=4, timeout=30, progress=False)
        run_stage("critique", inp, reference, client, Sampling(temperature=0.3), progress=False)
        assert server.teacher.calls - asked == N  # the count is exact: one call per request
    finally:
        server.stop()

    assert kills >= 3  # the runs really were interrupted
    in_flight = 2 * 4  # the client's window at concurrency 4: sent, not yet in the journal
    assert N <= asked <= N + in_flight * kills, (asked, kills)
    # The bound can fail: a resume that re-sent the records already journaled would ask at least
    # N + journaled, and the kills were placed so that journaled exceeds what the kills may cost.
    assert journaled > in_flight * kills, (journaled, kills)
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in reference.read_text().splitlines()]
    assert [r["id"] for r in resumed] == [f"k{i}" for i in range(N)]  # none lost, none duplicated
    assert resumed == expected
