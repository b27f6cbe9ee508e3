"""Generation stops at the chat template's end of turn, for base models too (issue 11, item 1).

A Qwen2.5 base model names <|endoftext|> as its EOS (config.json, generation_config.json) while the
ChatML template CFT trains and evaluates with closes each turn with <|im_end|>. Here a real tiny
Qwen2 model, with a Qwen2.5-style tokenizer built offline, is trained for a few seconds to answer
"... \\boxed{5}<|im_end|>" and then run on into an invented next turn ending in \\boxed{7}. Every
backend must return the answer without the run-on; decoding that stops only on the EOS fields
(what critkit did before) reads 7 instead of 5, which is the negative control.
"""

from __future__ import annotations

import copy
import json
import urllib.request

import pytest
import torch

from critkit.engine.backends import (
    OpenAIBackend,
    Sampling,
    TransformersBackend,
    chat_ids,
    vllm_sampling,
)
from critkit.engine.end_tokens import configured_eos_ids, end_of_turn_ids, end_token_ids
from critkit.engine.generation import decode
from critkit.engine.models import load_tokenizer
from critkit.engine.serve import serve
from critkit.grading.answers import extract_answer

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
QUESTION = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2 + 3?"}]
ANSWER = "2 + 3 = 5, so the answer is \\boxed{5}."
# What a base model that was never stopped at <|im_end|> writes next: a new turn, then the EOS.
RUN_ON = "<|im_end|>\n<|im_start|>user\nAnd 3 + 4?<|im_end|>\n<|im_start|>assistant\n3 + 4 = 7, so \\boxed{7}.<|endoftext|>"
GREEDY = Sampling(temperature=0.0, max_new_tokens=60)


