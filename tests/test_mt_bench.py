"""MT-Bench: two turns answered by the model, each graded by a judge on loopback, durably.

The judge is scripted behind critkit's own OpenAI-compatible server: it reads which FastChat
prompt it was sent and answers `Rating: [[n]]`, or a judgment without a rating for one question.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from critkit.engine.backends import Sampling, make_backend
from critkit.engine.serve import serve
from critkit.evaluation.mt_bench import (JUDGE_SAMPLING, evaluate_mt_bench, judge_prompts, load_mt_bench,
                                         parse_rating)
from eval_servers import Counting, FaultyProxy, StopAfter, first_tries_fail

NO_RATING = "Quarterly Financial Report"  # question 82: the judge gives no rating for its second turn


class ScriptedJudge:
    """Rates each turn from a hash of the prompt (1-10); keeps every conversation it is sent."""

    name = "judge"

    def __init__(self):
        self.conversations: list = []

    def generate(self, conversations, sampling, desc=""):
        self.conversations += conversations
        out = []
        for conversation in conversations:
            prompt = conversation[-1]["content"]
            if NO_RATING in prompt and "second user question" in conversation[0]["content"]:
                out.append(["The answer is fine, I suppose."])  # no [[rating]]: counted, not guessed
                continue
            rating = 1 + int(hashlib.sha256(prompt.encode()).hexdigest()[:4], 16) % 10
            out.append([f"The response is adequate.\nRating: [[{rating}]]"])
        return out


class ScriptedChat:
    """A model under test that answers quickly: it quotes the start of the last user turn."""

    name = "chat"

    def __init__(self):
        self.conversations: list = []

    def generate(self, conversations, sampling, desc=""):
        self.conversations += conversations
        return [[f"My answer to: {c[-1]['content'][:30]}"] for c in conversations]


class Loopback:
    def __init__(self, model):
        self.model = model
        self.server, self.thread = serve(model)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def backend(self, url: str | None = None, **options):
        return make_backend(self.model.name, "openai", base_url=url or self.url, progress=False, **options)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def servers():
    judge, chat = Loopback(ScriptedJudge()), Loopback(ScriptedChat())
    yield judge, chat
    judge.stop()
    chat.stop()


def test_ratings_are_read_as_fastchat_reads_them_and_never_guessed():
    assert parse_rating("Good.\nRating: [[8]]") == 8.0
    assert parse_rating("Rating: [[7.5]]") == 7.5
    assert parse_rating("I would say [6] overall.") == 6.0  # FastChat's backup pattern
    assert parse_rating("A fine answer, an 8 out of 10.") is None
    assert parse_rating("Rating: [[0]]") is None and parse_rating("Rating: [[11]]") is None  # outside 1-10


def test_questions_references_and_prompts_load(shared_data):
    rows, bad = load_mt_bench()
    assert len(rows) == 80 and bad == []
    assert sum("reference" in r for r in rows) == 30  # math, reasoning, coding: 10 each
    assert set(judge_prompts()) == {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"}


def test_bad_questions_are_counted_and_the_rest_go_on(tmp_path, shared_data):
    folder = tmp_path / "mt"
    folder.mkdir()
    (folder / "judge_prompts.jsonl").write_text((shared_data / "benchmarks/mt_bench/judge_prompts.jsonl").read_text())
    (folder / "reference_answer_gpt-4.jsonl").write_text(json.dumps({"question_id": 2, "choices": [{"turns": ["4", "5"]}]}) + "\n")
    questions = [{"question_id": 1, "category": "writing", "turns": ["Write a haiku.", "Make it sadder."]},
                 {"question_id": 2, "category": "math", "turns": ["2 + 2?", "And 2 + 3?"]},
                 {"question_id": 3, "category": "math", "turns": ["3 + 3?", "And 3 + 4?"]},  # no reference
                 {"question_id": 4, "category": "writing", "turns": ["Only one turn."]}]
    (folder / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions) + "{broken\n")
    rows, bad = load_mt_bench(folder)
    assert [r["id"] for r in rows] == ["1", "2"] and rows[1]["reference"] == ["4", "5"]
    assert bad[0].startswith(f"{folder / 'question.jsonl'}:3: reference:")
    assert bad[1] == f"{folder / 'question.jsonl'}:4: turns: not two questions"
    assert bad[2].startswith(f"{folder / 'question.jsonl'}:5: not JSON")


def test_embedded_model_answers_both_turns_and_the_judge_grades_each(embedded_model, tmp_path, servers, capsys):
    """`critkit eval --benchmarks mt_bench --judge ...`: the embedded model answers two questions
    (a writing one and, with --limit 2, the second writing one); the judge gets FastChat's prompts,
    turn 2's with both answers; an unparsable rating is counted; a rerun sends nothing."""
    import torch

    from critkit.cli import main

    judge, _ = servers
    args = ["eval", "--model", "embedded", "--benchmarks", "mt_bench", "--limit", "2", "--max-new-tokens", "6",
            "--judge", "judge", "--judge-base-url", judge.url, "-o", str(tmp_path)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a few short answers on a shared CPU: one thread is faster
    try:
        assert main(args) == 0
        first = capsys.readouterr().out
        assert main(args) == 0
    finally:
        torch.set_num_threads(threads)
    samples = [json.loads(line) for line in (tmp_path / "mt_bench" / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["81", "82"] and all(len(s["answers"]) == 2 for s in samples)
    prompts = judge_prompts()
    sent = judge.model.conversations
    assert len(sent) == 4  # two turns of two questions, once: the rerun sent nothing
    turn1 = [c for c in sent if c[0]["content"] == prompts["single-v1"]["system_prompt"]]
    turn2 = [c for c in sent if c[0]["content"] == prompts["single-v1-multi-turn"]["system_prompt"]]
    assert len(turn1) == len(turn2) == 2
    for s in samples:
        filled = prompts["single-v1-multi-turn"]["prompt_template"].format(
            question_1=s["turns"][0], question_2=s["turns"][1], answer_1=s["answers"][0], answer_2=s["answers"][1])
        assert [{"role": "system", "content": prompts["single-v1-multi-turn"]["system_prompt"]},
                {"role": "user", "content": filled}] in turn2
    scores = json.loads((tmp_path / "mt_bench" / "scores.json").read_text())
    ratings = [r for s in samples for r in s["ratings"]]
    assert ratings.count(None) == 1 == scores["unparsable"]  # question 82's second turn
    assert scores["score"] == pytest.approx(sum(r for r in ratings if r) / 3) and scores["ratings"] == 3
    assert scores["turn_2"] == samples[0]["ratings"][1]
    assert "judgments without a rating" in first and "2 of 2 samples were done before" in capsys.readouterr().out


def test_math_questions_are_judged_against_the_reference(tmp_path, servers):
    judge, chat = servers
    rows, _ = load_mt_bench()
    first_math = next(i for i, r in enumerate(rows) if r["category"] == "math")
    evaluate_mt_bench(chat.backend(), judge.backend(), tmp_path, Sampling(max_new_tokens=8), limit=first_math + 1)
    prompts = judge_prompts()
    math = [c for c in judge.model.conversations if c[0]["content"] == prompts["single-math-v1"]["system_prompt"]
            and "[The Start of Reference Answer]" in c[1]["content"]]
    # Reasoning (before math in the file) and math questions: each judged with its reference, the others without.
    assert len(math) == sum("reference" in r for r in rows[:first_math + 1]) == 11
    assert any(rows[first_math]["reference"][0] in c[1]["content"] and rows[first_math]["turns"][0] in c[1]["content"] for c in math)
    # The model's second turn saw the question, its own first answer, then the follow-up.
    sample = json.loads((tmp_path / "mt_bench" / "samples.jsonl").read_text().splitlines()[first_math])
    assert [{"role": "user", "content": sample["turns"][0]}, {"role": "assistant", "content": sample["answers"][0]},
            {"role": "user", "content": sample["turns"][1]}] in chat.model.conversations


def test_judge_requests_are_retried_resumed_and_accounted(tmp_path, servers):
    """Every judge request's first try gets a fault (500, garbled, empty): retried, all judged. A
    run stopped after one judgment resumes with only the missing ones; a judge that refuses a
    request fails that sample alone, and --retry-failed sends that judgment only."""
    judge, chat = servers
    proxy = FaultyProxy(judge.url, first_tries_fail(1.0, tries=1, faults=("500", "malformed", "empty")))
    try:
        scores = evaluate_mt_bench(chat.backend(), judge.backend(proxy.url, max_tries=3, backoff=0.01), tmp_path / "a",
                                   Sampling(max_new_tokens=8), limit=3)
    finally:
        proxy.stop()
    # Six judgments, one of them (question 82, turn 2) without a rating.
    assert scores["this_run"]["retries"] == 6 and scores["failed"] == 0 and (scores["ratings"], scores["unparsable"]) == (5, 1)
    assert sum(proxy.faults[f] for f in ("500", "malformed", "empty")) == 6

    # Stopped as by Ctrl-C after one judgment: the answers and that judgment are kept.
    model, judged = Counting(chat.backend()), StopAfter(judge.backend(), 1)
    with pytest.raises(KeyboardInterrupt):
        evaluate_mt_bench(model, judged, tmp_path / "b", Sampling(max_new_tokens=8), limit=3)
    model, judged = Counting(chat.backend()), Counting(judge.backend())
    scores = evaluate_mt_bench(model, judged, tmp_path / "b", Sampling(max_new_tokens=8), limit=3)
    assert (model.calls, judged.calls) == (0, 5) and scores["ratings"] == 5

    # A judge that refuses (HTTP 400) one sample's request: that sample fails, the others are scored.
    refuse = FaultyProxy(judge.url, lambda body, attempt: "400" if b"Hawaii" in body else None)
    try:
        scores = evaluate_mt_bench(chat.backend(), judge.backend(refuse.url), tmp_path / "c", Sampling(max_new_tokens=8), limit=3)
    finally:
        refuse.stop()
    assert scores["failed"] == 1 and scores["answered"] == 2 and "judge turn 1" in scores["failed_examples"][0]["error"]
    model, judged = Counting(chat.backend()), Counting(judge.backend())
    scores = evaluate_mt_bench(model, judged, tmp_path / "c", Sampling(max_new_tokens=8), limit=3, retry_failed=True)
    assert (model.calls, judged.calls) == (0, 2) and scores["failed"] == 0 and scores["ratings"] == 5


def test_another_judge_is_refused_not_mixed_in(tmp_path, servers):
    from critkit.data.journal import JobError

    judge, chat = servers
    evaluate_mt_bench(chat.backend(), judge.backend(), tmp_path, Sampling(max_new_tokens=8), limit=1)
    other = judge.backend()
    other.name = "another-judge"
    with pytest.raises(JobError):
        evaluate_mt_bench(chat.backend(), other, tmp_path, Sampling(max_new_tokens=8), limit=1)
    with pytest.raises(ValueError, match="judge"):
        evaluate_mt_bench(chat.backend(), None, tmp_path / "none", Sampling(max_new_tokens=8), limit=1)
    assert JUDGE_SAMPLING.temperature == 0.0 and JUDGE_SAMPLING.max_new_tokens == 2048


def test_a_run_config_with_mt_bench_needs_a_judge(tmp_path):
    from critkit.config import ConfigError
    from critkit.run import RunConfig, evaluation_judge

    assert evaluation_judge(RunConfig(output_dir=str(tmp_path), eval={"benchmarks": ["test", "ifeval"]})) is None
    with pytest.raises(ConfigError, match="eval.judge"):
        evaluation_judge(RunConfig(output_dir=str(tmp_path), eval={"benchmarks": ["test", "mt_bench"]}))
    judge = evaluation_judge(RunConfig(output_dir=str(tmp_path), eval={"benchmarks": ["mt_bench"], "judge": "j",
                                                                        "judge_base_url": "http://127.0.0.1:9/v1"}))
    assert (judge.name, judge.base_url) == ("j", "http://127.0.0.1:9/v1")
