"""Synthesis stages with the offline reference teacher and with a scripted LLM teacher.

The verdict parser and the thinking sections are pinned in test_verdicts.py; here, how the stages
use them: thinking removed before reuse, a reply cut inside its thinking never used."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from critkit.engine.backends import Sampling
from critkit.prompts import load_prompt
from critkit.data.records import Record
from critkit.data.sources import load_source
from critkit.grading.thinking import UNCLOSED_THINKING
from critkit.synth.stages import REFERENCE, UNCLOSED_NOTE, critique, parse_verdict, refine, respond, solve

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K_TRAIN = DATA / "train" / "gsm8k_train.jsonl"
NOISY = DATA / "noisy" / "gsm8k_test_model_solutions.jsonl"

CFT_SYSTEM = load_prompt("cft_critique_system")
CGD_SYSTEM = load_prompt("cgd_critique_system")
CGD_REFINE_SYSTEM = load_prompt("cgd_refine_system")
COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# CFT A.2, the prompt behind the SFT-GPT4o baseline's solutions.
A2_SYSTEM = ("You are a science expert. You need to answer a given question clearly and conclude your answer with "
             "'Answer: [YOUR ANSWER]'")


# ------------------------------------------------------------------------ reference teacher


@pytest.fixture(scope="module")
def gsm8k_records() -> list[Record]:
    """Real GSM8K rows, each with a right response (the reference) and a wrong one."""
    base = load_source(GSM8K_TRAIN, "gsm8k", limit=3)
    out = []
    for rec in base:
        out.append(replace(rec, id=f"{rec.id}-right", response=rec.reference))
        wrong = int(rec.gold) + 1
        out.append(replace(rec, id=f"{rec.id}-wrong", response=f"I think it is {wrong}.\nThe answer is \\boxed{{{wrong}}}."))
    return out


@pytest.mark.parametrize(("style", "end"), [("cft", " [END]"), ("cgd", "")])
def test_reference_critique_on_real_gsm8k(gsm8k_records, style, end):
    # The worked solution in the critique is what these assertions read (test_reference_critique.py: the others).
    out, report = critique(gsm8k_records, REFERENCE, Sampling(), style=style, reference_critique="solution")
    assert len(out) == len(gsm8k_records)
    assert report["done"] == len(gsm8k_records)
    for before, rec in zip(gsm8k_records, out):
        expected = "right" if before.id.endswith("-right") else "wrong"
        assert rec.verdict == expected, rec.id
        assert rec.critique.endswith(f"\nConclusion: {expected}{end}")
        assert parse_verdict(rec.critique) == expected
        assert rec.meta["critique"]["teacher"] == "reference"
        assert rec.meta["critique"]["style"] == style
        assert rec.meta["critique"]["output"] == rec.critique
        # everything else is untouched
        assert (rec.id, rec.question, rec.gold, rec.response, rec.reference) == (
            before.id, before.question, before.gold, before.response, before.reference)
    wrong = out[1]
    assert f"the correct answer is {wrong.gold}" in wrong.critique
    assert wrong.reference in wrong.critique  # the reference teacher shows a correct solution
    assert all(r.critique.count("[END]") == (1 if style == "cft" else 0) for r in out)


def test_reference_critique_agrees_with_the_noisy_files_labels():
    records = load_source(NOISY, "gsm8k-noisy", limit=12)
    out, _ = critique(records, REFERENCE, Sampling(), style="cft")
    assert [r.verdict for r in out] == ["right" if r.meta["is_correct"] else "wrong" for r in records]
    assert {r.verdict for r in out} == {"right", "wrong"}  # both kinds occur in these rows
    assert all(r.meta["is_correct"] == before.meta["is_correct"] for r, before in zip(out, records))


def test_critique_passes_through_records_lacking_input(gsm8k_records):
    has_critique = replace(gsm8k_records[0], id="done", critique="Old.\nConclusion: wrong [END]", verdict="wrong")
    no_response = replace(gsm8k_records[0], id="no-response", response=None)
    no_gold = replace(gsm8k_records[1], id="no-gold", gold=None)
    todo = gsm8k_records[2]
    records = [has_critique, no_response, no_gold, todo]
    out, report = critique(records, REFERENCE, Sampling(), style="cft")
    assert out[0] is has_critique and out[1] is no_response and out[2] is no_gold
    assert out[3].verdict == "right"
    assert dict(report) == {
        "kept (had a critique)": 1,
        "skipped: no response": 1,
        "skipped: no gold answer for the reference teacher": 1,
        "done": 1,
    }
    assert report.line("critique").startswith("critique: ")


def test_unknown_critique_style():
    with pytest.raises(ValueError, match="unknown critique style"):
        critique([], REFERENCE, Sampling(), style="gpt")


def test_reference_refine_and_solve_fill_from_the_reference(gsm8k_records):
    critiqued, _ = critique(gsm8k_records, REFERENCE, Sampling(), style="cgd")
    refined, report = refine(critiqued, REFERENCE, Sampling())
    assert report["done"] == len(critiqued)
    for rec in refined:
        assert rec.refined == rec.reference
        assert rec.meta["refine"]["teacher"] == "reference"
        assert rec.meta["refine"]["output"] == rec.reference
        assert rec.meta["critique"]["teacher"] == "reference"  # earlier stages' meta is kept
    solved, report = solve(refined, REFERENCE, Sampling())
    assert report["done"] == len(refined)
    for rec in solved:
        assert rec.teacher_solution == rec.reference
        assert rec.meta["solve"]["teacher"] == "reference"
        assert rec.refined == rec.reference


def test_refine_and_solve_pass_through_records_lacking_input():
    full = Record(id="ok", question="q?", gold="1", reference="ref \\boxed{1}", response="r", critique="c")
    records = [
        full,
        replace(full, id="no-critique", critique=None),
        replace(full, id="no-response", response=None),
        replace(full, id="no-ref", reference=None),
        replace(full, id="has", refined="already", teacher_solution="already"),
    ]
    out, report = refine(records, REFERENCE, Sampling())
    assert [r.refined for r in out] == ["ref \\boxed{1}", None, None, None, "already"]
    assert out[1:] == records[1:]
    assert dict(report) == {
        "done": 1,
        "skipped: no response or critique": 2,
        "skipped: no reference solution for the reference teacher": 1,
        "kept (had a refined answer)": 1,
    }
    out, report = solve(records, REFERENCE, Sampling())
    assert [r.teacher_solution for r in out] == ["ref \\boxed{1}"] * 3 + [None, "already"]
    assert out[3] == records[3] and out[4] == records[4]
    assert dict(report) == {
        "done": 3,
        "skipped: no reference solution for the reference teacher": 1,
        "kept (had a teacher solution)": 1,
    }


# ------------------------------------------------------------------ a scripted LLM teacher


class ScriptedTeacher:
    """A real teacher object: replies are looked up by the conversation's user message."""

    def __init__(self, replies: dict[str, str], name: str = "scripted-1"):
        self.name = name
        self.replies = replies
        self.calls: list[tuple[list, Sampling, str]] = []

    def generate(self, conversations, sampling, desc=""):
        self.calls.append((conversations, sampling, desc))
        out = []
        for conv in conversations:
            user = conv[-1]["content"]
            key = next((k for k in self.replies if k in user), None)
            texts = [self.replies[key] if key is not None else "no script"]
            out.append(texts * sampling.n)
        return out


