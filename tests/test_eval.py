"""Benchmark specs on the real files, and evaluation with the embedded model."""

from __future__ import annotations

import json

import pytest

from critkit.engine.backends import Sampling, TransformersBackend
from critkit.evaluation.benchmarks import BENCHMARKS, BenchmarkSpec, get_benchmark, load_benchmark
from critkit.evaluation.evaluate import evaluate_benchmark
from critkit.grading import grade


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The embedded model generating a few short answers gains nothing from a second thread, and on
    a shared 2-core CPU OpenMP threads spin against other processes (test_generation_is_batched_...
    took 131 s with 2 threads, 21 s with 1, on this machine under a load average of 5-7)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ROWS = {"gsm8k": 1319, "math500": 500, "minerva_math": 272, "olympiadbench": 675, "aime24": 30, "amc23": 40, "theoremqa": 800}


@pytest.mark.parametrize("name", sorted(ROWS))  # multiple-choice files are user-supplied
def test_every_builtin_benchmark_loads_with_gold(name, shared_data):
    problems, bad = load_benchmark(BENCHMARKS[name])
    assert len(problems) == ROWS[name] and not bad
    assert all(p.question.strip() and p.gold.strip() for p in problems)
    assert len({p.id for p in problems}) == len(problems)


@pytest.mark.parametrize("name, field", [("gsm8k", "answer"), ("math500", "solution"), ("minerva_math", "solution")])
def test_reference_solutions_grade_as_correct(name, field, shared_data):
    """A benchmark's own solution must be accepted against its gold answer (grader sanity)."""
    from critkit.data.records import read_rows

    spec = BENCHMARKS[name]
    problems, _ = load_benchmark(spec, limit=60)
    rows = [row for _, row in read_rows(shared_data / spec.path)][:60]
    accepted = sum(grade(row[field].replace("####", "The answer is"), p.gold) for p, row in zip(problems, rows))
    assert accepted / len(problems) >= 0.95


def test_user_spec_file_and_bad_rows_are_counted(tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"q": "1+1?", "a": "2"}\n{"q": "no gold"}\n{"q": "", "a": "3"}\n')
    spec_file = tmp_path / "mine.yaml"
    spec_file.write_text("path: mine.jsonl\nquestion_field: q\ngold_field: a\n")
    spec = get_benchmark(str(spec_file))
    assert isinstance(spec, BenchmarkSpec) and spec.name == "mine"
    problems, bad = load_benchmark(spec)
    assert [p.gold for p in problems] == ["2"]
    assert len(bad) == 2 and "mine.jsonl:2" in bad[0] and "mine.jsonl:3" in bad[1]


