"""The papers' prompts, kept as packaged text files (src/critkit/prompt_texts/*.txt).

Templates use `{question}`, `{response}` and `{critique}` placeholders, filled in one pass so a
question that itself contains "{response}" or LaTeX braces is never substituted twice.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["load_prompt", "render", "answer_prompt", "respond_prompt", "PROMPT_NAMES", "RESPOND_PROMPTS"]

PROMPT_NAMES = (
    "cot_system",  # Qwen2.5-Math cot answer prompt (evaluation; student answers on request)
    "base_answer",  # plain prompt for base models without a chat template
    "cft_critique_system", "cft_critique_user",  # CFT teacher (released generator)
    "cft_solve_system", "cft_solve_user",  # CFT A.2: the teacher's own solutions (SFT-GPT4o baseline)
    "cft_train_instruction", "cft_train_input",  # CFT training input (WebInstruct-CFT layout)
    "cgd_critique_system", "cgd_critique_user",  # CGD teacher critique
    "cgd_refine_system", "cgd_refine_user",  # CGD teacher refinement = CGD training input
    "cgd_no_critique_user",  # CGD ablation without the critique (Fig. 4)
    "self_critique_single_system",  # CFT A.4.1 single-pass self-critique, verbatim
    "self_critique_check_user",  # CFT A.4.1 two-stage self-critique: the critique step, plus critkit's format line
)

# How the student is asked for its first answers y' (respond). "plain", the default, is the CGD
# code's: the question as the only message, no system prompt. "cot" is the Qwen2.5-Math prompt
# every model is evaluated with; "base" is for base models without a chat template.
RESPOND_PROMPTS = ("plain", "cot", "base")

_PLACEHOLDER = re.compile(r"\{(question|response|critique)\}")


@cache
def load_prompt(name: str) -> str:
    if name not in PROMPT_NAMES:
        raise KeyError(f"unknown prompt {name!r}; known: {', '.join(PROMPT_NAMES)}")
    return resources.files("critkit").joinpath("prompt_texts", f"{name}.txt").read_text(encoding="utf-8")


def render(name: str, **values: str) -> str:
    template = load_prompt(name)

    def fill(m: re.Match) -> str:
        key = m.group(1)
        if values.get(key) is None:
            raise ValueError(f"prompt {name!r} needs '{key}'")
        return values[key]

    return _PLACEHOLDER.sub(fill, template)


def answer_prompt(question: str) -> list[dict[str, str]]:
    """What every model is evaluated with: the Qwen2.5-Math cot prompt, question only."""
    return [{"role": "system", "content": load_prompt("cot_system")}, {"role": "user", "content": question}]


def respond_prompt(question: str, prompt: str = "plain") -> list[dict[str, str]]:
    """The student's conversation for its first answer, in one of RESPOND_PROMPTS."""
    if prompt == "plain":
        return [{"role": "user", "content": question}]
    if prompt == "cot":
        return answer_prompt(question)
    if prompt == "base":
        return [{"role": "user", "content": render("base_answer", question=question)}]
    raise ValueError(f"unknown respond prompt {prompt!r}; use one of {', '.join(RESPOND_PROMPTS)}")
