"""`critkit eval` killed with SIGKILL at random moments, then resumed: the final samples.jsonl
and scores.json equal an uninterrupted run's, record for record; and `critkit run` resuming an
interrupted evaluation step.

Each command runs as a real subprocess. A kill lands after a random number of new journal lines
plus a few random milliseconds, so it falls between writes, in the middle of one, or during the
final rewrite. Before the last (unkilled) run, the journal is checked for repeated lines: a step
answered twice would mean a resume did again what was already done. Through HTTP, a proxy
answers a share of requests with faults (429, 500, an empty `choices`, malformed JSON, a cut body,
a reset, a hang past the timeout) and counts the answers it passed on, which bounds what the
resumes re-sent.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from critkit.cli import main
from eval_servers import FAULTS, FaultyProxy, StopAfter, SumsServer, first_tries_fail, make_chatty_model, sums_benchmark

CONCURRENCY = 4


def journal_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines(keepends=True)
    except FileNotFoundError:
        return []


def kill_repeatedly(command: list[str], journal: Path, rng: random.Random, log_dir: Path, runs: int = 4,
                    grow: tuple[int, int] = (1, 6), env: dict | None = None) -> int:
    """Start `command` `runs` times, each killed with SIGKILL once its journal has grown by a random
    number of lines (plus a few random milliseconds); how many were really killed (one may finish first)."""
    kills = 0
    for attempt in range(runs):
        with open(log_dir / f"run{attempt}.log", "wb") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            target = len(journal_lines(journal)) + rng.randint(*grow)
            deadline = time.monotonic() + 300  # bounded: never wait forever on a stuck child
            while child.poll() is None and len(journal_lines(journal)) < target and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
                kills += 1
            child.wait(timeout=60)
    return kills


def no_step_twice(journal: Path) -> int:
    """How many complete lines the journal has, checked to be all different (a step answered twice
    would repeat one) and all JSON (a line appended after a torn one without cutting it would not be)."""
    complete = [line for line in journal_lines(journal) if line.endswith(b"\n")]
    assert len(complete) == len(set(complete)), "a resumed run answered a step that was already answered"
    assert all(isinstance(json.loads(line), dict) for line in complete)
    return len(complete)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", [["--n", "2", "--temperature", "0.7"], ["--mode", "self-critique-2stage", "--rounds", "3"]],
                         ids=["n-samples", "self-critique-2stage"])
def test_http_eval_killed_repeatedly_behind_faulty_replies_equals_an_uninterrupted_run(mode, tmp_path, capsys):
    bench = tmp_path / "sums.jsonl"
    sums_benchmark(bench, 16, poison=(5,))  # s5 is refused (HTTP 400) every time: a failed sample, kept as such
    server = SumsServer(delay=0.01)  # one request at a time, ~100/s: a run takes a second or more
    options = ["--model", "sums", "--benchmarks", str(bench), "--concurrency", str(CONCURRENCY), "--timeout", "2",
               "--max-tries", "5", "--max-new-tokens", "32", *mode]
    proxy = FaultyProxy(server.url, first_tries_fail(0.5), hang=2.5)  # one proxy: its URL is in the failed sample's error
    try:
        assert main(["eval", "--base-url", proxy.url, "-o", str(tmp_path / "ref"), *options]) == 0
        capsys.readouterr()
        uninterrupted = proxy.answered
        proxy.server.attempts.clear()  # the same faults again for the runs to be killed
        proxy.server.faults.clear()
        out = tmp_path / "out"
        command = [sys.executable, "-m", "critkit", "eval", "--base-url", proxy.url, "-o", str(out), *options]
        journal = out / "sums" / "samples.jsonl"
        kills = kill_repeatedly(command, journal, random.Random(16), tmp_path)
        journaled = no_step_twice(journal)
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    finally:
        proxy.stop()
        server.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert kills >= 3 and journaled > 0  # the runs really were interrupted, with work saved
    assert "1 failed, not scored" in done.stdout and "HTTP 400" in done.stdout
    assert set(proxy.faults) == {*FAULTS, "400", "none"}, proxy.faults  # every kind of fault really happened
    # What the kills cost: at most the requests in flight at each kill were answered and then lost.
    assert proxy.answered - uninterrupted <= uninterrupted + kills * CONCURRENCY
    expected = rows(tmp_path / "ref" / "sums" / "samples.jsonl")
    assert [r["id"] for r in rows(journal)] == [f"sums-s{i}" for i in range(16)]  # none lost, none repeated
    assert rows(journal) == expected
    assert json.loads((out / "sums" / "scores.json").read_text()) == json.loads((tmp_path / "ref" / "sums" / "scores.json").read_text())


@pytest.fixture(scope="module")
def chatty_model(tmp_path_factory, embedded_model) -> str:
    return make_chatty_model(tmp_path_factory.mktemp("chatty"), embedded_model)


def test_transformers_eval_killed_repeatedly_equals_an_uninterrupted_run(chatty_model, tmp_path, capsys):
    bench = tmp_path / "sums.jsonl"
    sums_benchmark(bench, 24)
    options = ["--model", chatty_model, "--backend", "transformers", "--benchmarks", str(bench), "--batch-size", "2",
               "--max-new-tokens", "8"]
    assert main(["eval", "-o", str(tmp_path / "ref"), *options]) == 0  # greedy: the same answers however batched
    capsys.readouterr()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "critkit", "eval", "-o", str(out), *options]
    journal = out / "sums" / "samples.jsonl"
    kills = kill_repeatedly(command, journal, random.Random(17), tmp_path, runs=3, grow=(1, 5))
    journaled = len({json.loads(line)["id"] for line in journal_lines(journal)[:no_step_twice(journal)]})
    assert main(["eval", "-o", str(out), *options]) == 0  # the last run, in this process (torch is loaded already)
    assert kills >= 3 and journaled > 0
    # The last run generated exactly the samples no killed run had saved.
    assert f"this run sent {24 - journaled} requests (0 retries); {journaled} of 24 samples were done before" in capsys.readouterr().out
    expected = rows(tmp_path / "ref" / "sums" / "samples.jsonl")
    assert len({tuple(r["responses"]) for r in expected}) > 5  # varied answers: equal files mean something
    assert rows(journal) == expected
    assert json.loads((out / "sums" / "scores.json").read_text()) == json.loads((tmp_path / "ref" / "sums" / "scores.json").read_text())


def test_critkit_run_resumes_an_interrupted_eval_step(chatty_model, tmp_path, monkeypatch, capsys):
    """In process: the run's evaluation backend is stopped (as by Ctrl-C) after 7 answers of the base
    model; the next run is stopped once that step is done, before training."""
    from critkit import run as pipeline
    from critkit.engine.backends import TransformersBackend
    from critkit.evaluation.evaluate import evaluate_benchmark

    cfg = {
        "name": "resume", "output_dir": str(tmp_path / "run"), "model": chatty_model, "seed": 0,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 8, "test": 24}},
        "synth": {"teacher": "reference", "student": {"max_new_tokens": 4, "batch_size": 8}},
        "methods": ["sft-gold"],
        "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 128}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 8, "batch_size": 4},
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    real = pipeline.evaluation_backend
    monkeypatch.setattr(pipeline, "evaluation_backend", lambda cfg, path: StopAfter(real(cfg, path), 7))
    assert main(["run", str(config)]) == 130  # interrupted inside the step "eval base"
    journal = tmp_path / "run" / "eval" / "base" / "test" / "samples.jsonl"
    assert len(journal.read_text().splitlines()) == 7 and not (journal.parent / "scores.json").exists()

    monkeypatch.setattr(pipeline, "evaluation_backend", real)

    def stop_before_training(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_train_set", stop_before_training)
    capsys.readouterr()
    assert main(["run", str(config)]) == 130
    out = capsys.readouterr().out
    assert "[critkit] eval base ..." in out and "generated 17, 7 from an earlier run" in out  # resumed, not redone

    backend = TransformersBackend(chatty_model, batch_size=4, progress=False)
    backend.name = "base"
    evaluate_benchmark(backend, str(tmp_path / "run" / "records" / "test.jsonl"), tmp_path / "ref",
                       pipeline.evaluation_sampling(pipeline.load_run_config(str(config))))
    assert rows(journal) == rows(tmp_path / "ref" / "test" / "samples.jsonl")
