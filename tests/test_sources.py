"""Source mappings on the real shared data files (first rows only) and on small files of our own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from critkit.data.records import RecordError, write_records
from critkit.data.sources import SOURCES, gsm8k_gold, guess_source, iter_source, load_source, split_cft_input, stated_answer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TRAIN = DATA / "train" / "gsm8k_train.jsonl"
GSM8K_TEST = DATA / "benchmarks" / "gsm8k" / "test.jsonl"
MATH500 = DATA / "benchmarks" / "math500" / "test.jsonl"
NOISY = DATA / "noisy" / "gsm8k_test_model_solutions.jsonl"

CFT_INSTRUCTION = "Please critique whether the following solution to the question is correct."


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _first_rows(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(next(fh)) for _ in range(n)]


# ------------------------------------------------------------------------------------ gsm8k


def test_gsm8k_train_gold_and_reference():
    records = load_source(GSM8K_TRAIN, "gsm8k", limit=3)
    assert [r.gold for r in records] == ["72", "10", "5"]
    first = records[0]
    assert first.question.startswith("Natalia sold clips to 48 of her friends in April")
    assert first.id == "gsm8k-1"  # no id column: numbered by row
    # calculator annotations <<48/2=24>> are gone, the #### line becomes a boxed final answer
    assert "<<" not in first.reference and ">>" not in first.reference and "####" not in first.reference
    assert first.reference == (
        "Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "The answer is \\boxed{72}."
    )
    assert first.response is None and first.critique is None and first.verdict is None


def test_gsm8k_test_uses_idx_as_id_and_drops_thousands_commas():
    records = load_source(GSM8K_TEST, "gsm8k", limit=3)
    assert [r.id for r in records] == ["0", "1", "2"]
    assert [r.gold for r in records] == ["18", "3", "70000"]
    raw = _first_rows(GSM8K_TEST, 3)[2]["answer"]
    assert "<<80000+50000=130000>>" in raw
    assert "<<" not in records[2].reference and "130,000" in records[2].reference


@pytest.mark.parametrize(
    ("solution", "gold"),
    [("a\n#### 72", "72"), ("x\n#### 1,000", "1000"), ("y\nA: 18", "18"), ("no marker", None), ("a #### 1 #### 2", "2")],
)
def test_gsm8k_gold(solution, gold):
    assert gsm8k_gold(solution) == gold


# ------------------------------------------------------------------------------------- math


def test_math500_gold_reference_and_id():
    rows = _first_rows(MATH500, 4)
    records = load_source(MATH500, "math", limit=4)
    assert [r.gold for r in records] == [row["answer"] for row in rows]
    assert records[0].gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert records[2].gold == r"\frac{14}{3}"
    assert records[3].gold == "9"
    assert records[0].id == "test/precalculus/807.json"
    assert records[0].question == rows[0]["problem"]
    assert records[0].reference == rows[0]["solution"]


def test_math_gold_falls_back_to_the_boxed_answer(tmp_path):
    path = _jsonl(tmp_path / "m.jsonl", [{"problem": "1+1?", "solution": r"So $\boxed{\frac{4}{2}}$."}])
    (rec,) = load_source(path, "math")
    assert rec.gold == r"\frac{4}{2}"


# ------------------------------------------------------------------------------ gsm8k-noisy


def test_noisy_gsm8k_four_records_per_row_with_boolean_labels():
    rows = _first_rows(NOISY, 2)
    records = load_source(NOISY, "gsm8k-noisy", limit=8)
    assert len(records) == 8
    models = ["6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification"]
    for k, rec in enumerate(records):
        row, model = rows[k // 4], models[k % 4]
        assert rec.id == f"noisy-{k // 4 + 1}-{model}"
        assert rec.meta["source"] == "gsm8k-noisy" and rec.meta["model"] == model
        assert type(rec.meta["is_correct"]) is bool
        assert rec.meta["is_correct"] == row[model]["is_correct"]
        assert rec.question == row["question"]
        assert "<<" not in rec.response and "<<" not in rec.reference
    assert {r.gold for r in records[:4]} == {"18"} and {r.gold for r in records[4:]} == {"3"}
    # the first row's labels in the file: only the 175B verifier got it right
    assert [r.meta["is_correct"] for r in records[:4]] == [False, False, False, True]
    assert records[0].reference.endswith("The answer is \\boxed{18}.")
    assert "A: 18" not in records[0].reference


def test_noisy_row_without_any_model_solution_is_an_error(tmp_path):
    path = _jsonl(tmp_path / "noisy.jsonl", [{"question": "q?", "ground_truth": "x\nA: 1", "6b_finetuning": None}])
    with pytest.raises(RecordError, match=r"noisy\.jsonl:1: no model solutions"):
        load_source(path, "gsm8k-noisy")


# -------------------------------------------------------------------------- webinstruct-cft


def _cft_row(question: str, solution: str, critique: str, **extra) -> dict:
    return {"instruction": CFT_INSTRUCTION, "input": f"Question:\n{question}\n\nSolution:\n{solution}", "output": critique, **extra}


def test_webinstruct_cft_alpaca_rows(tmp_path):
    path = _jsonl(tmp_path / "cft.jsonl", [
        _cft_row("What is 2+3?", "2+3=6.\nSo the answer is 6.",
                 "The student added incorrectly: 2+3=5.\nConclusion: wrong [END]"),
        _cft_row("Solve $x^{2}=4$ for $x>0$.", "Taking roots, $x=2$.\n\nCheck: $2^{2}=4$.",
                 "Correct; the positive root is 2.\n\nConclusion: right [END]"),
        _cft_row("Is it?", "Maybe.", "I cannot tell."),
    ])
    records = load_source(path, "webinstruct-cft")
    first, second, third = records
    assert first.question == "What is 2+3?"
    assert first.response == "2+3=6.\nSo the answer is 6."
    assert first.critique == "The student added incorrectly: 2+3=5.\nConclusion: wrong [END]"
    assert first.verdict == "wrong"
    assert first.meta == {"source": "webinstruct-cft", "instruction": CFT_INSTRUCTION}
    assert first.id == "webinstruct-1"
    # a blank line inside the solution stays part of the solution
    assert second.question == "Solve $x^{2}=4$ for $x>0$."
    assert second.response == "Taking roots, $x=2$.\n\nCheck: $2^{2}=4$."
    assert second.verdict == "right"
    # no conclusion: the verdict is recorded as unparsed, never guessed
    assert third.verdict == "unparsed"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("Question:\nQ?\n\nSolution:\nS.", ("Q?", "S.")),
        ("Question: Q?\nSolution: S.", ("Q?", "S.")),
        ("Question:\nline1\nline2\n\nSolution:\na\n\nb", ("line1\nline2", "a\n\nb")),
        ("just text", None),
    ],
)
def test_split_cft_input(text, parts):
    assert split_cft_input(text) == parts


@pytest.mark.parametrize(
    ("source", "rows", "field"),
    [
        ("webinstruct-cft", [_cft_row("Q?", "S.", "Conclusion: right [END]"), {"instruction": CFT_INSTRUCTION, "input": "Question:\nQ\n\nSolution:\nS"}], "output"),
        ("webinstruct-cft", [_cft_row("Q?", "S.", "Conclusion: right [END]"), {"instruction": CFT_INSTRUCTION, "output": "Conclusion: right [END]"}], "input"),
        ("gsm8k", [{"question": "a?", "answer": "x\n#### 1"}, {"question": "b?"}], "answer"),
        ("gsm8k", [{"question": "a?", "answer": "x\n#### 1"}, {"question": "  ", "answer": "x\n#### 2"}], "question"),
        ("math", [{"problem": "a?", "solution": r"\boxed{1}"}, {"problem": "b?"}], "solution"),
        ("gsm8k-noisy", [{"question": "a?", "ground_truth": "x\nA: 1", "6b_finetuning": {"is_correct": True, "solution": "1"}}, {"question": "b?"}], "ground_truth"),
        ("metamath", [{"query": "a?", "response": "The answer is: 1"}, {"query": "b?"}], "response"),
        ("numina", [{"problem": "a?", "solution": r"\boxed{1}"}, {"solution": r"\boxed{2}"}], "problem"),
        ("webinstruct-sub", [{"question": "a?", "answer": "1", "source": "socratic", "index": 1},
                             {"question": "b?", "source": "socratic", "index": 2}], "answer"),
        ("webinstruct-sub", [{"question": "a?", "answer": "1", "source": "socratic", "index": 1},
                             {"answer": "2", "source": "socratic", "index": 2}], "question"),
    ],
)
def test_row_missing_a_field_names_file_and_line(tmp_path, source, rows, field):
    path = _jsonl(tmp_path / "src.jsonl", rows)
    with pytest.raises(RecordError) as info:
        load_source(path, source)
    assert info.value.line == 2 and info.value.path == str(path)
    assert str(info.value) == f"{path}:2: missing field '{field}'"


def test_webinstruct_input_without_question_solution_layout(tmp_path):
    path = _jsonl(tmp_path / "cft.jsonl", [{"instruction": CFT_INSTRUCTION, "input": "no layout", "output": "x"}])
    with pytest.raises(RecordError, match=r"cft\.jsonl:1: field 'input' is not"):
        load_source(path, "webinstruct-cft")


def test_gsm8k_answer_without_hashes(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", [{"question": "q?", "answer": "no final line"}])
    with pytest.raises(RecordError, match=r"g\.jsonl:1: field 'answer' has no '#### <answer>' line"):
        load_source(path, "gsm8k")


# -------------------------------------------------------------------------- webinstruct-sub

# Rows in WebInstructSub's shape (TIGER-Lab/WebInstructSub: question, answer, source, index): a
# socratic.org explanation stating its answer, a math.stackexchange answer with a box, and a
# chemistry explanation that states no final answer at all.
WEBINSTRUCT_SUB = [
    {"question": "How do you find the slope of the line passing through the points (2, 3) and (4, 7)?",
     "answer": "The slope of a line through two points is the change in y over the change in x:\n\n"
               "m = (7 - 3) / (4 - 2) = 4 / 2\n\nTherefore, the answer is 2.",
     "source": "socratic", "index": 1043},
    {"question": "Evaluate $\\lim_{x \\to 0} \\frac{1 - \\cos x}{x^2}$.",
     "answer": "Using $1 - \\cos x = 2\\sin^2(x/2)$, the limit becomes\n"
               "$$\\lim_{x\\to 0} \\frac{2\\sin^2(x/2)}{x^2} = \\frac{2}{4} = \\boxed{\\frac{1}{2}}.$$",
     "source": "mathstackexchange", "index": 1043},
    {"question": "Why does ice float on liquid water?",
     "answer": "When water freezes, hydrogen bonds hold the molecules in an open hexagonal lattice, so ice "
               "is about 9% less dense than liquid water and floats on it.",
     "source": "socratic", "index": 77},
]


def test_webinstruct_sub_answers_become_noisy_responses_with_the_gold_they_state(tmp_path):
    path = _jsonl(tmp_path / "webinstruct_sub.jsonl", WEBINSTRUCT_SUB)
    slope, limit, ice = load_source(path, "webinstruct-sub")
    for rec, row in zip((slope, limit, ice), WEBINSTRUCT_SUB):
        assert rec.question == row["question"] and rec.response == row["answer"]  # the web answer, untouched
        assert rec.reference is None and rec.critique is None and rec.verdict is None
        assert rec.meta == {"source": "webinstruct-sub", "origin": row["source"]}
    assert slope.gold == "2"  # "the answer is 2."
    assert limit.gold == r"\frac{1}{2}"  # the box
    assert ice.gold is None  # no stated answer: kept, without a gold answer, never the last number ("9")
    # The same index on two sites is two records (the index is not documented to be unique across sites).
    assert [r.id for r in (slope, limit, ice)] == ["socratic-1043", "mathstackexchange-1043", "socratic-77"]
    assert guess_source(WEBINSTRUCT_SUB[0]) == "webinstruct-sub"
    assert load_source(path) == [slope, limit, ice]


@pytest.mark.parametrize(("text", "gold"), [
    ("So the answer is $x = 5$.", "x = 5"),
    ("Final answer: 12", "12"),
    ("First $\\boxed{3}$, then corrected: $\\boxed{4}$.", "4"),
    ("The speed is 3 m/s after 4 seconds.", None),  # numbers, but no stated answer
])
def test_stated_answer(text, gold):
    assert stated_answer(text) == gold


# --------------------------------------------------------------------------------- acemath

ACEMATH = [  # AceMath-Instruct-Training-Data's shape: messages [{role, content}] and answer
    {"messages": [{"role": "user", "content": "Find the remainder when $2^{10}$ is divided by 7."},
                  {"role": "assistant", "content": "$2^{10} = 1024 = 7 \\cdot 146 + 2$, so the remainder is $\\boxed{2}$."}],
     "answer": "2"},
    {"messages": [{"role": "system", "content": "Please reason step by step."},
                  {"role": "user", "content": "What is $\\frac{3}{4} + \\frac{1}{8}$?"},
                  {"role": "assistant", "content": "$\\frac{6}{8} + \\frac{1}{8} = \\boxed{\\frac{7}{8}}$."}],
     "answer": ""},
]


def test_acemath_chat_rows_give_reference_solutions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "acemath.parquet"  # as the release ships it: nested message structs in parquet
    pq.write_table(pa.Table.from_pylist(ACEMATH), path)
    first, second = load_source(path)  # auto: a `messages` row is a chat SFT row
    assert first.question == "Find the remainder when $2^{10}$ is divided by 7."
    assert first.reference == ACEMATH[0]["messages"][1]["content"] and first.gold == "2"
    assert first.response is None and first.meta == {"source": "acemath"} and first.id == "acemath-1"
    assert second.question == "What is $\\frac{3}{4} + \\frac{1}{8}$?"  # the system turn is not the question
    assert second.gold == r"\frac{7}{8}"  # an empty `answer`: the solution's box


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "q?"}],  # no reply
    [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q?"}],  # no question before the reply
    [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "  "}],
    "q? a",
])
def test_acemath_row_without_a_question_and_reply_names_file_and_line(tmp_path, messages):
    path = _jsonl(tmp_path / "chat.jsonl", [ACEMATH[0], {"messages": messages, "answer": "1"}])
    with pytest.raises(RecordError, match=r"chat\.jsonl:2: field 'messages' "):
        load_source(path, "acemath")


def test_iter_source_reads_one_row_at_a_time(tmp_path):
    """What the config check of a set's records file relies on: the first records arrive before a
    later bad row is read."""
    path = _jsonl(tmp_path / "w.jsonl", WEBINSTRUCT_SUB[:2] + [{"question": "no answer", "source": "x", "index": 1}])
    rows = iter_source(path, "webinstruct-sub")
    assert [next(rows).id, next(rows).id] == ["socratic-1043", "mathstackexchange-1043"]
    with pytest.raises(RecordError, match=r"w\.jsonl:3: missing field 'answer'"):
        next(rows)


# --------------------------------------------------------------------- other mappings, auto


def test_metamath_and_numina(tmp_path):
    mm = _jsonl(tmp_path / "mm.jsonl", [{"query": "What is 6*7?", "response": "6*7 = 42.\nThe answer is: 42", "type": "GSM_Rephrased"}])
    (rec,) = load_source(mm, "metamath")
    assert (rec.question, rec.gold, rec.response) == ("What is 6*7?", "42", "6*7 = 42.\nThe answer is: 42")
    assert rec.meta == {"source": "metamath", "type": "GSM_Rephrased"}
    nu = _jsonl(tmp_path / "nu.jsonl", [{"problem": "Find x.", "solution": r"So $x=\boxed{\frac{1}{2}}$.", "source": "amc"}])
    (rec,) = load_source(nu, "numina")
    assert rec.gold == r"\frac{1}{2}" and rec.response.startswith("So $x=") and rec.meta["origin"] == "amc"


@pytest.mark.parametrize(
    ("path", "expected"),
    [(GSM8K_TRAIN, "gsm8k"), (GSM8K_TEST, "gsm8k"), (MATH500, "math"), (NOISY, "gsm8k-noisy")],
)
def test_auto_guesses_the_source_of_the_shared_files(path, expected):
    row = _first_rows(path, 1)[0]
    assert guess_source(row) == expected
    auto = load_source(path, "auto", limit=4)
    assert auto == load_source(path, expected, limit=4)


def test_auto_guesses_webinstruct_metamath_and_critkit(tmp_path):
    cft = _jsonl(tmp_path / "cft.jsonl", [_cft_row("Q?", "S.", "Conclusion: wrong [END]")])
    assert load_source(cft)[0].verdict == "wrong"
    mm = _jsonl(tmp_path / "mm.jsonl", [{"query": "q?", "response": "The answer is: 3"}])
    assert load_source(mm)[0].gold == "3"
    own = tmp_path / "own.parquet"
    write_records(own, load_source(GSM8K_TRAIN, "gsm8k", limit=2))
    assert load_source(own) == load_source(GSM8K_TRAIN, "gsm8k", limit=2)
    assert guess_source({"id": "a", "question": "q?"}) == "critkit"


def test_limit_and_unknown_source(tmp_path):
    assert len(load_source(NOISY, "gsm8k-noisy", limit=5)) == 5
    assert len(load_source(GSM8K_TRAIN, "gsm8k", limit=1)) == 1
    with pytest.raises(ValueError, match="unknown source 'nope'"):
        load_source(GSM8K_TRAIN, "nope")
    assert set(SOURCES) == {"critkit", "gsm8k", "math", "webinstruct-cft", "webinstruct-sub", "gsm8k-noisy", "metamath",
                            "numina", "acemath"}


def test_duplicate_ids_are_an_error(tmp_path):
    path = _jsonl(tmp_path / "dup.jsonl", [{"idx": 1, "question": "a?", "answer": "x\n#### 1"},
                                           {"idx": 1, "question": "b?", "answer": "x\n#### 2"}])
    with pytest.raises(RecordError, match="duplicate record ids"):
        load_source(path, "gsm8k")


def test_non_object_line_names_file_and_line(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps({"question": "a?", "answer": "x\n#### 1"}) + "\n[1, 2]\n")
    with pytest.raises(RecordError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        load_source(path, "gsm8k")
