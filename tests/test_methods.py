"""Methods: one training pair per method, the papers' prompt texts pinned exactly, skip reasons."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from critkit.training.methods import METHODS, Pair, Skip, answer_prompt, build_pairs
from critkit.prompts import PROMPT_NAMES, load_prompt, render
from critkit.data.records import Record

# --------------------------------------------------------------- the papers' prompts, verbatim

COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CFT_CRITIQUE_SYSTEM = (
    "You are a science expert. A student is trying to solve a question, please explain briefly whether his "
    "solution is correct or not. Finally, conclude your judgement with 'Conclusion: right/wrong [END]'"
)
CFT_TRAIN_INSTRUCTION = "Please critique whether the following solution to the question is correct."
CGD_CRITIQUE_SYSTEM = (
    "You are a knowledgeable science and mathematics expert. A student has attempted to answer the following "
    "question. You are provided with the student's answer. Review the student's answer carefully, identify any "
    "inaccuracies, missing logical steps, or unclear explanations. Provide a detailed critique and then end with a "
    "line exactly in the format: 'Conclusion: right' or 'Conclusion: wrong'."
)
CGD_REFINE_SYSTEM = (
    "You are a knowledgeable science expert. Based on the student's initial answer and your critique, write an "
    "improved, comprehensive answer that corrects inaccuracies and fills missing steps. Ensure the final answer is "
    "clear, accurate, and complete."
)
CFT_SOLVE_SYSTEM = (
    "You are a science expert. You need to answer a given question clearly and conclude your answer with "
    "'Answer: [YOUR ANSWER]'"
)
SELF_CRITIQUE_SINGLE_SYSTEM = (
    "Please reason step by step to solve this problem and then critique your solution. If any errors are found, "
    "provide a corrected solution. Please put your final answer within \\boxed{}."
)

Q = "What is $3 + 4$?"
R = "3 + 4 = 8, so the answer is 8."
C = "3 + 4 is 7, not 8.\nConclusion: wrong [END]"

RENDERED = [
    ("cot_system", {}, COT_SYSTEM),
    ("cft_critique_system", {}, CFT_CRITIQUE_SYSTEM),
    ("cft_critique_user", {"question": Q, "response": R}, f"\nQuestion: {Q}\n\nSolution: {R}\n"),
    ("cft_train_instruction", {}, CFT_TRAIN_INSTRUCTION),
    ("cft_train_input", {"question": Q, "response": R}, f"Question:\n{Q}\n\nSolution:\n{R}"),
    ("cgd_critique_system", {}, CGD_CRITIQUE_SYSTEM),
    ("cgd_critique_user", {"question": Q, "response": R}, f"Question: {Q}\n\nStudent's Answer: {R}"),
    ("cgd_refine_system", {}, CGD_REFINE_SYSTEM),
    ("cgd_refine_user", {"question": Q, "response": R, "critique": C},
     f"Question: {Q}\n\nStudent's Initial Answer: {R}\n\nCritique: {C}"),
    ("cgd_no_critique_user", {"question": Q, "response": R}, f"Question: {Q}\n\nStudent's Initial Answer: {R}"),
    ("base_answer", {"question": Q}, f"Question: {Q}\n\nAnswer:"),
    # CFT A.2: how the SFT-GPT4o baseline's solutions were generated (the teacher's `solve`).
    ("cft_solve_system", {}, CFT_SOLVE_SYSTEM),
    ("cft_solve_user", {"question": Q}, f"\nQuestion: {Q}\n"),
    # CFT A.4.1, single-pass self-critique: the paper's instruction, word for word.
    ("self_critique_single_system", {}, SELF_CRITIQUE_SINGLE_SYSTEM),
    # CFT A.4.1, two-stage, the critique step: the paper's request and layout, then one line of
    # critkit's own asking for the paper's "Critique Conclusion: Correct/Incorrect" format.
    ("self_critique_check_user", {"question": Q, "response": R},
     f"Please critique whether the following solution to the question is correct.\n\nQuestion:\n{Q}\n\nSolution:\n{R}"
     "\n\nCheck each step. End with exactly one line: 'Critique Conclusion: Correct' or 'Critique Conclusion: Incorrect'."),
]


@pytest.mark.parametrize(("name", "values", "expected"), RENDERED, ids=[r[0] for r in RENDERED])
def test_rendered_prompt_texts_are_the_papers(name, values, expected):
    assert render(name, **values) == expected


def test_every_packaged_prompt_is_pinned():
    assert {r[0] for r in RENDERED} == set(PROMPT_NAMES)


PAPERS = Path(__file__).resolve().parents[2] / "shared" / "papers"


def test_cft_appendix_prompts_are_the_papers_words():
    """A.2 (SFT-GPT4o solutions) and A.4.1 (self-critique) as printed in the CFT paper. The text
    extraction shows the paper's \\boxed{} as "\\square " and drops line breaks."""
    paper = " ".join((PAPERS / "cft-critique-fine-tuning-v1.txt").read_text(encoding="utf-8").split())
    assert load_prompt("cft_solve_system") + " Question:" in paper
    assert load_prompt("self_critique_single_system").replace("\\boxed{}.", "\\square .") in paper
    check = load_prompt("self_critique_check_user")
    assert check.split("\n")[0] + " Question:" in paper  # the request; the last line is critkit's own
    # Negative control: the wording critkit used before is not in the paper.
    assert "Then critique your own solution: check every step" not in paper


