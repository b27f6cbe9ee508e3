"""Which token ids end a generated answer, for every backend (transformers, vLLM, `critkit serve`).

Why not just the EOS fields: they do not agree with the chat template we generate through. Qwen2.5
base models name `<|endoftext|>` in config.json and generation_config.json (tokenizer configs
differ between releases), while the ChatML template that CFT trains and evaluates with, base models
included, closes every turn with `<|im_end|>`. Decoding that stops only on the EOS fields runs on
past the answer into an invented next turn, and "the last \\boxed{}" then grades the run-on. So an
answer ends at the union of:

- the token the chat template itself writes right after an assistant message (found by rendering
  one, below), whatever the EOS fields say;
- the EOS fields (tokenizer, generation config, model config);
- the end tokens the field's evaluation harnesses stop on, where this vocabulary has them as
  special tokens (`HARNESS_END_TOKENS`).
"""

from __future__ import annotations

__all__ = ["HARNESS_END_TOKENS", "configured_eos_ids", "end_of_turn_ids", "end_token_ids"]

# The Qwen2.5-Math evaluation harness stops on <|im_end|>, <|endoftext|> and </s>; Llama 3 closes a
# turn with <|eot_id|> (<|eom_id|> after a tool call) and a document with <|end_of_text|>; Gemma
# closes a turn with <end_of_turn>, Phi-3 with <|end|>. Only those that are special tokens of the
# vocabulary at hand count: a special token is atomic, so it can never be a piece of ordinary text.
HARNESS_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>",
                      "<end_of_turn>", "<|end|>")

# An assistant message the template renders as is (a plain word survives templates that trim it).
_PROBE = "critkitprobe"


def _special_tokens(tokenizer) -> dict[str, int]:
    """Text -> id of the tokenizer's added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {str(token): i for i, token in added.items() if getattr(token, "special", False)}


def end_of_turn_ids(tokenizer) -> frozenset[int]:
    """The special token the chat template writes right after an assistant message's text.

    Rendered, not guessed from the template's source: a template is a program (Llama 3.1's adds
    dates and tool blocks, Qwen3's moves reasoning around), and only its output says what closes a
    turn. Empty, never an error, for a tokenizer without a template, a template that refuses this
    conversation, or one that ends a turn without a special token.
    """
    if not getattr(tokenizer, "chat_template", None):
        return frozenset()
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # noqa: BLE001 - any template error (jinja, raise_exception) only means "unknown"
        return frozenset()
    if not isinstance(text, str) or _PROBE not in text:
        return frozenset()
    after = text[text.rindex(_PROBE) + len(_PROBE):].lstrip()
    # Longest first, so that a token is never mistaken for a shorter one it starts with.
    for content, token_id in sorted(_special_tokens(tokenizer).items(), key=lambda item: -len(item[0])):
        if content and after.startswith(content):
            return frozenset({token_id})
    return frozenset()


def _ids(field) -> set[int]:
    """An eos_token_id field as a set: configs write an int, a list of ints, or nothing."""
    if field is None:
        return set()
    if isinstance(field, int):
        return {field}
    return {i for i in field if isinstance(i, int)}


def end_token_ids(tokenizer, *eos_fields) -> frozenset[int]:
    """Every token id that ends an answer: end of turn, the EOS fields given, harness end tokens.

    `eos_fields` are eos_token_id values from a generation config or model config (an int, a list,
    or None); the tokenizer's own EOS is always included.
    """
    ids = set(end_of_turn_ids(tokenizer)) | _ids(getattr(tokenizer, "eos_token_id", None))
    for field in eos_fields:
        ids |= _ids(field)
    special = _special_tokens(tokenizer)
    ids |= {special[name] for name in HARNESS_END_TOKENS if name in special}
    return frozenset(ids)


def configured_eos_ids(path: str) -> list:
    """The eos_token_id fields of a model's generation_config.json and config.json (where present).

    For backends that do not load the model through transformers (vLLM); a file that is missing or
    unreadable just contributes nothing.
    """
    from transformers import AutoConfig, GenerationConfig

    fields = []
    try:
        fields.append(GenerationConfig.from_pretrained(path).eos_token_id)
    except (OSError, ValueError):
        pass
    try:
        fields.append(AutoConfig.from_pretrained(path).get_text_config().eos_token_id)
    except (OSError, ValueError, KeyError):
        pass
    return fields
