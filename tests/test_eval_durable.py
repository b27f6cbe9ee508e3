"""Durable evaluation (evaluation/durable.py): what an interruption, a torn line, other settings, a
second writer, an empty reply and a request that keeps failing do to an evaluation, in process,
against real servers on loopback and real (tiny) models. The SIGKILL tests are in
test_eval_kill_resume.py."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from critkit.cli import main
from critkit.data.journal import JobError, JournalFile
from critkit.engine.backends import OpenAIBackend, Sampling, TransformersBackend
from critkit.evaluation.evaluate import evaluate_benchmark
from eval_servers import Counting, FaultyProxy, StopAfter, SumsServer, make_chatty_model, sums_benchmark

MODES = {  # mode -> (sampling, rounds)
    "direct --n 3": (Sampling(n=3, temperature=0.7, max_new_tokens=32), 8),
    "self-critique": (Sampling(max_new_tokens=32), 8),
    "self-critique-2stage --rounds 3": (Sampling(max_new_tokens=32), 3),
}


@pytest.fixture
def sums():
    server = SumsServer()
    yield server
    server.stop()


def client(url: str, **options) -> OpenAIBackend:
    return OpenAIBackend("sums", base_url=url, concurrency=4, timeout=30, progress=False, **options)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("mode", MODES)
def test_an_interrupted_evaluation_resumes_sending_only_what_is_missing(mode, sums, tmp_path):
    sampling, rounds = MODES[mode]
    name = mode.split()[0]
    bench = tmp_path / "sums.jsonl"
    sums_benchmark(bench, 12)
    reference = evaluate_benchmark(client(sums.url), str(bench), tmp_path / "ref", sampling, mode=name, rounds=rounds)
    requests = sums.model.calls  # what one uninterrupted evaluation asks
    if name == "self-critique-2stage":
        assert requests > 2 * 12 and reference["mean_attempts"] > 1  # several rounds were really gone through

    out = tmp_path / "out" / "sums" / "samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmark(StopAfter(client(sums.url), 7), str(bench), tmp_path / "out", sampling, mode=name, rounds=rounds)
    assert len(lines(out)) == 7  # every reply handed on was written at once, one line each
    with open(out, "ab") as fh:  # and a crash in the middle of the next write
        fh.write(out.read_bytes()[:50])

    # Resumed, and stopped again: the torn line is cut off before anything is appended after it.
    with pytest.raises(KeyboardInterrupt):
        evaluate_benchmark(StopAfter(client(sums.url), 3), str(bench), tmp_path / "out", sampling, mode=name, rounds=rounds)
    assert len(lines(out)) == 10

    before = sums.model.calls
    resumed = evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", sampling, mode=name, rounds=rounds)
    assert sums.model.calls - before == requests - 10  # the 10 journaled steps were not asked again
    assert resumed["this_run"]["sent"] == requests - 10 and not resumed["this_run"]["journal_problems"]
    assert out.read_bytes() == (tmp_path / "ref" / "sums" / "samples.jsonl").read_bytes()  # record for record, byte for byte
    assert {k: v for k, v in resumed.items() if k != "this_run"} == {k: v for k, v in reference.items() if k != "this_run"}

    before = sums.model.calls  # finished: a rerun sends nothing and leaves the file as it is
    assert evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", sampling, mode=name, rounds=rounds)["this_run"]["sent"] == 0
    assert sums.model.calls == before and out.read_bytes() == (tmp_path / "ref" / "sums" / "samples.jsonl").read_bytes()


def test_other_settings_a_second_writer_and_changed_questions(sums, tmp_path):
    bench = tmp_path / "sums.jsonl"
    rows = sums_benchmark(bench, 4)
    sampling = Sampling(max_new_tokens=32)
    evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", sampling)
    out = tmp_path / "out" / "sums" / "samples.jsonl"
    before = out.read_bytes()
    with pytest.raises(JobError, match=r"samples.jsonl:1: sample 'sums-s0' was made by sums with other settings"):
        evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", Sampling(max_new_tokens=64))
    with pytest.raises(JobError, match="other settings"):
        evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", sampling, mode="self-critique")
    holder = JournalFile(out)  # another process writing the same file
    try:
        with pytest.raises(JobError, match="being written by another critkit process"):
            evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", sampling)
    finally:
        holder.close()
    assert out.read_bytes() == before

    # A question that changed is asked again; its old sample was paid for, so it is moved aside.
    old = lines(out)[1]
    rows[1]["question"] = "What is 100 + 1?"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    calls = sums.model.calls
    again = evaluate_benchmark(client(sums.url), str(bench), tmp_path / "out", sampling)
    assert sums.model.calls == calls + 1 and again["this_run"]["superseded"] == 1
    assert lines(out)[1]["responses"] == ["100 + 1 makes 102. \\boxed{102}"]
    assert lines(out.with_name("samples.superseded.jsonl")) == [old]


def test_an_empty_reply_is_tried_again_like_any_garbled_one(sums, tmp_path):
    """Issue 16: one 200 reply with an empty `choices` stopped a whole evaluation and saved nothing."""
    bench = tmp_path / "sums.jsonl"
    sums_benchmark(bench, 6)
    proxy = FaultyProxy(sums.url, lambda body, attempt: "empty" if attempt == 1 else None)
    try:
        scores = evaluate_benchmark(client(proxy.url, max_tries=2, backoff=0.01), str(bench), tmp_path / "out", Sampling())
        assert proxy.faults["empty"] == 6 and scores["failed"] == 0 and scores["answered"] == 6
        # Negative control: with one try, every sample fails with the reason, and none is scored.
        proxy.server.attempts.clear()
        scores = evaluate_benchmark(client(proxy.url, max_tries=1), str(bench), tmp_path / "once", Sampling())
    finally:
        proxy.stop()
    assert scores["failed"] == 6 and scores["answered"] == 0 and scores["accuracy"] is None
    assert all("reply has no choices" in row["error"] and "correct" not in row
               for row in lines(tmp_path / "once" / "sums" / "samples.jsonl"))


def test_a_request_that_keeps_failing_is_a_failed_sample_shown_and_retried(sums, tmp_path, capsys):
    """Failed after the last try: recorded with its reason, never scored as a wrong answer, shown in
    scores.json, the command's output and the report, and asked again with --retry-failed."""
    from critkit.report.samples import RunSamples
    from critkit.report.tables import write_report

    bench = tmp_path / "sums.jsonl"
    sums_benchmark(bench, 4, poison=(1,))  # the sums model gets s0 and s3 right, s1 and s2 wrong
    broken = {"on": True}
    proxy = FaultyProxy(sums.url, lambda body, attempt: "500" if broken["on"] and b"POISON" in body else None)
    run = tmp_path / "run"
    command = ["eval", "--model", "sums", "--base-url", proxy.url, "--benchmarks", str(bench), "-o", str(run / "eval" / "m"),
               "--max-tries", "2", "--max-new-tokens", "32"]
    try:
        assert main(command) == 0
        out = capsys.readouterr().out
        scores = json.loads((run / "eval" / "m" / "sums" / "scores.json").read_text())
        assert scores["n"] == 4 and scores["failed"] == 1 and scores["answered"] == 3 and scores["correct"] == 2
        assert scores["accuracy"] == pytest.approx(2 / 3)  # scored as wrong, it would be 2/4
        assert "gave up after 2 tries" in scores["failed_examples"][0]["error"]
        assert "| sums | 66.7 | 4 | 1 |" in out and "1 failed, not scored" in out and "--retry-failed" in out
        failed = lines(run / "eval" / "m" / "sums" / "samples.jsonl")[1]
        assert failed["job"]["status"] == "failed" and "HTTP 500" in failed["error"] and "correct" not in failed

        # The reports: the table says how many answered and failed, the paired difference and the
        # sample browser leave the failed sample out of the grading ("no grade", marked failed).
        shutil.copytree(run / "eval" / "m", run / "eval" / "base")
        write_report(run / "eval", ["base", "m"], ["sums"], run)
        assert "66.7 (2/3 answered, 1 failed)" in (run / "report.md").read_text()
        assert json.loads((run / "results.json").read_text())["m"]["delta_vs_base"][0]["n"] == 3
        index = RunSamples(run)
        ref = next(r for r in index.refs if r.key == "sums/sums-s1")
        assert ref.failed and ref.scores["m"] is None

        broken["on"] = False  # the server is fixed: a plain rerun keeps the failure, --retry-failed asks again
        before = sums.model.calls
        assert main(command) == 0 and sums.model.calls == before
        assert main(command + ["--retry-failed"]) == 0 and sums.model.calls == before + 1
        assert "1 failed ones tried again" in capsys.readouterr().out
        assert main(["eval", "--model", "sums", "--base-url", proxy.url, "--benchmarks", str(bench), "-o", str(tmp_path / "clean"),
                     "--max-new-tokens", "32"]) == 0
    finally:
        proxy.stop()
    assert lines(run / "eval" / "m" / "sums" / "samples.jsonl") == lines(tmp_path / "clean" / "sums" / "samples.jsonl")
    assert json.loads((run / "eval" / "m" / "sums" / "scores.json").read_text())["failed"] == 0