@pytest.fixture(scope="module")
def smol_tokenizer(embedded_model):
    """The embedded SmolLM2 tokenizer, loaded once; tests change deep copies of it."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model)


def qwen25_tokenizer(base):
    """The embedded SmolLM2 tokenizer made to look like a Qwen2.5 base model's, offline.

    SmolLM2 already has <|im_start|>, <|im_end|> and <|endoftext|> as special tokens; it gets
    Qwen2.5's public chat template (as TRL ships it; Qwen2.5-Math's differs only in its default
    system prompt, and a system prompt is always given here) and EOS <|endoftext|>, as
    Qwen2.5-Math-7B's config.json says.
    """
    from trl.chat_template_utils import qwen2_5_chat_template

    tokenizer = copy.deepcopy(base)
    tokenizer.chat_template = qwen2_5_chat_template
    tokenizer.eos_token = tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def train_run_on_model(tokenizer, path) -> None:
    """A 2-layer Qwen2 that greedily writes ANSWER + RUN_ON after the question, saved at `path`.

    Its config and generation config name only <|endoftext|> (Qwen2.5-Math-7B: bos = eos =
    151643). Trained until every target token is the argmax by a margin, so greedy decoding in
    any engine follows it; a larger initializer_range than the default 0.02 gets there in ~20
    steps instead of ~150.
    """
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    prompt = chat_ids(tokenizer, QUESTION)
    target = tokenizer(ANSWER + RUN_ON, add_special_tokens=False)["input_ids"]
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.1, bos_token_id=eos, eos_token_id=eos)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    ids, labels = torch.tensor([prompt + target]), torch.tensor(target)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        # Only the target's logits (the last len(target) + 1 positions, the very last one unused).
        logits = model(input_ids=ids, logits_to_keep=len(target) + 1).logits[0, :-1]
        top2 = logits.topk(2, dim=-1).values
        if bool((logits.argmax(-1) == labels).all() and (top2[:, 0] - top2[:, 1]).min() > 2.0):
            break
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    else:
        raise AssertionError("the tiny model did not learn its text in 200 steps")
    model.generation_config = GenerationConfig(bos_token_id=eos, eos_token_id=eos)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)


@pytest.fixture(scope="module")
def qwen_base(smol_tokenizer, tmp_path_factory) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared CPU: extra threads only spin
    path = tmp_path_factory.mktemp("qwen25-base-like")
    train_run_on_model(qwen25_tokenizer(smol_tokenizer), path)
    yield str(path)
    torch.set_num_threads(threads)


def _text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


# ------------------------------------------------------------------------------ the id finder


def _with_template(base, template: str | None, eos: str | None, specials=()):
    tokenizer = copy.deepcopy(base)
    if specials:
        tokenizer.add_special_tokens({"additional_special_tokens": list(specials)})
    tokenizer.chat_template = template
    if eos:
        tokenizer.eos_token = eos
    return tokenizer


LLAMA3 = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")


@pytest.mark.parametrize("name, eos, specials, closes", [
    ("qwen2_5", "<|endoftext|>", (), "<|im_end|>"),
    ("qwen3", "<|endoftext|>", (), "<|im_end|>"),
    ("llama3", "<|end_of_text|>", LLAMA3, "<|eot_id|>"),
    ("llama3_1", "<|end_of_text|>", LLAMA3, "<|eot_id|>"),  # dates and tool blocks around the turn
    ("gemma", "<eos>", ("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    ("phi3", "<|endoftext|>", ("<|user|>", "<|assistant|>", "<|end|>"), "<|end|>"),
])
def test_the_turn_closing_token_is_read_from_the_template_whatever_eos_says(smol_tokenizer, name, eos, specials, closes):
    import trl.chat_template_utils as templates

    tokenizer = _with_template(smol_tokenizer, getattr(templates, f"{name}_chat_template"), eos, specials)
    closing = tokenizer.convert_tokens_to_ids(closes)
    assert end_of_turn_ids(tokenizer) == {closing}
    ends = end_token_ids(tokenizer)
    assert {closing, tokenizer.eos_token_id} <= ends
    assert tokenizer.eos_token_id != closing  # the case the issue is about: EOS alone misses the turn's end
    # Tokens that open a turn or a header never end one.
    opening = {"<|im_start|>", "<|start_header_id|>", "<|end_header_id|>", "<start_of_turn>", "<|assistant|>"}
    assert not ends & {tokenizer.convert_tokens_to_ids(t) for t in opening if t in tokenizer.get_vocab()}
    if name.startswith("llama3"):
        ids = {tokenizer.convert_tokens_to_ids(t) for t in ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")}
        assert ids <= ends


def test_harness_end_tokens_count_only_where_they_are_special_tokens(smol_tokenizer):
    tokenizer = _with_template(smol_tokenizer, None, None)
    vocab = tokenizer.get_vocab()
    assert "</s>" not in vocab and "<|eot_id|>" not in vocab
    # SmolLM2 has <|im_end|> (its EOS) and <|endoftext|>; nothing is invented for the others.
    assert end_token_ids(tokenizer) == {vocab["<|im_end|>"], vocab["<|endoftext|>"]}
    assert end_token_ids(tokenizer, 7, [8, None], None) == {vocab["<|im_end|>"], vocab["<|endoftext|>"], 7, 8}


@pytest.mark.parametrize("template", [
    None,  # a base model's tokenizer without any template
    "{{ raise_exception('roles must alternate') }}",
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}",  # ends turns with plain text
    "{% for m in messages if m['role'] == 'user' %}{{ m['content'] }}<|im_end|>{% endfor %}",  # never renders the answer
    "{{ messages[0]['content'] + ",  # not even valid Jinja
])
def test_a_template_that_names_no_end_token_never_crashes(smol_tokenizer, template):
    tokenizer = _with_template(smol_tokenizer, template, "<|endoftext|>")
    assert end_of_turn_ids(tokenizer) == frozenset()
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") in end_token_ids(tokenizer)


# ------------------------------------------------------------------------------ the backends


def test_decode_stops_at_the_turns_end_and_eos_alone_runs_on(qwen_base):
    from critkit.engine.models import load_model

    tokenizer, model = load_tokenizer(qwen_base), load_model(qwen_base)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.eos_token_id == model.generation_config.eos_token_id == model.config.eos_token_id == eos
    prompt = chat_ids(tokenizer, QUESTION)

    (stopped,), = decode(model, tokenizer, [prompt], max_new_tokens=60)
    assert _text(tokenizer, stopped) == ANSWER and extract_answer(_text(tokenizer, stopped)) == "5"

    # Negative control: the EOS fields alone, as critkit stopped before, let the model run on.
    (ran_on,), = decode(model, tokenizer, [prompt], max_new_tokens=60, end_ids={eos})
    assert ran_on[: len(stopped)] == stopped and len(ran_on) > len(stopped) + 10
    assert "\\boxed{7}" in _text(tokenizer, ran_on) and extract_answer(_text(tokenizer, ran_on)) == "7"


def test_transformers_backend_and_critkit_serve_stop_at_the_turns_end(qwen_base):
    backend = TransformersBackend(qwen_base, batch_size=2, progress=False)
    (reply,) = backend.generate_each([QUESTION], GREEDY)
    assert reply.texts == [ANSWER] and reply.finish_reasons == ["stop"]
    assert extract_answer(reply.texts[0]) == "5"

    server, thread = serve(backend)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        assert OpenAIBackend("qwen", base_url=url, progress=False, timeout=60).generate([QUESTION], GREEDY) == [[ANSWER]]

        def ask(max_tokens: int) -> dict:
            body = json.dumps({"messages": QUESTION, "max_tokens": max_tokens, "temperature": 0}).encode()
            request = urllib.request.Request(f"{url}/chat/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as response:
                return json.loads(response.read())["choices"][0]

        at_turn_end, at_limit = ask(60), ask(4)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert at_turn_end["message"]["content"] == ANSWER and at_turn_end["finish_reason"] == "stop"
    assert ANSWER.startswith(at_limit["message"]["content"]) and at_limit["finish_reason"] == "length"


def test_vllm_is_given_the_turns_end_as_a_stop_token(qwen_base):
    """vLLM is not installed here: what VLLMBackend hands it is checked, built as its __init__ builds it."""
    tokenizer = load_tokenizer(qwen_base)
    im_end, eos = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    fields = configured_eos_ids(qwen_base)
    assert fields == [eos, eos]  # generation_config.json and config.json: the EOS alone, never <|im_end|>
    params = vllm_sampling(GREEDY, end_token_ids(tokenizer, *fields))
    assert {im_end, eos} <= set(params["stop_token_ids"]) and params["max_tokens"] == 60
    assert vllm_sampling(GREEDY)["stop_token_ids"] == []  # nothing beyond vLLM's own EOS unless given
    assert configured_eos_ids(str(qwen_base) + "-missing") == []  # missing files add nothing, never raise

