"""Attention for padding-free training batches: per-sequence attention, without a dense mask.

A padding-free batch is one row holding several sequences back to back; `position_ids` restart
at 0 and TRL's collator gives the boundaries as `cu_seq_lens_q` (with `max_length_q`, the longest).

On CUDA with flash-attention installed, training uses transformers' "flash_attention_2", whose
varlen kernel reads those boundaries directly (`training_attention`). Otherwise this module's
"critkit_varlen" runs: each layer scatters the row into a right-padded (sequences, heads,
longest, dim) batch and attends there. With right padding a real token never sees a pad key,
and the pad outputs are dropped when the result is gathered back into the row; only attention
sees the padding, the linear layers (most of the compute) run on real tokens only. Measured here
on 8 CFT sequences (2,449 tokens, SmolLM2-135M's heads): attention forward + backward took 1,056
ms with transformers' dense block-diagonal mask vs 286 ms this way; looping over the sequences
cost as much as the mask (831 ms: strided slices, whose backward allocates full-size gradients).

What each forward pays: the scatter index is built once per forward from the boundaries, on the
device and without reading them back to the host (the same `cu_seq_lens_q` tensor reaches every
layer, so it carries the index), and no T x T mask is built at all: the mask function registered
for this implementation returns None for such batches (transformers' SDPA mask for a packed row
is a dense bool T x T tensor: 256 MiB at 16,384 tokens, rebuilt every forward).

Model-specific attention is applied as transformers applies it, per sequence:
- `sliding_window` (Mistral, Gemma-2/3's local layers, gpt-oss): a query at position i sees keys at
  positions > i - window (transformers' sliding_window_overlay), as a mask over (longest, longest);
- `softcap` (Gemma-2: tanh soft-capping of the logits) and `s_aux` (gpt-oss's attention sinks): the
  scores go through the model's own `eager_attention_forward` (SDPA computes neither), with the
  causal/window mask as an additive mask, as transformers' eager path does.
Any other batch (an ordinary padded one, or decoding with a cache) goes to transformers' own
path unchanged (SDPA, or the model's eager function for soft-capping and sinks).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

__all__ = ["VARLEN", "register", "training_attention", "varlen_mask"]

VARLEN = "critkit_varlen"
FLASH = "flash_attention_2"


def training_attention(model, configured: str | None = None) -> str:
    """The attention implementation a padding-free or packed training of `model` runs with.

    A configured one wins. Otherwise flash-attention's varlen kernel where it can run (CUDA, the
    `flash_attn` package, a model transformers runs with it) and computes what the model needs:
    transformers' FA2 path accepts attention sinks (gpt-oss) but passes them only to kernels that
    take them (FA3 from vLLM, FA4), so a model with sinks keeps critkit's path. Else critkit's.
    """
    if configured:
        return configured
    from transformers.utils import is_flash_attn_2_available

    on_cuda = next(model.parameters()).is_cuda or torch.cuda.is_available()
    sinks = any(name.endswith("sinks") for name, _ in model.named_parameters())
    if on_cuda and is_flash_attn_2_available() and getattr(model, "_supports_flash_attn", False) and not sinks:
        return FLASH
    return register()


def _layout(cu_seq_lens: torch.Tensor, longest: int | None, total: int) -> tuple[int, int, torch.Tensor]:
    """(sequences, longest, index): where each token of the packed row goes in the flattened
    (sequences x longest) padded layout. Built once per forward and kept on the boundaries tensor,
    which every layer receives; with `longest` given (TRL's max_length_q) nothing is read back from
    the device."""
    cached = getattr(cu_seq_lens, "_critkit_layout", None)
    if cached is not None:
        return cached
    sequences = cu_seq_lens.numel() - 1
    lengths = cu_seq_lens.diff()
    if longest is None:
        longest = int(lengths.max())
    # Token t of sequence s sits at s * longest + (t - start of s).
    owner = torch.repeat_interleave(torch.arange(sequences, device=cu_seq_lens.device), lengths, output_size=total)
    index = torch.arange(total, device=cu_seq_lens.device) + owner * longest - cu_seq_lens[:-1].long()[owner]
    layout = (sequences, longest, index)
    cu_seq_lens._critkit_layout = layout
    return layout


def _boundaries(position_ids: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """cu_seq_lens of a packed row from its position_ids (restarting at 0) when no collator gave
    them; None when the row is one sequence. Read once per forward (kept on the tensor, which every
    layer receives), so a plain single-sequence batch costs one device read, not one per layer."""
    if position_ids is None or batch != 1 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return None
    cached = getattr(position_ids, "_critkit_boundaries", None)
    if cached is None:
        restarts = (position_ids[0, 1:] == 0).nonzero().flatten() + 1
        ends = torch.tensor([0, position_ids.shape[1]], device=position_ids.device)
        cached = torch.cat([ends[:1], restarts, ends[1:]]).to(torch.int32) if restarts.numel() else False
        position_ids._critkit_boundaries = cached
    return cached if cached is not False else None


def _allowed(length: int, window: int | None, device) -> torch.Tensor | None:
    """Bool (length, length) mask, query row x key column: causal, within the window; None for plain causal."""
    if not window:
        return None
    positions = torch.arange(length, device=device)
    distance = positions[:, None] - positions[None, :]
    return (distance >= 0) & (distance < window)


def _eager(module):
    """The model's own eager attention function (every transformers model file defines one)."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise NotImplementedError(f"critkit's padding-free attention: {type(module).__name__} uses soft-capping or "
                                  f"attention sinks and its model file has no eager_attention_forward; set "
                                  f"train.attn_implementation (e.g. flash_attention_2) or sft.padding_free: false")
    return function


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask as the additive float mask eager attention adds to its scores (transformers' min value)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _attend(module, query, key, value, allowed, dropout: float, scaling, softcap, s_aux):
    """Attention of (batch, heads, length, dim) sequences that each start at position 0; (batch, length, heads, dim)."""
    if softcap is not None or s_aux is not None:
        if allowed is None:
            allowed = torch.ones(query.shape[2], key.shape[2], dtype=torch.bool, device=query.device).tril()
        out, _ = _eager(module)(module, query, key, value, _additive(allowed, query.dtype), dropout=dropout,
                                scaling=scaling, softcap=softcap, s_aux=s_aux)
        return out
    gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, is_causal=allowed is None,
                                         dropout_p=dropout, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2)


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q=None, max_length_q=None, sliding_window=None, softcap=None, s_aux=None,
                     position_ids=None, **kwargs):
    window = sliding_window if sliding_window and sliding_window > 0 else None
    if attention_mask is not None or query.shape[2] != key.shape[2]:
        # An ordinary padded batch (its mask already holds causality and the window), or decoding.
        if softcap is not None or s_aux is not None:
            mask = attention_mask if attention_mask is None or attention_mask.dtype != torch.bool else \
                _additive(attention_mask, query.dtype)
            return _eager(module)(module, query, key, value, mask, dropout=dropout, scaling=scaling, softcap=softcap,
                                  s_aux=s_aux)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    if cu_seq_lens_q is None:
        cu_seq_lens_q = _boundaries(position_ids, query.shape[0])  # a packed row whose collator gave no boundaries
    if cu_seq_lens_q is None:  # every row of the batch is one sequence from position 0
        allowed = _allowed(query.shape[2], window, query.device)
        return _attend(module, query, key, value, allowed, dropout, scaling, softcap, s_aux), None

    total = query.shape[2]
    sequences, longest, index = _layout(cu_seq_lens_q, max_length_q, total)

    def padded(x):  # (1, heads, T, dim) -> (sequences, heads, longest, dim)
        heads, dim = x.shape[1], x.shape[-1]
        flat = x.new_zeros(heads, sequences * longest, dim).index_copy(1, index, x[0])
        return flat.view(heads, sequences, longest, dim).transpose(0, 1)

    allowed = _allowed(longest, window, query.device)
    out = _attend(module, padded(query), padded(key), padded(value), allowed, dropout, scaling, softcap, s_aux)
    heads, dim = query.shape[1], query.shape[-1]
    out = out.reshape(sequences * longest, heads, dim).index_select(0, index)
    return out.unsqueeze(0).contiguous(), None  # (1, T, heads, dim), like transformers' SDPA


def varlen_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, attention_mask=None, **kwargs):
    """The mask transformers builds before the layers run: none when there is no padding mask and
    no cache (a padding-free row, or unpadded rows), since `varlen_attention` then makes its own
    per-sequence causal and window masks; else transformers' SDPA mask."""
    if attention_mask is None and q_length == kv_length and not q_offset and not kv_offset:
        return None
    from transformers.masking_utils import sdpa_mask

    return sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make `attn_implementation="critkit_varlen"` known to transformers; returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(VARLEN, varlen_attention)
    AttentionMaskInterface.register(VARLEN, varlen_mask)
    return VARLEN
