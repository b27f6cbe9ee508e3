"""Benchmark specs in lm-evaluation-harness's convention (issue 13, item 1): templates over
several fields, declared gold cleaning, options from a list, from one field per option or from
one string of lettered options; the built-in benchmarks unchanged in that format; bad rows
reported with the spec file, the data file and the line; and `critkit eval --benchmarks SPEC`
grading a known answer served over loopback."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from critkit.cli import main
from critkit.engine.serve import serve
from critkit.evaluation.benchmarks import BENCHMARKS, BenchmarkSpec, get_benchmark, load_benchmark
from critkit.evaluation.evaluate import _grade
from critkit.evaluation.templates import split_lettered

# (id, question, gold, grading) of every row, as the code before the spec format produced them
# (benchmarks.py at the commit before issue 13; sha256 of the JSON list, first 16 hex digits).
BEFORE = {"gsm8k": ("3359da098db0d9d9", 1319), "math500": ("2074ea925d5e4dd5", 500), "minerva_math": ("f896cedd3d570b37", 272),
          "olympiadbench": ("e818a9f1ca62e926", 675), "aime24": ("6fafd3f938b3adbe", 30), "amc23": ("317141cea584a2c5", 40),
          "theoremqa": ("355d675c595dab1f", 800)}
# The same benchmarks in the old keys (question_field, gold_field, gold_rule), which still work.
LEGACY = {
    "gsm8k": dict(path="benchmarks/gsm8k/test.jsonl", question_field="question", gold_field="answer", gold_rule="after_hashes", id_field="idx"),
    "math500": dict(path="benchmarks/math500/test.jsonl", question_field="problem", gold_field="answer", id_field="unique_id"),
    "minerva_math": dict(path="benchmarks/minerva_math/test.jsonl", question_field="problem", gold_field="solution", gold_rule="boxed", id_field="idx"),
    "olympiadbench": dict(path="benchmarks/olympiadbench/test.jsonl", question_field="question", gold_field="final_answer",
                          gold_rule="first_of_list", id_field="id", multiple_answer_field="is_multiple_answer", version=2),
    "aime24": dict(path="benchmarks/aime24/test.jsonl", question_field="problem", gold_field="answer", id_field="id"),
    "amc23": dict(path="benchmarks/amc23/test.jsonl", question_field="question", gold_field="answer", id_field="id"),
    "theoremqa": dict(path="benchmarks/theoremqa/test.jsonl", question_field="problem", gold_field="answer", grading="theoremqa", version=2),
}


def _digest(problems) -> str:
    return hashlib.sha256(json.dumps([[p.id, p.question, p.gold, p.grading] for p in problems]).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_builtin_benchmarks_are_specs_that_read_every_row_as_before(name, shared_data):
    spec = BENCHMARKS[name]
    assert spec.source.endswith(f"specs/{name}.yaml") and spec.doc_to_text and spec.doc_to_target is not None
    problems, bad = load_benchmark(spec)
    legacy, _ = load_benchmark(BenchmarkSpec(name, **LEGACY[name]))
    # Row by row first, so a difference names its row; then against the frozen digest of the old code.
    assert [(p.id, p.question, p.gold, p.grading) for p in problems] == [(p.id, p.question, p.gold, p.grading) for p in legacy]
    assert not bad and (_digest(problems), len(problems)) == BEFORE[name] and spec.version == LEGACY[name].get("version", 1)


def test_the_comparison_sees_a_changed_gold_rule(shared_data, tmp_path):
    """Negative control: GSM8K's spec without its comma rule reads other golds ("1,000" stays)."""
    text = Path(BENCHMARKS["gsm8k"].source).read_text()
    assert "gold_strip: [commas]\n" in text
    text = text.replace("gold_strip: [commas]\n", "").replace("path: benchmarks/", f"path: {shared_data}/benchmarks/")
    (tmp_path / "gsm8k.yaml").write_text(text)
    problems, _ = load_benchmark(get_benchmark(str(tmp_path / "gsm8k.yaml")))
    assert len(problems) == 1319 and _digest(problems) != BEFORE["gsm8k"][0]
    assert any("," in p.gold for p in problems)


# ------------------------------------------------------------------------- specs by spec alone


def _write(tmp_path: Path, name: str, rows: list, spec: str) -> Path:
    (tmp_path / f"{name}.jsonl").write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    (tmp_path / f"{name}.yaml").write_text(f"path: {name}.jsonl\n" + spec)
    return tmp_path / f"{name}.yaml"


