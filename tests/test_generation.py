"""critkit's decoding loop against transformers' generate on the embedded model."""

from __future__ import annotations

import torch

from critkit.generation import decode
from critkit.models import load_model, load_tokenizer

PROMPTS = ["Say hi.", "What is 2 + 2? Put the answer in \\boxed{}.", "Name three colours.", "Reply with one word: yes or no?"]


def _batch(tokenizer):
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in PROMPTS]
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_greedy_decode_matches_generate_and_drops_finished_rows(embedded_model):
    tokenizer, model = load_tokenizer("embedded"), load_model("embedded")
    enc = _batch(tokenizer)
    ours = decode(model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens=20)
    with torch.inference_mode():
        ref = model.generate(**enc, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    special = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    for row, ids in enumerate(ref[:, enc["input_ids"].shape[1]:].tolist()):
        expected = []
        for t in ids:
            if t in special:
                break
            expected.append(t)
        assert ours[row] == expected, (PROMPTS[row], tokenizer.decode(ours[row]), tokenizer.decode(expected))
    assert min(len(o) for o in ours) < 20  # some row ended early and left the batch


def test_stop_at_answer_ends_right_after_the_box(embedded_model):
    tokenizer, model = load_tokenizer("embedded"), load_model("embedded")
    enc = _batch(tokenizer)
    full = decode(model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens=40)
    cut = decode(model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens=40, stop_at_answer=True)
    for f, c in zip(full, cut):
        assert f[: len(c)] == c  # a prefix of the unstopped output
        text = tokenizer.decode(c, skip_special_tokens=True)
        if "\\boxed{" in tokenizer.decode(f, skip_special_tokens=True) and "}" in text.split("\\boxed", 1)[-1]:
            assert text.rstrip().endswith("}")


def test_sampling_is_seeded(embedded_model):
    tokenizer, model = load_tokenizer("embedded"), load_model("embedded")
    enc = _batch(tokenizer)
    a = decode(model, tokenizer, enc["input_ids"], enc["attention_mask"], 12, temperature=1.0, top_p=0.9, seed=5)
    b = decode(model, tokenizer, enc["input_ids"], enc["attention_mask"], 12, temperature=1.0, top_p=0.9, seed=5)
    c = decode(model, tokenizer, enc["input_ids"], enc["attention_mask"], 12, temperature=1.0, top_p=0.9, seed=6)
    assert a == b and a != c
