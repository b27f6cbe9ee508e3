"""A reasoning model's thinking section, split from the text that is meant to be read.

Reasoning teachers and students write their thoughts before their answer, and the thoughts must
not be reused as a critique, an answer or a training target (the released CGD code keeps only
what follows them). Three forms are recognised:

- `<think> ... </think> answer` (DeepSeek-R1, Qwen3, QwQ). The opening tag may be missing when
  the chat template put it in the prompt: a `</think>` alone still ends the thinking.
- `<|im_start|>think ... <|im_start|>answer ...` (s1 / s1.1, whose chat template makes `think`
  and `answer` turns), as a server that keeps special tokens returns it.
- `think\\n ... \\nanswer\\n ...`: the same after a server dropped the special tokens (the
  transformers backend decodes with skip_special_tokens). Only a text whose first line is exactly
  `think` is read this way, and only a line that is exactly `answer` ends the thinking, so
  ordinary text that merely contains the words is never cut.

A reply that opens its thinking and never closes it (cut at the token limit) has no answer at
all: `answer` is None, and the caller records it as failed rather than use the thoughts.
A thinking section opened again after the last close is unclosed too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Thinking", "split_thinking", "strip_thinking", "UNCLOSED_THINKING"]

# The reason a reply is not used, as recorded in failed items and stage reports.
UNCLOSED_THINKING = "unclosed thinking: the reply ends inside its thinking section (cut at the token limit?)"

_THINK_OPEN, _THINK_CLOSE = re.compile(r"<think>", re.I), re.compile(r"</think>", re.I)
_S1_OPEN, _S1_CLOSE = re.compile(r"<\|im_start\|>think\b"), re.compile(r"<\|im_start\|>answer\b")
# The stripped s1 form: marker lines that are exactly "think" / "answer".
_LINE_OPEN, _LINE_CLOSE = re.compile(r"(?m)^[ \t]*think[ \t]*$"), re.compile(r"(?m)^[ \t]*answer[ \t]*$")
_S1_END = re.compile(r"\s*<\|im_end\|>\s*$")


@dataclass(frozen=True)
class Thinking:
    answer: str | None  # the text after the thinking; None when the thinking never closes
    thinking: str | None  # the thinking section without its markers; None when there is none
    form: str | None = None  # "think-tags", "s1", "s1-stripped", or None for plain text

    @property
    def unclosed(self) -> bool:
        return self.answer is None


def _split(text: str, opener: re.Pattern, closer: re.Pattern, form: str) -> Thinking:
    closes = list(closer.finditer(text))
    if not closes:
        start = opener.search(text)
        return Thinking(None, text[start.end():].strip(), form)
    last = closes[-1]
    opens = list(opener.finditer(text))
    if opens and opens[-1].start() > last.end():  # thinking opened again after the last close
        return Thinking(None, text[opens[-1].end():].strip(), form)
    begin = opens[0].end() if opens and opens[0].start() < last.start() else 0
    return Thinking(text[last.end():].lstrip(), text[begin:last.start()].strip(), form)


def split_thinking(text: str | None) -> Thinking:
    """The answer and the thinking of a reply; plain text comes back whole as the answer."""
    if text is None:
        return Thinking(None, None)
    if _S1_OPEN.search(text) or _S1_CLOSE.search(text):
        found = _split(text, _S1_OPEN, _S1_CLOSE, "s1")
        return found if found.answer is None else Thinking(_S1_END.sub("", found.answer), found.thinking, found.form)
    if _THINK_CLOSE.search(text) or _THINK_OPEN.search(text):
        return _split(text, _THINK_OPEN, _THINK_CLOSE, "think-tags")
    first_line = text.lstrip().split("\n", 1)[0].strip()
    if first_line == "think":
        body = text.lstrip()[len(text.lstrip().split("\n", 1)[0]):]  # after the opening marker line
        opens, closes = list(_LINE_OPEN.finditer(body)), list(_LINE_CLOSE.finditer(body))
        if not closes or (opens and opens[-1].start() > closes[-1].end()):
            return Thinking(None, body.strip(), "s1-stripped")
        last = closes[-1]
        return Thinking(body[last.end():].lstrip(), body[:last.start()].strip(), "s1-stripped")
    return Thinking(text, None)


def strip_thinking(text: str | None) -> str | None:
    """The text after the thinking; None when the thinking never closes (or there is no text)."""
    return split_thinking(text).answer
