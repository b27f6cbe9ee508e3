"""Continuous-batching decoding: a row leaves the batch the moment it ends and a new prompt takes it.

Why not `model.generate`: it keeps computing every row of a batch until the longest one ends,
and the next batch waits for that. Here up to `rows` sequences decode together; a sequence ends
at an end-of-turn token, at a stop string, at the token limit or, for evaluation, right after
its first complete \\boxed{...}, and a waiting prompt is prefilled into its row before the next
step. The keys and values live in a `SlotCache` (see slot_cache.py for why not transformers'
caches). Prompts' common prefix is computed once. Greedy output is the same tokens `generate`
produces (tests compare them).
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache, partial
from typing import Callable, Collection

import torch

from ..grading.answers import extract_boxed
from .end_tokens import end_token_ids
from .slot_cache import SLOTS, SlotCache, bytes_per_token, register

__all__ = ["decode", "prepack_cpu_linears", "cache_budget"]

GIB = 1024 ** 3


def prepack_cpu_linears(model) -> int:
    """On CPU in float32, run every linear layer through oneDNN with its weight pre-blocked.

    PyTorch's `F.linear` hands the (out, in) weight to the BLAS as is on every call; oneDNN's
    linear with the weight reordered once into its blocked layout (what torch.compile's
    `freezing` does) was 10-15% faster for the layers and 30% faster for SmolLM2's 49K-row output
    layer at 128 rows on this CPU. For inference only: the packed copy does not follow later
    weight updates. Returns how many layers were switched (0 on GPU, in half precision, or
    without oneDNN).
    """
    if model.device.type != "cpu" or model.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return 0
    switched = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), 128)  # 128: typical rows
            module.forward = partial(_packed_linear, packed, module.bias)
            switched += 1
    return switched


def _packed_linear(packed: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@lru_cache(maxsize=8)
def _closing_brace_ids(tokenizer) -> frozenset[int]:
    """Token ids whose text contains '}': only after one of these can a \\boxed{} close."""
    # Byte-level BPE spells ASCII '}' as itself in the raw token, so no per-token decoding is needed
    # (decoding 49K tokens one by one took ~40 s).
    return frozenset(i for tok, i in tokenizer.get_vocab().items() if "}" in tok)


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        drop = sorted_probs.cumsum(-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the prompts' common token prefix, leaving every prompt at least one own token."""
    if len(prompts) < 2:
        return 0
    first, shortest = prompts[0], min(len(p) for p in prompts)
    n = 0
    while n < shortest - 1 and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


