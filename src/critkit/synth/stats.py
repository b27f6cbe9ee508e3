"""Statistics of a synthesized set: `critkit stats FILE`.

What a user checks before training on teacher output: the right/wrong ratio (CGD found 50/50
best), how many verdicts did not parse, how often the teacher agrees with math-verify where a gold
answer exists, how often it agrees with human labels where the data has them (the noisy GSM8K
samples carry `is_correct`), the job outcomes, and the length distributions in tokens of
responses, critiques and refinements (CFT's "short" variant caps critique length). Prints a
table and writes a PNG of the length histograms.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable

from ..data.records import Record, scan_records

__all__ = ["compute_stats", "format_stats", "plot_lengths", "run_stats", "label_agreement", "token_counter"]

LENGTH_FIELDS = ("response", "critique", "refined", "teacher_solution")
PERCENTILES = (10, 50, 90, 99)


def token_counter(name: str = "embedded") -> Callable[[list[str]], list[int]]:
    """Counts tokens of many texts at once: a model's tokenizer, or 'whitespace' (no model needed)."""
    if name == "whitespace":
        return lambda texts: [len(t.split()) for t in texts]
    from ..engine.models import load_tokenizer

    tokenizer = load_tokenizer(name)
    return lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


def _percentile(sorted_values: list[int], q: float) -> float:
    # Linear interpolation between closest ranks, as numpy's default does.
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def label_agreement(records: list[Record]) -> dict | None:
    """How often the teacher's verdict matches a human label meta["is_correct"] (None if no labels)."""
    labelled = [r for r in records if isinstance(r.meta.get("is_correct"), bool) and r.verdict is not None]
    if not labelled:
        return None
    table = Counter()
    for r in labelled:
        truth = "right" if r.meta["is_correct"] else "wrong"
        table[(r.verdict, truth)] += 1
    parsed = sum(v for (verdict, _), v in table.items() if verdict != "unparsed")
    agree = table[("right", "right")] + table[("wrong", "wrong")]
    return {
        "labelled": len(labelled), "parsed": parsed, "agree": agree,
        "agreement_of_parsed": agree / parsed if parsed else None,
        "agreement_of_all": agree / len(labelled),  # an unparsed verdict counts as a miss
        "said_right_was_right": table[("right", "right")], "said_right_was_wrong": table[("right", "wrong")],
        "said_wrong_was_right": table[("wrong", "right")], "said_wrong_was_wrong": table[("wrong", "wrong")],
        "unparsed": len(labelled) - parsed,
        "labels_right": sum(1 for r in labelled if r.meta["is_correct"]),
    }