WORD_SPEC = """\
# A context field and a question field make the question; golds carry units in parentheses.
doc_to_text: "{{ context }}\\n\\nQuestion: {{ question }}"
doc_to_target: answer
gold_strip: [units, dollars, commas]
id_field: qid
"""
WORD_ROWS = [
    {"qid": "w1", "context": "Ann has 4 apples and buys 5 more.", "question": "How many apples does she have?", "answer": "9 (apples)"},
    {"qid": "w2", "context": "A book costs $1,250.", "question": "What do two cost?", "answer": "$2,500"},
    {"qid": "w3", "context": "Tom runs 3 km a day.", "question": "How far in a week?", "answer": "21 km"},
    {"qid": "w4", "question": "No context in this row?", "answer": "1 (thing)"},           # missing field
    "{not json",                                                                           # a torn line
    {"qid": "w6", "context": "Nothing to find.", "question": "Answer?"},                    # no gold
    {"qid": "w7", "context": "", "question": "What is 2 + 3?", "answer": "5 (points)"},
]


def test_word_problem_spec_builds_questions_cleans_golds_and_reports_bad_rows(tmp_path):
    spec_file = _write(tmp_path, "word", WORD_ROWS, WORD_SPEC)
    problems, bad = load_benchmark(get_benchmark(str(spec_file)))
    assert [p.id for p in problems] == ["word-w1", "word-w2", "word-w3", "word-w7"]
    assert [p.gold for p in problems] == ["9", "2500", "21", "5"]
    assert problems[0].question == "Ann has 4 apples and buys 5 more.\n\nQuestion: How many apples does she have?"
    # Each bad row: the spec file, the data file, the line and the reason.
    assert len(bad) == 3
    for text, line, reason in zip(bad, (4, 5, 6), ("'context' is undefined", "not JSON", "doc_to_target: no field 'answer'")):
        assert text.startswith(f"{spec_file}: {tmp_path / 'word.jsonl'}:{line}: ") and reason in text, text
    # A right boxed answer is right against "9 (apples)"; without the units rule it is not.
    assert _grade(problems[0], "She has 4 + 5 = 9 apples. \\boxed{9}")[1]
    assert not _grade(problems[0], "\\boxed{8}")[1]
    raw, _ = load_benchmark(get_benchmark(str(_write(tmp_path, "raw", WORD_ROWS[:1], WORD_SPEC.replace("units, ", "")))))
    assert raw[0].gold == "9 (apples)" and not _grade(raw[0], "\\boxed{9}")[1]


def test_gold_regex_takes_the_first_group_and_a_miss_is_a_bad_row(tmp_path):
    spec_file = _write(tmp_path, "rx", [{"q": "a?", "sol": "so... Final: 12 cm"}, {"q": "b?", "sol": "no final line"}],
                       "doc_to_text: q\ndoc_to_target: sol\ngold_regex: 'Final:\\s*(.+)'\ngold_strip: [units]\n")
    problems, bad = load_benchmark(get_benchmark(str(spec_file)))
    assert [p.gold for p in problems] == ["12"] and len(bad) == 1 and "rx.jsonl:2: gold_regex" in bad[0]


AQUA_ROWS = [  # AQuA-RAT keeps lettered options in a list; MathQA in one string, lower case
    {"question": "What is 10 + 11?", "options": ["A)20", "B)21", "C)22", "D)23", "E)24"], "correct": "B"},
    {"question": "What is 3 * 4?", "options": "a ) 7 , b ) 12 , c ) 34 , d ) data inadequate , e ) 1", "correct": "b"},
    {"question": "Which is prime?", "options": "(A) 4 (B) 6 (C) 7 (D) 9", "correct": "C"},
    {"question": "Broken options?", "options": "just text", "correct": "A"},
    {"question": "Gold out of range?", "options": "A) 1 B) 2", "correct": "E"},
]


def test_lettered_options_from_a_list_or_one_string(tmp_path):
    spec_file = _write(tmp_path, "aqua", AQUA_ROWS, "doc_to_text: question\ndoc_to_choice: options\ndoc_to_target: correct\n"
                                                    "gold_rule: letter\n")
    problems, bad = load_benchmark(get_benchmark(str(spec_file)))
    assert [p.choices[ord(p.gold) - 65] for p in problems] == ["21", "12", "7"]
    assert sorted(problems[1].choices) == sorted(["7", "12", "34", "data inadequate", "1"])
    assert len(bad) == 2 and "aqua.jsonl:4: doc_to_choice" in bad[0] and "aqua.jsonl:5: no gold answer" in bad[1]
    # Graded by letter: the right option's letter is right, another's wrong.
    p = problems[0]
    wrong = "A" if p.gold != "A" else "B"
    assert _grade(p, f"The answer is ({p.gold}).")[1] and not _grade(p, f"The answer is ({wrong}).")[1]