def test_render_needs_its_placeholders_and_knows_its_prompts():
    with pytest.raises(ValueError, match="needs 'response'"):
        render("cft_train_input", question=Q)
    with pytest.raises(KeyError, match="unknown prompt"):
        load_prompt("nope")


@pytest.mark.parametrize(
    ("question", "response"),
    [
        ("Explain what {response} means in this template.", "A {question} and a {critique}."),
        (r"Simplify $\frac{a}{b}$ when $\{x : x^{2} = 1\}$ is given.", r"We get $\boxed{\{-1, 1\}}$ and {response}."),
        ("{question}", "{response}"),
    ],
)
def test_values_are_substituted_once(question, response):
    assert render("cft_train_input", question=question, response=response) == f"Question:\n{question}\n\nSolution:\n{response}"
    critique = "Look at {response} and {question} again."
    assert render("cgd_refine_user", question=question, response=response, critique=critique) == (
        f"Question: {question}\n\nStudent's Initial Answer: {response}\n\nCritique: {critique}"
    )


# ------------------------------------------------------------------------------- each method


FULL = Record(
    id="r1",
    question=Q,
    gold="7",
    reference="3 + 4 = 7.\nThe answer is \\boxed{7}.",
    response=R,
    critique=C,
    verdict="right",  # "right" so that sft-verified keeps this record too
    refined="Adding 3 and 4 gives 7.\nThe answer is \\boxed{7}.",
    teacher_solution="3 + 4 = 7, so \\boxed{7}.",
    meta={},
)

