"""critkit's continuous-batching decoder against transformers' generate, on real models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from critkit.engine.generation import _shared_prefix, decode
from critkit.engine.models import load_model, load_tokenizer
from critkit.engine.slot_cache import SlotCache

PROMPTS = ["Say hi.", "What is 2 + 2? Put the answer in \\boxed{}.", "Name three colours.", "Reply with one word: yes or no?"]


def _texts(tokenizer, prompts=PROMPTS):
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts]


def _ids(tokenizer, prompts=PROMPTS):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in _texts(tokenizer, prompts)]


def _reference(model, tokenizer, max_new_tokens, prompts=PROMPTS):
    """transformers' greedy generate on a left-padded batch, cut at the first end/pad token."""
    enc = tokenizer(_texts(tokenizer, prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    expected = []
    for ids in ref[:, enc["input_ids"].shape[1]:].tolist():
        cut = next((k for k, t in enumerate(ids) if t in special), len(ids))
        expected.append(ids[:cut])
    return expected


@pytest.fixture(scope="module")
def embedded(embedded_model):
    """The embedded model loaded once for the module, as production decodes with it: through
    TransformersBackend, whose linear layers are pre-packed for oneDNN on CPU; and the reference
    tokens from `model.generate` on a separate, untouched copy (decode switches a model's attention
    to critkit's and the packed linears round differently from plain ones). One torch thread, as in
    the other generation tests: on a shared 2-core CPU more threads spin against other processes."""
    from critkit.engine.backends import TransformersBackend
    from critkit.engine.generation import _packed_linear

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    backend = TransformersBackend("embedded", batch_size=8, progress=False)
    packed = sum(getattr(m.forward, "func", None) is _packed_linear for m in backend.model.modules())
    plain = load_model("embedded")
    reference = _reference(plain, backend.tokenizer, 20)
    del plain
    yield backend.model, load_tokenizer("embedded"), reference, packed
    torch.set_num_threads(threads)


@pytest.mark.parametrize("rows", [4, 2, 1])
def test_greedy_decode_matches_generate_with_any_number_of_rows(embedded, rows):
    """With fewer rows than prompts, rows are refilled as others end: the tokens must not change.
    The model decodes with pre-packed linear layers, as TransformersBackend runs it."""
    model, tokenizer, expected, packed = embedded
    if torch.backends.mkldnn.is_available():  # every linear layer packed: the production path is the one tested
        assert packed == sum(isinstance(m, torch.nn.Linear) for m in model.modules()) > 200
    done = []
    ours = decode(model, tokenizer, _ids(tokenizer), max_new_tokens=20, rows=rows, on_done=lambda i, o: done.append(i))
    for row, want in enumerate(expected):
        assert ours[row] == [want], (PROMPTS[row], tokenizer.decode(ours[row][0]), tokenizer.decode(want))
    assert min(len(e) for e in expected) < 20  # some prompt ended early and left its row
    assert sorted(done) == [0, 1, 2, 3]  # each reported once
    if rows == 1:
        assert done == [0, 1, 2, 3]  # one row: prompts run one after another
    else:
        assert done != [0, 1, 2, 3]  # reported as each one ends, not in prompt order


def test_many_prompts_through_few_rows_on_a_tiny_model(tiny_model):
    """A random tiny Llama (2 kv heads for 4 query heads) never emits end-of-turn: every row runs
    to the limit, rows are reused, the cache grows past its first capacity, and each prompt's
    tokens equal generate's for that prompt alone."""
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model)
    questions = [f"Question {k}: what is {k} times {k + 3}?" + " Think." * (k % 5) for k in range(7)]
    ours = decode(model, tokenizer, _ids(tokenizer, questions), max_new_tokens=90, rows=3, prefill_tokens=40)
    for k, q in enumerate(questions):
        assert ours[k] == [_reference(model, tokenizer, 90, [q])[0]], q


def test_samples_share_the_prompt_and_differ(embedded):
    model, tokenizer, expected, _ = embedded
    ids = _ids(tokenizer)
    out = decode(model, tokenizer, ids, 12, rows=8, samples=3, temperature=1.0, seed=1)
    assert [len(o) for o in out] == [3, 3, 3, 3]
    assert any(len({tuple(s) for s in o}) > 1 for o in out)
    # Sampling is not greedy: some samples leave the greedy path (the first 12 greedy tokens).
    assert any(s != want[:12] for o, want in zip(out, expected) for s in o)
    greedy = decode(model, tokenizer, ids, 12, rows=8, samples=2)
    assert all(o[0] == o[1] for o in greedy)  # greedy samples of one prompt are identical
    assert [o[0] for o in greedy] == [want[:12] for want in expected]


def test_stop_at_answer_ends_right_after_the_box(embedded):
    model, tokenizer, _, _ = embedded
    ids = _ids(tokenizer, PROMPTS + ["Write the LaTeX \\boxed{4} and then explain what it means."])
    full = decode(model, tokenizer, ids, max_new_tokens=40)
    cut = decode(model, tokenizer, ids, max_new_tokens=40, stop_at_answer=True)
    boxed = 0
    for (f,), (c,) in zip(full, cut):
        assert f[: len(c)] == c  # a prefix of the unstopped output
        text = tokenizer.decode(c, skip_special_tokens=True)
        if "\\boxed{" in tokenizer.decode(f, skip_special_tokens=True) and "}" in text.split("\\boxed", 1)[-1]:
            boxed += 1
            assert text.rstrip().endswith("}")
    assert boxed  # the last prompt writes a box early and goes on: it is cut
    assert cut != full  # the control: stopping changed something


def test_sampling_is_seeded(embedded):
    model, tokenizer, expected, _ = embedded
    ids = _ids(tokenizer)
    a = decode(model, tokenizer, ids, 12, temperature=1.0, top_p=0.9, seed=5)
    b = decode(model, tokenizer, ids, 12, temperature=1.0, top_p=0.9, seed=5)
    c = decode(model, tokenizer, ids, 12, temperature=1.0, top_p=0.9, seed=6)
    assert a == b and a != c
    assert a != [[want[:12]] for want in expected]  # temperature is not ignored: not the greedy tokens


def test_a_prompt_that_fails_alone_is_reported_and_the_others_go_on(tiny_model):
    tokenizer, model = load_tokenizer(tiny_model), load_model(tiny_model)
    ids = _ids(tokenizer, ["one", "two", "three"])
    ids[1] = ids[1] + [model.config.vocab_size + 5]  # a token id the model has no embedding for
    errors, done = {}, {}
    out = decode(model, tokenizer, ids, 6, rows=3, on_done=done.__setitem__, on_error=errors.__setitem__)
    assert list(errors) == [1] and "index" in str(errors[1]).lower()
    assert sorted(done) == [0, 2] and all(len(out[i][0]) == 6 for i in (0, 2)) and out[1] == [[]]
    alone = decode(model, tokenizer, [ids[0], ids[2]], 6)
    assert [out[0], out[2]] == alone
    with pytest.raises(IndexError):
        decode(model, tokenizer, ids, 6)  # without on_error the failure is raised


def test_shared_prefix_leaves_each_prompt_a_token():
    assert _shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert _shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts keep their last token
    assert _shared_prefix([[1, 2, 3]]) == 0


@pytest.mark.parametrize("group", [32, 1])
def test_slot_cache_rows_growth_and_attention(tiny_model, monkeypatch, group):
    """Decoding attention over the cache equals SDPA over each row's own keys, after the capacity
    has doubled and a finished row was replaced by the last one; rows attended in one group or
    each in its own."""
    from transformers import AutoConfig

    monkeypatch.setattr("critkit.engine.slot_cache.ATTENTION_GROUP", group)
    config = AutoConfig.from_pretrained(tiny_model)  # 4 query heads over 2 kv heads, head_dim 8
    cache = SlotCache(config, rows=3, capacity=4, dtype=torch.float32, device="cpu")
    torch.manual_seed(0)
    lengths = [3, 6, 5]
    history = {}
    for n in lengths:
        row = cache.add_row()
        k, v = torch.randn(1, 2, n, 8), torch.randn(1, 2, n, 8)
        q = torch.randn(1, 4, n, 8)
        cache.prefill([(row, 0, n)])
        cache.attend(0, q, k, v, 0.5)
        history[row] = (k[0], v[0])
    assert cache.capacity == 8  # doubled from 4 to hold 6
    moved = cache.remove_row(0)
    assert moved == 2 and cache.live == 2
    history[0] = history.pop(2)
    q, k, v = torch.randn(2, 4, 1, 8), torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    cache.step()
    out = cache.attend(0, q, k, v, 0.5)
    cache.advance()
    for row in range(2):
        keys = torch.cat([history[row][0], k[row]], dim=1)
        values = torch.cat([history[row][1], v[row]], dim=1)
        want = F.scaled_dot_product_attention(q[row : row + 1], keys[None], values[None], scale=0.5, enable_gqa=True)
        torch.testing.assert_close(out[row : row + 1], want.transpose(1, 2), atol=1e-5, rtol=1e-5)
    assert cache.lengths[:2].tolist() == [6, 7]


def test_sliding_window_layers_match_generate(embedded_model, tmp_path):
    """A tiny random Mistral whose 6-token window is much shorter than its prompts: each query
    may only see the last 6 positions, in prefill and in decoding, as transformers masks it."""
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    config = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, sliding_window=6, max_position_embeddings=256,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                           pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    questions = ["What is seven times eight, in words?", "Hi.", "Count from one to five, slowly, please."]
    ours = decode(model, tokenizer, _ids(tokenizer, questions), max_new_tokens=16, rows=2)
    for k, q in enumerate(questions):
        assert ours[k] == [_reference(load_model(str(tmp_path)), tokenizer, 16, [q])[0]], q
    # Without the window the tokens differ: the test can fail.
    model.config.sliding_window = None
    assert decode(model, tokenizer, _ids(tokenizer, questions), max_new_tokens=16, rows=2) != ours


def test_attention_the_cache_cannot_do_is_refused_by_name(embedded_model, tmp_path):
    """Gemma-2 soft-caps attention logits; rather than decode it wrongly, decoding says so."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(embedded_model)
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, attn_logit_softcapping=50.0,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    with pytest.raises(NotImplementedError, match="softcap.*vllm"):
        decode(model, tokenizer, _ids(tokenizer, ["Hi."]), max_new_tokens=4)
