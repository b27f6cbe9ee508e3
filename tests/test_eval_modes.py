"""Multiple choice, sampling metrics and self-critique modes, with a scripted backend.

The scripted backend is a real object with the backend interface whose answers are fixed per
prompt, so the metrics can be checked exactly; model-backed evaluation is in test_eval.py.
"""

from __future__ import annotations

import json
import math
from itertools import combinations

import pytest

from critkit.engine.backends import Sampling
from critkit.evaluation.benchmarks import get_benchmark, load_benchmark
from critkit.evaluation.evaluate import evaluate_benchmark, pass_at_k
from critkit.grading import extract_choice


class ScriptedBackend:
    name = "scripted"

    def __init__(self, answer):
        self.answer, self.prompts = answer, []

    def generate(self, conversations, sampling, desc=""):
        self.prompts += conversations
        return [[self.answer(c, k) for k in range(sampling.n)] for c in conversations]


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 5, 3), (10, 3, 1), (10, 3, 4), (8, 1, 8), (6, 2, 3)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    """pass@k = P(at least one correct among k drawn without replacement from the n samples)."""
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(combinations(range(n), k))
    exact = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), exact)


def test_samples_give_pass_at_k_and_majority(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"q{i}", "gold": "7"}) + "\n" for i in range(3)))
    # q0: 4 of 4 right; q1: 1 of 4 right (majority wrong); q2: 3 of 4 right (majority right).
    plan = {"q0": ["7", "7", "7", "7"], "q1": ["7", "1", "1", "2"], "q2": ["7", "7", "3", "7"]}
    backend = ScriptedBackend(lambda conv, k: f"so \\boxed{{{plan[conv[-1]['content']][k]}}}")
    s = evaluate_benchmark(backend, str(data), tmp_path / "out", Sampling(n=4, temperature=0.7, seed=3))
    assert s["samples_per_question"] == 4
    assert math.isclose(s["accuracy"], (4 + 1 + 3) / 12)
    assert math.isclose(s["pass@1"], s["accuracy"])
    assert math.isclose(s["pass@4"], 1.0)
    assert math.isclose(s["pass@2"], (1 + pass_at_k(4, 1, 2) + 1) / 3)
    assert math.isclose(s["maj@4"], 2 / 3)
    assert s["sampling"]["seed"] == 3  # every run records its seed


def _gpqa_file(tmp_path):
    rows = [{"Question": f"Which is item {i}?", "Correct Answer": f"right {i}", "Incorrect Answer 1": f"w1 {i}",
             "Incorrect Answer 2": f"w2 {i}", "Incorrect Answer 3": f"w3 {i}"} for i in range(12)]
    rows.append({"Question": "broken", "Correct Answer": "x", "Incorrect Answer 1": "", "Incorrect Answer 2": "y", "Incorrect Answer 3": "z"})
    path = tmp_path / "gpqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "gpqa.yaml"
    spec.write_text("path: gpqa.jsonl\nquestion_field: Question\ngold_field: Correct Answer\ngold_rule: first_choice\n"
                    "answer_type: multiple_choice\nshuffle_seed: 0\n"
                    "choice_fields: [Correct Answer, Incorrect Answer 1, Incorrect Answer 2, Incorrect Answer 3]\n")
    return spec


def test_multiple_choice_shuffle_is_seeded_and_subset_stable(tmp_path):
    spec = get_benchmark(str(_gpqa_file(tmp_path)))
    problems, bad = load_benchmark(spec)
    assert len(problems) == 12 and len(bad) == 1 and "no usable options" in bad[0]
    again, _ = load_benchmark(spec)
    assert [p.question for p in again] == [p.question for p in problems]
    first_five, _ = load_benchmark(spec, limit=5)
    assert [p.gold for p in first_five] == [p.gold for p in problems[:5]]
    # The correct option really moves around, and the gold letter points at it.
    assert len({p.gold for p in problems}) > 1
    for p in problems:
        assert p.choices["ABCD".index(p.gold)].startswith("right")
        assert f"({p.gold}) right" in p.question


def test_multiple_choice_grading_by_letter(tmp_path):
    spec_path = _gpqa_file(tmp_path)
    problems, _ = load_benchmark(get_benchmark(str(spec_path)))
    gold = {p.question: p.gold for p in problems}
    # Right on even items (boxed letter), wrong on odd items (a letter in prose).
    def answer(conv, k):
        q = conv[-1]["content"]
        item = int(q.split("item ")[1].split("?")[0])
        wrong = "A" if gold[q] != "A" else "B"
        return f"\\boxed{{{gold[q]}}}" if item % 2 == 0 else f"The answer is ({wrong})."
    s = evaluate_benchmark(ScriptedBackend(answer), str(spec_path), tmp_path / "out", Sampling())
    assert s["n"] == 12 and s["correct"] == 6 and s["bad_rows"] == 1


