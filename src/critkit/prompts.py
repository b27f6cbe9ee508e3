"""The papers' prompts, kept as packaged text files (src/critkit/prompt_texts/*.txt).

Templates use `{question}`, `{response}` and `{critique}` placeholders, filled in one pass so a
question that itself contains "{response}" or LaTeX braces is never substituted twice.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["load_prompt", "render", "answer_prompt", "PROMPT_NAMES"]

PROMPT_NAMES = (
    "cot_system",  # Qwen2.5-Math cot answer prompt (evaluation and student answers)
    "base_answer",  # plain prompt for base models without a chat template
    "cft_critique_system", "cft_critique_user",  # CFT teacher (released generator)
    "cft_train_instruction", "cft_train_input",  # CFT training input (WebInstruct-CFT layout)
    "cgd_critique_system", "cgd_critique_user",  # CGD teacher critique
    "cgd_refine_system", "cgd_refine_user",  # CGD teacher refinement = CGD training input
    "cgd_no_critique_user",  # CGD ablation without the critique (Fig. 4)
    "self_critique_single_user",  # CFT A.4 single-pass self-critique: solve, critique, correct
    "self_critique_check_user",  # CFT A.4 two-stage self-critique: the critique step
)

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