@torch.inference_mode()
def decode(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, rows: int = 32, samples: int = 1,
           temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, stop: tuple[str, ...] = (),
           stop_at_answer: bool = False, prefill_tokens: int = 2048, on_done: Callable[[int, list[list[int]]], None] | None = None,
           on_error: Callable[[int, Exception], None] | None = None,
           end_ids: Collection[int] | None = None, cache_bytes: int | None = None) -> list[list[list[int]]]:
    """For each prompt (token ids), `samples` generated token-id lists, without the prompt.

    A sequence ends at one of `end_ids`, which is not kept in its output. By default they are
    `end_token_ids` of the tokenizer and the model's EOS fields: the chat template's end of turn
    counts whatever the EOS fields say (see end_tokens.py for the Qwen2.5 base models this is for).

    Prompts start in the given order (put the longest first), prefilled together up to
    `prefill_tokens` tokens per pass. `on_done(i, outputs)` is called as soon as all samples of
    prompt i have ended. If a prefill fails and `on_error` is given, its prompts are retried one
    by one and `on_error(i, exc)` reports each that fails alone (too long for the model, say); the
    others go on. Without `on_error` the error is raised. The model is switched to critkit's slot
    attention, which is plain SDPA whenever no cache is passed.

    `cache_bytes` bounds the key/value cache (default: `cache_budget`, from the memory free on the
    model's device). Every row is sized for the longest prompt + max_new_tokens, so rows never
    outgrow it however long they run, and `rows` is lowered until (rows + 1 spare) such rows fit;
    the other prompts wait in the queue. A prompt whose samples alone do not fit fails by itself.
    """
    if max_new_tokens <= 0 or not prompts:
        return [[[] for _ in range(samples)] for _ in prompts]
    if any(not p for p in prompts):
        raise ValueError("decode: an empty prompt; a chat template always renders some tokens")
    if model.config._attn_implementation != SLOTS:
        model.set_attn_implementation(register())
    device = model.device
    if end_ids is None:
        end_ids = end_token_ids(tokenizer, getattr(model.generation_config, "eos_token_id", None),
                                getattr(model.config.get_text_config(), "eos_token_id", None))
    end_ids = frozenset(end_ids)
    braces = _closing_brace_ids(tokenizer) if stop_at_answer else frozenset()
    generator = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None

    out: list[list[list[int]]] = [[[] for _ in range(samples)] for _ in prompts]
    running = [samples] * len(prompts)  # samples of each prompt not ended yet
    owner: list[tuple[int, int]] = []  # live row -> (prompt, sample)
    per_token = bytes_per_token(model.config, model.dtype)
    budget = cache_budget(device) if cache_bytes is None else cache_bytes
    # Tokens a row of prompt i can hold at most; a prompt fits when its samples and the spare row do.
    need = [len(p) + max_new_tokens for p in prompts]
    too_big = {i for i in range(len(prompts)) if (samples + 1) * need[i] * per_token > budget}
    for i in sorted(too_big):
        error = MemoryError(f"the key/value cache for {samples} sequence(s) of up to {need[i]:,} tokens needs "
                            f"{(samples + 1) * need[i] * per_token / GIB:.2f} GiB with the shared-prefix row, over the "
                            f"budget of {budget / GIB:.2f} GiB (kv_cache_gib)")
        if on_error is None:
            raise error
        running[i] = 0
        on_error(i, error)
    waiting = [i for i in range(len(prompts)) if i not in too_big]
    if not waiting:
        return out
    longest = max(need[i] for i in waiting)
    rows = max(samples, min(max(rows, samples), budget // (longest * per_token) - 1))
    cache = SlotCache(model.config, rows=rows, capacity=max(len(prompts[i]) for i in waiting) + 64,
                      dtype=model.dtype, device=device, max_capacity=longest)

    def forward(ids: list[int] | torch.Tensor, positions: torch.Tensor, keep, slots: dict) -> torch.Tensor:
        ids = torch.as_tensor(ids, device=device).view(positions.shape)
        return model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=keep, **slots).logits

    def admit(batch: list[int]) -> torch.Tensor:
        """Prefill `batch` (prompt indices) packed in one pass; the next-token logits of their rows."""
        segments, ids, positions, live = [], [], [], cache.live
        for i in batch:
            row = cache.add_row()
            for _ in range(1, samples):  # rows for the other samples, filled after the pass
                cache.add_row()
            if shared:
                cache.copy_row(cache.prefix_row, row, shared)
            segments.append((row, shared, len(prompts[i]) - shared))
            ids += prompts[i][shared:]
            positions.append(torch.arange(shared, len(prompts[i]), device=device))
        last = torch.tensor([count for _, _, count in segments], device=device).cumsum(0) - 1
        try:
            logits = forward(ids, torch.cat(positions)[None], last, cache.prefill(segments))[0]
        except Exception:
            cache.live = live  # the rows taken for this batch are free again
            raise
        for i, (row, _, _) in zip(batch, segments):
            for s in range(samples):  # the other samples start from a copy of the prompt
                if s:
                    cache.copy_row(row, row + s, len(prompts[i]))
                owner.append((i, s))
        return logits.repeat_interleave(samples, dim=0)

    shared = _shared_prefix(prompts)
    if shared:  # computed once into the spare row, copied into every new row
        forward(prompts[0][:shared], torch.arange(shared, device=device)[None], 1,
                cache.prefill([(cache.prefix_row, 0, shared)]))

    queue = deque(waiting)
    logits = torch.empty(0, model.config.get_text_config().vocab_size, device=device)
    while True:
        batch, budget = [], prefill_tokens  # prompts to prefill together
        while queue and cache.live + samples * (len(batch) + 1) <= cache.rows and (
                not batch or len(prompts[queue[0]]) - shared <= budget):
            batch.append(queue.popleft())
            budget -= len(prompts[batch[-1]]) - shared
        if batch:
            try:
                logits = torch.cat([logits, admit(batch)])
            except Exception:
                if on_error is None:
                    raise
                for i in batch:  # alone, so that only a prompt that fails by itself is reported
                    try:
                        logits = torch.cat([logits, admit([i])])
                    except Exception as exc:  # noqa: BLE001 - reported; the other prompts go on
                        running[i] = 0
                        on_error(i, exc)
        if not owner:
            if queue:
                continue
            return out

        tokens = _pick(logits, temperature, top_p, generator)
        ended = []
        for row, t in enumerate(tokens.tolist()):
            i, s = owner[row]
            if t not in end_ids:
                out[i][s].append(t)
            if t in end_ids or len(out[i][s]) >= max_new_tokens or _ends(tokenizer, out[i][s], t, stop, braces):
                ended.append(row)
        # Highest row first: the row moved into a freed one is then always one still running.
        order = list(range(len(owner)))
        for row in reversed(ended):
            i, _ = owner[row]
            order[row] = order[cache.remove_row(row)]
            order.pop()
            owner[row] = owner[-1]
            owner.pop()
            running[i] -= 1
            if running[i] == 0 and on_done:
                on_done(i, out[i])
        if ended:
            tokens = tokens[torch.tensor(order, dtype=torch.long, device=device)]
        if owner:
            logits = forward(tokens, cache.lengths[: cache.live, None].clone(), 1, cache.step())[:, -1]
            cache.advance()
        else:
            logits = logits[:0]


def cache_budget(device, fraction: float = 0.85) -> int:
    """Bytes the key/value cache may take on `device`: `fraction` of what is free there now.

    On a GPU, free memory (after the model's weights) plus what PyTorch's allocator holds unused;
    the rest is left for activations (a 2,048-token prefill through an 8B model's MLP is ~200 MB).
    On CPU, of the memory the system reports available (psutil; accelerate depends on it).
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(free * fraction)


def _ends(tokenizer, ids: list[int], last: int, stop: tuple[str, ...], braces: frozenset[int]) -> bool:
    if braces and last in braces:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if "\\boxed" in text and extract_boxed(text) is not None:
            return True
    if stop:
        tail = tokenizer.decode(ids[-16:], skip_special_tokens=True)
        return any(s in tail for s in stop)
    return False
