"""The verdict at the end of a teacher's critique: 'right', 'wrong', or None when there is none.

Used wherever a critique is read: the critique stage, the WebInstruct-CFT source (its critiques
end in a conclusion line) and self-critique evaluation.

The papers ask for `Conclusion: right/wrong [END]` (CFT A.1), `Conclusion: right` or
`Conclusion: wrong` (CGD) and `Critique Conclusion: Correct/Incorrect` (CFT A.4.1); real teachers
decorate that line with markdown or LaTeX, change the separator and use synonyms. The parser
reads the last conclusion label in the text after the thinking (see thinking.py):

- a label is the word "conclusion" followed by a separator (`:`, `-`, `—`, `=`, a table's `|`)
  or by the end of its line (a heading: the verdict is then the next non-empty line). A label
  inside a sentence in quotes ("end with 'Conclusion: right' or 'Conclusion: wrong'") is a
  mention, not a verdict.
- the label's verdict is its first words once markdown and LaTeX are removed: right / correct /
  valid / accurate, or wrong / incorrect / not correct / invalid / inaccurate / erroneous /
  flawed, alone or as "the (student's) solution/answer is ...". After it: nothing, `[END]`, a
  punctuation mark or a parenthesis.
- anything else after the last label (`right/wrong` echoed from the prompt, "partially correct",
  "the student made an error") is None: the verdict is never guessed, and an earlier label does
  not stand in for an unreadable last one.
"""

from __future__ import annotations

import re

from .thinking import strip_thinking

__all__ = ["parse_verdict"]

_KEYWORD = re.compile(r"\bconclusion\b", re.I)
_WINDOW = 300  # characters around a label that are read
# Markdown, LaTeX and symbols around the label and the verdict; none of them changes the meaning.
_LATEX = re.compile(r"\\(?:textbf|textit|text|mathrm|mathbf|boxed|fbox|emph|underline|bf|it)\b\s*|\\[()\[\]]")
_SYMBOLS = re.compile(r"[*_`$#{}~\"“”‘✅✔✓❌✗✘]|(?<!\w)'|'(?!\w)")
_SEPARATOR = re.compile(r"^\s*(?:[:：=|]|-+|–|—)+\s*")  # "|": a markdown table row
_RIGHT = ("right", "correct", "valid", "accurate")
_WRONG = ("wrong", "incorrect", "not correct", "not right", "invalid", "inaccurate", "erroneous", "flawed")
_WORDS = "|".join(w.replace(" ", r"\s+") for w in sorted(_RIGHT + _WRONG, key=len, reverse=True))
_VERDICT = re.compile(
    r"^\s*[-•>]*\s*"  # a list bullet or quote mark, for a verdict on the line under a heading
    r"(?:(?:the\s+)?(?:student'?s\s+|given\s+|provided\s+|proposed\s+|original\s+)?(?:final\s+)?"
    r"(?:solution|answer|response|reasoning|work)\s+is\s+|(?:the\s+student|it|this)\s+is\s+)?"
    rf"(?P<word>{_WORDS})\b"
    r"(?:\s+(?:answer|solution))?"
    r"\s*(?:$|\[end\]|[.,;:!(|])",
    re.I,
)
# A quote opening right before a label; after other words on the line it makes the label a mention.
_QUOTE_BEFORE = re.compile(r"[\"'“‘`]\s*(?:critique\s+|final\s+)?[*_]*\s*$", re.I)
# Text before a heading label ("## Conclusion", "**Final conclusion**"): decoration only.
_HEADING = re.compile(r"[\s#>*_\-\d.]*(?:critique\s+|final\s+)?[*_\s]*$", re.I)


def _plain(text: str) -> str:
    text = text.replace("’", "'")  # a typographic apostrophe, as in "student’s"
    return re.sub(r"[ \t]+", " ", _SYMBOLS.sub(" ", _LATEX.sub(" ", text)))


def _word(tail: str) -> str | None:
    m = _VERDICT.match(tail)
    if not m:
        return None
    word = re.sub(r"\s+", " ", m.group("word").lower())
    return "right" if word in _RIGHT else "wrong"


def _label(text: str, m: re.Match) -> tuple[str, int] | None:
    """(what follows the label on its line, where that ends), or None when `m` is no label.

    Only the few characters around the word matter: reading windows rather than whole lines
    keeps a long text with many "conclusion"s from costing quadratic time.
    """
    low = max(0, m.start() - _WINDOW)
    newline = text.rfind("\n", low, m.start())
    line_start = newline + 1 if newline >= 0 else (0 if low == 0 else None)  # None: a long line
    before = text[low if line_start is None else line_start:m.start()]
    quote = _QUOTE_BEFORE.search(before)
    if quote and (line_start is None or re.search(r"\w", before[:quote.start()])):
        return None  # a quoted mention: "end with 'Conclusion: right' or 'Conclusion: wrong'"
    high = min(len(text), m.end() + _WINDOW)
    newline = text.find("\n", m.end(), high)
    line_end = high if newline < 0 else newline
    tail = _plain(text[m.end():line_end])
    sep = _SEPARATOR.match(tail)
    if sep:
        return tail[sep.end():], line_end
    if not tail.strip() and line_start is not None and _HEADING.match(text, line_start, m.start()):
        return "", line_end  # a heading: "## Conclusion", the verdict on a line below
    return None


def parse_verdict(text: str | None) -> str | None:
    """'right' / 'wrong' from the last conclusion label, or None when there is none or it is unreadable.

    The thinking of a reasoning teacher is removed first; a reply whose thinking never closes
    has no verdict.
    """
    text = strip_thinking(text)
    if not text:
        return None
    for m in reversed(list(_KEYWORD.finditer(text))):
        label = _label(text, m)
        if label is not None:
            break
    else:
        return None
    tail, line_end = label
    if not tail.strip():
        following = (_plain(line[:_WINDOW]) for line in text[line_end:].split("\n"))
        tail = next((line for line in following if line.strip()), "")
    return _word(tail)
