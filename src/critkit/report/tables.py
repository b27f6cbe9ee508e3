"""Reports: a markdown table and a PNG bar chart of accuracy per model and benchmark.

Each trained model is compared with the base model on the same questions: the paired difference
in accuracy with a 95% confidence interval (normal approximation on per-question differences),
so "better than base" means the interval excludes zero, not just a larger number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.records import read_jsonl
from ..evaluation.evaluate import format_accuracy
from .claims import claims_section

__all__ = ["collect", "paired_difference", "write_report", "write_collection", "write_seed_report", "write_table", "mean_std",
           "GENERAL_BENCHMARKS", "glance", "glance_lines"]

# Benchmarks of general ability, not math: kept out of the math average and shown beside it, so that
# a model that gains math and loses instruction following (CGD's finding for CFT: Llama-3.1-8B IFEval
# 76.9 -> 55.6) or drifts into writing critiques shows at a glance.
GENERAL_BENCHMARKS = ("ifeval", "mt_bench")


def is_general(bench: str) -> bool:
    """IFEval, MT-Bench and lm-eval's tasks (lmeval-<task>: BBH, MUSR, TruthfulQA...) are not math."""
    return bench in GENERAL_BENCHMARKS or bench.startswith("lmeval-")


def _correct_by_id(samples_path: Path) -> dict[str, float]:
    """Per question, the fraction of its samples graded correct (1.0 or 0.0 with one sample).

    A sample whose request failed has no grade (evaluation/durable.py) and is left out: the
    paired difference is taken over the questions both models answered.
    """
    return {row["id"]: sum(row["correct"]) / len(row["correct"]) for _, row in read_jsonl(samples_path)
            if isinstance(row.get("correct"), list) and row["correct"]}


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
                 base: str = "base", title: str = "critkit results", notes: list[str] = (),
                 selections: dict[str, dict] | None = None) -> dict:
    """report.md / results.json / report.png for a run with one training seed.

    `selections` maps a model to its checkpoint selection (selection.json, evaluation/select.py):
    its scores are then the chosen checkpoint's, the table names that checkpoint, and
    results.json records it with the validation accuracy of every candidate.
    """
    results = collect(eval_root, models, benchmarks)
    selections = selections or {}
    lines = [f"# {title}", "", "Accuracy (%) on held-out questions; Δ is the paired difference from "
             f"`{base}` with its 95% confidence interval.", ""]
    chosen = "checkpoint | " if selections else ""
    header = f"| model | {chosen}" + " | ".join(benchmarks) + " | Δ vs base | critique-format | no answer |"
    lines += [header, "|" + "---|" * (len(benchmarks) + 4 + bool(selections))]
    summary: dict = {}
    for model in models:
        row = results.get(model, {})
        cells, deltas, drift, missing = [], [], [], []
        for bench in benchmarks:
            s = row.get(bench)
            if not s:
                cells.append("–")
                continue
            cells.append(format_accuracy(s, unit=""))
            drift.append(s["critique_format"])
            missing.append(s["no_answer"])
            if model != base and s.get("accuracy") is not None and (eval_root / base / bench / "samples.jsonl").exists():
                d, hw, n = paired_difference(_correct_by_id(eval_root / model / bench / "samples.jsonl"),
                                             _correct_by_id(eval_root / base / bench / "samples.jsonl"))
                deltas.append((bench, d, hw, n))
        delta = "; ".join(f"{100 * d:+.1f} ± {100 * hw:.1f}" for _, d, hw, _ in deltas) if deltas else "–"
        avg = lambda xs: f"{100 * sum(xs) / len(xs):.0f}%" if xs else "–"
        chosen = f"{_chosen(selections.get(model))} | " if selections else ""
        lines.append(f"| {model} | {chosen}" + " | ".join(cells) + f" | {delta} | {avg(drift)} | {avg(missing)} |")
        summary[model] = {"scores": row, "delta_vs_base": [
            {"benchmark": b, "difference": d, "ci95_half_width": hw, "n": n, "significant": bool(abs(d) > hw)}
            for b, d, hw, n in deltas], "glance": glance(row)}
        if model in selections:
            summary[model]["checkpoint"] = _checkpoint_entry(selections[model])
    lines += glance_lines({m: summary[m]["glance"] for m in models if results.get(m)})
    # The papers' claims, where the run has their sets (claims.py; also claims.json).
    claims = claims_section(eval_root, {m: [m] for m in models if m != base}, benchmarks, out_dir)
    lines += [*_selection_lines(selections), *claims, "", *notes]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    _plot(results, models, benchmarks, out_dir / "report.png", title)
    return summary


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(values) / len(values) if values else None