class CountingBackend:
    """A real backend wrapped to count generate calls (to prove resumed evals do not generate)."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, 0

    def generate(self, conversations, sampling, desc=""):
        self.calls += len(conversations)
        return self.inner.generate(conversations, sampling, desc=desc)


def test_evaluate_embedded_model_writes_samples_and_resumes(embedded_model, tmp_path, shared_data):
    backend = CountingBackend(TransformersBackend("embedded", batch_size=4, progress=False))
    sampling = Sampling(max_new_tokens=12)
    scores = evaluate_benchmark(backend, "gsm8k", tmp_path, sampling, limit=4)
    assert scores["n"] == 4 and backend.calls == 4
    samples = [json.loads(line) for line in (tmp_path / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["gsm8k-0", "gsm8k-1", "gsm8k-2", "gsm8k-3"]
    assert all(s["responses"][0] for s in samples)
    assert scores["correct"] == sum(s["correct"][0] for s in samples)
    # Again: everything is on disk, nothing is generated; a larger limit generates only the new ones.
    again = evaluate_benchmark(backend, "gsm8k", tmp_path, sampling, limit=4)
    assert backend.calls == 4 and again["correct"] == scores["correct"]
    evaluate_benchmark(backend, "gsm8k", tmp_path, sampling, limit=5)
    assert backend.calls == 5


def test_generation_is_batched_greedy_and_sampled(embedded_model):
    backend = TransformersBackend("embedded", batch_size=2, progress=False)
    conversations = [[{"role": "user", "content": q}] for q in ["What is 2 + 2?", "Name a colour.", "Say hi."]]
    greedy = backend.generate(conversations, Sampling(max_new_tokens=6))
    # Sharing rows with other prompts must not change greedy output: compare with one-at-a-time.
    single = [backend.generate([c], Sampling(max_new_tokens=6))[0] for c in conversations]
    assert greedy == single
    sampled = backend.generate(conversations[:1], Sampling(max_new_tokens=8, temperature=1.0, n=3, seed=1))
    assert len(sampled[0]) == 3
    assert backend.generate(conversations[:1], Sampling(max_new_tokens=8, temperature=1.0, n=3, seed=1)) == sampled
    # Temperature and seed are used: samples leave the greedy answer, and another seed draws others.
    (greedy_8,) = backend.generate(conversations[:1], Sampling(max_new_tokens=8))
    assert any(text != greedy_8[0] for text in sampled[0])
    assert backend.generate(conversations[:1], Sampling(max_new_tokens=8, temperature=1.0, n=3, seed=2)) != sampled


def test_transformers_backend_counts_tokens_and_reports_a_failing_prompt(tiny_model):
    """Usage is counted per conversation with the model's tokenizer, and a prompt the model
    cannot read fails alone in generate_each (generate raises for it)."""
    from critkit.engine.backends import BackendError

    backend = TransformersBackend(tiny_model, batch_size=2, progress=False)
    conversations = [[{"role": "user", "content": q}] for q in ["one", "two two", "three three three"]]
    replies = backend.generate_each(conversations, Sampling(max_new_tokens=5, n=2))
    for c, r in zip(conversations, replies):
        assert r.ok and len(r.texts) == 2
        assert r.usage == {"prompt_tokens": len(backend.tokenizer(backend.render(c), add_special_tokens=False)["input_ids"]),
                           "completion_tokens": 10}  # the random tiny model never ends early
    assert backend.generated_tokens == 30

    # A token the tokenizer knows and the model does not (added without resizing the embeddings).
    backend.tokenizer.add_tokens(["<critkit-unknown>"])
    conversations[1] = [{"role": "user", "content": "two <critkit-unknown>"}]
    replies = backend.generate_each(conversations, Sampling(max_new_tokens=3))
    assert [r.ok for r in replies] == [True, False, True] and "IndexError" in replies[1].error
    with pytest.raises(BackendError, match="prompt 1"):
        backend.generate(conversations, Sampling(max_new_tokens=3))


def test_vllm_backend_explains_a_missing_install_and_translates_sampling(tmp_path, capsys):
    from critkit.engine.backends import BackendError, make_backend, vllm_sampling
    from critkit.cli import main

    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match=r"critkit\[vllm\]"):
            make_backend("embedded", "vllm")
        code = main(["eval", "--model", "embedded", "--backend", "vllm", "--benchmarks", "gsm8k", "-o", str(tmp_path)])
        assert code == 2 and "critkit: error: backend 'vllm' needs vLLM" in capsys.readouterr().err
    assert vllm_sampling(Sampling(max_new_tokens=7, n=4, temperature=0.6, top_p=0.9, seed=3, stop=("</s>",)), {9, 2}) == {
        "n": 4, "temperature": 0.6, "top_p": 0.9, "max_tokens": 7, "stop": ["</s>"], "seed": 3, "stop_token_ids": [2, 9]}
    assert vllm_sampling(Sampling(top_p=0.5))["top_p"] == 1.0  # greedy ignores top_p


class RecordingTeacher:
    """Behind critkit's server: answers `\\boxed{1}` and keeps every conversation it is asked.

    The records file below carries a response and a critique: the evaluation prompt must not show them."""

    name = "recorder"

    def __init__(self):
        self.conversations: list = []

    def generate(self, conversations, sampling, desc=""):
        self.conversations += conversations
        return [["\\boxed{1}"] * sampling.n for _ in conversations]


def test_every_model_is_asked_the_cot_system_prompt_and_the_question_alone(tmp_path, shared_data):
    """docs/evaluation.md: the Qwen2.5-Math cot prompt as the system turn and the question alone as
    the user turn, for a benchmark and for a records file alike (what reaches the server is checked,
    against the prompt's text as the docs print it and the questions as the files hold them)."""
    from critkit.cli import main
    from critkit.engine.serve import serve

    records = tmp_path / "mine.jsonl"
    records.write_text(json.dumps({"id": "m0", "question": "What is 6 x 7?", "gold": "42", "reference": "6 x 7 = 42",
                                   "critique": "Wrong.", "response": "41"}) + "\n")
    teacher = RecordingTeacher()
    server, thread = serve(teacher)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        assert main(["eval", "--model", "recorder", "--base-url", url, "--benchmarks", "gsm8k", str(records),
                     "--limit", "3", "--max-new-tokens", "8", "-o", str(tmp_path / "out")]) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    gsm8k = [json.loads(line)["question"] for line in (shared_data / "benchmarks/gsm8k/test.jsonl").read_text().splitlines()[:3]]
    system = {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."}
    expected = [[system, {"role": "user", "content": q}] for q in [*gsm8k, "What is 6 x 7?"]]
    assert sorted(teacher.conversations, key=json.dumps) == sorted(expected, key=json.dumps)