def _records() -> list[Record]:
    return [
        Record(id="a", question="What is 2+2?", gold="4", response="2+2=4. \\boxed{4}"),
        Record(id="b", question="What is 3*3?", gold="9", response="3*3=6. \\boxed{6}"),
        Record(id="c", question="What is 5-1?", gold="4", response="5-1=4. \\boxed{4}"),
        Record(id="d", question="Untouched?", gold="1"),  # no response: passed through
    ]


REPLIES = {
    "2+2": "All steps are correct.\nConclusion: right [END]",
    "3*3": "3*3 is 9.\n**Conclusion:** wrong",
    "5-1": "Looks plausible, I suppose the student is right.",  # no conclusion line
}


@pytest.mark.parametrize("style", ["cft", "cgd"])
def test_llm_teacher_critique(style):
    teacher = ScriptedTeacher(REPLIES)
    sampling = Sampling(temperature=0.3, top_p=0.95, max_new_tokens=3200, n=4)
    out, report = critique(_records(), teacher, sampling, style=style)

    assert [r.verdict for r in out] == ["right", "wrong", "unparsed", None]
    assert [r.critique for r in out[:3]] == [REPLIES["2+2"], REPLIES["3*3"], REPLIES["5-1"]]
    assert out[3] == _records()[3]
    assert dict(report) == {"done": 3, "verdict unparsed": 1, "skipped: no response": 1}

    # one batched call, one completion per record whatever n the caller asked for
    (convs, used, desc), = teacher.calls
    assert desc == "critique" and used.n == 1 and used.temperature == 0.3
    system = CFT_SYSTEM if style == "cft" else CGD_SYSTEM
    rec = _records()[0]
    user = (f"\nQuestion: {rec.question}\n\nSolution: {rec.response}\n" if style == "cft"
            else f"Question: {rec.question}\n\nStudent's Answer: {rec.response}")
    assert convs[0] == [{"role": "system", "content": system}, {"role": "user", "content": user}]
    assert len(convs) == 3

    for r, conv in zip(out[:3], convs):
        meta = r.meta["critique"]
        assert meta["teacher"] == "ScriptedTeacher:scripted-1"
        assert meta["style"] == style
        assert meta["messages"] == conv
        assert meta["output"] == r.critique
        assert meta["sampling"] == sampling.as_dict()