def glance(scores: dict[str, dict]) -> dict:
    """One model's drift at a glance from its scores per benchmark: the mean accuracy over its math
    benchmarks, IFEval prompt-level strict, the MT-Bench score (1-10), and the share of its outputs,
    over every benchmark, that look like critiques (evaluation/drift.py). None where not evaluated."""
    math = {b: s.get("accuracy") for b, s in scores.items() if not is_general(b)}
    return {"math_avg": _mean(list(math.values())), "math_benchmarks": sorted(b for b, a in math.items() if a is not None),
            "ifeval": (scores.get("ifeval") or {}).get("prompt_level_strict_acc"),
            "mt_bench": (scores.get("mt_bench") or {}).get("score"),
            "critique_format": _mean([s.get("critique_format") for s in scores.values()])}


def glance_lines(glances: dict[str, dict]) -> list[str]:
    """The report's "Drift at a glance" table ({model: glance()}); nothing when no model has a general
    benchmark (the quickstart's report stays as it was)."""
    if not any(g["ifeval"] is not None or g["mt_bench"] is not None for g in glances.values()):
        return []
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["", "## Drift at a glance", "",
             "Math: mean accuracy (%) over the math benchmarks; IFEval: prompt-level strict accuracy (%); MT-Bench: "
             "mean judge rating (1-10); critique-format: share of outputs that look like critiques, over every benchmark.",
             "", "| model | math avg | IFEval | MT-Bench | critique-format |", "|---|---|---|---|---|"]
    for model, g in glances.items():
        mt = "–" if g["mt_bench"] is None else f"{g['mt_bench']:.2f}"
        cf = "–" if g["critique_format"] is None else f"{100 * g['critique_format']:.0f}%"
        lines.append(f"| {model} | {pct(g['math_avg'])} | {pct(g['ifeval'])} | {mt} | {cf} |")
    return lines


def _chosen(selection: dict | None) -> str:
    """The table cell naming a model's chosen checkpoint, with its validation accuracy."""
    if not selection:
        return "–"
    return f"{selection['best']} (val {100 * selection['scores'][selection['best']]:.1f})"


def _checkpoint_entry(selection: dict) -> dict:
    """What results.json records of a selection."""
    return {"name": selection["best"], "path": selection.get("best_path"), "validation": selection["validation"],
            "validation_n": selection.get("n"), "validation_accuracy": selection["scores"],
            "disjoint_from": selection.get("disjoint_from", []), "tie_rule": selection.get("tie_rule", "earliest"),
            "shared_with_train": selection.get("shared_with_train")}


def _selection_lines(selections: dict[str, dict]) -> list[str]:
    """The report's section on checkpoint selection: the split, the rule, every candidate's score."""
    if not selections:
        return []
    first = next(iter(selections.values()))
    checked = ", ".join(first.get("disjoint_from", [])) or "–"
    lines = ["", "## Checkpoint selection", "",
             f"Each trained model's test scores are those of its checkpoint with the best accuracy on the validation "
             f"split `{first['validation']}` ({first.get('n', '?')} questions, none shared with: {checked}); on a tie "
             f"the earliest checkpoint. Validation accuracy (%) per checkpoint, the chosen one in bold "
             f"(`select/accuracy.png` plots it):", "", "| model | checkpoint | validation accuracy per checkpoint |", "|---|---|---|"]
    for label, sel in selections.items():
        cells = [f"**{name} {100 * acc:.1f}**" if name == sel["best"] else f"{name} {100 * acc:.1f}"
                 for name, acc in sel["scores"].items()]
        lines.append(f"| {label} | {sel['best']} | " + " · ".join(cells) + " |")
    shared = {label: s["shared_with_train"] for label, s in selections.items() if s.get("shared_with_train")}
    if shared:
        lines += ["", f"Warning: {max(shared.values())} validation question(s) are also training questions; "
                      f"a checkpoint that memorized them scores higher on validation than it should."]
    return lines


