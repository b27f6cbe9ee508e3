"""Attention shares over the prompt's sections while generating (CGD Figures 9-11).

The model gets the CGD input (question + student answer + critique) and generates up to N tokens
greedily. For each generated token, at every layer, the attention of the query that produced it
(the position whose output was that token), averaged over heads, is split into four shares of the
key positions: the problem, the student answer, the critique, and "other" (system prompt, chat
template tokens and tokens generated so far). The four shares of one token sum to 1.

Weights come from the model's eager attention (`attn_implementation="eager"`): fused kernels
(sdpa, flash) never materialize them. A forward hook on each attention module reduces that
layer's weights to four numbers as soon as they are computed, so memory holds
O(layers x steps x 4) numbers, never the attention matrices of all layers.
"""

from __future__ import annotations

from pathlib import Path

from .common import INPUT_NOTE, Sample, cgd_user, chat_text, describe, each_model, max_positions, pyplot, save_figure

SECTIONS = ("problem", "answer", "critique", "other")
PHASES = ("early", "middle", "late")
_FIELD_SECTION = {"question": 0, "response": 1, "critique": 2}


def section_ids(tokenizer, sample: Sample) -> tuple[list[int], list[int], dict[str, int]]:
    """(prompt token ids, section index of each token, tokens per section).

    Character spans of the three inserted texts are mapped onto tokens through the fast
    tokenizer's offsets; a token that straddles a boundary (" What" takes the space before the
    question) counts for the section it overlaps.
    """
    text = chat_text(tokenizer, sample, sample.critique)
    user, spans = cgd_user(sample, sample.critique)
    start = text.find(user)
    if start < 0:
        # Some templates trim the message; the spans then move by the leading whitespace removed.
        stripped = user.strip()
        start = text.find(stripped)
        if start < 0:
            raise ValueError("the chat template changed the user message; cannot locate the prompt sections")
        start -= len(user) - len(user.lstrip())
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    sections = []
    for s, e in enc["offset_mapping"]:
        section = 3
        for name, (a, b) in spans.items():
            if s < e and s < start + b and e > start + a:
                section = _FIELD_SECTION[name]
        sections.append(section)
    counts = {name: sections.count(i) for i, name in enumerate(SECTIONS)}
    return list(enc["input_ids"]), sections, counts


def attention_modules(model) -> list:
    """The self-attention module of each decoder layer, in layer order."""
    found = [m for name, m in model.named_modules() if name.endswith("self_attn")]
    layers = getattr(model.config, "num_hidden_layers", None)
    if not found or (layers and len(found) != layers):
        raise ValueError(f"found {len(found)} '*.self_attn' modules for {layers} layers; this architecture is not supported")
    return found


def generation_shares(model, tokenizer, sample: Sample, max_new_tokens: int):
    """(shares[steps, layers, 4] as a tensor, generated ids, section token counts), or None when
    the prompt and the new tokens do not fit in the model's context.

    Step t holds the attention of the query that produced generated token t: the last prompt
    position for the first token, then each fed-back token. generate() runs one forward per
    generated token (the last token is never fed back), so the hooks fire once per layer per token.
    """
    import torch

    if getattr(model.config, "_attn_implementation", None) != "eager":
        raise ValueError("the attention probe needs a model loaded with attn_implementation='eager'")
    ids, sections, counts = section_ids(tokenizer, sample)
    limit = max_positions(model)
    if limit and len(ids) + max_new_tokens > limit:
        return None
    modules = attention_modules(model)
    steps: list[list] = [[] for _ in modules]
    section_of = torch.tensor(sections + [3] * max_new_tokens, dtype=torch.long)  # generated tokens: "other"

    def hook(layer: int):
        def reduce(module, args, output):
            weights = output[1]  # [batch, heads, queries, keys]; eager attention returns it
            if weights is None:
                raise RuntimeError("attention weights are None: the model is not using eager attention")
            row = weights[0, :, -1, :].float().mean(dim=0).cpu()  # the newest query, averaged over heads
            shares = torch.zeros(len(SECTIONS)).index_add_(0, section_of[: row.shape[0]], row)
            steps[layer].append(shares)
        return reduce

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with torch.inference_mode():
            input_ids = torch.tensor([ids], device=model.device)
            out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id)
    finally:
        for h in handles:
            h.remove()
    generated = out[0, len(ids):].tolist()
    shares = torch.stack([torch.stack(layer) for layer in steps], dim=1)  # [steps, layers, 4]
    return shares[: len(generated)], generated, counts