def test_a_line_is_fsynced_without_waiting_for_the_next_one(tmp_path, monkeypatch):
    """The journal's promise: fsync'd at least once a second, also when no other line follows."""
    journal = JournalFile(tmp_path / "j.jsonl")
    synced = threading.Event()
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (real(fd), fd == journal.fd and synced.set()))
    try:
        journal.write(b'{"id": 1}\n')
        assert synced.wait(timeout=30)  # by the background syncer: nothing else is written or closed
    finally:
        journal.close()


# --------------------------------------------------------------------- local models: select, probe


@pytest.fixture(scope="module")
def chatty_models(tmp_path_factory, embedded_model) -> list[str]:
    return [make_chatty_model(tmp_path_factory.mktemp(f"chatty{seed}"), embedded_model, seed) for seed in (0, 1)]


def test_an_interrupted_checkpoint_selection_resumes_the_candidate_it_was_on(chatty_models, tmp_path):
    from critkit.evaluation.select import select_checkpoint

    folder = tmp_path / "models" / "m"
    for name, source in (("checkpoint-1", chatty_models[0]), ("final", chatty_models[1])):
        shutil.copytree(source, folder / name)
    (folder / "checkpoint-1" / "trainer_state.json").write_text("{}")
    validation = tmp_path / "validation.jsonl"
    sums_benchmark(validation, 10)
    sampling = Sampling(max_new_tokens=6)
    made: list[Counting] = []

    def load(path, stop_after=None):
        backend = TransformersBackend(path, batch_size=3, progress=False)
        made.append(Counting(StopAfter(backend, stop_after) if stop_after is not None else backend))
        return made[-1]

    reference = select_checkpoint(folder, "m", str(validation), tmp_path / "ref", load, sampling)
    (folder / "selection.json").unlink()
    # Stopped on the second candidate, after its 4th answer.
    calls = iter([None, 4])
    with pytest.raises(KeyboardInterrupt):
        select_checkpoint(folder, "m", str(validation), tmp_path / "sel", lambda path: load(path, next(calls)), sampling)
    made.clear()
    record = select_checkpoint(folder, "m", str(validation), tmp_path / "sel", load, sampling)
    assert [m.calls for m in made] == [6]  # checkpoint-1 was done, final had 4 of 10: 6 left, nothing redone
    assert record["scores"] == reference["scores"] and record["best"] == reference["best"]
    for name in ("checkpoint-1", "final"):
        resumed = lines(tmp_path / "sel" / name / "validation" / "samples.jsonl")
        assert resumed == lines(tmp_path / "ref" / name / "validation" / "samples.jsonl")
    assert len({tuple(r["responses"]) for r in resumed}) > 3  # varied answers: equal files mean something


