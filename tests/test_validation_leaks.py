"""The validation split's leak check (evaluation/select.py): docs/evaluation.md says questions are
compared by text with case and whitespace ignored, so a copy of a test question that differs only
in those is a leak, and one that differs in a single character is not."""

from __future__ import annotations

import json

import pytest

from critkit.evaluation.select import check_disjoint, shared_questions

TEST = ["What is 12 + 30?", "A train leaves at 3 pm and travels 60 km.\nWhen does it arrive?", "Name the largest of 4, 9, 2."]


def write(path, questions: list[str]) -> str:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "gold": "1"}) + "\n" for i, q in enumerate(questions)))
    return str(path)


def test_a_copy_that_differs_in_case_and_whitespace_is_a_leak(tmp_path):
    test = write(tmp_path / "test.jsonl", TEST)
    disguised = ["  WHAT is 12 +   30?", "a train leaves at 3 PM and travels 60 km. When\tdoes it arrive?\n", "Something else?"]
    with pytest.raises(ValueError, match=r"shares 2 question\(s\) with test set test"):
        check_disjoint(write(tmp_path / "val.jsonl", disguised), [test])
    # The control: one character changed (13 for 12, a train for trains) is another question.
    changed = ["What is 13 + 30?", "A train leaves at 3 pm and travels 61 km.\nWhen does it arrive?", "Something else?"]
    assert check_disjoint(write(tmp_path / "val2.jsonl", changed), [test]) == ["test"]


def test_training_questions_are_counted_the_same_way(tmp_path):
    validation = write(tmp_path / "val.jsonl", TEST)
    assert shared_questions(validation, ["what IS 12 + 30?", "Name the largest of 4,  9, 2.", "What is 12 + 31?"]) == 2
    assert shared_questions(validation, ["What is 12 + 31?"]) == 0
