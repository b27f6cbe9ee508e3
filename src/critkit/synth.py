"""Synthesis stages: respond (student y'), critique (teacher c + verdict), refine (teacher ŷ),
solve (teacher's own solution).

Each stage takes records and returns records with one more field filled in, keeping the raw
teacher input and output under meta[stage]. A record that already has the stage's field is left
as it is (so a stage can be rerun on its own output), and one that lacks the stage's input is
passed through unchanged and counted as skipped.

A teacher is either a backend (anything with `generate`, see backends.py) or the string
"reference": an offline teacher that needs no model. It judges a response by grading its final
answer against the gold answer with math-verify, and writes its critique and refinement from the
reference solution. It is a stand-in for a real teacher on machines without one, and it is named
for what it is wherever its output is recorded.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Iterable

from .backends import Sampling
from .grading import extract_answer, grade
from .methods import answer_prompt
from .prompts import load_prompt, render
from .records import Record

__all__ = ["respond", "critique", "refine", "solve", "parse_verdict", "REFERENCE", "StageReport"]

REFERENCE = "reference"

_CONCLUSION = re.compile(r"conclusion\s*[:：]?\s*[*_`\s]*(right|wrong|correct|incorrect)\b", re.I)


def parse_verdict(text: str | None) -> str | None:
    """'right' / 'wrong' from the last 'Conclusion: ...' line, or None when there is none.

    Accepts the CFT form ('Conclusion: right [END]'), the CGD form and self-critique's
    'Critique Conclusion: Correct/Incorrect'. Never guesses from the rest of the text.
    """
    if not text:
        return None
    found = _CONCLUSION.findall(text)
    if not found:
        return None
    word = found[-1].lower()
    return "right" if word in ("right", "correct") else "wrong"


class StageReport(Counter):
    """done / skipped counts by reason for one stage; printed by the CLI."""

    def line(self, stage: str) -> str:
        parts = [f"{k}: {v}" for k, v in sorted(self.items())]
        return f"{stage}: " + (", ".join(parts) if parts else "nothing to do")


def _teacher_name(teacher) -> str:
    return REFERENCE if teacher == REFERENCE else f"{type(teacher).__name__}:{teacher.name}"


def _run(records: list[Record], todo: list[int], conversations: list, teacher, sampling: Sampling, stage: str):
    """Generate one completion per selected record; returns the raw texts in order."""
    if not todo:
        return []
    outputs = teacher.generate(conversations, replace(sampling, n=1), desc=stage)
    return [texts[0] if texts else "" for texts in outputs]


# ---------------------------------------------------------------------------------------- respond


def respond(records: Iterable[Record], student, sampling: Sampling, prompt: str = "cot") -> tuple[list[Record], StageReport]:
    """The student's own answers y'. With sampling.n > 1 each question yields n records `id#k`."""
    records = list(records)
    report = StageReport()
    todo = [i for i, r in enumerate(records) if not r.response]
    report["kept (had a response)"] = len(records) - len(todo)

    def conversation(q: str):
        if prompt == "base":
            return [{"role": "user", "content": render("base_answer", question=q)}]
        return answer_prompt(q)

    convs = [conversation(records[i].question) for i in todo]
    outputs = student.generate(convs, sampling, desc="respond") if todo else []
    out: list[Record] = []
    by_index = dict(zip(todo, outputs))
    for i, rec in enumerate(records):
        if i not in by_index:
            out.append(rec)
            continue
        for k, text in enumerate(by_index[i]):
            rid = rec.id if sampling.n == 1 else f"{rec.id}#{k}"
            meta = {**rec.meta, "respond": {"model": student.name, "prompt": prompt, "sampling": sampling.as_dict(), "sample": k}}
            out.append(replace(rec, id=rid, response=text, meta=meta))
            report["done"] += 1
    return out, report


# ---------------------------------------------------------------------------------------- critique


def _reference_critique(rec: Record, style: str) -> tuple[str, str]:
    pred = extract_answer(rec.response)
    right = grade(rec.response, rec.gold)
    end = " [END]" if style == "cft" else ""
    if right:
        text = (f"The solution's final answer, {pred}, matches the reference answer {rec.gold}, "
                f"and its steps reach it.\nConclusion: right{end}")
    else:
        said = f"The solution's final answer is {pred}" if pred is not None else "The solution gives no final answer"
        text = f"{said}, but the correct answer is {rec.gold}."
        if rec.reference:
            text += f" A correct solution:\n{rec.reference}"
        text += f"\nConclusion: wrong{end}"
    return text, "right" if right else "wrong"


def critique(records: Iterable[Record], teacher, sampling: Sampling, style: str = "cft") -> tuple[list[Record], StageReport]:
    """Teacher critique c and verdict. `style` picks the CFT or the CGD teacher prompt."""
    if style not in ("cft", "cgd"):
        raise ValueError(f"unknown critique style {style!r}; use cft or cgd")
    records = list(records)
    report = StageReport()
    todo: list[int] = []
    for i, rec in enumerate(records):
        if rec.critique:
            report["kept (had a critique)"] += 1
        elif not rec.response:
            report["skipped: no response"] += 1
        elif teacher == REFERENCE and not rec.gold:
            report["skipped: no gold answer for the reference teacher"] += 1
        else:
            todo.append(i)
    out = list(records)
    name = _teacher_name(teacher)
    if teacher == REFERENCE:
        for i in todo:
            text, verdict = _reference_critique(records[i], style)
            meta = {**records[i].meta, "critique": {"teacher": name, "style": style, "output": text}}
            out[i] = replace(records[i], critique=text, verdict=verdict, meta=meta)
            report["done"] += 1
        return out, report
    convs = []
    for i in todo:
        rec = records[i]
        convs.append([
            {"role": "system", "content": load_prompt(f"{style}_critique_system")},
            {"role": "user", "content": render(f"{style}_critique_user", question=rec.question, response=rec.response)},
        ])
    for i, conv, text in zip(todo, convs, _run(records, todo, convs, teacher, sampling, "critique")):
        verdict = parse_verdict(text)
        if verdict is None:
            report["verdict unparsed"] += 1
        meta = {**records[i].meta, "critique": {"teacher": name, "style": style, "messages": conv,
                                                 "output": text, "sampling": sampling.as_dict()}}
        out[i] = replace(records[i], critique=text, verdict=verdict or "unparsed", meta=meta)
        report["done"] += 1
    return out, report


# ---------------------------------------------------------------------------------------- refine


def refine(records: Iterable[Record], teacher, sampling: Sampling) -> tuple[list[Record], StageReport]:
    """Teacher's refined answer ŷ given (question, response, critique): the CGD target."""
    records = list(records)
    report = StageReport()
    todo: list[int] = []
    for i, rec in enumerate(records):
        if rec.refined:
            report["kept (had a refined answer)"] += 1
        elif not (rec.response and rec.critique):
            report["skipped: no response or critique"] += 1
        elif teacher == REFERENCE and not rec.reference:
            report["skipped: no reference solution for the reference teacher"] += 1
        else:
            todo.append(i)
    out = list(records)
    name = _teacher_name(teacher)
    if teacher == REFERENCE:
        texts = [records[i].reference for i in todo]
        convs = [None] * len(todo)
    else:
        convs = [[{"role": "system", "content": load_prompt("cgd_refine_system")},
                  {"role": "user", "content": render("cgd_refine_user", question=records[i].question,
                                                      response=records[i].response, critique=records[i].critique)}]
                 for i in todo]
        texts = _run(records, todo, convs, teacher, sampling, "refine")
    for i, conv, text in zip(todo, convs, texts):
        meta = {**records[i].meta, "refine": {"teacher": name, "messages": conv, "output": text}}
        out[i] = replace(records[i], refined=_strip_thinking(text), meta=meta)
        report["done"] += 1
    return out, report


