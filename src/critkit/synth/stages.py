"""Synthesis stages: respond (student y'), critique (teacher c + verdict), refine (teacher ŷ),
solve (teacher's own solution).

Each stage takes records and returns records with one more field filled in, keeping the raw
teacher input and output under meta[stage]. A record that already has the stage's field is left
as it is (so a stage can be rerun on its own output), and one that lacks the stage's input is
passed through unchanged and counted as skipped.

A stage is made of small per-record pieces that `jobs.py` (the durable, resumable runner behind the
CLI) uses one record at a time: `skip_reason`, `prompt_for`, `reference_output`, `apply` and
`raw_texts`. The batch functions here (`respond`, `critique`, `refine`, `solve`) put them together
in memory, for small runs and for `critkit run`.

Reasoning teachers and students think before they write (grading/thinking.py): every stage keeps
only the text after the thinking (the verdict is read from it too) and the raw reply in meta. A
reply whose thinking never closes (cut at the token limit) is not used: the field stays empty,
meta[stage]["error"] says why, and the report counts it (jobs.py records the item as failed, so
`--retry-failed` takes it up again).

The critique stage also checks the teacher: where a gold answer exists, the response is graded
with math-verify and meta["verify"] records that grade and whether the teacher's verdict agrees
(the CFT paper found about 20% of GPT-4o's critiques wrong).

A teacher is either a backend (anything with `generate`, see backends.py) or the string
"reference": an offline teacher that needs no model. It judges a response by grading its final
answer against the gold answer with math-verify, and writes its critique and refinement from the
reference solution. It is a stand-in for a real teacher on machines without one, and it is named
for what it is wherever its output is recorded.

What its critique contains is a setting (`reference_critique`, REFERENCE_CRITIQUES): the verdict
only (the default), the verdict and the correct final answer, or the worked reference solution.
Its refined answer is the reference solution whichever is chosen. A critique that holds that
solution, or on a short task its final answer, puts CGD's target in CGD's own input: the model can
learn to copy it, and at test time no critique is given (CGD section 3: inference uses the question
alone), so a CGD that beats distilled SFT might only have learned to copy. The verdict alone
leaves the target to be worked out, as distilled SFT must.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Iterable

from ..engine.backends import Sampling
from ..grading.answers import extract_answer, grade
from ..grading.thinking import UNCLOSED_THINKING, split_thinking
from ..grading.verdicts import parse_verdict
from ..prompts import RESPOND_PROMPTS, load_prompt, render, respond_prompt
from ..data.records import Record

__all__ = ["respond", "critique", "refine", "solve", "parse_verdict", "verify", "REFERENCE", "StageReport", "STAGES",
           "STAGE_FIELDS", "RESPOND_PROMPTS", "UNCLOSED_NOTE", "thinking_error", "REFERENCE_CRITIQUES",
           "check_reference_critique"]

REFERENCE = "reference"
# What the reference teacher's critique of an answer says besides its verdict: nothing, the correct
# final answer, or the worked reference solution. The first is the default (see the module docstring).
REFERENCE_CRITIQUES = ("verdict", "answer", "solution")
# How the in-memory stages count a reply they could not use because its thinking never closed.
UNCLOSED_NOTE = "failed: unclosed thinking"

class StageReport(Counter):
    """done / skipped counts by reason for one stage; printed by the CLI."""

    def line(self, stage: str) -> str:
        parts = [f"{k}: {v}" for k, v in sorted(self.items())]
        return f"{stage}: " + (", ".join(parts) if parts else "nothing to do")


def _teacher_name(teacher) -> str:
    return REFERENCE if teacher == REFERENCE else f"{type(teacher).__name__}:{teacher.name}"


# The field each stage fills in.
STAGE_FIELDS = {"respond": "response", "critique": "critique", "refine": "refined", "solve": "teacher_solution"}


# ------------------------------------------------------------------------ per-record pieces


# How a record that already has a stage's field is reported, what the stage reads, and what the
# offline reference teacher needs besides (field, in words).
_HAD = {"respond": "a response", "critique": "a critique", "refine": "a refined answer", "solve": "a teacher solution"}
_READS = {"critique": ("response",), "refine": ("response", "critique")}
REFERENCE_NEEDS = {"critique": ("gold", "gold answer"), "refine": ("reference", "reference solution"),
                   "solve": ("reference", "reference solution")}


def skip_reason(stage: str, rec: Record, teacher) -> str | None:
    """Why `stage` leaves `rec` as it is, or None when there is work to do."""
    if stage not in STAGE_FIELDS:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGE_FIELDS)}")
    if getattr(rec, STAGE_FIELDS[stage]):
        return f"kept (had {_HAD[stage]})"
    reads = _READS.get(stage, ())
    if not all(getattr(rec, f) for f in reads):
        return f"skipped: no {' or '.join(reads)}"
    need = REFERENCE_NEEDS.get(stage)
    if teacher == REFERENCE and need and not getattr(rec, need[0]):
        return f"skipped: no {need[1]} for the reference teacher"
    return None


def prompt_for(stage: str, rec: Record, style: str = "cft", prompt: str = "plain"):
    """The conversation an LLM teacher (or the student, for respond) gets for this record."""
    if stage == "respond":
        return respond_prompt(rec.question, prompt)
    if stage == "critique":
        return [{"role": "system", "content": load_prompt(f"{style}_critique_system")},
                {"role": "user", "content": render(f"{style}_critique_user", question=rec.question, response=rec.response)}]
    if stage == "refine":
        return [{"role": "system", "content": load_prompt("cgd_refine_system")},
                {"role": "user", "content": render("cgd_refine_user", question=rec.question, response=rec.response,
                                                    critique=rec.critique)}]
    if stage == "solve":  # CFT A.2: how the SFT-GPT4o baseline's solutions were generated
        return [{"role": "system", "content": load_prompt("cft_solve_system")},
                {"role": "user", "content": render("cft_solve_user", question=rec.question)}]
    raise ValueError(f"unknown stage {stage!r}")


def stage_sampling(stage: str, sampling: Sampling) -> Sampling:
    """Only respond samples several answers; a teacher writes one critique / refinement / solution."""
    return sampling if stage == "respond" else replace(sampling, n=1)


def reference_output(stage: str, rec: Record, style: str = "cft",
                     reference_critique: str = REFERENCE_CRITIQUES[0]) -> tuple[str, str | None]:
    """The offline reference teacher's text, and for critique its verdict (= math-verify's grade)."""
    if stage == "critique":
        return _reference_critique(rec, style, reference_critique)
    if stage in ("refine", "solve"):
        return rec.reference, None
    raise ValueError(f"the reference teacher cannot {stage}: the student must be a model")


def verify(rec: Record, verdict: str | None, graded: str | None = None) -> dict:
    """Grade the response against the gold answer and compare with the teacher's verdict.

    `agrees` is None when there is nothing to compare: no gold answer, or no parsed verdict.
    """
    if not rec.gold or not rec.response:
        return {"graded": None, "agrees": None}
    if graded is None:
        graded = "right" if grade(rec.response, rec.gold) else "wrong"
    return {"graded": graded, "agrees": (verdict == graded) if verdict in ("right", "wrong") else None}


def thinking_error(stage: str, texts: list[str]) -> str | None:
    """Why a reply cannot be used, when a text of it ends inside its thinking; else None."""
    cut = [k for k, text in enumerate(texts) if split_thinking(text).unclosed]
    if not cut:
        return None
    which = f" (sample{'s' if len(cut) > 1 else ''} {', '.join(map(str, cut))} of {len(texts)})" if len(texts) > 1 else ""
    return f"{UNCLOSED_THINKING}{which}; the raw reply is in meta.{stage}.output"


def apply(stage: str, rec: Record, texts: list[str], teacher, sampling: Sampling, messages=None, style: str = "cft",
          prompt: str = "plain", graded: str | None = None,
          reference_critique: str = REFERENCE_CRITIQUES[0]) -> tuple[list[Record], list[str]]:
    """The record(s) a stage makes from the generated text(s), and notes for the report.

    respond makes one record per sample (`id#k` when sampling.n > 1); the other stages one. Each
    text loses its thinking section; a text whose thinking never closes leaves the field empty,
    with the raw text and the reason in meta[stage], and the note UNCLOSED_NOTE.
    """
    name = _teacher_name(teacher)
    if stage == "respond":
        out, notes = [], []
        for k, text in enumerate(texts):
            rid = rec.id if sampling.n == 1 else f"{rec.id}#{k}"
            answer = split_thinking(text).answer
            info = {"model": teacher.name, "prompt": prompt, "sampling": sampling.as_dict(), "sample": k}
            if answer != text:  # thinking removed, or the whole reply unusable: keep what was written
                info["output"] = text
            if answer is None:
                info["error"] = UNCLOSED_THINKING
                notes.append(UNCLOSED_NOTE)
            out.append(replace(rec, id=rid, response=answer, meta={**rec.meta, "respond": info}))
        return out, notes
    text = texts[0] if texts else ""
    # The offline teacher's texts are critkit's and the dataset's, not a model's reply: used as they are.
    answer = text if teacher == REFERENCE else split_thinking(text).answer
    if stage == "critique":
        info = {"teacher": name, "style": style, "output": text}
        if teacher != REFERENCE:
            info.update(messages=messages, sampling=sampling.as_dict())
        else:
            info["contains"] = reference_critique
        if answer is None:
            meta = {**rec.meta, "critique": {**info, "error": UNCLOSED_THINKING}}
            return [replace(rec, critique=None, verdict=None, meta=meta)], [UNCLOSED_NOTE]
        verdict = parse_verdict(answer)
        notes = ["verdict unparsed"] if verdict is None and teacher != REFERENCE else []
        meta = {**rec.meta, "critique": info, "verify": verify(rec, verdict, graded)}
        return [replace(rec, critique=answer, verdict=verdict or "unparsed", meta=meta)], notes
    if stage in ("refine", "solve"):
        info = {"teacher": name, "messages": messages, "output": text}
        if answer is None:
            return [replace(rec, meta={**rec.meta, stage: {**info, "error": UNCLOSED_THINKING}})], [UNCLOSED_NOTE]
        # The CGD code keeps what follows a reasoning teacher's thinking as the refined answer.
        return [replace(rec, **{STAGE_FIELDS[stage]: answer}, meta={**rec.meta, stage: info})], []
    raise ValueError(f"unknown stage {stage!r}")


def raw_texts(stage: str, records: list[Record]) -> list[str]:
    """The generated text(s) a finished record holds: the inverse of `apply`, for reuse as a cache."""
    if stage == "respond":
        return [r.meta.get("respond", {}).get("output", r.response) for r in records]
    return [records[0].meta[stage]["output"]]


# ---------------------------------------------------------------------------------- in memory


def _stage(stage: str, records: Iterable[Record], teacher, sampling: Sampling, style: str = "cft",
           prompt: str = "plain", reference_critique: str = REFERENCE_CRITIQUES[0]) -> tuple[list[Record], StageReport]:
    records = list(records)
    report = StageReport()
    todo: list[int] = []
    for i, rec in enumerate(records):
        reason = skip_reason(stage, rec, teacher)
        if reason:
            report[reason] += 1
        else:
            todo.append(i)
    out: list[list[Record]] = [[rec] for rec in records]
    used = stage_sampling(stage, sampling)
    if teacher == REFERENCE:
        outputs = [reference_output(stage, records[i], style, reference_critique) for i in todo]
        convs = [None] * len(todo)
        results = [([text], graded) for text, graded in outputs]
    else:
        convs = [prompt_for(stage, records[i], style, prompt) for i in todo]
        generated = teacher.generate(convs, used, desc=stage) if todo else []
        # A teacher writes one text per record; respond keeps all n samples.
        results = [(texts if stage == "respond" else texts[:1] or [""], None) for texts in generated]
    for i, conv, (texts, graded) in zip(todo, convs, results):
        made, notes = apply(stage, records[i], texts, teacher, used if stage == "respond" else sampling, conv,
                            style=style, prompt=prompt, graded=graded, reference_critique=reference_critique)
        out[i] = made
        if len(made) > notes.count(UNCLOSED_NOTE):
            report["done"] += len(made) - notes.count(UNCLOSED_NOTE)
        for note in notes:
            report[note] += 1
    return [rec for group in out for rec in group], report


def respond(records: Iterable[Record], student, sampling: Sampling, prompt: str = "plain") -> tuple[list[Record], StageReport]:
    """The student's own answers y'. With sampling.n > 1 each question yields n records `id#k`.

    `prompt` is one of RESPOND_PROMPTS; "plain" (the question alone) is what the CGD code asks.
    """
    check_prompt(prompt)
    return _stage("respond", records, student, sampling, prompt=prompt)


def check_prompt(prompt: str) -> None:
    if prompt not in RESPOND_PROMPTS:
        raise ValueError(f"unknown respond prompt {prompt!r}; use one of {', '.join(RESPOND_PROMPTS)}")


def _reference_critique(rec: Record, style: str, contains: str = REFERENCE_CRITIQUES[0]) -> tuple[str, str]:
    """The reference teacher's critique: what the answer said, the verdict and, as `contains` asks,
    the correct final answer or the worked reference solution (for a wrong answer; a right one's
    final answer is the correct one already)."""
    check_reference_critique(contains)
    pred = extract_answer(rec.response)
    right = grade(rec.response, rec.gold)
    end = " [END]" if style == "cft" else ""
    if right and contains == "verdict":
        text = f"The solution's final answer, {pred}, is correct.\nConclusion: right{end}"
    elif right:
        text = (f"The solution's final answer, {pred}, matches the reference answer {rec.gold}, "
                f"and its steps reach it.\nConclusion: right{end}")
    else:
        said = f"The solution's final answer is {pred}" if pred is not None else "The solution gives no final answer"
        if contains == "verdict":
            text = f"{said}, which is not correct." if pred is not None else f"{said}."
        else:
            text = f"{said}, but the correct answer is {rec.gold}."
        if contains == "solution" and rec.reference:
            text += f" A correct solution:\n{rec.reference}"
        text += f"\nConclusion: wrong{end}"
    return text, "right" if right else "wrong"


def critique(records: Iterable[Record], teacher, sampling: Sampling, style: str = "cft",
             reference_critique: str = REFERENCE_CRITIQUES[0]) -> tuple[list[Record], StageReport]:
    """Teacher critique c and verdict. `style` picks the CFT or the CGD teacher prompt;
    `reference_critique` what the offline reference teacher's critique contains (REFERENCE_CRITIQUES)."""
    check_style(style)
    check_reference_critique(reference_critique)
    return _stage("critique", records, teacher, sampling, style=style, reference_critique=reference_critique)


def check_reference_critique(contains: str) -> None:
    if contains not in REFERENCE_CRITIQUES:
        raise ValueError(f"unknown reference critique {contains!r}; use one of {', '.join(REFERENCE_CRITIQUES)}")


def check_style(style: str) -> None:
    if style not in ("cft", "cgd"):
        raise ValueError(f"unknown critique style {style!r}; use cft or cgd")


def refine(records: Iterable[Record], teacher, sampling: Sampling) -> tuple[list[Record], StageReport]:
    """Teacher's refined answer ŷ given (question, response, critique): the CGD target."""
    return _stage("refine", records, teacher, sampling)


def solve(records: Iterable[Record], teacher, sampling: Sampling) -> tuple[list[Record], StageReport]:
    """The teacher's own solution from the question (the SFT-teacher baseline's target)."""
    return _stage("solve", records, teacher, sampling)


STAGES = {"respond": respond, "critique": critique, "refine": refine, "solve": solve}
