"""The critique verdict parser and the thinking sections it reads past, pinned by tables.

Every shape below is one a teacher was asked for (CFT A.1 `Conclusion: right/wrong [END]`, CGD
`Conclusion: right` / `Conclusion: wrong`, CFT A.4.1 `Critique Conclusion: Correct/Incorrect`) or
one real teachers write instead. None means unparsed: the verdict is never guessed.
"""

from __future__ import annotations

import re

import pytest

from critkit.grading.thinking import UNCLOSED_THINKING, split_thinking, strip_thinking
from critkit.grading.verdicts import parse_verdict

VERDICTS = [
    # the papers' own formats
    ("The steps are fine.\nConclusion: right [END]", "right"),  # CFT A.1
    ("The sum is off.\nConclusion: wrong [END]", "wrong"),
    ("Detailed critique...\nConclusion: right", "right"),  # CGD
    ("Detailed critique...\nConclusion: wrong", "wrong"),
    ("1. Step one holds.\n2. Step two holds.\n\nCritique Conclusion: Correct", "right"),  # CFT A.4.1
    ("Critique Conclusion: Incorrect", "wrong"),
    ("Thus the answer must be correct. Critique Conclusion: correct [END]", "right"),  # CFT A.3, inline
    # markdown
    ("**Conclusion**: wrong", "wrong"),
    ("**Conclusion: Wrong**", "wrong"),
    ("**Conclusion:** wrong", "wrong"),
    ("**Conclusion: right**", "right"),
    ("Conclusion: `wrong`", "wrong"),
    ("Conclusion: *incorrect*", "wrong"),
    ("- Conclusion: right", "right"),
    ("> **Conclusion:** Correct", "right"),
    ("## Conclusion\n\nThe student's answer is **incorrect**.", "wrong"),  # a heading, verdict below
    ("### Conclusion:\nWrong [END]", "wrong"),
    ("'Conclusion: wrong'", "wrong"),  # the requested line, quoted whole
    ("| Step | Check |\n| --- | --- |\n| **Conclusion** | Wrong |", "wrong"),  # a table row
    # LaTeX
    ("Conclusion: \\textbf{wrong}", "wrong"),
    ("\\textbf{Conclusion:} $\\boxed{\\text{Right}}$", "right"),
    ("Conclusion: $\\text{incorrect}$ [END]", "wrong"),
    # separators, case, spacing
    ("Conclusion - wrong", "wrong"),
    ("Conclusion — correct", "right"),
    ("Conclusion：wrong", "wrong"),  # full-width colon
    ("conclusion:right", "right"),
    ("CONCLUSION: WRONG [END]", "wrong"),
    ("Conclusion: wrong[END]", "wrong"),
    ("Conclusion: right.\n[END]", "right"),
    # synonyms and sentences
    ("Conclusion: incorrect", "wrong"),
    ("Conclusion: correct.", "right"),
    ("Conclusion: not correct", "wrong"),
    ("Conclusion: The student's solution is correct.", "right"),
    ("Conclusion: The student’s final answer is wrong [END]", "wrong"),
    ("Conclusion: Wrong. The sum should be 12, not 13.", "wrong"),
    ("Conclusion: wrong ❌", "wrong"),
    # the last conclusion decides
    ("Conclusion: wrong\nOn second thought...\nConclusion: right [END]", "right"),
    ("Conclusion: right [END]\nWait, step 2 fails.\n**Conclusion:** wrong", "wrong"),
    # the prompt echoed, or a format quoted in a sentence: never a verdict
    ("Conclusion: right/wrong", None),
    ("Conclusion: right/wrong [END]", None),
    ("Critique Conclusion: Correct/Incorrect", None),
    ("I must end with 'Conclusion: right' or 'Conclusion: wrong'.", None),
    ("'Conclusion: right' or 'Conclusion: wrong'", None),
    ("The steps hold.\nConclusion: wrong\n(Format: Conclusion: right/wrong [END])", None),
    ("Step 3 is off.\nConclusion: wrong [END]\nI was told to answer with 'Conclusion: right/wrong [END]'.", "wrong"),
    # no readable conclusion: None, never guessed from the words in the critique
    ("The solution is wrong.", None),
    ("The solution is correct and complete.", None),
    ("In conclusion, it is right.", None),
    ("Conclusion: the student made an error", None),
    ("Conclusion: correctness cannot be judged", None),
    ("Conclusion: partially correct", None),
    ("Conclusion: right or wrong depends on the units", None),
    ("We reach the same conclusion\nas the student did.", None),
    ("Conclusion: right [END]\n## Conclusion\nHard to say.", None),  # the last one is unreadable
    ("", None),
    (None, None),
    # thinking (grading/thinking.py): the verdict is read after it
    ("<think>Maybe Conclusion: right?</think>\nStep 2 is off.\nConclusion: wrong [END]", "wrong"),
    ("</think>\n\nConclusion: right", "right"),  # the opening tag was in the prompt
    ("think\nI guess Conclusion: wrong\nanswer\nConclusion: right [END]", "right"),  # s1, special tokens dropped
    ("<|im_start|>think\nhmm<|im_start|>answer\nConclusion: wrong<|im_end|>", "wrong"),  # s1, raw
    ("<think>The student is right, so Conclusion: right", None),  # cut inside the thinking
    ("think\nConclusion: right, I think, but let me check", None),  # s1 cut inside the thinking
]