def _plot(results: dict, models: list[str], benchmarks: list[str], path: Path, title: str) -> None:
    """Bars per model and benchmark, with the 95% interval of each accuracy (normal approximation)."""
    means: dict = {}
    errs: dict = {}
    for model in models:
        for bench in benchmarks:
            s = results.get(model, {}).get(bench)
            if s and s["accuracy"] is not None:  # None: no question answered (every request failed)
                p, n = s["accuracy"], max(1, s.get("answered", s["n"]))
                means.setdefault(model, {})[bench] = p
                errs.setdefault(model, {})[bench] = 1.96 * math.sqrt(p * (1 - p) / n)
    plot_bars(means, errs, benchmarks, path, title)


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

    results, found = collect_runs(run_dirs)
    # The math benchmarks, their average, then the general ones (IFEval, MT-Bench, lm-eval tasks) and the
    # critique-format share: a model's drift at a glance. Without general benchmarks the table is as before.
    math = [b for b in found if not is_general(b)]
    general = [b for b in found if is_general(b)]
    benchmarks = [*math, *general]
    models = list(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in models:
        accs = [results[model].get(b, {}).get("accuracy") for b in benchmarks]
        present = [a for a, b in zip(accs, benchmarks) if a is not None and b in math]
        avg = sum(present) / len(present) if len(present) == len(math) and present else None
        rows.append((model, accs, avg))
    fmt = lambda a: "–" if a is None else f"{100 * a:.1f}"
    # MT-Bench has a mean rating (1-10), not an accuracy.
    rating = lambda m: "–" if results[m].get("mt_bench", {}).get("score") is None else f"{results[m]['mt_bench']['score']:.2f}"  # noqa: E731
    cells = lambda m, accs, avg: [*map(fmt, accs[:len(math)]), fmt(avg),  # noqa: E731
                                  *(rating(m) if b == "mt_bench" else fmt(a) for a, b in zip(accs[len(math):], general))]
    shares = {m: glance(results[m])["critique_format"] for m in models} if general else {}
    share = lambda m: [] if not general else ["–" if shares[m] is None else f"{100 * shares[m]:.0f}%"]  # noqa: E731
    header = [*math, "math avg" if general else "avg", *general, *(["critique-format"] if general else [])]
    lines = [f"# {title}", "", "| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    lines += [f"| {m} | " + " | ".join([*cells(m, accs, avg), *share(m)]) + " |" for m, accs, avg in rows]
    lines += ["", ("Math average only where a model has every math benchmark; IFEval is prompt-level strict accuracy; "
                   "MT-Bench is the mean judge rating (1-10); critique-format is the share of a model's outputs that "
                   "look like critiques."
                   if general else "Average only where a model has every benchmark.")
              + " Per-sample outputs: `<run>/eval/<model>/<benchmark>/samples.jsonl`."]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    with open(out_dir / "table.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", *benchmarks, "avg", *(["critique_format"] if general else [])])
        for m, accs, avg in rows:
            writer.writerow([m, *("" if a is None else f"{100 * a:.2f}" for a in accs), "" if avg is None else f"{100 * avg:.2f}",
                             *([] if not general else ["" if shares[m] is None else f"{100 * shares[m]:.2f}"])])
    _plot(results, models, benchmarks, out_dir / "table.png", title)
    return {"models": models, "benchmarks": benchmarks, "rows": rows}


# ---------------------------------------------------------------------- several training seeds


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def _pm(values: list[float], sign: bool = False) -> str:
    """'41.7 ± 2.1' (percent) over seeds; a single value without ±."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    head = f"{100 * mean:+.1f}" if sign else f"{100 * mean:.1f}"
    return head if len(values) == 1 else f"{head} ± {100 * std:.1f}"


def write_seed_report(eval_root: Path, labels: dict[str, list[tuple[int, str]]], benchmarks: list[str], out_dir: Path,
                      base: str = "base", title: str = "critkit results", notes: list[str] = (),
                      selections: dict[str, dict] | None = None) -> dict:
    """report.md / results.json / seeds.csv / report.png for a run whose sets were trained with several seeds.

    `labels` maps each set to its (seed, eval folder name) pairs. Accuracy and the paired Δ vs base
    are shown as mean ± standard deviation over the seeds that finished; seeds.csv and the per-seed
    table keep every seed's numbers with the per-seed 95% CI of Δ. `selections` maps an eval
    folder name (<set>@seed<k>) to its checkpoint selection, as in write_report: the per-seed
    table and seeds.csv name each seed's chosen checkpoint, and results.json records it.
    """
    import csv

    selections = selections or {}
    base_scores = collect(eval_root, [base], benchmarks).get(base, {})
    summary: dict = {base: {"scores": base_scores}}
    per_seed_rows, plot_means, plot_errs = [], {}, {}
    for name, runs in labels.items():
        entry: dict = {"seeds": {}, "mean": {}, "std": {}, "delta_mean": {}, "delta_std": {}}
        for seed, label in runs:
            scores = collect(eval_root, [label], benchmarks).get(label, {})
            if not scores:
                continue
            deltas = {}
            for bench in scores:
                if scores[bench].get("accuracy") is not None and (eval_root / base / bench / "samples.jsonl").exists():
                    d, hw, n = paired_difference(_correct_by_id(eval_root / label / bench / "samples.jsonl"),
                                                 _correct_by_id(eval_root / base / bench / "samples.jsonl"))
                    deltas[bench] = {"difference": d, "ci95_half_width": hw, "n": n, "significant": bool(abs(d) > hw)}
            entry["seeds"][seed] = {"label": label, "scores": scores, "delta_vs_base": deltas}
            if label in selections:
                entry["seeds"][seed]["checkpoint"] = _checkpoint_entry(selections[label])
            per_seed_rows.append((name, seed, scores, deltas, label))
        for bench in benchmarks:
            accs = [s["scores"][bench]["accuracy"] for s in entry["seeds"].values()
                    if s["scores"].get(bench, {}).get("accuracy") is not None]
            diffs = [s["delta_vs_base"][bench]["difference"] for s in entry["seeds"].values() if bench in s["delta_vs_base"]]
            if accs:
                entry["mean"][bench], entry["std"][bench] = mean_std(accs)
            if diffs:
                entry["delta_mean"][bench], entry["delta_std"][bench] = mean_std(diffs)
        summary[name] = entry
        plot_means[name] = entry["mean"]
        plot_errs[name] = entry["std"]

    lines = [f"# {title}", "", f"Accuracy (%) on held-out questions, mean ± standard deviation over training seeds "
             f"(sample std, n - 1); Δ is the paired difference from `{base}` per seed, then mean ± std over seeds.", ""]
    lines += ["| model | seeds | " + " | ".join(benchmarks) + " | Δ vs base | critique-format | no answer |",
              "|" + "---|" * (len(benchmarks) + 5)]
    if base_scores:
        cells = [format_accuracy(base_scores[b], unit="") if b in base_scores else "–" for b in benchmarks]
        lines.append(f"| {base} | – | " + " | ".join(cells) + f" | – | {_share(base_scores, 'critique_format')} | "
                     f"{_share(base_scores, 'no_answer')} |")
    for name in labels:
        seeds = summary[name]["seeds"]
        cells, deltas, all_scores = [], [], {}
        for bench in benchmarks:
            cells.append(_pm([s["scores"][bench]["accuracy"] for s in seeds.values()
                              if s["scores"].get(bench, {}).get("accuracy") is not None]))
            diffs = [s["delta_vs_base"][bench]["difference"] for s in seeds.values() if bench in s["delta_vs_base"]]
            if diffs:
                deltas.append(_pm(diffs, sign=True))
        for s in seeds.values():
            for bench, sc in s["scores"].items():
                all_scores[f"{s['label']}/{bench}"] = sc
        lines.append(f"| {name} | {len(seeds)} | " + " | ".join(cells) + f" | {'; '.join(deltas) or '–'} | "
                     f"{_share(all_scores, 'critique_format')} | {_share(all_scores, 'no_answer')} |")
    # At a glance: each set's numbers averaged over its seeds.
    glances = {base: glance(base_scores)} if base_scores else {}
    for name in labels:
        per_seed = [glance(s["scores"]) for s in summary[name]["seeds"].values()]
        if per_seed:
            glances[name] = {**per_seed[0], **{k: _mean([g[k] for g in per_seed])
                                               for k in ("math_avg", "ifeval", "mt_bench", "critique_format")}}
            summary[name]["glance"] = glances[name]
    lines += glance_lines(glances)
    chosen = "checkpoint | " if selections else ""
    lines += ["", "## Per seed", "", f"| model | seed | {chosen}" + " | ".join(benchmarks) + " | Δ vs base (95% CI) |",
              "|" + "---|" * (len(benchmarks) + 3 + bool(selections))]
    for name, seed, scores, deltas, label in per_seed_rows:
        cells = [format_accuracy(scores[b], unit="") if b in scores else "–" for b in benchmarks]
        delta = "; ".join(f"{100 * d['difference']:+.1f} ± {100 * d['ci95_half_width']:.1f}" for d in deltas.values()) or "–"
        chosen = f"{_chosen(selections.get(label))} | " if selections else ""
        lines.append(f"| {name} | {seed} | {chosen}" + " | ".join(cells) + f" | {delta} |")
    claims = claims_section(eval_root, {name: [label for _, label in runs] for name, runs in labels.items()}, benchmarks, out_dir)
    lines += [*_selection_lines(selections), *claims, "", *notes]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    (out_dir / "results.json").write_text(json.dumps(summary, indent=1))
    with open(out_dir / "seeds.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "seed", "benchmark", "accuracy", "correct", "n", "delta_vs_base", "delta_ci95_half_width",
                         "checkpoint"])
        for bench, s in base_scores.items():
            writer.writerow([base, "", bench, _fraction(s["accuracy"]), s["correct"], s["n"], "", "", ""])
        for name, seed, scores, deltas, label in per_seed_rows:
            for bench, s in scores.items():
                d = deltas.get(bench, {})
                writer.writerow([name, seed, bench, _fraction(s["accuracy"]), s["correct"], s["n"],
                                 f"{d['difference']:.6f}" if d else "", f"{d['ci95_half_width']:.6f}" if d else "",
                                 selections[label]["best"] if label in selections else ""])
    if base_scores:
        plot_means = {base: {b: s["accuracy"] for b, s in base_scores.items() if s["accuracy"] is not None}, **plot_means}
    plot_bars(plot_means, plot_errs, benchmarks, out_dir / "report.png", title)
    return summary


def _fraction(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _share(scores: dict, key: str) -> str:
    values = [s[key] for s in scores.values() if key in s]
    return f"{100 * sum(values) / len(values):.0f}%" if values else "–"


def plot_bars(means: dict[str, dict[str, float]], errs: dict[str, dict[str, float]], benchmarks: list[str], path: Path,
              title: str) -> None:
    """Grouped bars of accuracy per row and benchmark, with error bars from `errs` (a CI or a std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = list(means)
    width = 0.8 / max(1, len(benchmarks))
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(rows) + 2), 3.6))
    for j, bench in enumerate(benchmarks):
        xs = [i + j * width for i, r in enumerate(rows) if bench in means[r]]
        ys = [100 * means[r][bench] for r in rows if bench in means[r]]
        es = [100 * errs.get(r, {}).get(bench, 0.0) for r in rows if bench in means[r]]
        bars = ax.bar(xs, ys, width, yerr=es, capsize=3, label=bench)
        ax.bar_label(bars, fmt="%.0f", padding=2, fontsize=8)
    ax.set_xticks([i + width * (len(benchmarks) - 1) / 2 for i in range(len(rows))], rows, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    if len(benchmarks) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(rows: list[dict], benchmarks: list[str], out_dir: Path, title: str = "critkit results",
                notes: list[str] = ()) -> list[dict]:
    """An ablation table (rows variant x method, columns benchmarks + average) as markdown, CSV and PNG.

    Each row is {"variant", "method", "seeds": {seed: {benchmark: accuracy}}}. A cell is the mean
    over seeds, with ± the standard deviation when there are several; the average is taken per seed
    over the benchmarks (only where a seed has every benchmark), then over seeds. table_seeds.csv
    holds every seed's numbers.
    """
    import csv

    table = []
    for row in rows:
        # A benchmark where no question was answered (every request failed) has no accuracy: missing.
        row = {**row, "seeds": {k: {b: v for b, v in s.items() if v is not None} for k, s in row["seeds"].items()}}
        per_bench = {b: [s[b] for s in row["seeds"].values() if b in s] for b in benchmarks}
        avgs = [sum(s[b] for b in benchmarks) / len(benchmarks) for s in row["seeds"].values()
                if benchmarks and all(b in s for b in benchmarks)]
        table.append({**row, "per_bench": per_bench, "avg": avgs})
    several = any(len(r["seeds"]) > 1 for r in table)
    lines = [f"# {title}", "", "Accuracy (%)" + (", mean ± standard deviation over training seeds (sample std)"
                                                 if several else "") + "; avg is the mean over the benchmarks.", ""]
    lines += ["| variant | method | " + ("seeds | " if several else "") + " | ".join(benchmarks) + " | avg |",
              "|---" * (len(benchmarks) + 3 + several) + "|"]
    for r in table:
        cells = [_pm(r["per_bench"][b]) for b in benchmarks] + [_pm(r["avg"])]
        lines.append(f"| {r['variant']} | {r['method']} | " + (f"{len(r['seeds'])} | " if several else "") + " | ".join(cells) + " |")
    lines += ["", *notes]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.md").write_text("\n".join(lines) + "\n")
    fmt = lambda xs: f"{100 * mean_std(xs)[0]:.2f}" if xs else ""
    sd = lambda xs: f"{100 * mean_std(xs)[1]:.2f}" if xs else ""
    with open(out_dir / "table.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        cols = [*benchmarks, "avg"]
        writer.writerow(["variant", "method", "seeds", *cols, *(f"{c}_std" for c in cols)])
        for r in table:
            values = [r["per_bench"][b] for b in benchmarks] + [r["avg"]]
            writer.writerow([r["variant"], r["method"], len(r["seeds"]), *map(fmt, values), *map(sd, values)])
    with open(out_dir / "table_seeds.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["variant", "method", "seed", *benchmarks, "avg"])
        for r in table:
            for seed, s in r["seeds"].items():
                avg = sum(s[b] for b in benchmarks) / len(benchmarks) if all(b in s for b in benchmarks) else None
                writer.writerow([r["variant"], r["method"], seed, *(f"{100 * s[b]:.2f}" if b in s else "" for b in benchmarks),
                                 "" if avg is None else f"{100 * avg:.2f}"])
    labels = [f"{r['variant']}/{r['method']}" if len({x['variant'] for x in table}) > 1 else r["method"] for r in table]
    means = {lab: {b: mean_std(r["per_bench"][b])[0] for b in benchmarks if r["per_bench"][b]} for lab, r in zip(labels, table)}
    errs = {lab: {b: mean_std(r["per_bench"][b])[1] for b in benchmarks if r["per_bench"][b]} for lab, r in zip(labels, table)}
    plot_bars(means, errs, benchmarks, out_dir / "table.png", title)
    return table
