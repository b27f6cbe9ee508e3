"""How a benchmark spec reads one row: lm-evaluation-harness-style fields, gold cleaning, options.

`doc_to_text`, `doc_to_target` and `doc_to_choice` mean what they mean in an lm-eval task YAML
(lm_eval/api/task.py, ConfigurableTask): a row's field name gives that field's value; anything
else is a Jinja2 template rendered over the row with undefined names as errors (lm-eval's
`apply_template` uses StrictUndefined too), and a `doc_to_choice` template renders a Python list
literal (`"{{[opa, opb, opc, opd]}}"`). We render in Jinja's immutable sandbox, not lm-eval's
plain Environment: a spec is shared like data, and a template must not reach Python internals.

Two things lm-eval does not need, because its tasks pair a dataset with Python code, and a
critkit spec must say without code: cleaning a gold with a declared rule (`gold_regex`,
`gold_strip`), and options given as one string of lettered options (`A) 3 B) 4 C) 5`, MathQA's
`a ) 38 , b ) 27.675`) or as a list whose items carry their letters (AQuA-RAT's `["A)21", ...]`).

Every function here raises `RowError` with a message for the row's report, never anything else:
the loader counts the row as bad and goes on.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache

__all__ = ["RowError", "check_template", "field_or_template", "render_text", "choices_of", "clean_gold", "split_lettered", "GOLD_STRIPS"]

GOLD_STRIPS = ("units", "dollars", "commas", "period")
LETTERS = "ABCDEFGHIJ"


class RowError(ValueError):
    """A row a spec cannot read: the message says which key and why."""


@lru_cache(maxsize=1)
def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True)
    # lm-eval's one custom filter (lm_eval/utils.py), so its task templates render here too.
    env.filters["regex_replace"] = lambda s, pattern, repl, count=0: re.sub(pattern, repl, s, count=count)
    return env


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


@lru_cache(maxsize=256)
def _compiled(template: str):
    return _environment().from_string(template)


def check_template(key: str, value) -> None:
    """Raise ValueError for a template that cannot compile: that is the spec's fault, not a row's."""
    from jinja2 import TemplateSyntaxError

    if isinstance(value, str) and _is_template(value):
        try:
            _compiled(value)
        except TemplateSyntaxError as e:
            raise ValueError(f"{key}: template does not compile: {e} in {value!r}") from None


def field_or_template(key: str, value, row: dict):
    """A field's raw value when `value` names a field of the row, else the rendered template.

    A bare word that is not a field of this row is reported as a missing field (lm-eval would
    print the word itself as the question: a typo would be scored, not seen)."""
    if isinstance(value, str) and not _is_template(value):
        if value in row:
            return row[value]
        raise RowError(f"{key}: no field '{value}' in the row (fields: {', '.join(sorted(row)) or 'none'})")
    if not isinstance(value, str):
        return value  # lm-eval allows a literal int target and a literal list of choices
    try:
        return _compiled(value).render(**row)
    except Exception as e:  # noqa: BLE001 - any template failure (undefined name, bad index, sandbox) is this row's
        raise RowError(f"{key}: template failed: {type(e).__name__}: {e}") from None


def render_text(key: str, value: str, row: dict) -> str:
    """Text that may be a template (lm-eval's `description`): never read as a field name."""
    return str(field_or_template(key, value, row)) if _is_template(value) else value


def choices_of(value, row: dict) -> list:
    """The options of a row: a list field, a list literal the template renders, a YAML list
    (literal options, as in lm-eval), or one string of lettered options."""
    got = field_or_template("doc_to_choice", value, row)
    if isinstance(got, dict):  # ARC-style {"text": [...], "label": [...]}: the texts
        got = got.get("text", list(got.values()))
    if isinstance(got, str) and isinstance(value, str) and _is_template(value):
        text = got.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                got = ast.literal_eval(text)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                pass  # not a list literal after all: read it as lettered options below
    if isinstance(got, str):
        got = split_lettered(got)
        if got is None:
            raise RowError("doc_to_choice: a string without lettered options (A) ... B) ...)")
    if not isinstance(got, (list, tuple)):
        raise RowError(f"doc_to_choice: expected a list of options, got {type(got).__name__}")
    return strip_letters(list(got))


# A letter that opens an option: "A)", "(A)", "A.", "A:", "a )" at the start or after a space,
# comma or semicolon.
_MARK = re.compile(r"(?:^|(?<=[\s,;]))\(?([A-Ja-j])\s*[).:]\s*")


def split_lettered(text: str) -> list[str] | None:
    """`A) 3 B) 4 C) 5`, `(A) 3\\n(B) 4`, `A. 3 B. 4`, `a ) 38 , b ) 27.675` -> the option texts.

    The markers must run A, B, C, ... in order and in the case of the first: a letter inside an
    option ("see part b) first") that breaks the run is part of the text. None when fewer than two options are found."""
    marks, want, letters = [], 0, LETTERS
    for m in _MARK.finditer(text):
        if not marks and m.group(1) == "a":
            letters = LETTERS.lower()  # MathQA's lower-case options: then every marker is lower case
        if m.group(1) == letters[want] and (not marks or m.start() >= marks[-1][1]):
            marks.append((m.start(), m.end()))
            want += 1
            if want == len(LETTERS):
                break
    if len(marks) < 2 or text[: marks[0][0]].strip():
        return None
    ends = [start for start, _ in marks[1:]] + [len(text)]
    return [text[body:end].strip().rstrip(",;").strip() for (_, body), end in zip(marks, ends)]


def strip_letters(options: list) -> list:
    """AQuA-RAT's `["A)21", "B)21.5", ...]`: the letters go when every option carries its own, in order."""
    texts = [str(o) for o in options]
    marked = [re.match(r"\s*\(?([A-Ja-j])\s*[).:]\s*", t) for t in texts]
    if len(texts) >= 2 and all(m and m.group(1).upper() == LETTERS[i] for i, m in enumerate(marked[: len(LETTERS)])):
        return [t[m.end():].strip() for t, m in zip(texts, marked)]
    return options


_UNIT_IN_PARENS = re.compile(r"\s*\([^()]*[A-Za-z][^()]*\)\s*$")  # "9 (apples)"
_NUMBER_THEN_WORDS = re.compile(r"^([-+]?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?%?)\s+[A-Za-z][A-Za-z\s./-]*$")  # "12 apples", "5 km/h"


def clean_gold(text: str, regex: str | None, strips: tuple[str, ...]) -> str:
    """A gold after the spec's declared cleaning: the regex's first group (or whole match),
    then each strip in GOLD_STRIPS order. Raises RowError when the regex does not match."""
    if regex:
        m = re.search(regex, text)
        if not m:
            raise RowError(f"gold_regex {regex!r} does not match {text[:80]!r}")
        text = m.group(1) if m.groups() else m.group(0)
        text = text if text is not None else ""
    text = text.strip()
    if "dollars" in strips:
        text = re.sub(r"(?<!\\)\$", "", text).strip()  # currency or LaTeX math delimiters, not \$
    if "units" in strips:
        text = _UNIT_IN_PARENS.sub("", text)
        m = _NUMBER_THEN_WORDS.match(text)
        text = m.group(1) if m else text
    if "commas" in strips:
        text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)  # thousands separators, not "1,2" or "(1,2)"
    if "period" in strips:
        text = text.strip().rstrip(".").strip()
    return text.strip()
