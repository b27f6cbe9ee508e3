"""The decoding engine's key/value cache under a memory bound, and its prefill attention without
SDPA's mask + enable_gqa combination (which leaves CUDA only the math kernel)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import critkit.engine.generation as generation
import critkit.engine.slot_cache as slot_cache
from critkit.engine.generation import decode
from critkit.engine.models import load_model, load_tokenizer

QUESTIONS = [f"Question {k}: what is {k} times {k + 3}?" + " Think." * (k % 4) for k in range(6)]


def _ids(tokenizer, questions=QUESTIONS):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in questions]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _per_token(model) -> int:
    text = model.config
    return 2 * text.num_hidden_layers * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 4


class _Peak:
    """Records the SlotCache of each decode and the most bytes it ever held (a probe on the real cache)."""

    def __init__(self, monkeypatch):
        self.caches, self.peak = [], 0
        probe = self

        class Probed(slot_cache.SlotCache):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                probe.caches.append(self)
                probe.peak = max(probe.peak, self.nbytes)

            def reserve(self, length):
                super().reserve(length)
                probe.peak = max(probe.peak, self.nbytes)

        monkeypatch.setattr(generation, "SlotCache", Probed)


def test_rows_and_capacity_stay_within_the_budget(tiny_model, monkeypatch):
    """A budget for 3 rows of the longest prompt + 90 new tokens: decode runs 3 rows (not the 32
    asked for), the cache never holds more than the budget, and the tokens equal an unbounded run.
    The random tiny model never ends a row early, so every row grows to its limit."""
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model)
    prompts = _ids(tokenizer)
    free = decode(model, tokenizer, prompts, max_new_tokens=90, rows=32, cache_bytes=1 << 40)
    longest = max(map(len, prompts)) + 90
    budget = (3 + 1) * longest * _per_token(model)  # 3 rows and the shared-prefix row
    peak = _Peak(monkeypatch)
    bounded = decode(model, tokenizer, prompts, max_new_tokens=90, rows=32, cache_bytes=budget)
    assert bounded == free
    (cache,) = peak.caches
    assert cache.rows == 3 and cache.capacity <= longest
    assert 0 < peak.peak <= budget
    # Control: the same decode without a bound took 32 rows and doubled its capacity past the longest row.
    peak = _Peak(monkeypatch)
    decode(model, tokenizer, prompts, max_new_tokens=90, rows=32, cache_bytes=1 << 40)
    assert peak.caches[0].rows == 32 and peak.peak > budget


def test_a_prompt_that_cannot_fit_fails_alone(tiny_model):
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model)
    prompts = _ids(tokenizer, ["Hi.", "Hello " * 60, "Yes?"])
    fits = (2 + 1) * (max(len(prompts[0]), len(prompts[2])) + 8) * _per_token(model)  # 2 samples + prefix row
    errors, done = {}, {}
    out = decode(model, tokenizer, prompts, max_new_tokens=8, samples=2, temperature=1.0, cache_bytes=fits,
                 on_error=lambda i, e: errors.update({i: e}), on_done=lambda i, o: done.update({i: o}))
    assert list(errors) == [1] and isinstance(errors[1], MemoryError) and "budget" in str(errors[1])
    assert sorted(done) == [0, 2] and all(len(o) == 2 and all(o) for o in (out[0], out[2]))
    with pytest.raises(MemoryError):  # without on_error the failure is raised
        decode(model, tokenizer, prompts, max_new_tokens=8, cache_bytes=fits)


def test_regrouped_prefill_matches_generate_without_mask_and_gqa_together(tiny_model, monkeypatch):
    """The CUDA prefill path (queries regrouped per kv head) run on CPU: the same greedy tokens as
    transformers' generate, and no SDPA call with both a mask and enable_gqa. The control, the CPU
    path, does make such calls (its flash kernel takes both), so the spy can see them."""
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(tiny_model).num_key_value_heads == 2  # 4 query heads: groups of 2
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model)
    prompts = _ids(tokenizer, QUESTIONS[:3])
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is not None and kwargs.get("enable_gqa", False))
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(slot_cache.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(slot_cache, "REGROUP_PREFILL", True, raising=False)
    regrouped = decode(model, tokenizer, prompts, max_new_tokens=12, rows=2)
    assert calls and not any(calls)
    with torch.inference_mode():
        for ids, ours in zip(prompts, regrouped):
            want = model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, attention_mask=torch.ones(1, len(ids)),
                                  pad_token_id=tokenizer.pad_token_id)[0, len(ids):].tolist()
            assert ours == [want]
    calls.clear()
    monkeypatch.setattr(slot_cache, "REGROUP_PREFILL", False)
    assert decode(model, tokenizer, prompts, max_new_tokens=12, rows=2) == regrouped
    assert any(calls)
