"""What `max_length` cuts from training pairs, counted the way TRL 1.16's SFTTrainer cuts them.

TRL renders prompt + completion with the student's chat template, tokenizes it, keeps the first
max_length tokens (truncation_mode "keep_start", the default; "keep_end" keeps the last ones) and
drops the pairs left with no completion token (sft_trainer.py, "Truncate to max_length"). A pair
that keeps part of its completion but not its last line still trains, on a text that stops early:
a CFT critique cut before "Conclusion: wrong [END]" teaches critiques that never reach a verdict,
a CGD refinement cut before its \\boxed{} line teaches answers without one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PairLength", "Truncation", "measure", "measure_all", "count_truncation", "truncation_notes"]


@dataclass(frozen=True)
class PairLength:
    prompt: int  # tokens before the completion (where TRL's completion mask starts)
    total: int  # prompt, completion and the template's end-of-turn tokens
    last_line_end: int  # tokens up to the end of the completion's last non-empty line

    def kept(self, max_length: int | None, mode: str = "keep_start") -> tuple[int, int]:
        """(tokens kept, completion tokens kept) after TRL's truncation."""
        n = self.total if max_length is None else min(self.total, max_length)
        if mode == "keep_end":  # the start is cut: the prompt goes first
            return n, min(n, self.total - self.prompt)
        return n, max(0, n - self.prompt)

    def loses_last_line(self, max_length: int | None, mode: str = "keep_start") -> bool:
        """Trained (some completion token kept) without the whole of its last line."""
        return (max_length is not None and mode == "keep_start"
                and self.prompt < max_length < self.last_line_end)


def measure(tokenizer, prompt: list[dict], completion: str) -> PairLength:
    """Token counts of one pair as TRL tokenizes it; see `measure_all`."""
    return measure_all(tokenizer, [(prompt, completion)])[0]


def measure_all(tokenizer, pairs: list[tuple[list[dict], str]], chunk: int = 256) -> list[PairLength]:
    """Token counts of (prompt, completion) pairs as TRL tokenizes them: the prompt rendered with the
    generation prompt, prompt + assistant completion rendered, each tokenized without added special
    tokens (what apply_chat_template(tokenize=True) does), and the completion starting where the
    two diverge (trl.data_utils.common_prefix_length). Texts are tokenized in batches.

    The last line's end is found in the rendered text and mapped to tokens with the fast
    tokenizer's offsets.
    """
    from trl.data_utils import common_prefix_length

    lengths = []
    for at in range(0, len(pairs), chunk):
        part = pairs[at:at + chunk]
        prompts = [tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) for prompt, _ in part]
        texts = [tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)
                 for prompt, completion in part]
        prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
        for i, (_, completion) in enumerate(part):
            ids = encoded["input_ids"][i]
            prompt_len = common_prefix_length(prompt_ids[i], ids)  # as TRL: where the two renderings diverge
            last_line = completion.rstrip().rsplit("\n", 1)[-1].strip()
            end = texts[i].rfind(last_line) + len(last_line) if last_line and last_line in texts[i] else -1
            if end < 0 or not tokenizer.is_fast:
                # The template changed the text, or no offsets: count the whole completion as its last line.
                lengths.append(PairLength(prompt_len, len(ids), len(ids)))
                continue
            last_line_end = next((k for k, (start, _) in enumerate(encoded["offset_mapping"][i]) if start >= end), len(ids))
            lengths.append(PairLength(prompt_len, len(ids), max(last_line_end, prompt_len + 1)))
    return lengths


@dataclass
class Truncation:
    max_length: int | None
    pairs: int = 0
    truncated: int = 0  # lose at least one token
    cut_last_line: int = 0  # trained without the whole of their completion's last line
    dropped: int = 0  # the prompt alone fills max_length: TRL drops them
    examples: list[str] = field(default_factory=list)  # the first few pairs that lose their last line

    def line(self, model: str = "") -> str:
        if self.max_length is None:
            return f"no max_length: none of {self.pairs:,} pairs is truncated"
        by = f" ({model}'s tokens)" if model else ""
        if not self.truncated:
            return f"max_length {self.max_length}{by} cuts none of {self.pairs:,} pairs"
        text = (f"max_length {self.max_length}{by}: {self.truncated:,} of {self.pairs:,} pairs truncated; "
                f"{self.cut_last_line:,} lose their completion's last line (trained without their conclusion)")
        if self.examples:
            text += f", e.g. {', '.join(self.examples)}"
        return text + (f"; {self.dropped:,} dropped: the prompt alone fills max_length" if self.dropped else "")

    def to_json(self) -> dict:
        return {"max_length": self.max_length, "pairs": self.pairs, "truncated": self.truncated,
                "cut_last_line": self.cut_last_line, "dropped": self.dropped, "examples": self.examples}


def count_truncation(rows, tokenizer, max_length: int | None, mode: str = "keep_start", shown: int = 3) -> Truncation:
    """Count, over pair rows {"prompt": [messages], "completion": text}, what max_length cuts.

    Rows without a message list or a completion are skipped here; read_pairs reports them.
    """
    result = Truncation(max_length)
    usable = [(number, row) for number, row in enumerate(rows, start=1)
              if isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), str)]
    lengths = measure_all(tokenizer, [(row["prompt"], row["completion"]) for _, row in usable])
    for (number, row), length in zip(usable, lengths):
        result.pairs += 1
        kept, completion_kept = length.kept(max_length, mode)
        result.truncated += kept < length.total
        if completion_kept == 0:
            result.dropped += 1
        elif length.loses_last_line(max_length, mode):
            result.cut_last_line += 1
            if len(result.examples) < shown:
                result.examples.append(str(row.get("id", f"row {number}")))
    return result


def truncation_notes(name: str, stage_rows: list[list[dict]], cfg) -> tuple[list[dict], list[str]]:
    """For `critkit run`'s build step: per stage with pairs, the count (for build.json) and a line
    (for the log and the report's notes), in the tokens of the model the set trains (a TrainConfig)
    at its sft.max_length and truncation_mode (TRL's defaults when the config leaves them out)."""
    from ..engine.models import load_tokenizer
    from .train_config import sft_value

    tokenizer = load_tokenizer(cfg.model)
    max_length, mode = sft_value(cfg.sft, "max_length"), sft_value(cfg.sft, "truncation_mode")
    counts, lines = [], []
    for stage, rows in enumerate(stage_rows, start=1):
        if rows:
            count = count_truncation(rows, tokenizer, max_length, mode)
            counts.append(count.to_json())
            lines.append(f"{name}" + (f" stage {stage}" if len(stage_rows) > 1 else "") + f": {count.line(cfg.model)}")
    return counts, lines
