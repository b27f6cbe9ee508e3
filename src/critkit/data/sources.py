"""Field mappings from common data sources to records.

Each mapping is a plain function from one source row to a list of records (a row of the noisy
GSM8K file holds four models' answers, so it yields four). `load_source` reads any file that
`records.read_rows` reads and names the file and row of anything it cannot map; `iter_source`
yields the same records one row at a time (a check that needs only the first usable record).
"""

from __future__ import annotations

import os
import re
from typing import Callable, Iterator

from ..grading.answers import extract_answer, extract_boxed
from ..grading.verdicts import parse_verdict
from .records import Record, RecordError, decode_meta, read_rows

__all__ = ["SOURCES", "load_source", "iter_source", "guess_source", "gsm8k_gold", "split_cft_input", "stated_answer"]


def gsm8k_gold(solution: str) -> str | None:
    """GSM8K's gold answer follows `####` (the noisy file's ground truth uses `A:`)."""
    for marker in ("####", "\nA:"):
        if marker in solution:
            return solution.rsplit(marker, 1)[1].strip().replace(",", "")
    return None


def _strip_calculator(text: str) -> str:
    # GSM8K solutions carry calculator annotations like <<16-3-4=9>>; they are not prose.
    return re.sub(r"<<[^>]*>>", "", text)


def _row_id(row: dict, number: int, prefix: str) -> str:
    for key in ("id", "idx", "unique_id"):
        if row.get(key) is not None:
            return str(row[key])
    return f"{prefix}-{number}"


def _need(row: dict, key: str, path, number) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(path, number, f"missing field '{key}'")
    return value if isinstance(value, str) else str(value)


def from_critkit(row, path, number):
    return [Record.from_dict(decode_meta(row), path, number)]


def from_gsm8k(row, path, number):
    solution = _need(row, "answer", path, number)
    gold = gsm8k_gold(solution)
    if gold is None:
        raise RecordError(path, number, "field 'answer' has no '#### <answer>' line")
    reference = _strip_calculator(solution.rsplit("####", 1)[0]).strip() + f"\nThe answer is \\boxed{{{gold}}}."
    return [Record(_row_id(row, number, "gsm8k"), _need(row, "question", path, number), gold=gold, reference=reference)]


def from_math(row, path, number):
    solution = _need(row, "solution", path, number)
    gold = row.get("answer") or extract_boxed(solution)
    if not gold:
        raise RecordError(path, number, "no field 'answer' and no \\boxed{} in field 'solution'")
    question = row.get("problem") or row.get("question")
    if not question:
        raise RecordError(path, number, "missing field 'problem'")
    return [Record(_row_id(row, number, "math"), question, gold=str(gold), reference=solution)]


def split_cft_input(text: str) -> tuple[str, str] | None:
    """WebInstruct-CFT's `input` is `Question:\\n...\\n\\nSolution:\\n...`."""
    m = re.match(r"\s*Question:\s*(.*?)\n\s*\n?Solution:\s*(.*)\Z", text, re.S)
    return (m.group(1).strip(), m.group(2).strip()) if m else None


def from_webinstruct_cft(row, path, number):
    """Alpaca rows of WebInstruct-CFT: the critique is `output`, the verdict its conclusion."""
    parts = split_cft_input(_need(row, "input", path, number))
    if parts is None:
        raise RecordError(path, number, "field 'input' is not 'Question:\\n...\\n\\nSolution:\\n...'")
    critique = _need(row, "output", path, number)
    meta = {"source": "webinstruct-cft", "instruction": row.get("instruction")}
    question, response = parts
    return [Record(_row_id(row, number, "webinstruct"), question, response=response, critique=critique,
                   verdict=parse_verdict(critique) or "unparsed", meta=meta)]


# "The answer is X" / "Final answer: X": what `extract_answer` reads as a statement.
_STATES_ANSWER = re.compile(r"(?:final answer|the answer)\s*(?:is\b|:)", re.I)


def stated_answer(text: str) -> str | None:
    """The final answer a text states (its last \\boxed{}, else its last "the answer is X"), or None.

    Never the last number of the text (extract_answer's last resort for model outputs): in a web
    explanation that is as often an intermediate value as the answer.
    """
    boxed = extract_boxed(text)
    if boxed:
        return boxed
    return extract_answer(text) if _STATES_ANSWER.search(text) else None


def from_webinstruct_sub(row, path, number):
    """WebInstructSub (TIGER-Lab): question / answer / source / index rows of web-extracted Q&A.

    It is WebInstruct's public subset: the source of CGD's training prompts (CGD 4.1.1) and of
    WebInstruct-CFT's questions and noisy responses (CFT 2.1). The web-extracted `answer` becomes the
    noisy `response`. Where it states a final answer (\\boxed{} or "the answer is X") that becomes
    `gold`, which is then exactly as reliable as the answer itself (CFT 2.1: WebInstruct's answers
    are unverified); where it states none, gold stays None and the record is kept: a model teacher
    still critiques and refines it, while math-verify grading and the offline reference teacher,
    which need a gold answer, leave it out. `source` (the website) is kept as meta["origin"].
    """
    answer = _need(row, "answer", path, number)
    # The id is the website and the row's index: that index is not documented to be unique across sites.
    named = [str(row[k]) for k in ("source", "index") if row.get(k) is not None]
    rid = "-".join(named) if row.get("index") is not None else _row_id(row, number, "webinstruct-sub")
    return [Record(rid, _need(row, "question", path, number), gold=stated_answer(answer), response=answer,
                   meta={"source": "webinstruct-sub", "origin": row.get("source")})]


