"""Gradient norm with and without the critique (CGD Table 10).

For each sample, one forward and backward pass of the training loss on the target answer (mean
cross-entropy over the target tokens, prompt tokens masked, as in CGD training), and the total L2
norm of the gradient over all parameters. Done twice: with the critique in the input
(`cgd_refine_user`) and without it (`cgd_no_critique_user`); the target is the same. CGD argues
that the critique makes the target less surprising, so the updates it causes are smaller.
The model stays in eval mode (no dropout) so the two passes differ only by their input.
"""

from __future__ import annotations

import math
from pathlib import Path

from .common import INPUT_NOTE, Sample, describe, each_model, encode, fmt, max_positions, paired_t, pyplot, save_figure

CONDITIONS = ("with_critique", "without_critique")


def gradient_norm(model, tokenizer, sample: Sample, with_critique: bool) -> dict | None:
    """{grad_norm, loss, target_tokens}, or None when the input is longer than the model's context."""
    import torch

    ids, n_prompt = encode(tokenizer, sample, sample.critique if with_critique else None)
    limit = max_positions(model)
    if limit and len(ids) > limit:
        return None
    input_ids = torch.tensor([ids], device=model.device)
    labels = input_ids.clone()
    labels[:, :n_prompt] = -100  # loss on the answer only, as completion-only training does
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
    # model.parameters() lists a tied embedding / output matrix once, so it is counted once.
    squared = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)  # frees the gradient memory before the next pass
    return {"grad_norm": math.sqrt(squared), "loss": float(loss.detach()), "target_tokens": len(ids) - n_prompt}


def gradnorm(samples: list[Sample], models: list[str], labels: list[str]) -> dict:
    per_sample: list[dict] = [{"id": s.id, "target_from": s.target_field, "models": {}} for s in samples]
    results: dict[str, dict] = {}
    for label, name, model, tokenizer in each_model(models, labels):
        for p in model.parameters():
            p.requires_grad_(True)  # every parameter: a merged LoRA adapter is a full model here
        norms: dict[str, list[float | None]] = {c: [] for c in CONDITIONS}
        losses: dict[str, list[float | None]] = {c: [] for c in CONDITIONS}
        for row, sample in zip(per_sample, samples):
            row["models"][label] = {}
            for cond in CONDITIONS:
                out = gradient_norm(model, tokenizer, sample, with_critique=cond == "with_critique")
                row["models"][label][cond] = out
                norms[cond].append(out["grad_norm"] if out else None)
                losses[cond].append(out["loss"] if out else None)
        results[label] = {
            "model": name,
            **{cond: {"grad_norm": describe(norms[cond]), "loss": describe(losses[cond])} for cond in CONDITIONS},
            "with_minus_without": paired_t(norms["with_critique"], norms["without_critique"]),
            "skipped_too_long": sum(a is None or b is None for a, b in zip(*norms.values())),
        }
    return {
        "probe": "gradnorm",
        "measures": "total L2 norm of the gradient of the mean target-token cross-entropy over all parameters, "
                    "one forward and backward pass per sample, with and without the critique in the input",
        "input": INPUT_NOTE,
        "results": results,
        "samples": per_sample,
        "summary": [f"{label}: grad norm with critique {_ms(r['with_critique']['grad_norm'])}, without "
                    f"{_ms(r['without_critique']['grad_norm'])}; paired difference "
                    f"{fmt(r['with_minus_without']['mean_difference'], '.3f')}, p={fmt(r['with_minus_without']['p'])}" for label, r in results.items()],
    }


def _ms(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.3f} ± {stats['std'] or 0:.3f} (n={stats['n']})"


def plot(result: dict, path: Path) -> None:
    """Mean ± standard deviation per model, with and without the critique, side by side."""
    plt = pyplot()
    labels = list(result["results"])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(labels) + 2), 3.8))
    width = 0.38
    for j, (cond, name) in enumerate(zip(CONDITIONS, ("with critique", "without critique"))):
        means = [result["results"][m][cond]["grad_norm"]["mean"] or 0 for m in labels]
        stds = [result["results"][m][cond]["grad_norm"]["std"] or 0 for m in labels]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(labels))], means, width, yerr=stds, capsize=4,
                      label=name, color=("C0", "C1")[j])
        ax.bar_label(bars, fmt="%.2f", label_type="center", fontsize=8, color="white")  # clear of the error bars
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("gradient L2 norm (mean ± std)")
    n = max((r["with_critique"]["grad_norm"]["n"] for r in result["results"].values()), default=0)
    ax.set_title(f"Gradient L2 norm of the loss on the target answer (n={n})", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)
