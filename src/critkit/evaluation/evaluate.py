"""Evaluation: benchmark spec -> generate -> extract -> grade -> per-sample JSONL and scores.

Every model is asked with the Qwen2.5-Math cot prompt (question only), whatever it was trained
on: that is how CFT and CGD models are used. Per-sample outputs stay on disk, so a run that stops
resumes where it was, and a finished one can be regraded without generating again.

Modes (CFT appendix A.4, Table 11):
- `direct`: answer the question.
- `self-critique`: one generation that solves, critiques its own solution and corrects it.
- `self-critique-2stage`: solve; critique the solution in a second call ("Critique Conclusion:
  Correct/Incorrect"); while it is judged incorrect, solve again, up to `rounds` attempts.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ..engine.backends import Sampling
from .benchmarks import Problem, get_benchmark, load_benchmark
from ..grading.answers import extract_answer, extract_choice
from ..grading.rules import match_answer
from ..grading.thinking import strip_thinking
from ..grading.verdicts import parse_verdict
from ..prompts import answer_prompt, load_prompt, render
from ..data.records import read_jsonl, write_jsonl

__all__ = ["evaluate", "evaluate_benchmark", "pass_at_k", "CRITIQUE_MARKERS", "MODES"]

# CGD found CFT models drifting into critique-writing; count outputs that look like critiques.
CRITIQUE_MARKERS = ("Conclusion: right", "Conclusion: wrong", "[END]", "Critique:")
MODES = ("direct", "self-critique", "self-critique-2stage")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def _majority(extracted: list[str | None]) -> str | None:
    votes = Counter(e.strip() for e in extracted if e)
    return votes.most_common(1)[0][0] if votes else None  # ties: the first answer seen wins


def _score(samples: list[dict], n: int) -> dict:
    q = len(samples)
    if not q:
        return {"n": 0, "correct": 0, "accuracy": 0.0}
    flat = [r for s in samples for r in s["responses"]]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    scores = {
        "n": q,
        "samples_per_question": n,
        "correct": sum(s["correct"][0] for s in samples),  # first (greedy) sample
        "accuracy": sum(sum(s["correct"]) / len(s["correct"]) for s in samples) / q,  # mean over samples
        "no_answer": sum(e is None for s in samples for e in s["extracted"]) / len(flat),
        "critique_format": sum(any(m in r for m in CRITIQUE_MARKERS) for r in flat) / len(flat),
        "empty_output": sum(not r.strip() for r in flat) / len(flat),
    }
    if n > 1:
        for k in ks:
            scores[f"pass@{k}"] = sum(pass_at_k(n, sum(s["correct"]), k) for s in samples) / q
        scores[f"maj@{n}"] = sum(s["majority_correct"] for s in samples) / q
    return scores


def _grade(problem: Problem, response: str) -> tuple[str | None, bool]:
    if problem.choices is not None:
        letter = extract_choice(response, len(problem.choices))
        return letter, letter == problem.gold
    extracted = extract_answer(response)
    return extracted, match_answer(extracted, problem.gold, problem.grading)


def _generate(backend, problems: list[Problem], sampling: Sampling, mode: str, rounds: int, desc: str) -> list[dict]:
    """{'responses': [...], 'trace': [...]} per problem."""
    if mode == "direct":
        outs = backend.generate([answer_prompt(p.question) for p in problems], sampling, desc=desc)
        return [{"responses": o} for o in outs]
    if sampling.n != 1:
        raise ValueError(f"mode {mode} draws one answer per question; use n=1")
    if mode == "self-critique":
        # CFT A.4.1's single-pass instruction in place of the cot one, the question alone as in direct mode.
        convs = [[{"role": "system", "content": load_prompt("self_critique_single_system")},
                  {"role": "user", "content": p.question}] for p in problems]
        return [{"responses": o} for o in backend.generate(convs, sampling, desc=desc)]
    if mode != "self-critique-2stage":
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    answers = [o[0] for o in backend.generate([answer_prompt(p.question) for p in problems], sampling, desc=f"{desc} solve")]
    traces: list[list[dict]] = [[{"solution": a}] for a in answers]
    open_ids = list(range(len(problems)))
    for attempt in range(rounds):
        # A reasoning model's thinking is not part of the solution it submits for critique.
        checks = backend.generate([[{"role": "user", "content": render("self_critique_check_user", question=problems[i].question,
                                                                        response=strip_thinking(answers[i]) or answers[i])}]
                                   for i in open_ids],
                                  sampling, desc=f"{desc} critique {attempt + 1}")
        retry = []
        for i, check in zip(open_ids, checks):
            verdict = parse_verdict(check[0])
            traces[i][-1].update(critique=check[0], verdict=verdict or "unparsed")
            if verdict == "wrong" and attempt + 1 < rounds:
                retry.append(i)
        if not retry:
            break
        # A fresh attempt needs a fresh draw: shift the seed per round so a sampled retry differs.
        again = backend.generate([answer_prompt(problems[i].question) for i in retry],
                                 replace(sampling, seed=sampling.seed + 1000 * (attempt + 1)), desc=f"{desc} retry {attempt + 1}")
        for i, o in zip(retry, again):
            answers[i] = o[0]
            traces[i].append({"solution": o[0]})
        open_ids = retry
    return [{"responses": [a], "trace": t} for a, t in zip(answers, traces)]


def evaluate_benchmark(backend, benchmark: str, out_dir: str | Path, sampling: Sampling, limit: int | None = None,
                       mode: str = "direct", rounds: int = 8, regrade: bool = False) -> dict:
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
        for p, gen in zip(todo, _generate(backend, todo, sampling, mode, rounds, f"eval {spec.name}")):
            done[p.id] = {"id": p.id, "question": p.question, "gold": p.gold, **gen}
    samples = []
    for p in problems:
        row = done[p.id]
        if "correct" not in row or regrade or todo or row.get("spec_version") != spec.version:
            # Samples graded under another version of the spec (another gold or grading rule) are regraded.
            row.update(gold=p.gold, spec_version=spec.version)
            graded = [_grade(p, r) for r in row["responses"]]
            row["extracted"] = [e for e, _ in graded]
            row["correct"] = [c for _, c in graded]
            if len(graded) > 1:
                voted = _majority(row["extracted"])
                row["majority_correct"] = voted is not None and _grade(p, f"\\boxed{{{voted}}}")[1]
        samples.append(row)
    write_jsonl(samples_path, samples)
    scores = {"benchmark": spec.name, "spec_version": spec.version, "model": getattr(backend, "name", None), "mode": mode,
              "sampling": sampling.as_dict(), **_score(samples, sampling.n), "bad_rows": len(bad), "bad_examples": bad[:5]}
    if mode == "self-critique-2stage":
        scores["mean_attempts"] = sum(len(s.get("trace", [])) for s in samples) / max(1, len(samples))
    (out / "scores.json").write_text(json.dumps(scores, indent=1))
    return scores


def evaluate(backend, benchmarks: list[str], out_dir: str | Path, sampling: Sampling, limit: int | None = None,
             mode: str = "direct", rounds: int = 8) -> dict:
    return {b: evaluate_benchmark(backend, b, out_dir, sampling, limit=limit, mode=mode, rounds=rounds) for b in benchmarks}
