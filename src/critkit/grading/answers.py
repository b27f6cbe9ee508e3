"""Answer extraction and grading.

`extract_answer` pulls the final answer out of a model's text, as the Qwen2.5-Math harness reads
it; `grade` decides whether a response matches a gold answer with math-verify (rules.py holds the
benchmark-specific rules: TheoremQA's checker, answer sets). Both are total: they return None /
False on anything they cannot handle and never raise, because a grader that crashes on one odd
output loses a whole run.
"""

from __future__ import annotations

import re
import threading

__all__ = ["extract_answer", "extract_boxed", "grade", "answers_match", "extract_choice", "grade_choice"]

# Model outputs can be adversarial (a 10^10^10 in a box, a thousand nested braces); cap what we
# hand to sympy so a single sample cannot stall an evaluation.
MAX_ANSWER_CHARS = 400
GRADE_TIMEOUT_SECONDS = 5


_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*")


def _cut_box(text: str) -> str | None:
    """What follows the last box's opening brace when that brace never closes (the output was cut
    off mid-answer), with line breaks and indentation removed; "" when the text ends with the
    command itself; None when the last box is complete."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = _BOX_OPEN.match(text, start).end()
    if i >= len(text):
        return ""  # "...\boxed{6}\n\boxed": the last box is cut before its brace, so it is empty
    if text[i] != "{" or extract_boxed(text) is not None:
        return None
    return re.sub(r"\n\s*", "", text[i + 1 :]).strip()


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), with nested braces balanced."""
    if not text:
        return None
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    # The argument's brace must follow the command itself: a later "{" belongs to other text.
    i = _BOX_OPEN.match(text, start).end()
    if i >= len(text) or text[i] != "{":
        # "\boxed 5" is valid LaTeX for a single token argument.
        m = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None  # unbalanced: truncated output