def attention(samples: list[Sample], models: list[str], labels: list[str], max_new_tokens: int = 64) -> dict:
    import torch

    per_sample: list[dict] = [{"id": s.id, "models": {}} for s in samples]
    results: dict[str, dict] = {}
    for label, name, model, tokenizer in each_model(models, labels, attn_implementation="eager"):
        by_layer, by_phase, too_long = [], {p: [] for p in PHASES}, 0
        for row, sample in zip(per_sample, samples):
            measured = generation_shares(model, tokenizer, sample, max_new_tokens)
            if measured is None:
                row["models"][label], too_long = None, too_long + 1
                continue
            shares, generated, counts = measured
            mean = shares.mean(dim=0)  # [layers, 4]: each sample weighs the same, whatever its length
            by_layer.append(mean)
            # Thirds of the generated tokens; with fewer than 3 tokens some phases are empty.
            for phase, chunk in zip(PHASES, torch.tensor_split(shares, 3, dim=0)):
                if len(chunk):
                    by_phase[phase].append(chunk.mean(dim=0))
            row["models"][label] = {
                "generated": tokenizer.decode(generated, skip_special_tokens=True),
                "generated_tokens": len(generated),
                "section_tokens": counts,
                "share_sum_max_error": float((shares.sum(dim=-1) - 1).abs().max()),
                "mean_over_layers": dict(zip(SECTIONS, mean.mean(dim=0).tolist())),
                "per_layer": mean.tolist(),
            }
        if not by_layer:
            results[label] = {"model": name, "layers": 0, "per_layer": [], "per_phase": dict.fromkeys(PHASES),
                              "mean_over_layers": dict.fromkeys(SECTIONS), "skipped_too_long": too_long}
            continue
        layer_mean = torch.stack(by_layer).mean(dim=0)
        results[label] = {
            "model": name,
            "skipped_too_long": too_long,
            "layers": int(layer_mean.shape[0]),
            "per_layer": layer_mean.tolist(),  # [layer][section]
            "per_phase": {p: torch.stack(v).mean(dim=0).tolist() if v else None for p, v in by_phase.items()},
            "mean_over_layers": dict(zip(SECTIONS, layer_mean.mean(dim=0).tolist())),
            "generated_tokens": describe([r["models"][label]["generated_tokens"] for r in per_sample
                                          if r["models"][label]]),
        }
    return {
        "probe": "attention",
        "measures": "share of attention (averaged over heads) each generated token pays to the problem, the "
                    "student answer, the critique and everything else, per layer and generation phase",
        "attention_implementation": "eager (weights are materialized; each layer's are reduced to 4 shares "
                                    "by a forward hook as soon as they are computed)",
        "query": "the position whose output is the generated token (last prompt position for the first token)",
        "sections": list(SECTIONS),
        "phases": "generated tokens split into early / middle / late thirds",
        "max_new_tokens": max_new_tokens,
        "input": INPUT_NOTE.split("; target")[0] + "; greedy generation, no target",
        "results": results,
        "samples": per_sample,
        "summary": [f"{label}: " + ", ".join(f"{k} {v:.3f}" for k, v in r["mean_over_layers"].items())
                    + f" (mean over {r['layers']} layers)" for label, r in results.items() if r["layers"]],
    }


def plot(result: dict, path: Path) -> None:
    """Per model: shares over layers (lines), and layer x phase heatmaps for the three sections."""
    import numpy as np

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    labels = list(result["results"])
    # One colour scale per section across models: the heatmaps exist to compare models.
    scale = {}
    for k in range(3):
        cells = [v[k] for r in result["results"].values() for p in PHASES if r["per_phase"].get(p) for v in r["per_phase"][p]]
        scale[k] = (min(cells), max(cells)) if cells else (0, 1)
    fig, axes = plt.subplots(len(labels), 4, figsize=(15, 3.6 * len(labels)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1, 1, 1]})
    for row, label in zip(axes, labels):
        r = result["results"][label]
        if not r["layers"]:
            row[0].set_title(f"{label}: no sample fit in the context", fontsize=10)
            continue
        per_layer = np.array(r["per_layer"])
        layers = np.arange(per_layer.shape[0])
        for k, section in enumerate(SECTIONS):
            row[0].plot(layers, per_layer[:, k], label=section, linestyle="--" if section == "other" else "-",
                        color=f"C{k}")
        row[0].set_xlabel("layer")
        row[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        row[0].set_ylabel("attention share")
        row[0].set_ylim(0, 1)
        row[0].set_title(f"{label}: share per layer", fontsize=10)
        row[0].legend(fontsize=7, ncol=2)
        for k, ax in enumerate(row[1:]):
            grid = np.array([[np.nan] * len(layers) if r["per_phase"][p] is None else np.array(r["per_phase"][p])[:, k]
                             for p in PHASES]).T  # [layers, phases]
            im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=scale[k][0], vmax=scale[k][1])
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xticks(range(len(PHASES)), PHASES)
            ax.set_ylabel("layer")
            ax.set_title(f"{label}: {SECTIONS[k]}", fontsize=10)
            fig.colorbar(im, ax=ax, fraction=0.08, pad=0.03, label="share")
    n = max((r["generated_tokens"]["n"] for r in result["results"].values() if r["layers"]), default=0)
    fig.suptitle(f"Attention of generated tokens to prompt sections (eager attention, mean over heads; "
                 f"{n} samples, up to {result['max_new_tokens']} new tokens; phases = thirds of the generated tokens)",
                 fontsize=10)
    save_figure(fig, path)
