"""Evaluation: benchmark spec -> generate -> extract -> grade -> per-sample JSONL and scores.

Every model is asked with the Qwen2.5-Math cot prompt (question only), whatever it was trained
on: that is how CFT and CGD models are used. samples.jsonl is written as the samples end
(durable.py): a run that stops, even by kill -9, resumes where it was, each self-critique round
included; a finished one can be regraded without generating again. A request that fails for good
leaves a failed sample with its reason: counted in `failed`, left out of `accuracy`, and sent
again with `retry_failed` (`critkit eval --retry-failed`).

Modes (CFT appendix A.4, Table 11):
- `direct`: answer the question.
- `self-critique`: one generation that solves, critiques its own solution and corrects it.
- `self-critique-2stage`: solve; critique the solution in a second call ("Critique Conclusion:
  Correct/Incorrect"); while it is judged incorrect, solve again, up to `rounds` attempts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

from ..engine.backends import Sampling
from .benchmarks import Problem, get_benchmark, load_benchmark
from .drift import CRITIQUE_MARKERS, critique_share
from .durable import DONE, Item, SampleJournal, Step, write_scores
from .ifeval import evaluate_ifeval  # the lmeval extra is imported when IFEval runs, not here
from .mt_bench import JUDGE_SAMPLING, evaluate_mt_bench
from ..grading.answers import extract_answer, extract_choice
from ..grading.rules import match_answer
from ..grading.thinking import strip_thinking
from ..grading.verdicts import parse_verdict
from ..prompts import answer_prompt, load_prompt, render

__all__ = ["evaluate", "evaluate_benchmark", "pass_at_k", "format_accuracy", "CRITIQUE_MARKERS", "MODES"]

# CGD found CFT models drifting into critique-writing; count outputs that look like critiques (drift.py).
MODES = ("direct", "self-critique", "self-critique-2stage")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def _majority(extracted: list[str | None]) -> str | None:
    votes = Counter(e.strip() for e in extracted if e)
    return votes.most_common(1)[0][0] if votes else None  # ties: the first answer seen wins


def _score(samples: list[dict], failed: int, n: int) -> dict:
    """Scores over the answered (graded) samples; `n` counts the failed ones too, `accuracy` does not."""
    q = len(samples)
    if not q:  # nothing answered: there is no accuracy, and 0 would read as "all wrong"
        return {"n": failed, "answered": 0, "failed": failed, "correct": 0, "accuracy": None}
    flat = [r for s in samples for r in s["responses"]]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= n]
    scores = {
        "n": q + failed,
        "answered": q,
        "failed": failed,
        "samples_per_question": n,
        "correct": sum(s["correct"][0] for s in samples),  # first (greedy) sample
        "accuracy": sum(sum(s["correct"]) / len(s["correct"]) for s in samples) / q,  # mean over samples and questions
        "no_answer": sum(e is None for s in samples for e in s["extracted"]) / len(flat),
        "critique_format": critique_share(flat),
        "empty_output": sum(not r.strip() for r in flat) / len(flat),
    }
    if n > 1:
        for k in ks:
            scores[f"pass@{k}"] = sum(pass_at_k(n, sum(s["correct"]), k) for s in samples) / q
        scores[f"maj@{n}"] = sum(s["majority_correct"] for s in samples) / q
    return scores


def format_accuracy(scores: dict, unit: str = "%") -> str:
    """'41.7% (10/24)'; with failed samples '41.7% (10/22 answered, 2 failed)': accuracy is over the
    answered ones. Reads scores.json files from before failures were counted too."""
    failed = scores.get("failed") or 0
    answered = scores.get("answered", scores["n"] - failed)
    if "score" in scores:  # MT-Bench (mt_bench.py): a mean judge rating out of 10, not an accuracy
        unparsable = f", {scores['unparsable']} unparsable" if scores.get("unparsable") else ""
        rated = f"{scores['ratings']} ratings{unparsable}" + (f", {failed} failed" if failed else "")
        return f"no rating ({rated})" if scores["score"] is None else f"{scores['score']:.2f}/10 ({rated})"
    if scores.get("accuracy") is None:
        return f"no answer ({failed} failed)"
    counts = f"{scores['correct']}/{answered}" + (f" answered, {failed} failed" if failed else "")
    return f"{100 * scores['accuracy']:.1f}{unit} ({counts})"


def _grade(problem: Problem, response: str) -> tuple[str | None, bool]:
    if problem.choices is not None:
        letter = extract_choice(response, len(problem.choices))
        return letter, letter == problem.gold
    extracted = extract_answer(response)
    return extracted, match_answer(extracted, problem.gold, problem.grading)


def _steps(mode: str, sampling: Sampling, rounds: int):
    """`next_step(row)` and `take(row, step, texts)` of a mode: the requests a sample makes (durable.py runs them)."""
    if mode in ("direct", "self-critique"):
        def prompt(question: str) -> list[dict]:
            if mode == "direct":
                return answer_prompt(question)
            # CFT A.4.1's single-pass instruction in place of the cot one, the question alone as in direct mode.
            return [{"role": "system", "content": load_prompt("self_critique_single_system")}, {"role": "user", "content": question}]

        def next_step(row: dict) -> Step | None:
            return None if "responses" in row else Step("answer", prompt(row["question"]), sampling)

        def take(row: dict, step: Step, texts: list[str]) -> None:
            row["responses"] = texts

        return next_step, take
    if mode != "self-critique-2stage":
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    if sampling.n != 1:
        raise ValueError(f"mode {mode} draws one answer per question; use n=1")
    if rounds < 1:
        raise ValueError("self-critique-2stage needs at least one round")

    def next_step(row: dict) -> Step | None:
        """Solve; critique the last solution; while it is judged wrong, solve again, up to `rounds` solutions."""
        trace = row.get("trace") or []
        if not trace or (trace[-1].get("verdict") == "wrong" and len(trace) < rounds):
            # A fresh attempt needs a fresh draw: shift the seed per round so a sampled retry differs.
            return Step(f"solve {len(trace) + 1}", answer_prompt(row["question"]),
                        replace(sampling, seed=sampling.seed + 1000 * len(trace)))
        if "critique" not in trace[-1]:
            # A reasoning model's thinking is not part of the solution it submits for critique.
            solution = trace[-1]["solution"]
            check = render("self_critique_check_user", question=row["question"], response=strip_thinking(solution) or solution)
            return Step(f"critique {len(trace)}", [{"role": "user", "content": check}], sampling)
        return None

    def take(row: dict, step: Step, texts: list[str]) -> None:
        if step.name.startswith("solve"):
            row.setdefault("trace", []).append({"solution": texts[0]})
        else:
            row["trace"][-1].update(critique=texts[0], verdict=parse_verdict(texts[0]) or "unparsed")
        if next_step(row) is None:
            row["responses"] = [row["trace"][-1]["solution"]]

    return next_step, take


def _graded(problem: Problem, row: dict, spec_version: int, regrade: bool) -> dict:
    # Samples graded under another version of the spec (another gold or grading rule) are regraded.
    if "correct" in row and not regrade and row.get("spec_version") == spec_version:
        return row
    row.update(gold=problem.gold, spec_version=spec_version)
    graded = [_grade(problem, r) for r in row["responses"]]
    row["extracted"] = [e for e, _ in graded]
    row["correct"] = [c for _, c in graded]
    if len(graded) > 1:
        voted = _majority(row["extracted"])
        row["majority_correct"] = voted is not None and _grade(problem, f"\\boxed{{{voted}}}")[1]
    return row


def evaluate_benchmark(backend, benchmark: str, out_dir: str | Path, sampling: Sampling, limit: int | None = None,
                       mode: str = "direct", rounds: int = 8, regrade: bool = False, retry_failed: bool = False) -> dict:
    """Scores for one benchmark (also written to scores.json), with `this_run`: what this call did.

    samples.jsonl is the journal (durable.py): each sample is appended as it ends, a rerun sends
    only what is missing, and failed samples are sent again with `retry_failed`. A sample whose
    request failed is kept with its error and counted as failed, never graded.
    """
    spec = get_benchmark(benchmark)
    out = Path(out_dir) / spec.name
    problems, bad = load_benchmark(spec, limit=limit)
    next_step, take = _steps(mode, sampling, rounds)
    name = getattr(backend, "name", None)
    settings = {"model": name, "mode": mode, "sampling": sampling.as_dict(),
                **({"rounds": rounds} if mode == "self-critique-2stage" else {})}
    items = [Item(p.id, {"id": p.id, "question": p.question, "gold": p.gold}) for p in problems]
    with SampleJournal(out / "samples.jsonl", items, settings, next_step, take, retry_failed=retry_failed,
                       desc=f"eval {spec.name}") as journal:
        if journal.pending:
            journal.run({"model": backend})
        rows = [_graded(p, row, spec.version, regrade) if status == DONE else row
                for p, row, status in zip(problems, journal.rows, journal.status)]
        journal.finish(rows)
        this_run = journal.summary()
    answered, failed = journal.outcome()
    scores = {"benchmark": spec.name, "spec_version": spec.version, "model": name, "mode": mode,
              "sampling": sampling.as_dict(), **_score(answered, len(failed), sampling.n), "failed_examples": failed[:5],
              "bad_rows": len(bad), "bad_examples": bad[:5]}
    if mode == "self-critique-2stage":
        scores["mean_attempts"] = sum(len(s.get("trace", [])) for s in answered) / max(1, len(answered))
    write_scores(out, scores)
    return {**scores, "this_run": this_run}


def evaluate(backend, benchmarks: list[str], out_dir: str | Path, sampling: Sampling, limit: int | None = None,
             mode: str = "direct", rounds: int = 8, retry_failed: bool = False, judge=None,
             judge_max_new_tokens: int = 2048) -> dict:
    """Scores per benchmark. `ifeval` is asked as a chat turn and scored by its verifiers (ifeval.py),
    `mt_bench` as two chat turns graded by `judge` (a backend; mt_bench.py), whatever the mode;
    every other name is a math or multiple-choice spec."""
    out = {}
    for b in benchmarks:
        if b == "ifeval":
            out[b] = evaluate_ifeval(backend, out_dir, sampling, limit=limit, retry_failed=retry_failed)
        elif b == "mt_bench":
            out[b] = evaluate_mt_bench(backend, judge, out_dir, sampling, limit=limit, retry_failed=retry_failed,
                                       judge_sampling=replace(JUDGE_SAMPLING, max_new_tokens=judge_max_new_tokens))
        else:
            out[b] = evaluate_benchmark(backend, b, out_dir, sampling, limit=limit, mode=mode, rounds=rounds,
                                        retry_failed=retry_failed)
    return out