def from_acemath(row, path, number):
    """AceMath-Instruct-Training-Data (nvidia): `messages` [{role, content}] and `answer`.

    The high-quality SFT data of CFT Table 9: the last user turn is the question and the assistant's
    reply after it the reference solution, which `sft-gold` trains on; gold is `answer`, else the
    solution's \\boxed{}. Any chat rows of that shape map the same way; a system turn is dropped (the
    training prompt is critkit's own, as for every source).
    """
    messages = row.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RecordError(path, number, "field 'messages' is not a list of {role, content} objects")
    roles = [m.get("role") for m in messages]
    reply = len(roles) - 1 - roles[::-1].index("assistant") if "assistant" in roles else 0
    asks = [i for i in range(reply) if roles[i] == "user"]
    texts = [messages[i].get("content") for i in asks[-1:] + [reply]]
    if not asks or not all(isinstance(t, str) and t.strip() for t in texts):
        raise RecordError(path, number, "field 'messages' has no non-empty user turn followed by an assistant turn")
    question, solution = texts
    answer = row.get("answer")
    gold = answer.strip() if isinstance(answer, str) and answer.strip() else extract_boxed(solution)
    return [Record(_row_id(row, number, "acemath"), question.strip(), gold=gold, reference=solution,
                   meta={"source": "acemath"})]


NOISY_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def from_noisy_gsm8k(row, path, number):
    """The GSM8K paper's model samples: one record per model, labelled with `is_correct`."""
    question = _need(row, "question", path, number)
    truth = _need(row, "ground_truth", path, number)
    gold = gsm8k_gold(truth)
    if gold is None:
        raise RecordError(path, number, "field 'ground_truth' has no 'A: <answer>' or '#### <answer>' line")
    reference = _strip_calculator(re.split(r"\n(?:A:|####)", truth)[0]).strip() + f"\nThe answer is \\boxed{{{gold}}}."
    records = []
    for model in NOISY_MODELS:
        sample = row.get(model)
        if not isinstance(sample, dict) or not sample.get("solution"):
            continue
        records.append(Record(f"noisy-{number}-{model}", question, gold=gold, reference=reference,
                              response=_strip_calculator(sample["solution"]).strip(),
                              meta={"source": "gsm8k-noisy", "model": model, "is_correct": bool(sample.get("is_correct"))}))
    if not records:
        raise RecordError(path, number, f"no model solutions (expected fields {NOISY_MODELS})")
    return records


def from_metamath(row, path, number):
    """MetaMathQA: query / response, gold after 'The answer is: '."""
    response = _need(row, "response", path, number)
    m = re.search(r"The answer is:?\s*(.+?)\s*$", response)
    return [Record(_row_id(row, number, "metamath"), _need(row, "query", path, number),
                   gold=m.group(1) if m else None, response=response, meta={"source": "metamath", "type": row.get("type")})]


def from_numina(row, path, number):
    """NuminaMath-CoT: problem / solution with a boxed answer."""
    solution = _need(row, "solution", path, number)
    return [Record(_row_id(row, number, "numina"), _need(row, "problem", path, number), gold=extract_boxed(solution),
                   response=solution, meta={"source": "numina", "origin": row.get("source")})]


# One explicit table: the name a user passes -> the mapping function.
SOURCES: dict[str, Callable] = {
    "critkit": from_critkit,
    "gsm8k": from_gsm8k,
    "math": from_math,
    "webinstruct-cft": from_webinstruct_cft,
    "webinstruct-sub": from_webinstruct_sub,
    "gsm8k-noisy": from_noisy_gsm8k,
    "metamath": from_metamath,
    "numina": from_numina,
    "acemath": from_acemath,
}


def guess_source(row: dict) -> str:
    if "instruction" in row and "output" in row:
        return "webinstruct-cft"
    if "6b_finetuning" in row:
        return "gsm8k-noisy"
    if "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        return "gsm8k"
    if "question" in row and isinstance(row.get("answer"), str) and ("index" in row or "source" in row):
        return "webinstruct-sub"
    if isinstance(row.get("messages"), list):
        return "acemath"
    if "query" in row and "response" in row:
        return "metamath"
    if "problem" in row and "solution" in row:
        return "math"
    return "critkit"


def iter_source(path: str | os.PathLike, source: str = "auto") -> Iterator[Record]:
    """Records from a source file, one row at a time; `source` names a mapping in SOURCES or "auto".

    A row the mapping cannot read raises RecordError with the file and row. Duplicate ids are
    checked by `load_source`, which sees the whole file.
    """
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)} or auto")
    mapping = None if source == "auto" else SOURCES[source]
    for number, row in read_rows(path):
        if mapping is None:
            mapping = SOURCES[guess_source(row)]
        yield from mapping(row, path, number)


def load_source(path: str | os.PathLike, source: str = "auto", limit: int | None = None) -> list[Record]:
    """Records from a source file; `source` names a mapping in SOURCES or "auto" to guess it."""
    records: list[Record] = []
    for rec in iter_source(path, source):
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    seen: dict[str, int] = {}
    for rec in records:
        seen[rec.id] = seen.get(rec.id, 0) + 1
    dupes = [k for k, v in seen.items() if v > 1]
    if dupes:
        raise RecordError(path, None, f"duplicate record ids, e.g. {dupes[:3]}")
    return records
