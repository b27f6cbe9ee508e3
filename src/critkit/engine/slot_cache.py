"""A key/value cache with one row per sequence, for continuous batching on any device.

transformers' `DynamicCache` grows by concatenation: every decoding step copies every layer's
whole cache (measured here at batch 128 after 200 tokens: 851 ms of a 1,530 ms step), and
removing a finished row copies it all again. Its continuous-batching engine (`generate_batch`,
paged attention) took 62.9 s for 32 GSM8K prompts x 64 tokens on this CPU, where critkit's
earlier padded loop took 28.8 s and this cache with generation.py takes 16 s. So critkit keeps
its own cache:

- each sequence owns a row of a preallocated (rows, kv_heads, capacity, head_dim) tensor per
  layer, and a step writes one position per row in place;
- the live rows are always 0..live-1: a finished row is replaced by the last live row (one row's
  copy), and a new prompt takes the next free row, so a step reads rows 0..live-1 and no gather;
- the capacity doubles when a row needs more, so short answers never pay for the longest limit,
  up to `max_capacity` (the longest prompt + max_new_tokens: no row can need more), which
  generation.py sizes with the rows from a memory budget;
- a spare row holds the prompts' common prefix (the chat template and system prompt), computed
  once and copied into each new row.

The model itself is unchanged: `slot_attention` is registered as a transformers attention function
and receives the cache through the forward call's keyword arguments (`slots=...`), which
transformers passes down to attention. Without them it is plain SDPA, so the same model still
trains and generates the ordinary way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SLOTS", "SlotCache", "register", "bytes_per_token"]

SLOTS = "critkit_slots"
ATTENTION_GROUP = 32  # decoding rows attended together (see SlotCache.step)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes one token of one row takes in a SlotCache: keys and values of every layer."""
    text = _text_config(config)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * element


# Regroup prefill queries per kv head (see SlotCache.attend): None = on CUDA only; tests set True to
# run the CUDA path's arithmetic on CPU.
REGROUP_PREFILL: bool | None = None


def _regroup(query: torch.Tensor) -> bool:
    return query.is_cuda if REGROUP_PREFILL is None else REGROUP_PREFILL


