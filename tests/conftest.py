"""Shared fixtures: a tiny real Llama (random weights, the embedded model's tokenizer and chat
template) for fast training tests, and the embedded SmolLM2-135M for generation tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def varied_pairs(n: int = 16) -> list[dict]:
    """Training pairs of different lengths: each process of a multi-process run then holds a
    different number of supervised tokens, so a loss averaged per process instead of over the
    global token count would show."""
    return [{"id": str(i), "prompt": [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": f"What is {i} + 1?" + " Think." * (i % 5)}],
             "completion": f"{i} + 1 = {i + 1}." + " So" * (i % 3) + f"\n\\boxed{{{i + 1}}}"} for i in range(n)]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"public data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def embedded_model() -> str:
    """Path of the embedded model (converted from GGUF into the user cache on first use)."""
    from critkit.engine.models import resolve_model

    return resolve_model("embedded")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_model) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
