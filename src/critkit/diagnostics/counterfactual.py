"""Counterfactual critique (CGD Table 11): does the model use what the critique says?

Each model answers every problem twice from the CGD input, once with the record's own (factual)
critique and once with a nonsense critique that has nothing to do with the problem, by greedy
decoding; both answers are graded against the record's gold answer. A model that reads the
critique should lose accuracy when the critique is nonsense. The answers are journaled as they
come (evaluation/durable.py), so an interrupted probe resumes; a problem whose request failed in
either condition is left out of the paired comparison and counted as `failed`.

Nonsense critiques, deterministic per record:
- "other" (default): the critique of a different record of the file (a different question and a
  different critique text), chosen with random.Random(f"{seed}:{record id}") among the samples
  used; a file with no such record falls back to the fixed text for that record.
- "fixed": FIXED_NONSENSE below, the same for every record.
"""

from __future__ import annotations

import random
import re
import tempfile
from contextlib import nullcontext
from pathlib import Path

from ..engine.backends import Sampling, TransformersBackend
from ..evaluation.durable import DONE, Item, SampleJournal, Step
from ..grading.answers import extract_answer, grade
from .common import INPUT_NOTE, Sample, messages, pyplot, save_figure

CONDITIONS = ("factual", "nonsense")
FIXED_NONSENSE = ("The essay's second paragraph describes the migration of arctic terns, but the dates it gives "
                  "for the spring equinox are a week late, and its closing sentence about tide tables only "
                  "repeats the introduction.")


def nonsense_critiques(samples: list[Sample], mode: str = "other", seed: int = 0) -> list[tuple[str, str]]:
    """(nonsense critique, where it came from: a record id or "fixed") for each sample."""
    if mode not in ("other", "fixed"):
        raise ValueError(f"unknown nonsense mode {mode!r}; use other or fixed")
    out = []
    for s in samples:
        if mode == "fixed":
            out.append((FIXED_NONSENSE, "fixed"))
            continue
        rng = random.Random(f"{seed}:{s.id}")  # str seeds are hashed with sha512: stable across runs
        usable = lambda o: o.question != s.question and o.critique.strip() != s.critique.strip()
        # A few random draws find one quickly; the scan afterwards keeps this correct for odd files.
        pick = next((o for o in (rng.choice(samples) for _ in range(20)) if usable(o)), None)
        if pick is None:
            others = [o for o in samples if usable(o)]
            pick = rng.choice(others) if others else None
        out.append((pick.critique, pick.id) if pick else (FIXED_NONSENSE, "fixed (no other record to borrow from)"))
    return out


def _answers(name: str, label: str, samples: list[Sample], swaps: list[tuple[str, str]], sampling: Sampling,
             batch_size: int, folder: Path) -> dict[str, list[tuple[dict, str]]]:
    """{condition: [(row, status) per sample]}: one model's greedy answers under both critiques.

    Journaled as evaluation is (evaluation/durable.py), in folder/counterfactual.<label>.jsonl: an
    interrupted probe generates only what is missing, and the model is not even loaded when
    nothing is. A request that fails is kept with its error instead of ending the probe.
    """
    convs = {"factual": [messages(s, s.critique) for s in samples],
             "nonsense": [messages(s, text) for s, (text, _) in zip(samples, swaps)]}

    def next_step(row: dict) -> Step | None:
        return None if "output" in row else Step("answer", convs[row["condition"]][row["index"]], sampling)

    def take(row: dict, step: Step, texts: list[str]) -> None:
        row["output"] = texts[0] if texts else ""

    items = [Item(f"{cond}:{k}:{s.id}", {"id": s.id, "condition": cond, "index": k})
             for cond in CONDITIONS for k, s in enumerate(samples)]
    settings = {"probe": "counterfactual", "model": name, "sampling": sampling.as_dict()}
    path = folder / f"counterfactual.{re.sub(r'[^A-Za-z0-9_.@+-]', '_', label)}.jsonl"
    with SampleJournal(path, items, settings, next_step, take, desc=f"{label} counterfactual") as journal:
        if journal.pending:
            backend = TransformersBackend(name, batch_size=batch_size, progress=False)
            try:
                journal.run({"model": backend})
            finally:
                if hasattr(backend, "close"):
                    backend.close()
                del backend
        journal.finish()
    out: dict[str, list[tuple[dict, str]]] = {cond: [] for cond in CONDITIONS}
    for row, status in zip(journal.rows, journal.status):
        out[row["condition"]].append((row, status))
    return out