ANSWER_PROMPT = [{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": Q}]
CFT_USER = f"{CFT_TRAIN_INSTRUCTION}\n\nQuestion:\n{Q}\n\nSolution:\n{R}"
CGD_USER = f"Question: {Q}\n\nStudent's Initial Answer: {R}\n\nCritique: {C}"

EXPECTED = {
    "sft": (ANSWER_PROMPT, FULL.response),
    "sft-verified": (ANSWER_PROMPT, FULL.response),
    "sft-teacher": (ANSWER_PROMPT, FULL.teacher_solution),
    "sft-gold": (ANSWER_PROMPT, FULL.reference),
    "cft": ([{"role": "user", "content": CFT_USER}], FULL.critique),
    "distilled-sft": (ANSWER_PROMPT, FULL.refined),
    "cgd": ([{"role": "user", "content": CGD_USER}], FULL.refined),
    "cgd-no-critique": ([{"role": "user", "content": f"Question: {Q}\n\nStudent's Initial Answer: {R}"}], FULL.refined),
}


def test_every_method_is_covered():
    assert set(METHODS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_method_builds_the_expected_pair(name):
    pair = METHODS[name](FULL)
    assert isinstance(pair, Pair)
    prompt, completion = EXPECTED[name]
    assert pair.prompt == prompt
    assert pair.completion == completion


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_build_pairs_row_shape(name):
    rows, skipped = build_pairs(name, [FULL])
    assert rows == [{"id": "r1", "method": name, "prompt": EXPECTED[name][0], "completion": EXPECTED[name][1]}]
    assert skipped == {}


def test_answer_prompt_is_the_qwen_math_cot_prompt():
    assert answer_prompt("Q?") == [{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": "Q?"}]


def test_cft_keeps_a_datasets_own_instruction():
    own = "Critique the solution below and say whether it is right."
    pair = METHODS["cft"](replace(FULL, meta={"instruction": own}))
    assert pair.prompt == [{"role": "user", "content": f"{own}\n\nQuestion:\n{Q}\n\nSolution:\n{R}"}]
    # a missing or empty instruction falls back to the paper's critique request
    assert METHODS["cft"](replace(FULL, meta={"instruction": None})).prompt[0]["content"] == CFT_USER


def test_prompt_with_template_text_is_not_substituted_twice():
    question = r"If {response} denotes $\{x \mid x^{2} > 1\}$, what is {critique}?"
    response = "It is {question}; {response}."
    rec = replace(FULL, question=question, response=response)
    cft_user = METHODS["cft"](rec).prompt[0]["content"]
    assert cft_user == f"{CFT_TRAIN_INSTRUCTION}\n\nQuestion:\n{question}\n\nSolution:\n{response}"
    cgd_user = METHODS["cgd"](rec).prompt[0]["content"]
    assert cgd_user == f"Question: {question}\n\nStudent's Initial Answer: {response}\n\nCritique: {C}"
    assert METHODS["sft"](rec).prompt[1]["content"] == question


# ------------------------------------------------------------------------------------ skips


def _bare(**fields) -> Record:
    return Record(id=fields.pop("id", "b"), question=fields.pop("question", Q), **fields)


SKIPS = [
    ("sft", _bare(), "no response"),
    ("sft", _bare(response="   "), "no response"),
    ("sft-verified", _bare(response=R), "no verdict"),
    ("sft-verified", _bare(response=R, verdict="wrong"), "verdict wrong"),
    ("sft-verified", _bare(response=R, verdict="unparsed"), "verdict unparsed"),
    ("sft-verified", _bare(verdict="right"), "no response"),
    ("sft-teacher", _bare(response=R), "no teacher_solution"),
    ("sft-gold", _bare(response=R), "no reference"),
    ("cft", _bare(), "no response"),
    ("cft", _bare(response=R), "no critique"),
    ("cft", _bare(response=R, critique=""), "no critique"),
    ("distilled-sft", _bare(response=R, critique=C), "no refined"),
    ("cgd", _bare(response=R, refined="x"), "no critique"),
    ("cgd", _bare(critique=C, refined="x"), "no response"),
    ("cgd", _bare(response=R, critique=C), "no refined"),
    ("cgd-no-critique", _bare(response=R), "no refined"),
    ("cgd-no-critique", _bare(refined="x"), "no response"),
]


@pytest.mark.parametrize(("name", "record", "reason"), SKIPS)
def test_method_skips_with_a_reason(name, record, reason):
    out = METHODS[name](record)
    assert out == Skip(reason)


def test_build_pairs_counts_skips_by_reason():
    records = [
        replace(FULL, id="a", verdict="right"),
        replace(FULL, id="b", verdict="wrong"),
        replace(FULL, id="c", verdict="wrong"),
        replace(FULL, id="d", verdict="unparsed"),
        replace(FULL, id="e", verdict=None),
        replace(FULL, id="f", response=None),
        replace(FULL, id="g", verdict="right", response="Another right answer."),
    ]
    rows, skipped = build_pairs("sft-verified", records)
    assert [r["id"] for r in rows] == ["a", "g"]
    assert dict(skipped) == {"verdict wrong": 2, "verdict unparsed": 1, "no verdict": 1, "no response": 1}
    assert len(rows) + sum(skipped.values()) == len(records)

    rows, skipped = build_pairs("cft", [FULL, replace(FULL, id="x", critique=None), replace(FULL, id="y", response="")])
    assert [r["id"] for r in rows] == ["r1"]
    assert dict(skipped) == {"no critique": 1, "no response": 1}

    rows, skipped = build_pairs("sft", records)  # sft keeps right and wrong responses alike
    assert len(rows) == 6 and dict(skipped) == {"no response": 1}


def test_build_pairs_unknown_method():
    with pytest.raises(ValueError, match="unknown method 'sft-magic'"):
        build_pairs("sft-magic", [FULL])
