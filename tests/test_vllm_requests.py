"""What critkit asks vLLM for, shaped by the rules in vLLM's sources (vLLM is not installed here;
these are critkit's side of each rule: the parameters it builds and the checks it makes first).

- max_lora_rank is a Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] (vllm/config/lora.py);
- SamplingParams._verify_greedy_sampling: "n must be 1 when using greedy sampling";
- InputProcessor._validate_prompt_len refuses a decoder prompt of max_model_len tokens or more,
  and LLM.generate then aborts the requests it had added and raises for the whole batch.
"""

from __future__ import annotations

import pytest

from critkit.engine import backends
from critkit.engine.backends import BackendError, Sampling


@pytest.mark.parametrize("r, rank", [(1, 1), (4, 8), (8, 8), (16, 16), (24, 32), (48, 64), (300, 320), (512, 512)])
def test_lora_rank_is_the_smallest_vllm_accepts(r, rank):
    assert backends.vllm_lora_rank(r) == rank
    assert rank in (1, 8, 16, 32, 64, 128, 256, 320, 512)


def test_lora_rank_over_vllms_largest_is_refused_with_the_way_out():
    with pytest.raises(BackendError, match="512.*merge"):
        backends.vllm_lora_rank(640)


def test_greedy_asks_for_one_completion_and_repeats_it():
    greedy = backends.vllm_sampling(Sampling(n=4, temperature=0.0, max_new_tokens=9))
    assert greedy["n"] == 1 and greedy["temperature"] == 0.0
    sampled = backends.vllm_sampling(Sampling(n=4, temperature=0.7))
    assert sampled["n"] == 4
    reply = backends.vllm_reply(12, [(" 42 ", 3, "stop")], n=4)
    assert reply.texts == ["42"] * 4 and reply.finish_reasons == ["stop"] * 4
    assert reply.usage == {"prompt_tokens": 12, "completion_tokens": 3}  # what vLLM generated
    several = backends.vllm_reply(5, [("a", 1, "stop"), ("b", 2, "length")], n=2)
    assert several.texts == ["a", "b"] and several.usage["completion_tokens"] == 3


def test_prompts_vllm_would_refuse_fail_alone_with_the_reason():
    errors = backends.vllm_prompt_errors([10, 4096, 4095, 5000, 1], max_model_len=4096)
    assert sorted(errors) == [1, 3]  # vLLM takes 4,095 tokens (one left to generate), not 4,096
    assert "4,096 tokens" in errors[1] and "max_model_len of 4,096" in errors[1]
    assert backends.vllm_prompt_errors([1, 2], max_model_len=4096) == {}
