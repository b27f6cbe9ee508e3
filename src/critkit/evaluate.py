"""Evaluation: benchmark spec -> generate -> extract -> grade -> per-sample JSONL and scores.

Every model is asked with the Qwen2.5-Math cot prompt (question only), whatever it was trained
on: that is how CFT and CGD models are used. Per-sample outputs stay on disk, so a run that stops
resumes where it was, and a finished one can be regraded without generating again.
"""

from __future__ import annotations

import json
from pathlib import Path

from .backends import Sampling
from .benchmarks import get_benchmark, load_benchmark
from .grading import answers_match, extract_answer
from .methods import answer_prompt
from .records import read_jsonl, write_jsonl

__all__ = ["evaluate", "evaluate_benchmark", "CRITIQUE_MARKERS"]

# CGD found CFT models drifting into critique-writing; count outputs that look like critiques.
CRITIQUE_MARKERS = ("Conclusion: right", "Conclusion: wrong", "[END]", "Critique:")


def _score(samples: list[dict]) -> dict:
    n = len(samples)
    correct = sum(s["correct"] for s in samples)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else 0.0,
        "no_answer": sum(s["extracted"] is None for s in samples) / n if n else 0.0,
        "critique_format": sum(any(m in s["response"] for m in CRITIQUE_MARKERS) for s in samples) / n if n else 0.0,
    }


def evaluate_benchmark(backend, benchmark: str, out_dir: str | Path, sampling: Sampling,
                       limit: int | None = None, regrade: bool = False) -> dict:
    """Scores for one benchmark; generation is skipped for samples already on disk."""
    spec = get_benchmark(benchmark)
    out = Path(out_dir) / spec.name
    problems, bad = load_benchmark(spec, limit=limit)
    samples_path = out / "samples.jsonl"
    done: dict[str, dict] = {}
    if samples_path.exists():
        done = {row["id"]: row for _, row in read_jsonl(samples_path)}
    todo = [p for p in problems if p.id not in done]
    if todo:
        texts = backend.generate([answer_prompt(p.question) for p in todo], sampling, desc=f"eval {spec.name}")
        for p, outs in zip(todo, texts):
            response = outs[0] if outs else ""
            done[p.id] = {"id": p.id, "question": p.question, "gold": p.gold, "response": response}
    samples = []
    for p in problems:
        row = done[p.id]
        if "correct" not in row or regrade or todo:
            row["extracted"] = extract_answer(row["response"])
            row["correct"] = answers_match(row["extracted"], p.gold)
        samples.append(row)
    write_jsonl(samples_path, samples)
    scores = {"benchmark": spec.name, "spec_version": spec.version, "model": getattr(backend, "name", None),
              "sampling": sampling.as_dict(), **_score(samples), "bad_rows": len(bad), "bad_examples": bad[:5]}
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return scores


def evaluate(backend, benchmarks: list[str], out_dir: str | Path, sampling: Sampling, limit: int | None = None) -> dict:
    return {b: evaluate_benchmark(backend, b, out_dir, sampling, limit=limit) for b in benchmarks}