def _strip_thinking(text: str) -> str:
    # Reasoning teachers wrap their thoughts in <think>...</think>; the CGD code keeps what follows.
    return re.sub(r"(?s)^.*?</think>\s*", "", text) if "</think>" in text else text


# ---------------------------------------------------------------------------------------- solve


def solve(records: Iterable[Record], teacher, sampling: Sampling) -> tuple[list[Record], StageReport]:
    """The teacher's own solution from the question (the SFT-teacher baseline's target)."""
    records = list(records)
    report = StageReport()
    todo = []
    for i, rec in enumerate(records):
        if rec.teacher_solution:
            report["kept (had a teacher solution)"] += 1
        elif teacher == REFERENCE and not rec.reference:
            report["skipped: no reference solution for the reference teacher"] += 1
        else:
            todo.append(i)
    out = list(records)
    name = _teacher_name(teacher)
    if teacher == REFERENCE:
        texts, convs = [records[i].reference for i in todo], [None] * len(todo)
    else:
        convs = [answer_prompt(records[i].question) for i in todo]
        texts = _run(records, todo, convs, teacher, sampling, "solve")
    for i, conv, text in zip(todo, convs, texts):
        meta = {**records[i].meta, "solve": {"teacher": name, "messages": conv, "output": text}}
        out[i] = replace(records[i], teacher_solution=_strip_thinking(text), meta=meta)
        report["done"] += 1
    return out, report


STAGES = {"respond": respond, "critique": critique, "refine": refine, "solve": solve}
