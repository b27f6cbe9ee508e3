"""Entropy of the first answer token (CGD Table 9).

For each sample: the Shannon entropy (in nats) of the model's next-token distribution at the
first token of the target answer, given the CGD input (question + student answer + critique).
A model that has learned to use the critique should be more certain how to begin its answer.
Models are compared with a paired t-test over the same samples.
"""

from __future__ import annotations

from pathlib import Path

from .common import INPUT_NOTE, Sample, describe, each_model, encode, fmt, max_positions, pairwise_t, pyplot, save_figure


def first_token_entropy(model, tokenizer, sample: Sample) -> dict | None:
    """{entropy, p_first_token, first_token} at the first target position, or None if too long."""
    import torch

    ids, n_prompt = encode(tokenizer, sample, sample.critique)
    limit = max_positions(model)
    if limit and n_prompt + 1 > limit:
        return None
    with torch.inference_mode():
        # The prompt alone suffices: its last position predicts the first target token.
        # logits_to_keep=1 avoids a (prompt length x vocabulary) logits tensor.
        logits = model(torch.tensor([ids[:n_prompt]], device=model.device), logits_to_keep=1).logits[0, -1]
    logp = torch.log_softmax(logits.double(), dim=-1)  # float64: entropy sums ~50k small terms
    first = ids[n_prompt]
    return {"entropy": float(-(logp.exp() * logp).sum()), "p_first_token": float(logp[first].exp()),
            "first_token": tokenizer.decode([first])}


def entropy(samples: list[Sample], models: list[str], labels: list[str]) -> dict:
    per_sample: list[dict] = [{"id": s.id, "target_from": s.target_field, "models": {}} for s in samples]
    values: dict[str, list[float | None]] = {}
    results: dict[str, dict] = {}
    for label, name, model, tokenizer in each_model(models, labels):
        values[label] = []
        for row, sample in zip(per_sample, samples):
            out = first_token_entropy(model, tokenizer, sample)
            row["models"][label] = out
            values[label].append(out["entropy"] if out else None)
        too_long = sum(v is None for v in values[label])
        results[label] = {"model": name, "entropy_nats": describe(values[label]),
                          "p_first_token": describe([r["models"][label]["p_first_token"] for r in per_sample
                                                     if r["models"][label]]),
                          "skipped_too_long": too_long}
    tests = pairwise_t(values)
    return {
        "probe": "entropy",
        "measures": "Shannon entropy (nats, natural log) of the next-token distribution at the first token of "
                    "the target answer, given question + student answer + critique",
        "input": INPUT_NOTE,
        "results": results,
        "paired_t_tests": tests,
        "samples": per_sample,
        "summary": [f"{label}: entropy {r['entropy_nats']['mean']:.3f} ± {r['entropy_nats']['std'] or 0:.3f} nats "
                    f"(n={r['entropy_nats']['n']})" for label, r in results.items() if r["entropy_nats"]["n"]]
                   + [f"paired t-test {t['a']} - {t['b']}: difference {fmt(t['mean_difference'], '.3f')} nats, "
                      f"t={fmt(t['t'])}, p={fmt(t['p'])} (n={t['n']})"
                      for t in tests if t["n"]],
    }


def plot(result: dict, path: Path) -> None:
    """Per-sample entropies as points, the mean with a 95% interval as a bar."""
    plt = pyplot()
    labels = list(result["results"])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(labels) + 2), 3.8))
    for i, label in enumerate(labels):
        stats = result["results"][label]["entropy_nats"]
        ys = [row["models"][label]["entropy"] for row in result["samples"] if row["models"].get(label)]
        if stats["mean"] is not None:
            ax.bar(i, stats["mean"], 0.6, color=f"C{i}", alpha=0.35,
                   yerr=1.96 * stats["sem"] if stats["sem"] else None, capsize=4)
        ax.scatter([i + 0.18 * ((k % 5) - 2) / 2 for k in range(len(ys))], ys, s=14, color=f"C{i}", zorder=3)
    # The mean goes under the name: written on the bar it collides with the sample dots.
    means = [result["results"][m]["entropy_nats"]["mean"] for m in labels]
    ax.set_xticks(range(len(labels)), [f"{m}\nmean {v:.2f}" if v is not None else m for m, v in zip(labels, means)])
    ax.set_ylabel("entropy of first answer token (nats)")
    n = max((r["entropy_nats"]["n"] for r in result["results"].values()), default=0)
    ax.set_title(f"Entropy of the first answer token, given the critique\n"
                 f"n={n}; bar: mean with 95% CI, dots: samples", fontsize=10)
    save_figure(fig, path)
