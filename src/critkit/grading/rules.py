"""Benchmark-specific grading rules: how an extracted answer is compared with a gold answer.

- ``math``: `answers_match` (textual or math-verify equality), what every math benchmark uses.
- ``theoremqa``: the official TheoremQA checker's rules (wenhuchen/TheoremQA,
  predict_accuracy.py). Its golds are rounded (``1.42``, ``-1.047``), so a float gold accepts a
  value within 4% of it; an integer gold accepts a value that rounds to it; True/False and the
  options (a)-(d) compare exactly after normalizing (yes -> True); a list is sorted and compared
  element by element with the number rule. The file gives no answer type: it is read from the
  gold's text. We differ knowingly in three places: no ChatGPT or Wolfram Alpha fallback for
  predictions the rules cannot read (they are wrong here), no `eval` of model text (numbers are
  read by math-verify's LaTeX parser), and an option letter's case does not matter.
- ``answer_set``: a gold that is a set of answers (OlympiadBench's ``is_multiple_answer`` rows:
  ``69,84``, ``(1,1), (3,2)``) accepts the same answers in any order. The Qwen2.5-Math harness
  compares such golds as one string, so "84, 69" is wrong there; OlympiadBench's own judge
  treats them as sets, and so do we.

Every rule returns a bool and never raises: an answer the rule cannot read is not correct.
"""

from __future__ import annotations

import ast
import re

from .answers import GRADE_TIMEOUT_SECONDS, MAX_ANSWER_CHARS, _POWER_TOWER, _plain_equal, _run_with_timeout, _unwrap, answers_match

__all__ = ["GRADING_RULES", "match_answer", "theoremqa_match", "answer_set_match", "split_answers"]

GRADING_RULES = ("math", "theoremqa", "answer_set")

# TheoremQA's `within_eps`: the golds are rounded to two to four significant digits.
THEOREMQA_RELATIVE_TOLERANCE = 0.04
# An answer set of more parts than this is not an answer (and would cost parts^2 comparisons).
MAX_SET_PARTS = 40


def match_answer(pred: str | None, gold: str | None, rule: str = "math", timeout: float = GRADE_TIMEOUT_SECONDS) -> bool:
    """True when `pred` matches `gold` under the named grading rule (one of GRADING_RULES)."""
    if rule == "theoremqa":
        return theoremqa_match(pred, gold, timeout)
    if rule == "answer_set":
        return answer_set_match(pred, gold, timeout)
    if rule != "math":
        raise ValueError(f"unknown grading rule {rule!r}; use one of {GRADING_RULES}")
    return answers_match(pred, gold, timeout=timeout)


# ------------------------------------------------------------------------------------ parts