@pytest.mark.parametrize(("text", "verdict"), VERDICTS)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_the_table_is_big_enough_and_catches_a_guessing_parser():
    """Negative control: the parser critkit had before (first right/wrong word after any
    'conclusion', last match wins) passes most of this table but not all of it."""
    assert len(VERDICTS) >= 30

    old = re.compile(r"conclusion\s*[:：]?\s*[*_`\s]*(right|wrong|correct|incorrect)\b", re.I)

    def guessing(text):
        found = old.findall(text or "")
        return None if not found else ("right" if found[-1].lower() in ("right", "correct") else "wrong")

    missed = {text for text, verdict in VERDICTS if guessing(text) != verdict}
    # The shapes: three were unparsed, and the echoed prompt was read as "right".
    assert {"**Conclusion**: wrong", "Conclusion: \\textbf{wrong}", "Conclusion - wrong", "Conclusion: right/wrong"} <= missed
    assert "<think>The student is right, so Conclusion: right" in missed  # a verdict from the thinking


# ------------------------------------------------------------------------------- thinking

THINKING = [
    # (reply, answer, thinking)
    ("<think>Let me add.</think>\n\n2 + 2 = 4.", "2 + 2 = 4.", "Let me add."),
    ("<think>\nstep\n</think>The answer is 4.", "The answer is 4.", "step"),
    ("</think>\nOnly the close tag.", "Only the close tag.", ""),  # DeepSeek-R1: <think> was in the prompt
    ("<think>a</think>b<think>c</think>\nfinal", "final", "a</think>b<think>c"),  # interleaved: after the last close
    ("think\nAdding 2 and 2.\nanswer\nThe answer is 4.", "The answer is 4.", "Adding 2 and 2."),  # s1, stripped
    ("<|im_start|>think\nAdding.\n<|im_start|>answer\nAnswer: 4<|im_end|>", "Answer: 4", "Adding."),  # s1, raw
    ("<|im_start|>answer\nAnswer: 4", "Answer: 4", ""),  # s1, the think turn was in the prompt
    # ordinary text is never cut, however it uses the words
    ("The answer is 4.", "The answer is 4.", None),
    ("I think the answer is\nanswer\n4", "I think the answer is\nanswer\n4", None),
    ("think of it as 2 + 2\nanswer\n4", "think of it as 2 + 2\nanswer\n4", None),
    ("Let me think.\nThe answer: 4", "Let me think.\nThe answer: 4", None),
    ("", "", None),
]

UNCLOSED = [
    "<think>Let me add 2 and",  # cut at the token limit
    "<think>a</think>b<think>still going",  # opened again and cut
    "think\nAdding 2 and",  # s1 stripped, no answer line
    "<|im_start|>think\nAdding 2 and",  # s1 raw
    "think\nstep\nanswer\n4\nthink\nmore",  # s1 stripped, thinking again after the answer
]


@pytest.mark.parametrize(("text", "answer", "thinking"), THINKING)
def test_split_thinking(text, answer, thinking):
    found = split_thinking(text)
    assert (found.answer, found.thinking) == (answer, thinking)
    assert not found.unclosed and strip_thinking(text) == answer


@pytest.mark.parametrize("text", UNCLOSED)
def test_unclosed_thinking_has_no_answer(text):
    found = split_thinking(text)
    assert found.unclosed and found.answer is None and strip_thinking(text) is None
    assert found.thinking  # what was thought is still there to keep
    assert UNCLOSED_THINKING.startswith("unclosed thinking")
