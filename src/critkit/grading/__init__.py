"""Reading what a model wrote: the final answer in a text and whether it matches a gold answer
(math-verify with timeouts that work in any thread), multiple-choice letters, the verdict at the
end of a critique, and the thinking section a reasoning model writes before its answer.

Used by every stage that looks at an answer: the sources (gold answers inside solutions), the
decoding engine (stop after the first complete box), the offline reference teacher, and
evaluation. It imports nothing else from critkit. Parsers return None and never raise."""

from .answers import answers_match, extract_answer, extract_boxed, extract_choice, grade, grade_choice
from .thinking import split_thinking, strip_thinking
from .verdicts import parse_verdict

__all__ = ["extract_answer", "extract_boxed", "grade", "answers_match", "extract_choice", "grade_choice", "parse_verdict",
           "split_thinking", "strip_thinking"]