@pytest.mark.parametrize("text, options", [
    ("A) 3 B) 4 C) 5", ["3", "4", "5"]),
    ("(A) 3\n(B) 4\n(C) 5", ["3", "4", "5"]),
    ("A. three apples B. four C. five", ["three apples", "four", "five"]),
    ("A: x = 1, B: x = 2", ["x = 1", "x = 2"]),
    ("A) see part b) first B) 4", ["see part b) first", "4"]),  # "b)" breaks the A, B run: text, not a marker
    ("A) 3 C) 5", None), ("no options here", None), ("intro A) 3 B) 4", None),
])
def test_split_lettered(text, options):
    assert split_lettered(text) == options


def test_mmlu_list_and_arc_dict_and_one_field_per_option(tmp_path):
    mmlu = _write(tmp_path, "mmlu", [{"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1}],
                  "doc_to_text: \"{{question.strip()}}\\nAnswer:\"\ndoc_to_choice: choices\ndoc_to_target: answer\n")
    (p,) = load_benchmark(get_benchmark(str(mmlu)))[0]
    assert p.question.startswith("2+2?\nAnswer:\n\n(A)") and p.choices[ord(p.gold) - 65] == "4"
    # lm-eval's ARC task: the options are a dict's texts, the target the label's index.
    arc = _write(tmp_path, "arc", [{"question": "Sky colour?", "choices": {"text": ["green", "blue"], "label": ["A", "B"]},
                                    "answerKey": "B"}],
                 "doc_to_text: question\ndoc_to_choice: '{{choices.text}}'\ndoc_to_target: '{{choices.label.index(answerKey)}}'\n")
    (p,) = load_benchmark(get_benchmark(str(arc)))[0]
    assert p.choices[ord(p.gold) - 65] == "blue"
    # MedMCQA-style: one field per option, as a list literal template; the gold an option's text.
    med = _write(tmp_path, "med", [{"q": "Largest?", "opa": "1", "opb": "3", "opc": "2", "cop": "3"}],
                 "doc_to_text: q\ndoc_to_choice: '{{[opa, opb, opc]}}'\ndoc_to_target: cop\ngold_rule: text\n")
    (p,) = load_benchmark(get_benchmark(str(med)))[0]
    assert p.choices[ord(p.gold) - 65] == "3"


def test_a_spec_that_cannot_work_says_so_before_or_after_the_rows(tmp_path):
    rows = [{"q": "a?", "a": "1"}]
    with pytest.raises(ValueError, match=r"broken\.yaml.*doc_to_text: template does not compile"):
        get_benchmark(str(_write(tmp_path, "broken", rows, "doc_to_text: '{{ q '\n")))
    with pytest.raises(ValueError, match="unknown spec field"):
        get_benchmark(str(_write(tmp_path, "typo", rows, "doc_to_txt: q\n")))
    with pytest.raises(ValueError, match="gold_strip"):
        get_benchmark(str(_write(tmp_path, "strip", rows, "gold_strip: [pounds]\n")))
    # Every row fails (a field no row has): an error with the first reasons, not an empty score.
    with pytest.raises(ValueError, match="no usable row") as error:
        load_benchmark(get_benchmark(str(_write(tmp_path, "none", rows, "doc_to_text: question\ndoc_to_target: a\n"))))
    assert "none.jsonl:1: doc_to_text: no field 'question'" in str(error.value)
    # A sandboxed template cannot reach Python internals: that row is bad, the others go on.
    spec = _write(tmp_path, "sandbox", [{"q": "a?", "a": "1"}, {"q": "b?", "a": "2", "evil": True}],
                  "doc_to_text: \"{{ q if evil is not defined else q.__class__.__mro__[1].__subclasses__() }}\"\ndoc_to_target: a\n")
    problems, bad = load_benchmark(get_benchmark(str(spec)))
    assert [p.question for p in problems] == ["a?"] and len(bad) == 1 and "sandbox.jsonl:2: doc_to_text: template failed" in bad[0]


# ------------------------------------------------------------------------------ the command


class AnswerKey:
    """A served model that answers from a key: the first key found in the question gives the reply."""

    name = "key"

    def __init__(self, key: dict[str, str]):
        self.key = key

    def generate(self, conversations, sampling, desc=""):
        def reply(conv):
            text = conv[-1]["content"]
            return next((answer for q, answer in self.key.items() if q in text), "I do not know.")
        return [[reply(c)] * sampling.n for c in conversations]


def test_critkit_eval_grades_a_spec_benchmark_served_over_loopback(tmp_path, capsys):
    word = _write(tmp_path, "word", WORD_ROWS, WORD_SPEC)
    aqua = _write(tmp_path, "aqua", AQUA_ROWS[:3], "doc_to_text: question\ndoc_to_choice: options\ndoc_to_target: correct\n")
    problems = {p.question.split("\n")[0]: p for p in load_benchmark(get_benchmark(str(aqua)))[0]}
    key = {"How many apples": "4 + 5 = 9, so she has \\boxed{9} apples.",   # right against "9 (apples)"
           "What do two cost": "Two cost \\boxed{\\$2,500}.",                   # right against "$2,500"
           "How far in a week": "\\boxed{20}",                                   # wrong
           "What is 10 + 11?": f"The answer is ({problems['What is 10 + 11?'].gold}).",
           "What is 3 * 4?": f"The answer is ({'A' if problems['What is 3 * 4?'].gold != 'A' else 'B'})."}
    server, thread = serve(AnswerKey(key))
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        assert main(["eval", "--model", "key", "--base-url", url, "--benchmarks", str(word), str(aqua),
                     "-o", str(tmp_path / "out"), "--max-new-tokens", "32"]) == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    scores = json.loads((tmp_path / "out" / "word" / "scores.json").read_text())
    assert (scores["n"], scores["correct"], scores["bad_rows"]) == (4, 2, 3)
    assert re.search(r"word\.jsonl:4: doc_to_text: template failed.*'context' is undefined", scores["bad_examples"][0])
    samples = {s["id"]: s for s in map(json.loads, (tmp_path / "out" / "word" / "samples.jsonl").read_text().splitlines())}
    assert samples["word-w1"]["correct"] == [True] and samples["word-w1"]["gold"] == "9"
    assert samples["word-w3"]["correct"] == [False]
    choice = json.loads((tmp_path / "out" / "aqua" / "scores.json").read_text())
    assert (choice["n"], choice["correct"]) == (3, 1)
    printed = capsys.readouterr().out
    assert "| word | 50.0 | 4 |" in printed and re.search(r"word\.yaml: 3 unusable rows, e\.g\. .*word\.jsonl:4: ", printed)


LMEVAL_TASK = """\
# An lm-eval task YAML over a local file, as lm-eval users write it: critkit reads it as a spec.
task: arith_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
description: "Answer the question.\\n\\n"
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_an_lm_eval_task_yaml_over_a_local_file_is_a_spec(tmp_path):
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a} + {a}?", "choices": [str(2 * a), str(2 * a + 1)], "label": 0}) + "\n"
                            for a in range(4)))
    (tmp_path / "arith_mc.yaml").write_text(LMEVAL_TASK.format(data=data))
    spec = get_benchmark(str(tmp_path / "arith_mc.yaml"))
    assert spec.name == "arith_mc" and spec.multiple_choice and spec.path == str(data)
    problems, bad = load_benchmark(spec)
    assert not bad and len(problems) == 4
    assert problems[1].question.startswith("Answer the question.\n\nQuestion: 1 + 1?\nAnswer:\n\n(A)")
    assert all(p.choices[ord(p.gold) - 65] == str(2 * i) for i, p in enumerate(problems))
    # What critkit cannot read is said, not guessed: a hub dataset, a log-likelihood-only task.
    hub = LMEVAL_TASK.format(data=data).replace("dataset_path: json", "dataset_path: allenai/ai2_arc")
    (tmp_path / "hub.yaml").write_text(hub)
    with pytest.raises(ValueError, match="is not a local file"):
        get_benchmark(str(tmp_path / "hub.yaml"))
    (tmp_path / "ll.yaml").write_text(LMEVAL_TASK.format(data=data).replace("multiple_choice", "loglikelihood_rolling"))
    with pytest.raises(ValueError, match="--lm-eval-tasks"):
        get_benchmark(str(tmp_path / "ll.yaml"))
    (tmp_path / "code.yaml").write_text(LMEVAL_TASK.format(data=data).replace("doc_to_choice: choices", "process_docs: !function utils.process"))
    with pytest.raises(ValueError, match="--lm-eval-tasks"):
        get_benchmark(str(tmp_path / "code.yaml"))