@pytest.mark.parametrize("text, letter", [
    ("The answer is (C).", "C"), ("Answer: B", "B"), ("\\boxed{D}", "D"), ("\\boxed{(A)}", "A"),
    ("I think (B) is right", "B"), ("So the choice is\nC.", "C"), ("no letter here", None), ("", None),
])
def test_extract_choice(text, letter):
    assert extract_choice(text, 4) == letter


def test_mmlu_pro_spec_reads_index_gold(tmp_path):
    path = tmp_path / "benchmarks" / "mmlu_pro"
    path.mkdir(parents=True)
    (path / "test.jsonl").write_text(json.dumps({"question_id": 7, "question": "2+2?", "options": ["3", "4", "5", "6"], "answer_index": 1}) + "\n")
    import os

    os.environ["CRITKIT_DATA_DIR"] = str(tmp_path)
    try:
        problems, bad = load_benchmark(get_benchmark("mmlu_pro"))
    finally:
        del os.environ["CRITKIT_DATA_DIR"]
    assert not bad and problems[0].choices["ABCD".index(problems[0].gold)] == "4"


def test_self_critique_two_stage_retries_until_judged_correct(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "What is 2+2?", "gold": "4"}) + "\n")
    state = {"solves": 0}

    def answer(conv, k):
        text = conv[-1]["content"]
        if text.startswith("Please critique"):
            return "Critique Conclusion: Correct" if "\\boxed{4}" in text else "Wrong step.\nCritique Conclusion: Incorrect"
        state["solves"] += 1
        return "\\boxed{4}" if state["solves"] >= 3 else "\\boxed{5}"

    s = evaluate_benchmark(ScriptedBackend(answer), str(data), tmp_path / "out", Sampling(temperature=0.3), mode="self-critique-2stage", rounds=8)
    assert s["correct"] == 1 and s["mean_attempts"] == 3
    row = json.loads((tmp_path / "out" / "q" / "samples.jsonl").read_text())
    assert [t["verdict"] for t in row["trace"]] == ["wrong", "wrong", "right"]

    # With one round the first (wrong) answer stands.
    state["solves"] = 0
    s1 = evaluate_benchmark(ScriptedBackend(answer), str(data), tmp_path / "out1", Sampling(), mode="self-critique-2stage", rounds=1)
    assert s1["correct"] == 0


def test_self_critique_single_pass_uses_the_papers_prompt(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "What is 2+2?", "gold": "4"}) + "\n")
    backend = ScriptedBackend(lambda conv, k: "4? no, \\boxed{4}")
    s = evaluate_benchmark(backend, str(data), tmp_path / "out", Sampling(), mode="self-critique")
    # CFT A.4.1, word for word, where direct inference has the cot instruction; the question alone.
    a41 = ("Please reason step by step to solve this problem and then critique your solution. If any errors are "
           "found, provide a corrected solution. Please put your final answer within \\boxed{}.")
    assert s["correct"] == 1 and backend.prompts == [[{"role": "system", "content": a41},
                                                      {"role": "user", "content": "What is 2+2?"}]]


def test_self_critique_two_stage_reads_past_a_reasoning_models_thinking(tmp_path):
    """The check sees the solution without its thinking, and its verdict is read after its own thinking."""
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "What is 2+2?", "gold": "4"}) + "\n")
    state = {"solves": 0}

    def answer(conv, k):
        text = conv[-1]["content"]
        if text.startswith("Please critique"):
            # Thinking that mentions the other verdict first; the conclusion after it decides.
            assert "<think>" not in text and "scratch" not in text
            verdict = "Correct" if "\\boxed{4}" in text else "Incorrect"
            other = "Incorrect" if verdict == "Correct" else "Correct"
            return f"<think>Critique Conclusion: {other}?</think>\nCritique Conclusion: {verdict}"
        state["solves"] += 1
        return f"<think>scratch work</think>\n\\boxed{{{4 if state['solves'] >= 2 else 5}}}"

    s = evaluate_benchmark(ScriptedBackend(answer), str(data), tmp_path / "out", Sampling(), mode="self-critique-2stage",
                           rounds=8)
    row = json.loads((tmp_path / "out" / "q" / "samples.jsonl").read_text())
    assert [t["verdict"] for t in row["trace"]] == ["wrong", "right"] and s["mean_attempts"] == 2


def test_format_drift_and_empty_outputs_are_counted(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"q{i}", "gold": "1"}) + "\n" for i in range(4)))
    replies = {"q0": "\\boxed{1}", "q1": "The solution is fine.\nConclusion: right [END]", "q2": "", "q3": "Critique: hmm"}
    s = evaluate_benchmark(ScriptedBackend(lambda c, k: replies[c[-1]["content"]]), str(data), tmp_path / "o", Sampling())
    assert s["critique_format"] == 0.5 and s["empty_output"] == 0.25 and s["no_answer"] == 0.75