def test_cgd_style_uses_the_cgd_prompts():
    teacher = ScriptedTeacher(REPLIES)
    critique(_records()[:1], teacher, Sampling(), style="cgd")
    (convs, _, _), = teacher.calls
    system, user = convs[0][0]["content"], convs[0][1]["content"]
    assert system.startswith("You are a knowledgeable science and mathematics expert.")
    assert system.endswith("'Conclusion: right' or 'Conclusion: wrong'.")
    assert "[END]" not in system
    assert user == "Question: What is 2+2?\n\nStudent's Answer: 2+2=4. \\boxed{4}"


def test_llm_teacher_refine_uses_the_cgd_refine_prompt_and_strips_thinking():
    teacher = ScriptedTeacher({"2+2": "<think>Let me redo it.</think>\n\n2 + 2 = 4.\nThe answer is \\boxed{4}."})
    rec = Record(id="a", question="What is 2+2?", response="2+2=5", critique="Off by one.\nConclusion: wrong")
    (out,), report = refine([rec], teacher, Sampling())
    assert out.refined == "2 + 2 = 4.\nThe answer is \\boxed{4}."
    assert report["done"] == 1
    (convs, _, desc), = teacher.calls
    assert desc == "refine"
    assert convs[0] == [
        {"role": "system", "content": CGD_REFINE_SYSTEM},
        {"role": "user", "content": "Question: What is 2+2?\n\nStudent's Initial Answer: 2+2=5\n\nCritique: Off by one.\nConclusion: wrong"},
    ]
    assert out.meta["refine"]["messages"] == convs[0]
    assert out.meta["refine"]["output"].startswith("<think>")  # the raw output is kept


def test_llm_teacher_solve_uses_the_cft_a2_prompt():
    teacher = ScriptedTeacher({"2+2": "2 + 2 = 4.\nAnswer: 4"})
    rec = Record(id="a", question="What is 2+2?")  # no reference needed for a real teacher
    (out,), report = solve([rec], teacher, Sampling())
    assert out.teacher_solution == "2 + 2 = 4.\nAnswer: 4"
    (convs, _, desc), = teacher.calls
    assert desc == "solve"
    assert convs[0] == [{"role": "system", "content": A2_SYSTEM}, {"role": "user", "content": "\nQuestion: What is 2+2?\n"}]
    assert out.meta["solve"]["teacher"] == "ScriptedTeacher:scripted-1"


def test_nothing_to_do_makes_no_teacher_call():
    teacher = ScriptedTeacher(REPLIES)
    records = [Record(id="x", question="q?", response="r", critique="c", verdict="right")]
    out, report = critique(records, teacher, Sampling())
    assert out == records and teacher.calls == []
    assert dict(report) == {"kept (had a critique)": 1}