def test_an_interrupted_counterfactual_probe_resumes(chatty_models, tmp_path, monkeypatch):
    from critkit.diagnostics import counterfactual as probe
    from critkit.diagnostics import run_probe

    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps({"id": f"r{i}", "question": f"What is {i} + 1?", "response": f"It is {i}.",
                                           "critique": f"The sum is off by one in step {i}.", "refined": f"{i} + 1 = {i + 1}",
                                           "gold": str(i + 1)}) + "\n" for i in range(6)))
    options = {"max_new_tokens": 5, "batch_size": 4}
    reference = run_probe("counterfactual", records, [chatty_models[0]], labels=["m"], output=tmp_path / "ref", **options)
    made: list[Counting] = []

    def backend(name, stop_after=None, **kwargs):
        inner = TransformersBackend(name, **kwargs)
        made.append(Counting(StopAfter(inner, stop_after) if stop_after is not None else inner))
        return made[-1]

    monkeypatch.setattr(probe, "TransformersBackend", lambda name, **kw: backend(name, 5, **kw))
    with pytest.raises(KeyboardInterrupt):
        run_probe("counterfactual", records, [chatty_models[0]], labels=["m"], output=tmp_path / "out", **options)
    monkeypatch.setattr(probe, "TransformersBackend", backend)
    made.clear()
    result = run_probe("counterfactual", records, [chatty_models[0]], labels=["m"], output=tmp_path / "out", **options)
    assert [m.calls for m in made] == [7]  # 12 answers (6 records x 2 critiques), 5 kept from the stopped run
    assert result["samples"] == reference["samples"] and result["results"] == reference["results"]
    made.clear()  # all answered: the model is not even loaded
    assert run_probe("counterfactual", records, [chatty_models[0]], labels=["m"], output=tmp_path / "out", **options)["samples"] \
        == reference["samples"] and made == []
