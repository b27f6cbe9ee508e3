"""Padding-free training attention (training/attention.py) for models whose attention is not plain
causal: sliding windows (Mistral), logit soft-capping (Gemma-2) and attention sinks (gpt-oss).

Each tiny random model runs three sequences packed in one row (TRL's padding-free layout) with
critkit's attention, and each sequence alone with transformers' own eager attention (the path
transformers itself takes for these models); the hidden states must agree. Each test's control
removes the feature from critkit's side only and shows the difference is far beyond the tolerance.
"""

from __future__ import annotations

import pytest
import torch

from critkit.training.attention import VARLEN, register

LENGTHS = (11, 17, 7)  # each longer than the 4-token windows below


def _packed(lengths=LENGTHS, vocab: int = 128):
    """A padding-free row as TRL's collator builds it, and its sequences."""
    torch.manual_seed(1)
    sequences = [torch.randint(3, vocab, (n,)) for n in lengths]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    row = {"input_ids": torch.cat(sequences)[None], "position_ids": torch.cat([torch.arange(n) for n in lengths])[None],
           "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}
    return row, sequences


def _model(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


def _packed_vs_alone(model, strip=None) -> float:
    """Largest difference between the packed row under critkit's attention and each sequence alone
    under transformers' eager attention; `strip(model)`, for the controls, runs in between."""
    row, sequences = _packed()
    with torch.no_grad():
        model.set_attn_implementation("eager")
        alone = torch.cat([model.model(input_ids=s[None]).last_hidden_state[0] for s in sequences])
        if strip:
            strip(model)
        model.set_attn_implementation(register())
        together = model.model(**row, use_cache=False).last_hidden_state[0]
    return float((together - alone).abs().max())


def test_sliding_window_is_applied_per_sequence():
    from transformers import MistralConfig

    config = MistralConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=4, initializer_range=0.2)
    assert _packed_vs_alone(_model(config)) < 1e-5
    assert _packed_vs_alone(_model(config), strip=lambda m: setattr(m.config, "sliding_window", None)) > 1e-2


def test_gemma2_soft_capping_and_local_layers():
    from transformers import Gemma2Config

    config = Gemma2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, sliding_window=4, attn_logit_softcapping=0.5,
                          query_pre_attn_scalar=8, initializer_range=0.5)
    model = _model(config)
    assert model.model.layers[0].self_attn.sliding_window == 4  # a local layer, then a global one
    assert _packed_vs_alone(model) < 1e-5

    def no_softcap(m):
        for layer in m.model.layers:
            layer.self_attn.attn_logit_softcapping = None

    def no_window(m):
        for layer in m.model.layers:
            layer.self_attn.sliding_window = None

    assert _packed_vs_alone(_model(config), strip=no_softcap) > 1e-2
    assert _packed_vs_alone(_model(config), strip=no_window) > 1e-2


def test_gpt_oss_attention_sinks():
    from transformers import GptOssConfig

    config = GptOssConfig(vocab_size=128, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, num_local_experts=2, num_experts_per_tok=1, sliding_window=4,
                          initializer_range=0.2)
    assert _packed_vs_alone(_model(config)) < 1e-5

    def no_sinks(m):  # a sink of weight exp(-1e9) is no sink
        for layer in m.model.layers:
            layer.self_attn.sinks.fill_(-1e9)

    assert _packed_vs_alone(_model(config), strip=no_sinks) > 1e-2


def test_no_dense_mask_and_one_index_per_forward(tiny_model, monkeypatch):
    """transformers builds a T x T bool mask for a packed row (256 MiB at 16,384 tokens) before the
    layers run; critkit's path gets none, and builds its scatter index once per forward, not per
    layer. The control, transformers' SDPA mask function, does build the dense mask."""
    import critkit.training.attention as attention
    from transformers import AutoModelForCausalLM, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=register()).eval()
    critkit_attention, critkit_mask = ALL_ATTENTION_FUNCTIONS[VARLEN], ALL_MASK_ATTENTION_FUNCTIONS[VARLEN]
    masks, built = [], []

    def spy(module, query, key, value, attention_mask, **kwargs):
        masks.append(attention_mask)
        return critkit_attention(module, query, key, value, attention_mask, **kwargs)

    real_repeat = torch.repeat_interleave
    monkeypatch.setattr(attention.torch, "repeat_interleave", lambda *a, **k: built.append(1) or real_repeat(*a, **k))
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, spy)
    try:
        row, _ = _packed(vocab=1000)
        total = row["input_ids"].shape[1]
        with torch.no_grad():
            model.model(**row, use_cache=False)  # as in training: with a cache transformers skips packed-row masks
        assert masks == [None, None] and len(built) == 1  # 2 layers, no mask, one index
        masks.clear()
        AttentionMaskInterface.register(VARLEN, sdpa_mask)  # control
        with torch.no_grad():
            model.model(**row, use_cache=False)
        assert masks[0] is not None and tuple(masks[0].shape) == (1, 1, total, total)
    finally:
        AttentionInterface.register(VARLEN, critkit_attention)
        AttentionMaskInterface.register(VARLEN, critkit_mask)


def test_flash_attention_is_chosen_on_cuda_unless_the_model_has_sinks(tiny_model, monkeypatch):
    """Without a GPU or without flash-attn: critkit's path; with both: flash-attention's varlen
    kernel, except for models with attention sinks, which transformers' FA2 path would drop."""
    import transformers.utils
    from transformers import AutoModelForCausalLM, GptOssConfig

    from critkit.training.attention import training_attention

    llama = AutoModelForCausalLM.from_pretrained(tiny_model)
    oss = _model(GptOssConfig(vocab_size=128, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=2,
                              num_experts_per_tok=1))
    assert training_attention(llama, "sdpa") == "sdpa"  # the config's choice wins
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_attention(llama) == VARLEN
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert training_attention(llama) == "flash_attention_2"
    assert training_attention(oss) == VARLEN
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert training_attention(llama) == VARLEN


@pytest.mark.parametrize("batch", [1, 3])
def test_unpacked_batches_are_plain_causal(tiny_model, batch):
    """Rows that are each one sequence (no boundaries, no padding mask) attend causally, as SDPA."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    ids = torch.randint(3, 1000, (batch, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model.model(input_ids=ids).last_hidden_state
        model.set_attn_implementation(register())
        got = model.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