def test_respond_samples_n_answers_per_question():
    student = ScriptedTeacher({"2+2": "\\boxed{4}"}, name="student")
    records = [Record(id="a", question="What is 2+2?"), Record(id="b", question="q?", response="kept")]
    out, report = respond(records, student, Sampling(n=2), prompt="cot")
    assert [(r.id, r.response) for r in out] == [("a#0", "\\boxed{4}"), ("a#1", "\\boxed{4}"), ("b", "kept")]
    assert out[0].meta["respond"]["model"] == "student" and out[1].meta["respond"]["sample"] == 1
    assert report["done"] == 2 and report["kept (had a response)"] == 1
    (convs, _, _) = student.calls[-1]
    assert convs == [[{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": "What is 2+2?"}]]
    out, _ = respond(records[:1], student, Sampling(), prompt="base")
    assert out[0].id == "a"
    (convs, _, _) = student.calls[-1]
    assert convs == [[{"role": "user", "content": "Question: What is 2+2?\n\nAnswer:"}]]
    with pytest.raises(ValueError, match="unknown respond prompt 'qwen'"):
        respond(records, student, Sampling(), prompt="qwen")


def test_respond_asks_the_plain_question_by_default():
    """CGD stage 1 as the CGD code does it: the question is the only message, no system prompt."""
    student = ScriptedTeacher({"2+2": "4"}, name="student")
    (out,), _ = respond([Record(id="a", question="What is 2+2?")], student, Sampling())
    (convs, _, _) = student.calls[-1]
    assert convs == [[{"role": "user", "content": "What is 2+2?"}]]
    assert out.meta["respond"]["prompt"] == "plain"


# ------------------------------------------------------------ reasoning teachers and students

R1_CRITIQUE = "<think>Is 3*3 = 6? Conclusion: right, surely... no, 3*3 = 9.</think>\n\n3*3 is 9, not 6.\nConclusion: wrong [END]"
S1_CRITIQUE = "think\nThe student says 4. Conclusion: wrong? No, 2+2 = 4.\nanswer\nAll steps hold.\nConclusion: right [END]"
CUT = "<think>Let me check 5-1. Conclusion: right, probably, but first"  # stopped at the token limit


def test_critique_drops_thinking_reads_the_verdict_after_it_and_keeps_the_raw_reply():
    teacher = ScriptedTeacher({"2+2": S1_CRITIQUE, "3*3": R1_CRITIQUE, "5-1": CUT})
    out, report = critique(_records(), teacher, Sampling(), style="cgd")
    a, b, c, d = out
    assert (a.critique, a.verdict) == ("All steps hold.\nConclusion: right [END]", "right")
    assert (b.critique, b.verdict) == ("3*3 is 9, not 6.\nConclusion: wrong [END]", "wrong")
    assert a.meta["critique"]["output"] == S1_CRITIQUE and b.meta["critique"]["output"] == R1_CRITIQUE
    # Cut inside its thinking: not a critique, no verdict; the raw reply and the reason stay in meta.
    assert c.critique is None and c.verdict is None
    assert c.meta["critique"]["output"] == CUT and c.meta["critique"]["error"] == UNCLOSED_THINKING
    assert "verify" not in c.meta
    assert dict(report) == {"done": 2, UNCLOSED_NOTE: 1, "skipped: no response": 1}
    # A later stage treats it as a record without a critique.
    teacher = ScriptedTeacher({"": "refined"})
    refined, report = refine(out, teacher, Sampling())
    assert refined[2].refined is None and report["skipped: no response or critique"] == 2


def test_refine_solve_and_respond_never_use_a_reply_cut_inside_its_thinking():
    rec = Record(id="a", question="What is 2+2?", response="2+2=5", critique="Off by one.\nConclusion: wrong")
    (out,), report = refine([rec], ScriptedTeacher({"2+2": "<think>2 + 2 is"}), Sampling())
    assert out.refined is None and out.meta["refine"]["output"] == "<think>2 + 2 is"
    assert out.meta["refine"]["error"] == UNCLOSED_THINKING and dict(report) == {UNCLOSED_NOTE: 1}
    (out,), report = solve([rec], ScriptedTeacher({"2+2": "<|im_start|>think\n2 + 2 is"}), Sampling())
    assert out.teacher_solution is None and dict(report) == {UNCLOSED_NOTE: 1}
    (out,), report = solve([rec], ScriptedTeacher({"2+2": "<|im_start|>think\nadd<|im_start|>answer\nAnswer: 4"}),
                           Sampling())
    assert out.teacher_solution == "Answer: 4" and report["done"] == 1

    # respond: each sample on its own; the thinking of a closed one goes, the raw text stays.
    class TwoSamples(ScriptedTeacher):
        def generate(self, conversations, sampling, desc=""):
            return [["think\nadding\nanswer\n\\boxed{4}", "think\nadding 2 and"] for _ in conversations]

    out, report = respond([Record(id="q", question="What is 2+2?")], TwoSamples({}), Sampling(n=2))
    assert [(r.id, r.response) for r in out] == [("q#0", "\\boxed{4}"), ("q#1", None)]
    assert out[0].meta["respond"]["output"] == "think\nadding\nanswer\n\\boxed{4}"
    assert out[1].meta["respond"]["error"] == UNCLOSED_THINKING
    assert dict(report) == {"done": 1, UNCLOSED_NOTE: 1}
    # Ordinary answers are untouched and carry no copy of themselves.
    out, _ = respond([Record(id="q", question="What is 2+2?")], ScriptedTeacher({"2+2": "I think the answer is 4."}),
                     Sampling())
    assert out[0].response == "I think the answer is 4." and "output" not in out[0].meta["respond"]