def counterfactual(samples: list[Sample], models: list[str], labels: list[str], max_new_tokens: int = 512,
                   nonsense: str = "other", seed: int = 0, batch_size: int = 8, journal_dir: str | Path | None = None) -> dict:
    """Both conditions for every model. `journal_dir` keeps each model's answers as they are made
    (run_probe passes its output folder); without one they go to a temporary folder."""
    from scipy.stats import binomtest

    swaps = nonsense_critiques(samples, nonsense, seed)
    per_sample: list[dict] = [{"id": s.id, "gold": s.gold, "nonsense_from": src, "nonsense_critique": text,
                               "models": {}} for s, (text, src) in zip(samples, swaps)]
    sampling = Sampling(temperature=0.0, max_new_tokens=max_new_tokens)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() if journal_dir is None else nullcontext(journal_dir) as folder:
        for name, label in zip(models, labels):
            answers = _answers(name, label, samples, swaps, sampling, batch_size, Path(folder))
            correct: dict[str, list[bool | None]] = {}
            for cond in CONDITIONS:
                correct[cond] = []
                for row, sample, (answer, status) in zip(per_sample, samples, answers[cond]):
                    if status == DONE:
                        text = answer["output"]
                        ok = grade(text, sample.gold)
                        entry = {"output": text, "extracted": extract_answer(text), "correct": ok}
                    else:  # the request failed: no answer, so neither right nor wrong
                        ok, entry = None, {"output": None, "error": answer.get("error"), "correct": None}
                    correct[cond].append(ok)
                    row["models"].setdefault(label, {})[cond] = entry
            # Paired: only the problems answered under both critiques count.
            both = [(f, c) for f, c in zip(correct["factual"], correct["nonsense"]) if f is not None and c is not None]
            n = len(both)
            lost = sum(f and not c for f, c in both)
            gained = sum(c and not f for f, c in both)
            acc = {cond: {"accuracy": sum(pair[j] for pair in both) / n if n else None, "correct": sum(pair[j] for pair in both),
                          "n": n} for j, cond in enumerate(CONDITIONS)}
            results[label] = {
                "model": name,
                **acc,
                "failed": len(samples) - n,
                "difference": acc["nonsense"]["accuracy"] - acc["factual"]["accuracy"] if n else None,
                "right_to_wrong": lost,
                "wrong_to_right": gained,
                # Exact McNemar test: only the problems whose outcome flips carry information.
                "mcnemar_p": binomtest(lost, lost + gained).pvalue if lost + gained else None,
            }
    return {
        "probe": "counterfactual",
        "measures": "accuracy (graded against record.gold with critkit.grading.grade) of greedy answers given the "
                    "factual critique and given a nonsense critique",
        "nonsense": {"other": "the critique of a different record in the file (different question and critique), "
                              f"chosen per record with random.Random(f'{seed}:{{record id}}')",
                     "fixed": f"a fixed irrelevant text: {FIXED_NONSENSE!r}"}[nonsense],
        "nonsense_mode": nonsense,
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "input": INPUT_NOTE.split("; target")[0] + "; greedy generation (critkit.backends.TransformersBackend)",
        "results": results,
        "samples": per_sample,
        "summary": [f"{label}: accuracy factual {r['factual']['correct']}/{r['factual']['n']}, nonsense "
                    f"{r['nonsense']['correct']}/{r['nonsense']['n']} (right->wrong {r['right_to_wrong']}, "
                    f"wrong->right {r['wrong_to_right']})" + (f", {r['failed']} not answered (failed requests)"
                                                              if r["failed"] else "") for label, r in results.items()],
    }


def plot(result: dict, path: Path) -> None:
    """Accuracy per model under the factual and the nonsense critique."""
    plt = pyplot()
    labels = list(result["results"])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 * len(labels) + 2), 3.8))
    width = 0.38
    for j, cond in enumerate(CONDITIONS):
        rs = [result["results"][m][cond] for m in labels]
        bars = ax.bar([i + (j - 0.5) * width for i in range(len(labels))],
                      [100 * (r["accuracy"] or 0) for r in rs], width, label=f"{cond} critique", color=("C2", "C3")[j])
        ax.bar_label(bars, labels=[f"{r['correct']}/{r['n']}" for r in rs], padding=2, fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=15)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(f"Counterfactual critique (nonsense: {result['nonsense_mode']})", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)