def split_answers(text: str) -> list[str]:
    """The comma-separated parts of an answer at bracket depth 0: "(1,2), (3,4)" is two tuples,
    "[1,2)" one interval. Empty parts are dropped."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


_SET_BRACES = re.compile(r"^(?:\\left)?\\\{(.*?)(?:\\right)?\\\}$", re.S)
# Words and separators models put between the answers of a set: "1, 3 and 5", "x=1 or x=2".
_CONNECTIVES = re.compile(r"\\(?:text|mathrm)\{\s*(?:and|or)\s*\}|\\quad|\\qquad|;|\s(?:and|or)\s")


def _set_parts(answer: str) -> list[str]:
    answer = answer.replace("$", "").strip().rstrip(".")
    m = _SET_BRACES.match(answer)
    if m:
        answer = m.group(1)
    return split_answers(_CONNECTIVES.sub(",", answer))


def answer_set_match(pred: str | None, gold: str | None, timeout: float = GRADE_TIMEOUT_SECONDS) -> bool:
    """The answers in `pred` and in `gold` are the same set: each part of one equals a part of
    the other (so a repeated gold value, "-2,-2", needs to be written only once)."""
    if pred is None or gold is None:
        return False
    if answers_match(pred, gold, timeout=timeout):
        return True
    want, have = _set_parts(str(gold)), _set_parts(str(pred))
    if not want or not have or len(want) > MAX_SET_PARTS or len(have) > MAX_SET_PARTS:
        return False
    # Textual equality first, for every pair: math-verify only for the parts it leaves unmatched.
    pairs = {(i, j): True for i in range(len(have)) for j in range(len(want)) if _plain_equal(_unwrap(have[i]), want[j])}

    def same(i: int, j: int) -> bool:
        if (i, j) not in pairs:
            pairs[i, j] = answers_match(have[i], want[j], timeout=timeout)
        return pairs[i, j]

    def covered(parts: range, partners: range, pair) -> bool:
        return all(any(pairs.get(pair(a, b)) for b in partners) or any(same(*pair(a, b)) for b in partners) for a in parts)

    return (covered(range(len(want)), range(len(have)), lambda j, i: (i, j))
            and covered(range(len(have)), range(len(want)), lambda i, j: (i, j)))


# ---------------------------------------------------------------------------------- TheoremQA

_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_UNIT_AT_END = re.compile(r"(?:\\[,;:! ]|\s)*\\(?:text|mathrm|mbox|textrm|operatorname)\s*\{[^{}]*\}\s*$")
_BOOLS = {"true": True, "yes": True, "false": False, "no": False}


def _theoremqa_gold(gold: str):
    """The gold as TheoremQA's checker holds it: bool, option letter, int, float or a list."""
    text = gold.strip()
    if text in ("True", "False"):
        return text == "True"
    m = re.fullmatch(r"\(([a-e])\)", text, re.I)
    if m:
        return f"({m.group(1).lower()})"
    try:
        value = ast.literal_eval(text)  # literals only, never code
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return list(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


def _clean(pred: str) -> str:
    """The TheoremQA checker's normalization of a prediction: the value after the last "=" or
    "≈", without $, backticks, degree signs, "approximately" or units at the end."""
    s = str(pred).strip()
    s = re.split(r"=|≈|\\approx|\\sim(?![a-z])", s)[-1]
    s = s.replace("$", "").replace("`", "").replace("°", "").replace("^\\circ", "").replace("^{\\circ}", "")
    s = re.sub(r"\bapproximately\b|\\approx", "", s)
    for _ in range(3):
        shorter = _UNIT_AT_END.sub("", s).strip()
        if not shorter:
            break
        s = shorter
    s = s.replace("\\%", "").replace("%", "").replace("\\!", "").strip().rstrip(".").strip()
    return s


def _sympy_number(latex: str) -> float | None:
    """A LaTeX expression's numeric value through math-verify's parser, or None."""
    if len(latex) > MAX_ANSWER_CHARS or latex.count("{") > 50 or re.search(r"\^\s*\{?\s*-?\d{4,}", latex) or _POWER_TOWER.search(latex):
        return None  # the same guards as answers_match: sympy expands integer powers eagerly

    def evaluate():
        import logging

        from math_verify import parse

        logging.getLogger("math_verify").setLevel(logging.ERROR)
        for expr in parse(f"${latex}$", parsing_timeout=None):
            if isinstance(expr, str) or not getattr(expr, "is_number", False):
                continue
            value = complex(expr.evalf())
            return value.real if abs(value.imag) <= 1e-12 * max(1.0, abs(value.real)) else None
        return None

    try:
        return _run_with_timeout(evaluate, GRADE_TIMEOUT_SECONDS)
    except Exception:  # noqa: BLE001 - a grader never raises on model output
        return None


def _number(pred: str) -> float | None:
    s = _clean(pred)
    if not s:
        return None
    if _PLAIN_NUMBER.fullmatch(s) and any(c.isdigit() for c in s):
        return float(s.replace(",", ""))
    value = _sympy_number(s)
    if value is not None:
        return value
    # "3.5 m/s", "$ 120": a number with a word before or after it (TheoremQA's unit rules).
    m = re.fullmatch(r"(?:[^\d\s]{1,3}\s*)?([-+]?[\d,]*\.?\d+)(?:\s*[^\d\s][^\d]*)?", s)
    return float(m.group(1).replace(",", "")) if m else None


def _number_matches(pred: float, gold: int | float) -> bool:
    if isinstance(gold, int):
        return round(pred) == gold  # TheoremQA: integer answers accept what rounds to them
    return abs(pred - gold) <= abs(gold) * THEOREMQA_RELATIVE_TOLERANCE


def _bool(pred: str) -> bool | None:
    words = set(re.findall(r"[a-z]+", pred.lower()))
    said = {_BOOLS[w] for w in words & set(_BOOLS)}
    return said.pop() if len(said) == 1 else None


def theoremqa_match(pred: str | None, gold: str | None, timeout: float = GRADE_TIMEOUT_SECONDS) -> bool:
    """The official TheoremQA checker's verdict on an extracted answer (see the module's notes)."""
    if pred is None or gold is None or not str(pred).strip():
        return False
    want = _theoremqa_gold(str(gold))
    pred = str(pred).strip()
    if want is None:  # a gold the checker has no rule for: plain equality
        return answers_match(pred, gold, timeout=timeout)
    if len(pred) > MAX_ANSWER_CHARS:
        return False
    try:
        if isinstance(want, bool):
            return _bool(pred) is want
        if isinstance(want, str):
            m = re.search(r"\(([a-e])\)", pred, re.I) or re.fullmatch(r"\W*([a-e])\W*", pred, re.I)
            return m is not None and f"({m.group(1).lower()})" == want
        if isinstance(want, list):
            inner = re.sub(r"\\left|\\right", "", pred.replace("$", "")).strip()
            inner = re.sub(r"^(?:\\\{|[\[(])(.*)(?:\\\}|[\])])$", r"\1", inner, flags=re.S)
            values = [_number(part) for part in split_answers(inner)]
            if len(values) != len(want) or any(v is None for v in values):
                return False
            return all(_number_matches(v, g) for v, g in zip(sorted(values), sorted(want)))
        value = _number(pred)
        return value is not None and _number_matches(value, want)
    except Exception:  # noqa: BLE001 - a grader never raises on model output
        return False
