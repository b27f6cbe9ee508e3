"""Reports: a markdown table and a PNG bar chart of accuracy per model and benchmark.

Each trained model is compared with the base model on the same questions: the paired difference
in accuracy with a 95% confidence interval (normal approximation on per-question differences),
so "better than base" means the interval excludes zero, not just a larger number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .records import read_jsonl

__all__ = ["collect", "paired_difference", "write_report"]


def _correct_by_id(samples_path: Path) -> dict[str, float]:
    """Per question, the fraction of its samples graded correct (1.0 or 0.0 with one sample)."""
    return {row["id"]: sum(row["correct"]) / len(row["correct"]) for _, row in read_jsonl(samples_path)}


def paired_difference(model: dict[str, float], base: dict[str, float]) -> tuple[float, float, int]:
    """(mean difference, half-width of its 95% CI, n) over questions both have."""
    ids = sorted(set(model) & set(base))
    n = len(ids)
    if n < 2:
        return 0.0, float("nan"), n
    diffs = [float(model[i]) - float(base[i]) for i in ids]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n), n


def collect(eval_root: Path, models: list[str], benchmarks: list[str]) -> dict:
    """{model: {benchmark: scores + samples path}} from an eval folder laid out model/benchmark/."""
    results: dict = {}
    for model in models:
        for bench in benchmarks:
            scores_path = eval_root / model / bench / "scores.json"
            if scores_path.exists():
                results.setdefault(model, {})[bench] = json.loads(scores_path.read_text())
    return results


def write_report(eval_root: Path, models: list[str], benchmarks: list[str], out_dir: Path,
                 base: str = "base", title: str = "critkit results", notes: list[str] = ()) -> dict:
    results = collect(eval_root, models, benchmarks)
    lines = [f"# {title}", "", "Accuracy (%) on held-out questions; Δ is the paired difference from "
             f"`{base}` with its 95% confidence interval.", ""]
    header = "| model | " + " | ".join(benchmarks) + " | Δ vs base | critique-format | no answer |"
    lines += [header, "|" + "---|" * (len(benchmarks) + 4)]
    summary: dict = {}
    for model in models:
        row = results.get(model, {})
        cells, deltas, drift, missing = [], [], [], []
        for bench in benchmarks:
            s = row.get(bench)
            if not s:
                cells.append("–")
                continue
            cells.append(f"{100 * s['accuracy']:.1f} ({s['correct']}/{s['n']})")
            drift.append(s["critique_format"])
            missing.append(s["no_answer"])
            if model != base and (eval_root / base / bench / "samples.jsonl").exists():
                d, hw, n = paired_difference(_correct_by_id(eval_root / model / bench / "samples.jsonl"),
                                             _correct_by_id(eval_root / base / bench / "samples.jsonl"))
                deltas.append((bench, d, hw, n))
        delta = "; ".join(f"{100 * d:+.1f} ± {100 * hw:.1f}" for _, d, hw, _ in deltas) if deltas else "–"
        avg = lambda xs: f"{100 * sum(xs) / len(xs):.0f}%" if xs else "–"
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {delta} | {avg(drift)} | {avg(missing)} |")
        summary[model] = {"scores": row, "delta_vs_base": [
            {"benchmark": b, "difference": d, "ci95_half_width": hw, "n": n, "significant": bool(abs(d) > hw)}
            for b, d, hw, n in deltas]}
    lines += ["", *notes]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    _plot(results, models, benchmarks, out_dir / "report.png", title)
    return summary


def _plot(results: dict, models: list[str], benchmarks: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    width = 0.8 / max(1, len(benchmarks))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(models) + 2), 3.6))
    for j, bench in enumerate(benchmarks):
        xs, ys, errs = [], [], []
        for i, model in enumerate(models):
            s = results.get(model, {}).get(bench)
            if not s:
                continue
            p, n = s["accuracy"], max(1, s["n"])
            xs.append(i + j * width)
            ys.append(100 * p)
            errs.append(100 * 1.96 * math.sqrt(p * (1 - p) / n))
        bars = ax.bar(xs, ys, width, yerr=errs, capsize=3, label=bench)
        ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=8)
    ax.set_xticks([i + width * (len(benchmarks) - 1) / 2 for i in range(len(models))], models, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    if len(benchmarks) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------- across runs


def collect_runs(run_dirs: list[Path]) -> tuple[dict, list[str]]:
    """{label: {benchmark: scores}} for every model evaluated in each run folder.

    A label is `model` for one run and `run/model` for several; benchmarks are listed in the
    order first seen.
    """
    results: dict = {}
    benchmarks: list[str] = []
    for run in run_dirs:
        eval_root = Path(run) / "eval"
        if not eval_root.is_dir():
            raise FileNotFoundError(f"{run}: no eval/ folder (run `critkit run` or `critkit eval -o {run}/eval/MODEL`)")
        for scores_path in sorted(eval_root.glob("*/*/scores.json")):
            model, bench = scores_path.parent.parent.name, scores_path.parent.name
            label = model if len(run_dirs) == 1 else f"{Path(run).name}/{model}"
            results.setdefault(label, {})[bench] = json.loads(scores_path.read_text())
            if bench not in benchmarks:
                benchmarks.append(bench)
    return results, benchmarks


def write_collection(run_dirs: list[Path], out_dir: Path, title: str = "critkit results") -> dict:
    """A table like CFT Table 2 (models x benchmarks, with the average) as markdown, CSV and PNG."""
    import csv

    results, benchmarks = collect_runs(run_dirs)
    models = list(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        accs = [results[model].get(b, {}).get("accuracy") for b in benchmarks]
        present = [a for a in accs if a is not None]
        avg = sum(present) / len(present) if len(present) == len(benchmarks) and present else None
        rows.append((model, accs, avg))
    fmt = lambda a: "–" if a is None else f"{100 * a:.1f}"
    lines = [f"# {title}", "", "| model | " + " | ".join(benchmarks) + " | avg |", "|---" * (len(benchmarks) + 2) + "|"]
    lines += [f"| {m} | " + " | ".join(fmt(a) for a in accs) + f" | {fmt(avg)} |" for m, accs, avg in rows]
    lines += ["", "Average only where a model has every benchmark. Per-sample outputs: `<run>/eval/<model>/<benchmark>/samples.jsonl`."]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    with open(out_dir / "table.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", *benchmarks, "avg"])
        for m, accs, avg in rows:
            writer.writerow([m, *("" if a is None else f"{100 * a:.2f}" for a in accs), "" if avg is None else f"{100 * avg:.2f}"])
    _plot(results, models, benchmarks, out_dir / "table.png", title)
    return {"models": models, "benchmarks": benchmarks, "rows": rows}