class SlotCache:
    """Keys and values of up to `rows` sequences plus one spare row for the shared prefix."""

    def __init__(self, config, rows: int, capacity: int, dtype: torch.dtype, device, max_capacity: int | None = None):
        text = _text_config(config)
        self.kv_heads = text.num_key_value_heads
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.rows = rows
        self.prefix_row = rows  # the spare row
        self.max_capacity = max_capacity
        if max_capacity is not None:
            capacity = min(capacity, max_capacity)
        self.keys = [self._zeros(capacity, dtype, device) for _ in range(text.num_hidden_layers)]
        self.values = [self._zeros(capacity, dtype, device) for _ in range(text.num_hidden_layers)]
        self.lengths = torch.zeros(rows + 1, dtype=torch.long, device=device)  # tokens held per row
        self.live = 0
        # What the next forward pass does, set by `prefill` / `step` before calling the model.
        self._segments: list[tuple[int, int, int]] | None = None
        self._groups: list[tuple[int, int, int, torch.Tensor]] = []

    def _zeros(self, capacity: int, dtype, device) -> torch.Tensor:
        # Zeros, not `empty`: masked positions get weight exactly 0, and 0 * NaN garbage would be NaN.
        return torch.zeros(self.rows + 1, self.kv_heads, capacity, self.head_dim, dtype=dtype, device=device)

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds on its device."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def reserve(self, length: int) -> None:
        """Make room for `length` tokens per row, doubling the capacity as often as needed (never
        past max_capacity)."""
        if length <= self.capacity:
            return
        if self.max_capacity is not None and length > self.max_capacity:
            raise RuntimeError(f"slot cache: a row needs {length} positions, more than its bound of {self.max_capacity}")
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        if self.max_capacity is not None:
            capacity = min(capacity, self.max_capacity)
        for cache in (self.keys, self.values):
            for i, old in enumerate(cache):
                new = self._zeros(capacity, old.dtype, old.device)
                new[:, :, : old.shape[2]] = old
                cache[i] = new

    # -- rows ----------------------------------------------------------------------------------
    def copy_row(self, source: int, target: int, length: int) -> None:
        for cache in (self.keys, self.values):
            for layer in cache:
                layer[target, :, :length] = layer[source, :, :length]
        self.lengths[target] = length

    def add_row(self) -> int:
        """A new live row (empty); its index."""
        if self.live == self.rows:
            raise RuntimeError("no free row in the slot cache")
        self.live += 1
        self.lengths[self.live - 1] = 0
        return self.live - 1

    def remove_row(self, row: int) -> int:
        """Drop a live row by moving the last live row into it; returns the index that moved."""
        last = self.live - 1
        if row != last:
            self.copy_row(last, row, int(self.lengths[last]))
        self.live -= 1
        return last

    # -- what the next forward pass writes -----------------------------------------------------
    def prefill(self, segments: list[tuple[int, int, int]]) -> dict:
        """Keyword arguments for a forward pass over several sequences' tokens packed in one row.

        `segments` are (row, start, count): the next `count` tokens of the packed input belong to
        cache row `row` and sit at positions start..start+count-1 of it. Packing keeps the linear
        layers' matrices tall (one 60-token prompt at a time ran them at ~60% of the speed).
        """
        self.reserve(max(start + count for _, start, count in segments))
        for row, start, count in segments:
            self.lengths[row] = start + count
        self._segments = segments
        return {"slots": self}

    def step(self) -> dict:
        """Keyword arguments for a forward pass of one new token for every live row."""
        self._segments = None
        lengths = self.lengths[: self.live]
        held = lengths.tolist()
        self.reserve(max(held) + 1)
        # Rows are attended in groups, each over its own longest row only: rows started together
        # sit next to each other, so a group's span is close to its rows' lengths (measured: 15%
        # less attention time than one span for all 128 rows). Spans and masks are made once per
        # step, not per layer.
        self._groups = []
        for lo in range(0, self.live, ATTENTION_GROUP):
            hi = min(self.live, lo + ATTENTION_GROUP)
            span = max(held[lo:hi]) + 1  # + the token this step writes
            allowed = torch.arange(span, device=lengths.device)[None, :] <= lengths[lo:hi, None]
            self._groups.append((lo, hi, span, allowed[:, None, None, :]))
        return {"slots": self}

    # -- attention -----------------------------------------------------------------------------
    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float,
               window: int | None = None) -> torch.Tensor:
        """Store this layer's new keys/values and attend over the cache; (batch, q_len, heads, dim).

        `window`: a sliding-window layer's width (Mistral, Gemma's local layers): a query at
        position i sees keys at positions > i - window, as transformers' sliding-window mask does.
        """
        keys, values = self.keys[layer], self.values[layer]
        groups = query.shape[1] // self.kv_heads
        if self._segments is not None:  # packed prefill: causal attention within each row
            out = torch.empty_like(query)
            offset = 0
            for row, start, count in self._segments:
                end, part = start + count, slice(offset, offset + count)
                keys[row, :, start:end] = key[0, :, part]
                values[row, :, start:end] = value[0, :, part]
                allowed = torch.ones(count, end, dtype=torch.bool, device=query.device).tril(diagonal=start)
                if window:
                    allowed = allowed.triu(diagonal=start - window + 1)
                k, v = keys[row : row + 1, :, :end], values[row : row + 1, :, :end]
                if groups > 1 and _regroup(query):
                    # As in decoding, the `groups` query heads of a kv head become groups x count
                    # queries of that head: as many query heads as key heads, so no enable_gqa. On
                    # CUDA, SDPA with a mask and enable_gqa has only its math kernel (flash takes no
                    # mask, memory-efficient no GQA), which materialises every score and repeats
                    # the keys; regrouped, the memory-efficient kernel runs.
                    q = query[0, :, part].reshape(self.kv_heads, groups * count, -1)[None]
                    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.repeat(groups, 1), scale=scaling)
                    out[0, :, part] = attended[0].reshape(query.shape[1], count, -1)
                else:  # CPU: its flash kernel takes a mask and GQA together (regrouping measured no faster)
                    out[:, :, part] = F.scaled_dot_product_attention(query[:, :, part], k, v, attn_mask=allowed,
                                                                     scale=scaling, enable_gqa=groups > 1)
                offset += count
            return out.transpose(1, 2)
        # Decoding: one query per live row, written at that row's length.
        live = query.shape[0]
        lengths = self.lengths[:live]
        index = torch.arange(live, device=query.device)
        keys[index, :, lengths] = key[:, :, 0]
        values[index, :, lengths] = value[:, :, 0]
        # The `groups` query heads of a kv head become that head's `groups` queries: keys and values
        # are read once, never repeated (20% faster than SDPA's enable_gqa here).
        q = query.view(live, self.kv_heads, groups, -1)
        out = torch.empty_like(q)
        for lo, hi, span, allowed in self._groups:
            if window:
                recent = torch.arange(span, device=query.device)[None, :] > lengths[lo:hi, None] - window
                allowed = allowed & recent[:, None, None, :]
            out[lo:hi] = F.scaled_dot_product_attention(q[lo:hi], keys[lo:hi, :, :span], values[lo:hi, :, :span],
                                                        attn_mask=allowed, scale=scaling)
        return out.view(live, 1, query.shape[1], -1)

    def advance(self) -> None:
        """After a decoding step: every live row holds one more token."""
        self.lengths[: self.live] += 1


def slot_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, slots=None,
                   sliding_window=None, **kwargs):
    if slots is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    unsupported = [name for name in ("softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:  # Gemma-2's logit soft-capping, gpt-oss's attention sinks: not in this cache's attention
        raise NotImplementedError(f"critkit's continuous batching does not implement {', '.join(unsupported)} "
                                  f"({type(module).__name__}); use backend 'vllm' for this model")
    return slots.attend(module.layer_idx, query, key, value, scaling, window=sliding_window), None


def register() -> str:
    """Make `attn_implementation="critkit_slots"` known to transformers; returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(SLOTS, slot_attention)
    # Only the fallback path reads the mask; with `slots` the cache knows every row's length.
    AttentionMaskInterface.register(SLOTS, sdpa_mask)
    return SLOTS
