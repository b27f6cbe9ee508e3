"""Attention for padding-free training batches: causal SDPA per sequence, without a dense mask.

A padding-free batch is one row holding several sequences back to back; `position_ids` restart
at 0 and TRL's collator gives the boundaries as `cu_seq_lens_q`. The varlen kernels that read
those boundaries (flash-attn, `kernels`) need CUDA. Without them transformers' "sdpa" builds a
dense block-diagonal mask over the whole row, and a masked SDPA on CPU cannot use the causal
flash kernel: measured here on 8 CFT sequences (2,449 tokens, SmolLM2-135M's heads), attention
forward + backward took 1,056 ms with that mask vs 286 ms this way. Looping over the sequences
costs as much (831 ms): slicing a (1, heads, T, dim) row gives strided views and their backward
allocates a full-size gradient per slice.

So each layer scatters the row into a right-padded (sequences, heads, longest, dim) batch and runs
one causal SDPA with no mask at all: with right padding, a real token never sees a pad key, and
the pad outputs are dropped when the result is gathered back into the row. Only attention sees
the padding; the linear layers, most of the compute, run on real tokens only. Any other batch
goes to transformers' own SDPA path unchanged, so generation with the same model is unaffected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["VARLEN", "register"]

VARLEN = "critkit_varlen"


def varlen_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                cu_seq_lens_q=None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    lengths = cu_seq_lens_q.diff().tolist()
    rows, longest, dim = len(lengths), max(lengths), query.shape[-1]
    # Position of each token of the row in the flattened (sequences x longest) padded layout.
    where = torch.cat([torch.arange(n, device=query.device) + i * longest for i, n in enumerate(lengths)])

    def padded(x):  # (1, heads, T, dim) -> (sequences, heads, longest, dim)
        heads = x.shape[1]
        flat = x.new_zeros(heads, rows * longest, dim).index_copy(1, where, x[0])
        return flat.view(heads, rows, longest, dim).transpose(0, 1)

    out = F.scaled_dot_product_attention(padded(query), padded(key), padded(value), is_causal=True,
                                         dropout_p=dropout, scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    out = out.transpose(0, 1).reshape(query.shape[1], rows * longest, dim).index_select(1, where)
    return out.transpose(0, 1).unsqueeze(0).contiguous(), None  # (1, T, heads, dim), like transformers' SDPA


def register() -> str:
    """Make `attn_implementation="critkit_varlen"` known to transformers; returns the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(VARLEN, varlen_sdpa)
    # The mask is only used by the fallback path (ordinary padded batches).
    AttentionMaskInterface.register(VARLEN, sdpa_mask)
    return VARLEN
