"""Declarative benchmark specs: how a file's rows become questions, golds and grading rules.

A spec names a file, how to read one row and which grading rule compares an answer with the
row's gold (critkit.grading.rules: `math` for most, TheoremQA's own checker for TheoremQA, sets
for OlympiadBench's multi-answer rows); no code per benchmark. A row is read in
lm-evaluation-harness's convention (templates.py): `doc_to_text` builds the question,
`doc_to_target` the gold and `doc_to_choice` the options of a multiple-choice question, each a
field name or a Jinja template over the row; the gold is then cleaned by declared rules
(`gold_regex`, `gold_strip`). The older keys (`question_field`, `gold_field`, `gold_rule`,
`choices_field`, `choice_fields`) still work, and `gold_rule` still extracts (`boxed`,
`after_hashes`, `first_of_list`) from what `doc_to_target` gives.

The built-in specs are YAML files in evaluation/specs/, written in that format: the files the
Qwen2.5-Math harness and the CFT paper evaluate on (in ../shared/data/benchmarks in this
workplace, or wherever CRITKIT_DATA_DIR points). A user's own benchmark is a YAML file with the
same keys. A row a spec cannot read is reported with the spec file, the data file, the line and
the reason, and the other rows go on; a spec that leaves no row usable is an error.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..config import load_yaml
from ..grading.answers import extract_boxed
from ..grading.rules import GRADING_RULES
from ..data.records import read_rows, scan_jsonl
from .templates import (GOLD_STRIPS, LETTERS, RowError, check_template, choices_of, clean_gold, field_or_template, render_text,
                        strip_letters)

__all__ = ["BenchmarkSpec", "BENCHMARKS", "get_benchmark", "load_benchmark", "data_dir", "Problem", "spec_from_file",
           "SPECS_DIR"]

GOLD_RULES = ("value", "after_hashes", "boxed", "first_of_list")
# Multiple choice: the gold holds the letter, the option index, or the option text; GPQA keeps
# the correct option in the first of its choice fields; `auto` reads it as lm-eval does (an int or
# digits: the index; else a letter A-J within the options; else an option's text).
CHOICE_RULES = ("auto", "letter", "index", "text", "first_choice")
SPECS_DIR = Path(__file__).parent / "specs"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    path: str  # absolute, or relative to data_dir()
    question_field: str = "question"
    gold_field: str = "answer"
    gold_rule: str | None = None  # value (default) | after_hashes (GSM8K) | boxed | first_of_list; multiple choice: CHOICE_RULES
    id_field: str | None = None
    answer_type: str | None = None  # math | multiple_choice; default: multiple_choice when options are declared
    choices_field: str | None = None  # multiple choice: one field holding the list of options
    choice_fields: tuple[str, ...] | None = None  # ... or one field per option (GPQA)
    shuffle_seed: int | None = 0  # multiple choice: option order shuffled per question with this seed
    grading: str = "math"  # math | theoremqa | answer_set: how an answer is compared with the gold (critkit.grading.rules)
    # A row field that, when true, makes the gold a set of answers graded in any order
    # (OlympiadBench's is_multiple_answer: "69,84", "(1,1), (3,2)").
    multiple_answer_field: str | None = None
    version: int = 1  # bump when the spec changes what is scored
    # lm-evaluation-harness's keys: a field name or a Jinja template over the row (templates.py).
    doc_to_text: str | None = None  # the question (default: question_field)
    doc_to_target: str | int | None = None  # the gold (default: gold_field)
    doc_to_choice: str | list | None = None  # the options: a list, a list literal, or "A) .. B) .."
    gold_regex: str | None = None  # the gold is this regex's first group (or whole match)
    gold_strip: tuple[str, ...] = ()  # then: units ("9 (apples)" -> 9), dollars ($), commas (1,000), period
    description: str | None = None  # text put before every question (lm-eval's `description`; a template too)
    source: str | None = None  # the spec file, for reports

    def __post_init__(self):
        # Defaults that depend on other keys, filled in so that readers see plain values.
        if self.answer_type is None:
            declared = self.doc_to_choice is not None or self.choices_field or self.choice_fields
            object.__setattr__(self, "answer_type", "multiple_choice" if declared else "math")
        if self.gold_rule is None:
            object.__setattr__(self, "gold_rule", "auto" if self.multiple_choice else "value")

    @property
    def multiple_choice(self) -> bool:
        return self.answer_type == "multiple_choice"

    @property
    def rule(self) -> str:
        return self.gold_rule


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


_TUPLES = ("choice_fields", "gold_strip")
# An lm-eval task YAML over a local file is a spec as it is: these of its keys say how lm-eval
# prompts and scores (few-shot, log-likelihoods, its own metrics), which critkit does its own way.
LMEVAL_KEYS_IGNORED = {"output_type", "metric_list", "generation_kwargs", "filter_list", "target_delimiter",
                       "fewshot_delimiter", "num_fewshot", "metadata", "tag", "group", "training_split",
                       "validation_split", "fewshot_split", "fewshot_config", "should_decontaminate",
                       "doc_to_decontamination_query", "repeats", "dataset_name", "unsafe_code"}
LOCAL_DATASETS = ("json", "parquet")  # the formats read_rows reads


def _from_lm_eval(raw: dict, path) -> dict:
    """An lm-eval task YAML's keys as a spec's: `task` names it, the file is the `test_split`
    entry of `dataset_kwargs.data_files` (lm-eval's way to read a local file), and a
    `multiple_choice` output_type makes it a multiple-choice benchmark."""
    raw = dict(raw)
    if "task" in raw:
        raw.setdefault("name", str(raw.pop("task")))
    dataset = raw.pop("dataset_path", None)
    kwargs = raw.pop("dataset_kwargs", None) or {}
    split = raw.pop("test_split", None) or "test"
    if dataset is not None and "path" not in raw:
        files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
        if dataset not in LOCAL_DATASETS or not files:
            raise ValueError(f"{path}: dataset_path {dataset!r} is not a local file; critkit reads local files "
                             f"(dataset_path: json with dataset_kwargs: {{data_files: FILE}}) or a spec's `path`")
        if isinstance(files, dict):
            if split not in files:
                raise ValueError(f"{path}: data_files has no {split!r} entry (test_split); it has {sorted(files)}")
            files = files[split]
        if isinstance(files, list):
            if len(files) != 1:
                raise ValueError(f"{path}: data_files lists {len(files)} files; a spec reads one")
            files = files[0]
        raw["path"] = str(files)
    output_type = raw.pop("output_type", None)
    if output_type == "multiple_choice":
        raw.setdefault("answer_type", "multiple_choice")
    elif output_type not in (None, "generate_until"):
        raise ValueError(f"{path}: output_type {output_type!r}: critkit grades generated answers "
                         "(generate_until, multiple_choice); run this task with --lm-eval-tasks")
    for key in LMEVAL_KEYS_IGNORED & set(raw):
        raw.pop(key)
    return raw


def spec_from_file(path: str | os.PathLike, packaged: bool = False) -> BenchmarkSpec:
    """A spec from its YAML file. Its `path` is relative to the spec file (a packaged spec's: to
    data_dir(), resolved when it is loaded, so CRITKIT_DATA_DIR may change later)."""
    import yaml

    try:
        raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:  # lm-eval's `!function module.fn` among them: code, not a spec
        raise ValueError(f"{path}: not a spec: {e}" + (" (a `!function` is Python code: run the task with --lm-eval-tasks)"
                                                       if "!function" in str(e) else "")) from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a spec is a mapping of keys, got {type(raw).__name__}")
    raw = _from_lm_eval(raw, path)
    known = {f.name for f in fields(BenchmarkSpec)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown spec field(s) {unknown}; known: {sorted(known)}")
    raw.setdefault("name", Path(path).stem)
    for key in _TUPLES:
        if raw.get(key) is not None:
            raw[key] = (raw[key],) if isinstance(raw[key], str) else tuple(raw[key])
    if "path" not in raw:
        raise ValueError(f"{path}: a spec needs 'path'")
    if not packaged and not Path(raw["path"]).is_absolute():
        raw["path"] = str((Path(path).parent / raw["path"]).resolve())
    spec = BenchmarkSpec(**raw, source=str(path))
    _check(spec)
    return spec


def _check(spec: BenchmarkSpec) -> None:
    """What is wrong with a spec itself, before any row is read (every row would fail alike)."""
    where = spec.source or spec.name
    rules = CHOICE_RULES if spec.multiple_choice else GOLD_RULES
    if spec.rule not in rules:
        raise ValueError(f"benchmark {spec.name} ({where}): gold_rule {spec.rule!r} is not one of {rules}")
    if spec.grading not in GRADING_RULES:
        raise ValueError(f"benchmark {spec.name} ({where}): grading {spec.grading!r} is not one of {GRADING_RULES}")
    unknown = sorted(set(spec.gold_strip) - set(GOLD_STRIPS))
    if unknown:
        raise ValueError(f"benchmark {spec.name} ({where}): gold_strip {unknown} not among {GOLD_STRIPS}")
    if spec.gold_regex:
        try:
            re.compile(spec.gold_regex)
        except re.error as e:
            raise ValueError(f"benchmark {spec.name} ({where}): gold_regex does not compile: {e}") from None
    for key in ("doc_to_text", "doc_to_target", "doc_to_choice", "description"):
        try:
            check_template(key, getattr(spec, key))
        except ValueError as e:
            raise ValueError(f"benchmark {spec.name} ({where}): {e}") from None


BENCHMARKS: dict[str, BenchmarkSpec] = {p.stem: spec_from_file(p, packaged=True) for p in sorted(SPECS_DIR.glob("*.yaml"))}


def get_benchmark(name_or_path: str) -> BenchmarkSpec:
    if name_or_path in BENCHMARKS:
        return BENCHMARKS[name_or_path]
    if name_or_path.endswith((".yaml", ".yml")) and Path(name_or_path).exists():
        return spec_from_file(name_or_path)
    if name_or_path.endswith(".jsonl") and Path(name_or_path).exists():
        # A critkit records file: question and gold fields.
        return BenchmarkSpec(Path(name_or_path).stem, str(Path(name_or_path).resolve()), "question", "gold", "value", "id")
    raise ValueError(f"unknown benchmark {name_or_path!r}: use one of {', '.join(BENCHMARKS)}, a spec .yaml or a records .jsonl")


def _extract(rule: str, value) -> str | None:
    """A gold_rule's extraction from the gold field's value (GSM8K's "#### 18", a \\boxed{} in a solution, ...)."""
    if rule == "after_hashes":
        return value.rsplit("####", 1)[1].strip().replace(",", "") if isinstance(value, str) and "####" in value else None
    if rule == "boxed":
        return extract_boxed(value) if isinstance(value, str) else None
    if rule == "first_of_list":
        value = value[0] if isinstance(value, list) and value else None
        # Every unescaped $ goes, not only the outer ones: OlympiadBench writes "$69$,$84$".
        return re.sub(r"(?<!\\)\$", "", str(value)).strip().rstrip(".").strip() if value is not None else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # AMC23 stores 27.0 for 27
    return str(value).strip()


def _true(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "yes", "1")


def _question(spec: BenchmarkSpec, row: dict) -> str:
    if spec.doc_to_text is not None:
        question = field_or_template("doc_to_text", spec.doc_to_text, row)
        if question is None or not str(question).strip():
            raise RowError("doc_to_text: empty question")
    else:
        question = row.get(spec.question_field)
        if not question:
            raise RowError(f"no '{spec.question_field}'")
    if spec.description:
        question = f"{render_text('description', spec.description, row)}{question}"
    return str(question)


def _raw_gold(spec: BenchmarkSpec, row: dict):
    if spec.doc_to_target is not None:
        return field_or_template("doc_to_target", spec.doc_to_target, row)
    return row.get(spec.gold_field)


def _gold(spec: BenchmarkSpec, row: dict) -> str:
    where = "doc_to_target" if spec.doc_to_target is not None else f"'{spec.gold_field}'"
    value = _raw_gold(spec, row)
    gold = _extract(spec.rule, value) if value is not None else None
    if gold and (spec.gold_regex or spec.gold_strip):
        gold = clean_gold(gold, spec.gold_regex, spec.gold_strip)
    if not gold:
        raise RowError(f"no gold answer in {where} ({spec.rule})")
    return gold


def _options(spec: BenchmarkSpec, row: dict) -> list[str]:
    if spec.doc_to_choice is not None:
        options = choices_of(spec.doc_to_choice, row)
    elif spec.choices_field:
        options = row.get(spec.choices_field)
        options = strip_letters(options) if isinstance(options, list) else options
    else:
        options = [row.get(f) for f in spec.choice_fields or ()]
    if not isinstance(options, list) or len(options) < 2 or any(o is None or str(o).strip() == "" for o in options):
        raise RowError("no usable options")
    return [str(o).strip() for o in options][: len(LETTERS)]


def _correct(spec: BenchmarkSpec, row: dict, options: list[str]) -> int:
    value, rule = _raw_gold(spec, row), spec.rule
    if isinstance(value, str):
        value = value.strip()
        if spec.gold_regex or spec.gold_strip:
            value = clean_gold(value, spec.gold_regex, spec.gold_strip)
    letters = LETTERS[: len(options)]
    if rule == "first_choice":
        return 0
    if rule in ("index", "auto") and isinstance(value, str) and value.isdigit():
        value = int(value)  # lm-eval reads a rendered target of digits as the option index
    if rule in ("index", "auto") and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
        return value
    if rule in ("letter", "auto") and isinstance(value, str):
        letter = value.strip("() .").upper()
        if len(letter) == 1 and letter in letters:
            return letters.index(letter)
    if rule in ("text", "auto") and value is not None and str(value).strip() in options:
        return options.index(str(value).strip())
    where = "doc_to_target" if spec.doc_to_target is not None else f"'{spec.gold_field}'"
    raise RowError(f"no gold answer in {where} ({rule}): {str(value)[:40]!r} is not an option of {len(options)}")


def _choice_problem(spec: BenchmarkSpec, row: dict, pid: str, question: str) -> Problem:
    """A multiple-choice problem with options shuffled by (seed, id)."""
    import random

    options = _options(spec, row)
    correct = _correct(spec, row, options)
    order = list(range(len(options)))
    if spec.shuffle_seed is not None:
        # Seeded by the question's id, not its position: the same question gets the same order
        # whatever subset or order of the file is evaluated.
        random.Random(f"{spec.shuffle_seed}:{pid}").shuffle(order)
    shown = tuple(options[i] for i in order)
    listed = "\n".join(f"({LETTERS[k]}) {text}" for k, text in enumerate(shown))
    return Problem(pid, f"{question}\n\n{listed}", LETTERS[order.index(correct)], shown)


def read_objects(path: Path, bad: list[str], where: str = ""):
    """(line, row) of a data file; a JSONL line that is not a JSON object is reported and skipped."""
    if path.suffix != ".jsonl" or not path.is_file():
        yield from read_rows(path)
        return
    for number, row, why in scan_jsonl(path):
        if why is not None:
            bad.append(f"{where}{path}:{number}: not JSON ({why})")
        elif not isinstance(row, dict):
            bad.append(f"{where}{path}:{number}: expected a JSON object, got {type(row).__name__}")
        else:
            yield number, row


def load_benchmark(spec: BenchmarkSpec, limit: int | None = None) -> tuple[list[Problem], list[str]]:
    """Problems, and a list of rows that could not be used (reported with the spec file, the data
    file, the line and why; not fatal unless no row is usable)."""
    _check(spec)
    path = Path(spec.path)
    if not path.is_absolute():
        path = data_dir() / path
    where = f"{spec.source}: " if spec.source else ""
    problems, bad = [], []
    for number, row in read_objects(path, bad, where):
        rid = str(row.get(spec.id_field)) if spec.id_field and row.get(spec.id_field) is not None else str(number)
        pid = f"{spec.name}-{rid}"
        try:
            question = _question(spec, row)
            if spec.multiple_choice:
                problems.append(_choice_problem(spec, row, pid, question))
            else:
                multiple = spec.multiple_answer_field and _true(row.get(spec.multiple_answer_field))
                problems.append(Problem(pid, question, _gold(spec, row), grading="answer_set" if multiple else spec.grading))
        except RowError as e:
            bad.append(f"{where}{path}:{number}: {e}")
            continue
        if limit is not None and len(problems) >= limit:
            break
    if not problems and bad:
        shown = "\n  ".join(bad[:5])
        raise ValueError(f"benchmark {spec.name}: no usable row in {path} ({len(bad)} bad):\n  {shown}")
    return problems, bad
