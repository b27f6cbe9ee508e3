"""The durable stage runner (critkit/jobs.py) against a real scripted server on loopback:
resume, torn lines, the request cache, refusals, shards and merge, accounting, verification."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from critkit.engine.backends import OpenAIBackend, Sampling
from critkit.cli import main
from critkit.grading.thinking import UNCLOSED_THINKING
from critkit.grading.verdicts import parse_verdict
from critkit.synth.jobs import Journal, JobError, format_summary, merge_shards, run_stage, shard_of
from critkit.training.methods import build_pairs
from critkit.data.records import read_records
from synth_servers import ScriptedServer

SAMPLING = Sampling(temperature=0.3, top_p=0.95, max_new_tokens=64)


@pytest.fixture
def upstream():
    server = ScriptedServer()
    yield server
    server.stop()


def client(server: ScriptedServer, **options) -> OpenAIBackend:
    return OpenAIBackend("scripted", base_url=server.url, concurrency=4, timeout=30, progress=False, **options)


def write(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_rows(n: int, gold: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"id": f"q{i}", "question": f"What is {i} + 2?", "response": f"It is {i + 2 + i % 2}. \\boxed{{{i + 2 + i % 2}}}"}
        if gold:
            row["gold"] = str(i + 2)  # odd i: the response is wrong
        rows.append(row)
    return rows


def lines(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_resume_skips_finished_work_and_drops_a_torn_last_line(tmp_path, upstream):
    inp, out = write(tmp_path / "in.jsonl", make_rows(20)), tmp_path / "out.jsonl"
    first = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    assert first["counts"]["done"] == 20 and upstream.teacher.calls == 20
    complete = out.read_bytes()

    # As after a kill -9: the last 5 items never written, and the 6th from last torn mid-line.
    kept = complete.splitlines(keepends=True)[:14]
    out.write_bytes(b"".join(kept) + complete.splitlines(keepends=True)[14][:40])
    again = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    assert upstream.teacher.calls == 26  # only the 6 missing ones were sent
    assert again["this_run"]["resumed"] == 14 and again["this_run"]["sent"] == 6
    assert any(":15: torn last line" in p for p in again["journal_problems"])
    assert out.read_bytes() == complete  # same file, byte for byte, in input order

    # Nothing left to do: nothing is sent, the file does not change.
    run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    assert upstream.teacher.calls == 26 and out.read_bytes() == complete


def test_identical_requests_are_sent_once(tmp_path, upstream):
    rows = make_rows(4)
    rows += [{**rows[0], "id": "copy-a"}, {**rows[1], "id": "copy-b"}, {**rows[0], "id": "copy-c"}]
    inp, out = write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    summary = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    assert upstream.teacher.calls == 4 and summary["this_run"]["cached"] == 3
    recs = {r["id"]: r for r in lines(out)}
    assert recs["copy-a"]["critique"] == recs["copy-c"]["critique"] == recs["q0"]["critique"]
    assert recs["copy-a"]["meta"]["jobs"]["critique"]["cached"] is True
    # Accounting bills the request once.
    (usage,) = summary["usage"]
    assert usage["requests"] == 4 and usage["cached"] == 3

    # Across runs: a new record asking the same as a finished one is answered from the journal.
    write(inp, rows + [{**rows[2], "id": "late-copy"}])
    summary = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    assert upstream.teacher.calls == 4 and summary["this_run"]["cached"] == 1
    assert {r["id"]: r for r in lines(out)}["late-copy"]["critique"] == recs["q2"]["critique"]


def test_changed_settings_another_writer_and_wrong_paths_are_refused(tmp_path, upstream):
    inp, out = write(tmp_path / "in.jsonl", make_rows(3)), tmp_path / "out.jsonl"
    run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    before = out.read_bytes()
    with pytest.raises(JobError, match=r"out.jsonl:1: record 'q0' was made by .* other settings"):
        run_stage("critique", inp, out, client(upstream), Sampling(temperature=1.0), progress=False)
    with pytest.raises(JobError, match="other settings"):
        run_stage("critique", inp, out, client(upstream), SAMPLING, style="cgd", progress=False)
    with pytest.raises(JobError, match="belongs to shard none"):
        run_stage("critique", inp, out, client(upstream), SAMPLING, shard=(0, 2), progress=False)
    holder = Journal(out, "critique")  # another process holding the file
    try:
        with pytest.raises(JobError, match="being written by another critkit process"):
            run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    finally:
        holder.close()
    with pytest.raises(JobError, match="another file than the input"):
        run_stage("critique", inp, inp, client(upstream), SAMPLING, progress=False)
    with pytest.raises(JobError, match="name the output .jsonl"):
        run_stage("critique", inp, tmp_path / "out.parquet", client(upstream), SAMPLING, progress=False)
    foreign = write(tmp_path / "foreign.jsonl", make_rows(1))
    with pytest.raises(JobError, match="not written by `critkit critique`"):
        run_stage("critique", inp, foreign, client(upstream), SAMPLING, progress=False)
    assert out.read_bytes() == before


def test_changed_input_is_redone_and_old_lines_moved_aside(tmp_path, upstream):
    rows = make_rows(4)
    inp, out = write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    old = {r["id"]: r for r in lines(out)}
    rows[1]["response"] = "A different answer. \\boxed{0}"
    write(inp, rows[:3])  # q1 changed, q3 gone
    summary = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    assert upstream.teacher.calls == 5 and summary["superseded"]["records"] == 2
    assert [r["id"] for r in lines(out)] == ["q0", "q1", "q2"]
    aside = lines(tmp_path / "out.superseded.jsonl")
    assert aside == [old["q1"], old["q3"]] or aside == [old["q3"], old["q1"]]  # paid for, so kept


def test_shards_merge_back_to_the_unsharded_output(tmp_path, upstream):
    rows = make_rows(30)
    inp = write(tmp_path / "in.jsonl", rows)
    whole = tmp_path / "whole.jsonl"
    run_stage("critique", inp, whole, client(upstream), SAMPLING, progress=False)
    parts = []
    for i in range(3):
        part = tmp_path / f"shard{i}.jsonl"
        summary = run_stage("critique", inp, part, client(upstream), SAMPLING, shard=(i, 3), progress=False)
        assert {r["id"] for r in lines(part)} == {r["id"] for r in rows if shard_of(r["id"], 3) == i}
        assert summary["shard"] == f"{i}/3"
        parts.append(part)
    merged = tmp_path / "merged.jsonl"
    summary = merge_shards(parts, merged)
    assert summary["counts"]["done"] == 30

    def strip(r):  # the shard label is the only difference
        r["meta"]["jobs"]["critique"].pop("shard", None)
        return r

    assert [strip(r) for r in lines(merged)] == lines(whole)

    with pytest.raises(JobError, match=r"gap: shard\(s\) 1/3 missing"):
        merge_shards([parts[0], parts[2]], tmp_path / "m2.jsonl")
    with pytest.raises(JobError, match="overlap: shard 2/3 is given 2 times"):
        merge_shards([*parts, parts[2]], tmp_path / "m3.jsonl")
    other = tmp_path / "shard1of2.jsonl"
    run_stage("critique", inp, other, client(upstream), SAMPLING, shard=(1, 2), progress=False)
    with pytest.raises(JobError, match="different splits"):
        merge_shards([*parts, other], tmp_path / "m4.jsonl")
    # A shard whose run did not finish: a record is missing inside it.
    cut = lines(parts[1])[:-1]
    write(parts[1], cut)
    with pytest.raises(JobError, match="gap: 1 of 30 input records have no line in any shard"):
        merge_shards(parts, tmp_path / "m5.jsonl")
    assert not (tmp_path / "m5.jsonl").exists()
    assert main(["merge", str(parts[0]), str(parts[2]), "-o", str(tmp_path / "m6.jsonl")]) == 2  # an error, no traceback


def test_usage_and_cost_are_the_servers_counts(tmp_path, upstream):
    inp, out = write(tmp_path / "in.jsonl", make_rows(6)), tmp_path / "out.jsonl"
    summary = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False,
                        prices={"scripted": {"prompt": 2.5, "completion": 10.0}})
    # critkit's server counts whitespace words for a backend without a tokenizer.
    prompt = sum(len("\n".join(m["content"] for m in r["meta"]["critique"]["messages"]).split()) for r in lines(out))
    completion = sum(len(r["critique"].split()) for r in lines(out))
    (usage,) = json.loads((tmp_path / "out.usage.json").read_text())["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["requests"]) == (prompt, completion, 6)
    assert usage["cost"] == pytest.approx(prompt * 2.5e-6 + completion * 10e-6)
    assert summary["usage"] == [usage]


def test_verification_recorded_and_verified_only_build(tmp_path, upstream):
    rows = make_rows(12, gold=True) + [{"id": "nogold", "question": "Why?", "response": "Because."},
                                       {"id": "nv", "question": "NOVERDICT here", "response": "5", "gold": "5"}]
    inp, out = write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    summary = run_stage("critique", inp, out, client(upstream), SAMPLING, progress=False)
    records = read_records(out)
    by_id = {r.id: r for r in records}
    for i in range(12):
        check = by_id[f"q{i}"].meta["verify"]
        assert check["graded"] == ("right" if i % 2 == 0 else "wrong")
        assert check["agrees"] == (by_id[f"q{i}"].verdict == check["graded"])
    assert by_id["nogold"].meta["verify"] == {"graded": None, "agrees": None}
    assert by_id["nv"].verdict == "unparsed" and by_id["nv"].meta["verify"] == {"graded": "right", "agrees": None}
    agree = sum(by_id[f"q{i}"].meta["verify"]["agrees"] for i in range(12))
    assert 0 < agree < 12  # the scripted teacher is right only sometimes
    assert summary["verify"]["agrees"] == agree and summary["verify"]["agreement"] == pytest.approx(agree / 12, abs=1e-4)

    all_rows, skipped = build_pairs("cft", records)
    assert len(all_rows) == 14 and not skipped
    rows_v, skipped_v = build_pairs("cft", records, verified_only=True)
    assert {r["id"] for r in rows_v} == {f"q{i}" for i in range(12) if by_id[f"q{i}"].meta["verify"]["agrees"]}
    assert skipped_v["unverifiable: no gold answer or not critiqued by critkit"] == 1
    assert skipped_v["unverifiable: verdict unparsed"] == 1
    assert sum(v for k, v in skipped_v.items() if k.startswith("teacher verdict disagrees")) == 12 - agree
    assert main(["build", "-m", "cft", "-i", str(out), "-o", str(tmp_path / "pairs.jsonl"), "--verified-only"]) == 0
    assert len(lines(tmp_path / "pairs.jsonl")) == agree


def test_respond_with_n_samples_keeps_whole_groups_across_resume(tmp_path, upstream):
    inp, out = write(tmp_path / "in.jsonl", [{"id": f"p{i}", "question": f"Say {i}."} for i in range(5)]), tmp_path / "out.jsonl"
    sampling = Sampling(temperature=0.8, max_new_tokens=16, n=3)
    run_stage("respond", inp, out, client(upstream), sampling, progress=False)
    complete = out.read_bytes()
    assert [r["id"] for r in lines(out)] == [f"p{i}#{k}" for i in range(5) for k in range(3)]
    first = lines(out)[0]["meta"]["jobs"]["respond"]
    assert (first["part"], first["parts"], first["id"]) == (0, 3, "p0") and "usage" in first
    assert "usage" not in lines(out)[1]["meta"]["jobs"]["respond"]  # one request, billed once
    out.write_bytes(b"".join(complete.splitlines(keepends=True)[:13]))  # p4 has 1 of its 3 lines
    run_stage("respond", inp, out, client(upstream), sampling, progress=False)
    assert upstream.teacher.calls == 6 and out.read_bytes() == complete


def test_reference_teacher_stats_command_and_bad_lines(tmp_path, shared_data):
    noisy = shared_data / "noisy" / "gsm8k_test_model_solutions.jsonl"
    assert main(["data", str(noisy), "--format", "gsm8k-noisy", "--limit", "16", "-o", str(tmp_path / "n.jsonl")]) == 0
    out = tmp_path / "ref.jsonl"
    assert main(["critique", "-i", str(tmp_path / "n.jsonl"), "-o", str(out), "--teacher", "reference"]) == 0
    records = read_records(out)
    assert all(r.verdict == ("right" if r.meta["is_correct"] else "wrong") for r in records)
    from critkit.synth.stats import run_stats

    text = run_stats(out, png=tmp_path / "h.png", tokenizer="whitespace")
    assert "teacher vs human labels (is_correct): 100.0% of 16 parsed verdicts agree" in text
    assert (tmp_path / "h.png").stat().st_size > 1000
    with open(out, "a") as fh:
        fh.write('{"id": "broken", "quest')
    assert f"bad line: {out}:17: malformed JSON" in run_stats(out, png=tmp_path / "h2.png", tokenizer="whitespace")


# ------------------------------------------------------------------- the embedded model


@pytest.fixture(scope="module")
def embedded_backend():
    import torch

    from critkit.engine.backends import TransformersBackend

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 135M model on a shared 2-core CPU is fastest on one thread
    yield TransformersBackend("embedded", batch_size=4, progress=False)
    torch.set_num_threads(threads)


def test_embedded_model_as_teacher_over_http_and_locally(tmp_path, embedded_backend):
    from critkit.engine.serve import serve

    inp = write(tmp_path / "in.jsonl", make_rows(3, gold=True))
    server, thread = serve(embedded_backend)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        remote = OpenAIBackend("embedded", base_url=url, concurrency=2, timeout=120, progress=False)
        summary = run_stage("critique", inp, tmp_path / "http.jsonl", remote, Sampling(max_new_tokens=12), progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert summary["counts"]["done"] == 3
    (usage,) = summary["usage"]
    assert usage["prompt_tokens"] > 100 and 0 < usage["completion_tokens"] <= 36
    # The same model in-process: batched, usage counted with its tokenizer.
    local = run_stage("critique", inp, tmp_path / "local.jsonl", embedded_backend, Sampling(max_new_tokens=12), progress=False)
    assert local["counts"]["done"] == 3
    # Greedy: the teacher over HTTP (each request alone on the server) and in-process (one batch)
    # write the same critiques and verdicts, and count the same prompt tokens.
    over_http, in_process = read_records(tmp_path / "http.jsonl"), read_records(tmp_path / "local.jsonl")
    assert [(r.id, r.critique, r.verdict) for r in over_http] == [(r.id, r.critique, r.verdict) for r in in_process]
    assert local["usage"][0]["prompt_tokens"] == usage["prompt_tokens"]
    # The server counts completion tokens by re-tokenizing the text; the local backend counts what it generated.
    assert abs(local["usage"][0]["completion_tokens"] - usage["completion_tokens"]) <= 3
    for rec, graded in zip(in_process, ["right", "wrong", "right"]):  # make_rows: odd rows answer wrong
        assert rec.critique and rec.verdict == (parse_verdict(rec.critique) or "unparsed")
        assert rec.meta["verify"] == {"graded": graded, "agrees": rec.verdict == graded if rec.verdict != "unparsed" else None}


# --------------------------------------------------------------- a reasoning teacher, cut short


CUT_REPLY = "<think>Let me check every step of this solution one by one, starting with"
THOUGHT_REPLY = "<think>Checking it. Conclusion: wrong? No.</think>\n\nThe steps hold.\nConclusion: right [END]"


class ReasoningTeacher:
    """Thinks in <think> tags before it writes. The first reply to a question with CUT in it stops
    inside the thinking, as a reply cut at max_tokens does; asked again, it finishes."""

    name = "reasoner"

    def __init__(self):
        self.asked: Counter = Counter()
        self.conversations: list = []

    def generate(self, conversations, sampling, desc=""):
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            self.asked[user] += 1
            self.conversations.append(conv)
            text = CUT_REPLY if "CUT" in user and self.asked[user] == 1 else THOUGHT_REPLY
            out.append([text] * sampling.n)
        return out


@pytest.fixture
def reasoner():
    from critkit.engine.serve import serve

    teacher = ReasoningTeacher()
    server, thread = serve(teacher)
    yield teacher, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_reply_cut_inside_its_thinking_fails_and_retry_failed_redoes_it(tmp_path, reasoner):
    teacher, url = reasoner
    rows = make_rows(3) + [{"id": "cut", "question": "CUT: what is 1 + 1?", "response": "2"},
                           {"id": "cut-copy", "question": "CUT: what is 1 + 1?", "response": "2"}]
    inp, out = write(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    remote = OpenAIBackend("reasoner", base_url=url, concurrency=2, timeout=30, progress=False)
    sampling = Sampling(max_new_tokens=12)
    summary = run_stage("critique", inp, out, remote, sampling, progress=False)

    assert summary["counts"]["done"] == 3 and summary["counts"]["failed"] == 2
    assert summary["failures"]["unclosed thinking"]["count"] == 2  # the copy shares the leader's reply
    assert summary["this_run"]["failed"] == 2 and summary["verdicts"] == {"right": 3}
    by_id = {r["id"]: r for r in lines(out)}
    for rid in ("cut", "cut-copy"):
        row = by_id[rid]
        job = row["meta"]["jobs"]["critique"]
        assert job["status"] == "failed" and job["error"].startswith(UNCLOSED_THINKING)
        assert row["critique"] is None and row["verdict"] is None
        assert row["meta"]["critique"]["output"].startswith("<think>Let me check")  # the raw reply is kept
    # ... and billed (critkit's server counts whitespace words for a backend without a tokenizer).
    assert by_id["cut"]["meta"]["jobs"]["critique"]["usage"]["completion_tokens"] == len(CUT_REPLY.split())
    assert summary["usage"][0]["completion_tokens"] == 3 * len(THOUGHT_REPLY.split()) + len(CUT_REPLY.split())
    # The verdict is the one after the thinking, and the critique is only that text.
    assert by_id["q0"]["critique"] == "The steps hold.\nConclusion: right [END]"
    assert by_id["q0"]["meta"]["critique"]["output"].startswith("<think>")
    text = format_summary(summary)
    assert "failed, unclosed thinking: 2" in text and "--retry-failed" in text

    # A plain rerun leaves failed items alone; --retry-failed asks again, once for the two copies.
    run_stage("critique", inp, out, remote, sampling, progress=False)
    assert teacher.asked["\nQuestion: CUT: what is 1 + 1?\n\nSolution: 2\n"] == 1
    summary = run_stage("critique", inp, out, remote, sampling, retry_failed=True, progress=False)
    assert teacher.asked["\nQuestion: CUT: what is 1 + 1?\n\nSolution: 2\n"] == 2
    assert summary["counts"]["done"] == 5 and summary["counts"]["failed"] == 0
    assert {r["id"]: r["verdict"] for r in lines(out)} == {r["id"]: "right" for r in rows}


def test_respond_asks_the_plain_question_and_fails_a_sample_cut_in_its_thinking(tmp_path, reasoner):
    teacher, url = reasoner
    inp, out = write(tmp_path / "in.jsonl", [{"id": "p", "question": "Say 1."}, {"id": "c", "question": "CUT here."}]), \
        tmp_path / "out.jsonl"
    remote = OpenAIBackend("reasoner", base_url=url, concurrency=1, timeout=30, progress=False)
    summary = run_stage("respond", inp, out, remote, Sampling(max_new_tokens=12, n=2), progress=False)
    assert [c for c in teacher.conversations] == [[{"role": "user", "content": "Say 1."}],
                                                 [{"role": "user", "content": "CUT here."}]]
    got = lines(out)
    assert [r["id"] for r in got] == ["p#0", "p#1", "c"]
    assert got[0]["response"] == "The steps hold.\nConclusion: right [END]" and got[0]["meta"]["respond"]["prompt"] == "plain"
    job = got[2]["meta"]["jobs"]["respond"]
    assert job["status"] == "failed" and "(samples 0, 1 of 2)" in job["error"]
    assert got[2]["response"] is None and len(got[2]["meta"]["respond"]["output"]) == 2
    assert summary["counts"] == {"done": 2, "failed": 1, "skipped": 0, "kept": 0}
    # The cot prompt is another request: another key, so it cannot resume this file.
    with pytest.raises(JobError, match="other settings"):
        run_stage("respond", inp, out, remote, Sampling(max_new_tokens=12, n=2), prompt="cot", progress=False)
    with pytest.raises(JobError, match="unknown respond prompt"):
        run_stage("respond", inp, tmp_path / "o2.jsonl", remote, Sampling(), prompt="qwen", progress=False)


# ------------------------------------------------------ accounting across stages and resumes


def test_usage_covers_earlier_stages_and_counts_a_resumed_run_once(tmp_path):
    """docs/synthesis.md: the usage covers the earlier stages the records went through, and a
    resumed run's records are counted once. A student and a teacher server each count what they
    are asked; the critique run is cut (as by a kill) and resumed. critique.usage.json must hold
    exactly the requests the servers answered and the tokens they reported, per stage."""
    student, teacher = ScriptedServer(), ScriptedServer()
    try:
        questions = write(tmp_path / "q.jsonl", [{"id": f"p{i}", "question": f"What is {i} + 3?", "gold": str(i + 3)}
                                                 for i in range(6)])
        responded, out = tmp_path / "respond.jsonl", tmp_path / "critique.jsonl"
        run_stage("respond", questions, responded, client(student), Sampling(max_new_tokens=16), progress=False)
        run_stage("critique", responded, out, client(teacher), SAMPLING, progress=False)
        complete = out.read_bytes()
        out.write_bytes(b"".join(complete.splitlines(keepends=True)[:4]))  # 2 of 6 lost to the "kill"
        summary = run_stage("critique", responded, out, client(teacher), SAMPLING, progress=False)
        assert summary["this_run"]["resumed"] == 4 and summary["this_run"]["sent"] == 2
        assert (student.teacher.calls, teacher.teacher.calls) == (6, 8)  # the 2 lost were asked twice
    finally:
        student.stop()
        teacher.stop()
    records = lines(out)
    # critkit's server counts whitespace words for a backend without a tokenizer.
    words = lambda messages: len("\n".join(m["content"] for m in messages).split())  # noqa: E731
    expected = {
        "respond": (6, sum(len(f"What is {i} + 3?".split()) for i in range(6)), sum(len(r["response"].split()) for r in records)),
        "critique": (6, sum(words(r["meta"]["critique"]["messages"]) for r in records), sum(len(r["critique"].split()) for r in records)),
    }
    usage = json.loads((tmp_path / "critique.usage.json").read_text())["usage"]
    assert {u["stage"]: (u["requests"], u["prompt_tokens"], u["completion_tokens"]) for u in usage} == expected
    # Billed: the 6 requests of the finished file, not the 8 sent (2 were lost before they were written).
    assert summary["usage"] == usage


# ------------------------------------------------------------------------- what merge refuses


def test_merge_refuses_shards_of_different_inputs_and_a_record_in_two_files(tmp_path, upstream):
    rows = make_rows(12)
    inp, other = write(tmp_path / "in.jsonl", rows), write(tmp_path / "other.jsonl", rows + make_rows(13)[12:])
    part0, part1 = tmp_path / "p0.jsonl", tmp_path / "p1.jsonl"
    run_stage("critique", inp, part0, client(upstream), SAMPLING, shard=(0, 2), progress=False)
    run_stage("critique", inp, part1, client(upstream), SAMPLING, shard=(1, 2), progress=False)
    merge_shards([part0, part1], tmp_path / "ok.jsonl")  # the control: these two merge

    # Shard 1 of another input (13 records, not 12).
    part1_other = tmp_path / "p1-other.jsonl"
    run_stage("critique", other, part1_other, client(upstream), SAMPLING, shard=(1, 2), progress=False)
    with pytest.raises(JobError, match=r"made from different inputs \(\['12', '13'\] records\)"):
        merge_shards([part0, part1_other], tmp_path / "m1.jsonl")

    # A record in two files: shard 1 of the same records in another order puts records at input
    # positions shard 0 already holds (the same count, so only the overlap tells).
    reordered = write(tmp_path / "reordered.jsonl", rows[::-1])
    part1_reordered = tmp_path / "p1-reordered.jsonl"
    run_stage("critique", reordered, part1_reordered, client(upstream), SAMPLING, shard=(1, 2), progress=False)
    with pytest.raises(JobError, match=rf"overlap: record '\w+' is in {part0}:\d+ and {part1_reordered}:\d+"):
        merge_shards([part0, part1_reordered], tmp_path / "m2.jsonl")
    assert not (tmp_path / "m1.jsonl").exists() and not (tmp_path / "m2.jsonl").exists()


def test_merge_refuses_shards_of_same_size_inputs_with_different_records(tmp_path, upstream):
    rows = make_rows(12)
    changed = [dict(r) for r in rows]
    k = next(i for i, r in enumerate(rows) if shard_of(r["id"], 2) == 1)
    changed[k]["question"] = "A different question?"
    part0, part1 = tmp_path / "p0.jsonl", tmp_path / "p1.jsonl"
    run_stage("critique", write(tmp_path / "a.jsonl", rows), part0, client(upstream), SAMPLING, shard=(0, 2), progress=False)
    run_stage("critique", write(tmp_path / "b.jsonl", changed), part1, client(upstream), SAMPLING, shard=(1, 2), progress=False)
    with pytest.raises(JobError, match="different inputs"):
        merge_shards([part0, part1], tmp_path / "m.jsonl")
