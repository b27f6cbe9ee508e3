"""Checkpoint selection on a validation split that shares no question with any test set.

The released CFT code picks its checkpoint on MATH-500 and then reports the full MATH test,
which contains MATH-500: the selection leaks into the score. Here the validation questions are
compared (normalized text) with every benchmark file found and with the run's own test split
before anything is evaluated, and an overlap stops the selection.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..engine.backends import Sampling, TransformersBackend
from .benchmarks import BENCHMARKS, data_dir, get_benchmark, load_benchmark
from .evaluate import evaluate_benchmark

__all__ = ["select_checkpoints", "check_disjoint"]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def check_disjoint(validation: str, tests: list[str]) -> list[str]:
    """The test sets checked; raises ValueError naming the overlap if any question is shared."""
    questions = {_norm(p.question) for p in load_benchmark(get_benchmark(validation))[0]}
    checked = []
    for test in tests:
        spec = get_benchmark(test)
        path = Path(spec.path) if Path(spec.path).is_absolute() else data_dir() / spec.path
        if not path.exists():
            continue
        shared = [p.question for p in load_benchmark(spec)[0] if _norm(p.question) in questions]
        if shared:
            raise ValueError(f"validation {validation} shares {len(shared)} question(s) with test set {spec.name}, "
                             f"e.g. {shared[0][:80]!r}: choose a disjoint validation split")
        checked.append(spec.name)
    return checked


def _candidates(method_dir: Path) -> list[Path]:
    steps = sorted(method_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return [*steps, *([method_dir / "final"] if (method_dir / "final").exists() else [])]


def select_checkpoints(run_dir: Path, method: str | None = None, validation: str | None = None, limit: int | None = None,
                       max_new_tokens: int = 512, batch_size: int = 32) -> dict:
    validation = validation or str(run_dir / "records" / "validation.jsonl")
    if not Path(validation).exists() and validation not in BENCHMARKS:
        raise FileNotFoundError(f"no validation split at {validation}: pass --validation, or set data.demo.validation")
    tests = list(BENCHMARKS) + ([str(run_dir / "records" / "test.jsonl")] if (run_dir / "records" / "test.jsonl").exists() else [])
    checked = check_disjoint(validation, tests)
    methods = [method] if method else sorted(p.name for p in (run_dir / "models").iterdir() if p.is_dir())
    sampling = Sampling(max_new_tokens=max_new_tokens)
    choice = {}
    for m in methods:
        scores = {}
        for cand in _candidates(run_dir / "models" / m):
            backend = TransformersBackend(str(cand), batch_size=batch_size)
            backend.name = f"{m}/{cand.name}"
            s = evaluate_benchmark(backend, validation, run_dir / "select" / m / cand.name, sampling, limit=limit)
            scores[cand.name] = s["accuracy"]
        if not scores:
            raise FileNotFoundError(f"{run_dir / 'models' / m}: no checkpoint-* or final folder")
        best = max(scores, key=lambda name: scores[name])  # ties: the earliest checkpoint
        record = {"validation": validation, "disjoint_from": checked, "scores": scores, "best": best,
                  "best_path": str(run_dir / "models" / m / best), "sampling": sampling.as_dict()}
        path = run_dir / "models" / m / "selection.json"
        path.write_text(json.dumps(record, indent=1))
        choice[m] = {**record, "path": str(path)}
    if choice:  # validation accuracy over training (CGD Figures 6 and 8), one line per method
        from ..training.curves import plot_checkpoint_accuracy

        (run_dir / "select").mkdir(parents=True, exist_ok=True)
        plot_checkpoint_accuracy({m: c["scores"] for m, c in choice.items()}, run_dir / "select" / "accuracy.png")
    return choice