def compute_stats(records: list[Record], count: Callable[[list[str]], list[int]]) -> dict:
    verdicts = Counter(r.verdict for r in records if r.critique)
    verify = Counter()
    for r in records:
        check = r.meta.get("verify")
        if not r.critique:
            continue
        if not isinstance(check, dict) or not check.get("graded"):
            verify["unverifiable (no gold)"] += 1
        elif check.get("agrees") is None:
            verify["unverifiable (verdict unparsed)"] += 1
        else:
            verify["agrees" if check["agrees"] else "disagrees"] += 1
    compared = verify["agrees"] + verify["disagrees"]
    status = Counter()
    for r in records:
        jobs = r.meta.get("jobs")
        if isinstance(jobs, dict) and jobs:
            status[list(jobs.values())[-1].get("status", "?")] += 1  # the file's own stage is the last block
    lengths: dict[str, list[int]] = {}
    for name in LENGTH_FIELDS:
        texts = [getattr(r, name) for r in records if getattr(r, name)]
        if texts:
            lengths[name] = sorted(count(texts))
    return {
        "records": len(records),
        "status": dict(status),
        "verdicts": dict(verdicts),
        "right_share": verdicts["right"] / (verdicts["right"] + verdicts["wrong"]) if verdicts["right"] + verdicts["wrong"] else None,
        "verify": {**verify, "agreement": verify["agrees"] / compared if compared else None},
        "labels": label_agreement(records),
        "lengths": {name: {"n": len(v), "mean": sum(v) / len(v), "max": v[-1],
                           **{f"p{q}": _percentile(v, q) for q in PERCENTILES}} for name, v in lengths.items()},
        "_raw_lengths": lengths,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def format_stats(s: dict, path: str, problems: list, unit: str) -> str:
    out = [f"{path}: {s['records']} records"]
    if s["status"]:
        out.append("  job status: " + ", ".join(f"{k} {v}" for k, v in sorted(s["status"].items())))
    if s["verdicts"]:
        v = s["verdicts"]
        out.append(f"  verdicts: right {v.get('right', 0)}, wrong {v.get('wrong', 0)}, unparsed {v.get('unparsed', 0)} "
                   f"(parse failures {_pct(v.get('unparsed', 0) / sum(v.values()))}); right share {_pct(s['right_share'])}")
        check = s["verify"]
        out.append(f"  teacher vs math-verify: {_pct(check['agreement'])} agree ({check.get('agrees', 0)} agree, "
                   f"{check.get('disagrees', 0)} disagree, {check.get('unverifiable (no gold)', 0)} without gold, "
                   f"{check.get('unverifiable (verdict unparsed)', 0)} with no verdict)")
    labels = s["labels"]
    if labels:
        out.append(f"  teacher vs human labels (is_correct): {_pct(labels['agreement_of_parsed'])} of {labels['parsed']} parsed "
                   f"verdicts agree; {_pct(labels['agreement_of_all'])} of all {labels['labelled']} (unparsed = miss)")
        out.append(f"    said right: {labels['said_right_was_right']} right, {labels['said_right_was_wrong']} wrong; "
                   f"said wrong: {labels['said_wrong_was_right']} right, {labels['said_wrong_was_wrong']} wrong; "
                   f"unparsed {labels['unparsed']}; labels right {labels['labels_right']} of {labels['labelled']}")
    if s["lengths"]:
        out.append(f"  lengths ({unit}):  " + "  ".join(f"{h:>7}" for h in ("n", "mean", *[f"p{q}" for q in PERCENTILES], "max")))
        for name, d in s["lengths"].items():
            cells = [d["n"], d["mean"], *[d[f"p{q}"] for q in PERCENTILES], d["max"]]
            out.append(f"    {name:<16}  " + "  ".join(f"{c:>7.0f}" for c in cells))
    for problem in problems[:10]:
        out.append(f"  bad line: {problem}")
    if len(problems) > 10:
        out.append(f"  ... and {len(problems) - 10} more bad lines")
    return "\n".join(out)


def plot_lengths(s: dict, png: str | Path, title: str, unit: str) -> Path | None:
    """One histogram per text field, with its median marked; None when there is nothing to plot."""
    lengths = s["_raw_lengths"]
    if not lengths:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False)
    for ax, (name, values) in zip(axes[0], lengths.items()):
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="#4C72B0", edgecolor="white")
        median = s["lengths"][name]["p50"]
        ax.axvline(median, color="#C44E52", linestyle="--", linewidth=1.5, label=f"median {median:.0f}")
        ax.set_title(f"{name} (n={len(values)})")
        ax.set_xlabel(f"length ({unit})")
        ax.set_ylabel("records")
        ax.legend(frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def run_stats(path: str | Path, png: str | Path | None = None, tokenizer: str = "embedded") -> str:
    """`critkit stats`: the printed report; writes the PNG next to the file unless told otherwise."""
    numbered, problems = scan_records(path)
    records = [rec for _, rec in numbered]
    unit = "whitespace words" if tokenizer == "whitespace" else f"{tokenizer} tokens"
    s = compute_stats(records, token_counter(tokenizer))
    text = format_stats(s, str(path), problems, unit)
    png = Path(png) if png else Path(path).with_suffix(".stats.png")
    if plot_lengths(s, png, f"{Path(path).name}: lengths in {unit}", unit):
        text += f"\n  wrote {png}"
    return text


def stats_json(s: dict) -> str:
    return json.dumps({k: v for k, v in s.items() if not k.startswith("_")}, indent=2)