# "The answer is X", "Final answer: X", "The final answer is:\n\n$$X$$". The statement is read by
# _statement, not by this pattern: a regex that also skipped the colon and line breaks used to
# return the colon itself.
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is\b|:)", re.I)
_HASHES = re.compile(r"####\s*([^\n]+)")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_MATH_DELIMITERS = (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$"))
# Markdown around an answer (**5**, *True*, `x`) and what introduces it (": ", "= ").
_DECORATION = " \t\n:=*_`#>"


def _statement(rest: str) -> str | None:
    """The answer stated at the start of `rest` (the text after "the answer is"), or None when
    it holds no letter or digit: punctuation and markdown are never an answer."""
    rest = rest.lstrip(_DECORATION)
    for opening, closing in _MATH_DELIMITERS:
        if rest.startswith(opening):
            end = rest.find(closing, len(opening))
            if end > len(opening):
                rest = rest[len(opening) : end]
            else:
                rest = rest[len(opening) :].split("\n", 1)[0]  # unclosed: the line
            break
    else:
        rest = rest.split("\n", 1)[0]
        # The sentence ends at a full stop followed by a space or the line's end: "3.5." is 3.5.
        rest = re.split(r"\.(?=\s|$)", rest, maxsplit=1)[0]
    answer = rest.strip(_DECORATION + ".,;!").strip("$").strip()
    return answer if re.search(r"\w", answer) else None


def extract_answer(text: str | None) -> str | None:
    """The final answer in a model's text, or None.

    Order, as the Qwen2.5-Math harness reads an output: the last ``\\boxed{}``; a last box cut
    off by the token limit before its closing brace gives what it holds up to the end (the
    harness's reading: a correct "\\boxed{72" counts); then "The answer is X" / "Final answer: X"
    (the last such statement; when it states nothing, no answer); then GSM8K's ``#### X``; then
    the last number in the text.
    """
    if not text or not isinstance(text, str):
        return None
    boxed = extract_boxed(text)
    if boxed:
        return boxed
    cut = _cut_box(text)
    if cut is not None:
        return cut or None
    statements = list(_ANSWER_IS.finditer(text))
    if statements:
        return _statement(text[statements[-1].end() :])
    found = _HASHES.findall(text)
    if found:
        return found[-1].strip().rstrip(".")
    numbers = _NUMBER.findall(text)
    if numbers:
        return numbers[-1].replace(",", "").rstrip(".")
    return None


# An exponent that itself holds an integer power, e.g. 2^{2^{100}}; symbolic ones like e^{-x^2} pass.
_POWER_TOWER = re.compile(r"\^\s*\{[^}]*?\d\s*\}?\s*\^")


def _plain_equal(a: str, b: str) -> bool:
    norm = lambda s: re.sub(r"\s+|\\[,!; ]|\$|\\text\{\s*\}|\.$", "", s).replace("dfrac", "frac").lower()
    return norm(a) == norm(b)


def _verify(gold: str, pred: str) -> bool:
    import logging

    from math_verify import parse, verify

    # We disable math-verify's signal-based timeouts (see _run_with_timeout); silence its warning.
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    # math-verify wants the answer in math mode to parse LaTeX; a bare "5" parses either way.
    gold_parsed = parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = parse(f"${pred}$", parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _run_with_timeout(fn, timeout: float):
    """Run fn in a daemon thread and give up after `timeout` seconds.

    math-verify's own timeouts use signal.alarm, which only works in the main thread; a thread
    works anywhere (worker threads, notebooks). A timed-out sympy call is left to finish in the
    background and its result is dropped.
    """
    result: list = []
    worker = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive() or not result:
        return None
    return result[0]


_WRAPPER = re.compile(r"^\\(?:textbf|text|mathbf|mathrm|bf)\{(.*)\}$", re.S)


def _unwrap(answer: str) -> str:
    """Formatting around an answer is not part of it: \textbf{(073)} is 073 (AIME-style)."""
    while (m := _WRAPPER.match(answer)) is not None:
        answer = m.group(1).strip()
    m = re.fullmatch(r"\(\s*(-?\d+(?:\.\d+)?)\s*\)", answer)
    return m.group(1) if m else answer


def answers_match(pred: str | None, gold: str | None, timeout: float = GRADE_TIMEOUT_SECONDS) -> bool:
    """True when an extracted answer equals the gold answer, textually or mathematically."""
    if pred is None or gold is None:
        return False
    pred, gold = _unwrap(str(pred).strip()), str(gold).strip()
    if not pred or not gold:
        return False
    if _plain_equal(pred, gold):
        return True
    if len(pred) > MAX_ANSWER_CHARS or pred.count("{") > 50 or re.search(r"\^\s*\{?\s*\d{4,}", pred):
        return False  # adversarial sizes: refuse rather than risk sympy expanding them
    if _POWER_TOWER.search(pred):
        # sympy evaluates integer powers eagerly, in C, holding the GIL: 10^{10^{10^{10}}} would
        # never return and the thread timeout below could not interrupt it.
        return False
    try:
        return bool(_run_with_timeout(lambda: _verify(gold, pred), timeout))
    except Exception:  # noqa: BLE001 - a grader never raises on model output
        return False


def grade(response: str | None, gold: str | None, timeout: float = GRADE_TIMEOUT_SECONDS) -> bool:
    """True when the final answer in `response` matches `gold`."""
    return answers_match(extract_answer(response), gold, timeout=timeout)


# ---------------------------------------------------------------------------- multiple choice

_LETTERS = "ABCDEFGHIJ"
_CHOICE_PATTERNS = (
    re.compile(r"answer is\s*:?\s*\(?\$?\\?(?:text\{)?([A-J])\b"),  # "the answer is (C)"
    re.compile(r"[Aa]nswer\s*:\s*\(?([A-J])\b"),  # "Answer: C"
)


def extract_choice(text: str | None, n_options: int = 10) -> str | None:
    """The chosen letter: \\boxed{C}, then "answer is (C)", "Answer: C", then the last lone letter."""
    if not text:
        return None
    allowed = _LETTERS[:n_options]
    boxed = extract_boxed(text)
    if boxed:
        m = re.fullmatch(r"\(?\s*(?:\\text\{)?\s*([A-J])\s*\}?\s*\)?(?:[.:].*)?", boxed.strip(), re.S)
        if m and m.group(1) in allowed:
            return m.group(1)
    for pattern in _CHOICE_PATTERNS:
        found = [x for x in pattern.findall(text) if x in allowed]
        if found:
            return found[-1]
    # A lone letter counts only in parentheses or at the end of a line: "I think" and "A number"
    # are words, not choices.
    lone = [a or b for a, b in re.findall(r"\(([A-J])\)|(?<![A-Za-z])([A-J])[.)]?[ \t]*$", text, re.M)]
    lone = [x for x in lone if x in allowed]
    return lone[-1] if lone else None


def grade_choice(response: str | None, gold_letter: str, n_options: int = 10) -> bool:
    return extract_choice(response, n_options) == gold_letter
