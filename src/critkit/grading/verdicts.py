"""The verdict at the end of a teacher's critique: 'right', 'wrong', or None when there is none.

Used wherever a critique is read: the critique stage, the WebInstruct-CFT source (its critiques
end in a conclusion line) and self-critique evaluation.
"""

from __future__ import annotations

import re

__all__ = ["parse_verdict"]

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
