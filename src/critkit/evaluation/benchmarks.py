"""Declarative benchmark specs: where a file's question and gold answer are.

A spec names a file, how to read one row and which grading rule compares an answer with the
row's gold (critkit.grading.rules: `math` for most, TheoremQA's own checker for TheoremQA, sets
for OlympiadBench's multi-answer rows); no code per benchmark. The built-in specs point at
the files the Qwen2.5-Math harness and the CFT paper evaluate on (in ../shared/data/benchmarks in
this workplace, or wherever CRITKIT_DATA_DIR points). A user's own file is described by a YAML
file with the same fields.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..config import load_yaml
from ..grading.answers import extract_boxed
from ..grading.rules import GRADING_RULES
from ..data.records import read_rows

__all__ = ["BenchmarkSpec", "BENCHMARKS", "get_benchmark", "load_benchmark", "data_dir", "Problem"]

GOLD_RULES = ("value", "after_hashes", "boxed", "first_of_list")
# Multiple choice: the gold field holds the letter, the option index, or the option text; GPQA
# keeps the correct option in the first of its choice fields.
CHOICE_RULES = ("letter", "index", "text", "first_choice")
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    path: str  # absolute, or relative to data_dir()
    question_field: str = "question"
    gold_field: str = "answer"
    gold_rule: str = "value"  # value | after_hashes (GSM8K) | boxed (inside \boxed{} of the field) | first_of_list
    id_field: str | None = None
    answer_type: str = "math"  # math | multiple_choice
    choices_field: str | None = None  # multiple choice: one field holding the list of options
    choice_fields: tuple[str, ...] | None = None  # ... or one field per option (GPQA)
    shuffle_seed: int | None = 0  # multiple choice: option order shuffled per question with this seed
    grading: str = "math"  # math | theoremqa | answer_set: how an answer is compared with the gold (critkit.grading.rules)
    # A row field that, when true, makes the gold a set of answers graded in any order
    # (OlympiadBench's is_multiple_answer: "69,84", "(1,1), (3,2)").
    multiple_answer_field: str | None = None
    version: int = 1  # bump when the spec changes what is scored


@dataclass(frozen=True)
class Problem:
    id: str
    question: str  # for multiple choice: with the lettered options appended
    gold: str  # for multiple choice: the letter of the correct option
    choices: tuple[str, ...] | None = None
    grading: str = "math"  # the grading rule for this problem's gold (critkit.grading.rules.GRADING_RULES)


def data_dir() -> Path:
    if os.environ.get("CRITKIT_DATA_DIR"):
        return Path(os.environ["CRITKIT_DATA_DIR"])
    # The workplace layout: the repo's parent holds shared/data. Fall back to the cwd's parent.
    for base in (Path.cwd(), Path(__file__).resolve().parents[4]):
        candidate = base.parent / "shared" / "data"
        if candidate.exists():
            return candidate
    return Path.cwd() / "data"


_B = "benchmarks"
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec("gsm8k", f"{_B}/gsm8k/test.jsonl", "question", "answer", "after_hashes", "idx"),
    "math500": BenchmarkSpec("math500", f"{_B}/math500/test.jsonl", "problem", "answer", "value", "unique_id"),
    "minerva_math": BenchmarkSpec("minerva_math", f"{_B}/minerva_math/test.jsonl", "problem", "solution", "boxed", "idx"),
    # v2: golds lose their interior $ ("$69$,$84$" was read as "69$,$84"), multi-answer rows are sets.
    "olympiadbench": BenchmarkSpec("olympiadbench", f"{_B}/olympiadbench/test.jsonl", "question", "final_answer", "first_of_list", "id",
                                   multiple_answer_field="is_multiple_answer", version=2),
    "aime24": BenchmarkSpec("aime24", f"{_B}/aime24/test.jsonl", "problem", "answer", "value", "id"),
    "amc23": BenchmarkSpec("amc23", f"{_B}/amc23/test.jsonl", "question", "answer", "value", "id"),
    # v2: graded by TheoremQA's own checker (rounded golds accept answers within 4%, bools, lists).
    "theoremqa": BenchmarkSpec("theoremqa", f"{_B}/theoremqa/test.jsonl", "problem", "answer", "value", grading="theoremqa", version=2),
    # Multiple choice from files the user supplies (their licences forbid redistribution here).
    "gpqa_diamond": BenchmarkSpec("gpqa_diamond", f"{_B}/gpqa_diamond/test.jsonl", "Question", "Correct Answer",
                                  "first_choice", answer_type="multiple_choice",
                                  choice_fields=("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")),
    "mmlu_pro": BenchmarkSpec("mmlu_pro", f"{_B}/mmlu_pro/test.jsonl", "question", "answer_index", "index", "question_id",
                              answer_type="multiple_choice", choices_field="options"),
}


def spec_from_file(path: str | os.PathLike) -> BenchmarkSpec:
    raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    known = {f.name for f in fields(BenchmarkSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown spec field(s) {unknown}; known: {sorted(known)}")
    raw.setdefault("name", Path(path).stem)
    if raw.get("choice_fields") is not None:
        raw["choice_fields"] = tuple(raw["choice_fields"])
    if "path" not in raw:
        raise ValueError(f"{path}: a spec needs 'path'")
    if not Path(raw["path"]).is_absolute():
        raw["path"] = str((Path(path).parent / raw["path"]).resolve())
    return BenchmarkSpec(**raw)


def get_benchmark(name_or_path: str) -> BenchmarkSpec:
    if name_or_path in BENCHMARKS:
        return BENCHMARKS[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")) and Path(name_or_path).exists():
        return spec_from_file(name_or_path)
    if name_or_path.endswith(".jsonl") and Path(name_or_path).exists():
        # A critkit records file: question and gold fields.
        return BenchmarkSpec(Path(name_or_path).stem, str(Path(name_or_path).resolve()), "question", "gold", "value", "id")
    raise ValueError(f"unknown benchmark {name_or_path!r}: use one of {', '.join(BENCHMARKS)}, a spec .yaml or a records .jsonl")


def _gold(spec: BenchmarkSpec, row: dict) -> str | None:
    value = row.get(spec.gold_field)
    if value is None:
        return None
    if spec.gold_rule == "after_hashes":
        return value.rsplit("####", 1)[1].strip().replace(",", "") if "####" in value else None
    if spec.gold_rule == "boxed":
        return extract_boxed(value)
    if spec.gold_rule == "first_of_list":
        value = value[0] if isinstance(value, list) and value else None
        # Every unescaped $ goes, not only the outer ones: OlympiadBench writes "$69$,$84$".
        return re.sub(r"(?<!\\)\$", "", str(value)).strip().rstrip(".").strip() if value is not None else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC23 stores 27.0 for 27
    return str(value).strip()


def _true(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "yes", "1")


def _choice_problem(spec: BenchmarkSpec, row: dict, pid: str, question: str) -> Problem | str:
    """A multiple-choice problem with options shuffled by (seed, id), or why the row is unusable."""
    import random

    if spec.choices_field:
        options = row.get(spec.choices_field)
    else:
        options = [row.get(f) for f in spec.choice_fields or ()]
    if not isinstance(options, list) or len(options) < 2 or any(o is None or str(o).strip() == "" for o in options):
        return "no usable options"
    options = [str(o).strip() for o in options][: len(LETTERS)]
    value = row.get(spec.gold_field)
    if spec.gold_rule == "first_choice":
        correct = 0
    elif spec.gold_rule == "index" and isinstance(value, int) and 0 <= value < len(options):
        correct = value
    elif spec.gold_rule == "letter" and isinstance(value, str) and value.strip().upper() in LETTERS[: len(options)]:
        correct = LETTERS.index(value.strip().upper())
    elif spec.gold_rule == "text" and value is not None and str(value).strip() in options:
        correct = options.index(str(value).strip())
    else:
        return f"no gold answer in '{spec.gold_field}' ({spec.gold_rule})"
    order = list(range(len(options)))
    if spec.shuffle_seed is not None:
        # Seeded by the question's id, not its position: the same question gets the same order
        # whatever subset or order of the file is evaluated.
        random.Random(f"{spec.shuffle_seed}:{pid}").shuffle(order)
    shown = tuple(options[i] for i in order)
    listed = "\n".join(f"({LETTERS[k]}) {text}" for k, text in enumerate(shown))
    return Problem(pid, f"{question}\n\n{listed}", LETTERS[order.index(correct)], shown)


def load_benchmark(spec: BenchmarkSpec, limit: int | None = None) -> tuple[list[Problem], list[str]]:
    """Problems, and a list of rows that could not be used (reported, not fatal)."""
    rules = CHOICE_RULES if spec.answer_type == "multiple_choice" else GOLD_RULES
    if spec.gold_rule not in rules:
        raise ValueError(f"benchmark {spec.name}: gold_rule {spec.gold_rule!r} is not one of {rules}")
    if spec.grading not in GRADING_RULES:
        raise ValueError(f"benchmark {spec.name}: grading {spec.grading!r} is not one of {GRADING_RULES}")
    path = Path(spec.path)
    if not path.is_absolute():
        path = data_dir() / path
    problems, bad = [], []
    for number, row in read_rows(path):
        question = row.get(spec.question_field)
        if not question:
            bad.append(f"{path}:{number}: no '{spec.question_field}'")
            continue
        rid = str(row.get(spec.id_field)) if spec.id_field and row.get(spec.id_field) is not None else str(number)
        pid = f"{spec.name}-{rid}"
        if spec.answer_type == "multiple_choice":
            problem = _choice_problem(spec, row, pid, question)
            if isinstance(problem, str):
                bad.append(f"{path}:{number}: {problem}")
                continue
            problems.append(problem)
        else:
            gold = _gold(spec, row)
            if not gold:
                bad.append(f"{path}:{number}: no gold answer in '{spec.gold_field}' ({spec.gold_rule})")
                continue
            multiple = spec.multiple_answer_field and _true(row.get(spec.multiple_answer_field))
            problems.append(Problem(pid, question, gold, grading="answer_set" if multiple else spec.grading))
        if limit is not None and len(problems) >= limit:
            break
    return problems, bad
