"""Training methods: each is a pure function from a record to (prompt messages, completion).

A method returns None with a reason when it cannot use a record (no critique yet, a verdict that is
not right, ...). `build_pairs` applies one method to a file of records and counts the skips by
reason, so nothing is dropped without saying why. See DESIGN.md's methods table.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable

from ..prompts import answer_prompt, load_prompt, render
from ..data.records import Record

__all__ = ["METHODS", "Pair", "Skip", "build_pairs", "answer_prompt"]

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Pair:
    prompt: Messages
    completion: str


@dataclass(frozen=True)
class Skip:
    reason: str


def _need(rec: Record, *fields: str) -> Skip | None:
    for name in fields:
        value = getattr(rec, name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return Skip(f"no {name}")
    return None


def sft(rec: Record) -> Pair | Skip:
    """Imitate the dataset's response y, right or wrong (CFT's "WebInstruct-SFT")."""
    return _need(rec, "response") or Pair(answer_prompt(rec.question), rec.response)


def sft_verified(rec: Record) -> Pair | Skip:
    """Imitate y only where the teacher's verdict is right (CFT's "verified-SFT")."""
    if missing := _need(rec, "response", "verdict"):
        return missing
    if rec.verdict != "right":
        return Skip(f"verdict {rec.verdict}")
    return Pair(answer_prompt(rec.question), rec.response)


def sft_teacher(rec: Record) -> Pair | Skip:
    """Imitate the teacher's own solution (CFT's "SFT-GPT4o")."""
    return _need(rec, "teacher_solution") or Pair(answer_prompt(rec.question), rec.teacher_solution)


def sft_gold(rec: Record) -> Pair | Skip:
    """Imitate the reference solution (CGD's "Standard SFT")."""
    return _need(rec, "reference") or Pair(answer_prompt(rec.question), rec.reference)


def cft(rec: Record) -> Pair | Skip:
    """Write the teacher's critique c of (x, y): CFT, P(c | [x; y]).

    A record from WebInstruct-CFT keeps its own instruction; otherwise the paper's critique
    request (appendix A.4) stands before the alpaca-style input, as in the released data.
    """
    if missing := _need(rec, "response", "critique"):
        return missing
    instruction = rec.meta.get("instruction") or load_prompt("cft_train_instruction")
    body = render("cft_train_input", question=rec.question, response=rec.response)
    return Pair([{"role": "user", "content": f"{instruction}\n\n{body}"}], rec.critique)


def distilled_sft(rec: Record) -> Pair | Skip:
    """Imitate the teacher's refined answer from the question alone (CGD's baseline)."""
    return _need(rec, "refined") or Pair(answer_prompt(rec.question), rec.refined)


def cgd(rec: Record) -> Pair | Skip:
    """Refined answer from (x, y', c): CGD. The input is the teacher's own refinement request."""
    if missing := _need(rec, "response", "critique", "refined"):
        return missing
    user = render("cgd_refine_user", question=rec.question, response=rec.response, critique=rec.critique)
    return Pair([{"role": "user", "content": user}], rec.refined)


def cgd_no_critique(rec: Record) -> Pair | Skip:
    """CGD without the critique in the input (CGD Fig. 4 ablation)."""
    if missing := _need(rec, "response", "refined"):
        return missing
    user = render("cgd_no_critique_user", question=rec.question, response=rec.response)
    return Pair([{"role": "user", "content": user}], rec.refined)


# The one registry of methods. Mixtures (CFT+SFT, right/wrong ratios) are data, not methods.
METHODS: dict[str, Callable[[Record], Pair | Skip]] = {
    "sft": sft,
    "sft-verified": sft_verified,
    "sft-teacher": sft_teacher,
    "sft-gold": sft_gold,
    "cft": cft,
    "distilled-sft": distilled_sft,
    "cgd": cgd,
    "cgd-no-critique": cgd_no_critique,
}


def get_method(name: str) -> Callable[[Record], Pair | Skip]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


def unverified(rec: Record) -> Skip | None:
    """Why a record's critique is not known to be right, or None when math-verify agrees with it.

    The critique stage grades the response against the gold answer and stores the comparison
    with the teacher's verdict in meta["verify"] (see synth.verify).
    """
    check = rec.meta.get("verify")
    if not isinstance(check, dict) or not check.get("graded"):
        return Skip("unverifiable: no gold answer or not critiqued by critkit")
    if check.get("agrees") is None:
        return Skip("unverifiable: verdict unparsed")
    if not check["agrees"]:
        return Skip(f"teacher verdict disagrees with math-verify ({rec.verdict} vs {check['graded']})")
    return None


def build_pairs(method: str, records: Iterable[Record], verified_only: bool = False) -> tuple[list[dict], Counter]:
    """Training rows {"id", "prompt", "completion"} and a count of skipped records by reason.

    `verified_only` keeps only records whose teacher verdict agrees with math-verify's grade,
    whatever the method (CFT found about 20% of GPT-4o's critiques wrong).
    """
    fn = get_method(method)
    rows, skipped = [], Counter()
    for rec in records:
        out = fn(rec)
        if not isinstance(out, Skip) and verified_only:
            out = unverified(rec) or out
        if isinstance(out, Skip):
            skipped[out.reason] += 1
        else:
            rows.append({"id": rec.id, "method": method, "prompt": out.prompt, "completion": out.completion})
    return rows, skipped
