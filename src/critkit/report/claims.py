"""The papers' claims, tested on a run: two trained sets on the same held-out questions, the paired
difference of a measure with its 95% interval, and a verdict computed from that interval.

CLAIMS holds three, each a comparison of two sets by name:

- CFT beats SFT on the same noisy responses (CFT Table 2): `cft` vs `sft`, accuracy;
- CGD beats distilled SFT on the same refined answers (CGD Table 1): `cgd` vs `distilled-sft`, accuracy;
- CFT drifts into the critique format and CGD does not (CGD appendix D.1): `cft` vs `cgd`, the share of
  outputs in the critique format (evaluation's CRITIQUE_MARKERS, the report's critique-format column).

Every run whose sets include both sets of a claim gets the claim tested on each of its benchmarks
(report.md's "Claims" section, claims.json, report.html); the others are listed as not testable.

The paired difference over seeds and questions. Let A[s, q] be set A's score on question q with
training seed s (accuracy: the fraction of q's samples graded correct; critique format: the fraction
of q's outputs that carry a critique marker), for A's seeds s = 1..k_A, and B[t, q] likewise. Then

    Δ = mean over q of ( mean over s of A[s, q]  -  mean over t of B[t, q] )

over the questions that every seed of both sets answered: per question, A's mean over its seeds
minus B's, averaged over the questions. Its 95% interval is a percentile bootstrap (RESAMPLES draws
from a fixed seed, so the report is reproducible) in which each draw resamples the questions with
replacement, one draw for both sets (the comparison is paired by question), and, separately for A
and for B, the seeds with replacement.

Why both: a claim is about two methods, and a run leaves two things to chance, which questions were
asked and which model a training seed gave. A seed moves a model's score on many questions at once,
so an interval over questions alone (tables.paired_difference on the per-question means) would treat
the k trained models as if they were the method, and be too narrow when the seeds disagree. The seeds
are resampled for A and B apart because seed s of one set shares nothing with seed s of another (other
pairs, another order). With one seed per set the interval is over questions only; with three, the
bootstrap's spread over seeds is coarse and somewhat narrow (it estimates the seeds' variance with a
factor (k - 1) / k), which is why the table shows the number of seeds next to the verdict.

The verdict, from the interval [lo, hi] of Δ = A - B: supported when lo > 0; not supported when
hi <= 0 (no difference, or the opposite); inconclusive when the interval holds 0 and positive values.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..evaluation.durable import FAILED, OPEN
from ..data.records import scan_jsonl
from ..evaluation.drift import critique_share

__all__ = ["Claim", "CLAIMS", "RESAMPLES", "paired_bootstrap", "verdict", "evaluate_claims", "claims_section", "claim_cells",
           "claim_rows", "CLAIM_HEADERS", "CLAIMS_NOTE"]

RESAMPLES = 10_000


@dataclass(frozen=True)
class Claim:
    text: str
    source: str  # where the paper makes it
    a: str  # the set expected to be higher
    b: str
    measure: str  # "accuracy" or "critique_format"


CLAIMS = (
    Claim("CFT beats SFT on the same noisy responses", "CFT Table 2", "cft", "sft", "accuracy"),
    Claim("CGD beats distilled SFT on the same refined answers", "CGD Table 1", "cgd", "distilled-sft", "accuracy"),
    Claim("CFT drifts into the critique format and CGD does not", "CGD appendix D.1", "cft", "cgd", "critique_format"),
)

CLAIM_HEADERS = ["claim", "measure", "benchmark", "A", "B", "Δ = A − B (95% interval)", "seeds A + B, questions", "verdict"]
CLAIMS_NOTE = ("A and B: each set's mean over its seeds and the questions (%). Δ: per question, the mean over A's seeds "
               "minus the mean over B's, averaged over the questions; its 95% interval is a bootstrap over the questions "
               "(paired) and over each set's seeds (report/claims.py says why). The verdict is computed from the interval: "
               "supported when it lies above 0, not supported when it lies at or below 0, inconclusive when it holds 0 "
               "and positive values.")


def verdict(lo: float, hi: float) -> str:
    """supported / not supported / inconclusive, from the 95% interval of A - B (see the module docstring)."""
    if lo > 0:
        return "supported"
    if hi <= 0:
        return "not supported"
    return "inconclusive"


def paired_bootstrap(a: list[list[float]], b: list[list[float]], resamples: int = RESAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """(Δ, lo, hi): the mean difference of a[s][q] and b[t][q] over seeds and questions, and its
    95% percentile interval from a bootstrap over the questions (one draw for both) and over each
    side's seeds (a draw each). Rows are seeds, columns the same questions in the same order."""
    import numpy as np

    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.ndim != 2 or b_arr.ndim != 2 or a_arr.shape[1] != b_arr.shape[1] or a_arr.size == 0 or b_arr.size == 0:
        raise ValueError(f"expected seeds x questions arrays with the same questions, got {a_arr.shape} and {b_arr.shape}")
    n = a_arr.shape[1]
    point = float(a_arr.mean() - b_arr.mean())  # = mean over q of (A's seed mean - B's seed mean)
    rng = np.random.default_rng(seed)
    stats = []
    chunk = max(1, 2_000_000 // n)  # resamples per step: a few MB whatever the number of questions
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        questions = rng.multinomial(n, np.full(n, 1 / n), size=size) / n  # each draw's weight per question
        seeds_a = rng.multinomial(len(a_arr), np.full(len(a_arr), 1 / len(a_arr)), size=size) / len(a_arr)
        seeds_b = rng.multinomial(len(b_arr), np.full(len(b_arr), 1 / len(b_arr)), size=size) / len(b_arr)
        stats.append(((seeds_a @ a_arr - seeds_b @ b_arr) * questions).sum(axis=1))
    lo, hi = np.quantile(np.concatenate(stats), [0.025, 0.975])
    return point, float(lo), float(hi)


def _scores(path: Path, measure: str, problems: list[str]) -> tuple[dict[str, float], int]:
    """{question id: score} from one samples.jsonl, and how many samples failed; a bad line or field
    is reported and left out.

    A sample whose request failed for good (evaluation/durable.py: `job.status` "failed", its
    reason in `error`, no grade) is no wrong answer: it is left out and counted, as evaluate.py's
    accuracy and tables.py's paired difference leave it out, so the claim is tested on the
    questions every seed of both sets answered.
    """
    out: dict[str, float] = {}
    failed = 0
    try:
        lines = list(scan_jsonl(path))
    except OSError as exc:
        problems.append(f"{path}: unreadable ({exc}); left out of the claims")
        return out, failed
    for number, row, why in lines:
        if why is not None:
            problems.append(f"{path}:{number}: malformed JSON ({why}); line left out of the claims")
            continue
        job = row.get("job") if isinstance(row, dict) else None
        if isinstance(job, dict) and job.get("status") in (FAILED, OPEN):  # not answered (open: an interrupted run)
            failed += 1
            continue
        key = "correct" if measure == "accuracy" else "responses"
        values = row.get(key) if isinstance(row, dict) else None
        bad = ("not a JSON object" if not isinstance(row, dict) else
               "field 'id' missing" if not isinstance(row.get("id"), (str, int)) else
               f"field {key!r} missing or empty" if not isinstance(values, list) or not values else None)
        if bad:
            problems.append(f"{path}:{number}: {bad}; line left out of the claims")
            continue
        if measure == "accuracy":
            out[str(row["id"])] = sum(bool(v) for v in values) / len(values)
        else:
            out[str(row["id"])] = critique_share([r if isinstance(r, str) else "" for r in values])
    return out, failed


def evaluate_claims(eval_root: Path, sets: dict[str, list[str]], benchmarks: list[str],
                resamples: int = RESAMPLES) -> dict:
    """Every claim whose two sets the run has, on each benchmark.

    `sets` maps a set name to its eval folders, one per training seed (eval_root/<folder>/<benchmark>/
    samples.jsonl). Returns {"claims": [row, ...], "not_testable": [...], "problems": [...]}.
    """
    rows, untestable, problems = [], [], []
    for claim in CLAIMS:
        missing = [name for name in (claim.a, claim.b) if name not in sets]
        if missing:
            untestable.append({"claim": claim.text, "source": claim.source, "needs": [claim.a, claim.b],
                               "reason": f"no set named {' or '.join(missing)}"})
            continue
        for bench in benchmarks:
            found = {name: [eval_root / label / bench / "samples.jsonl" for label in sets[name]] for name in (claim.a, claim.b)}
            found = {name: [p for p in paths if p.is_file()] for name, paths in found.items()}
            empty = [name for name, paths in found.items() if not paths]
            if empty:
                untestable.append({"claim": claim.text, "source": claim.source, "needs": [claim.a, claim.b], "benchmark": bench,
                                   "reason": f"{' and '.join(empty)} not evaluated on {bench} (not trained?)"})
                continue
            read = {name: [_scores(p, claim.measure, problems) for p in paths] for name, paths in found.items()}
            scores = {name: [per_seed for per_seed, _ in results] for name, results in read.items()}
            failed = sum(n for results in read.values() for _, n in results)
            common = sorted(set.intersection(*(set(s) for per_seed in scores.values() for s in per_seed)))
            if not common:
                untestable.append({"claim": claim.text, "source": claim.source, "needs": [claim.a, claim.b], "benchmark": bench,
                                   "reason": f"no question of {bench} that every seed of both sets answered"})
                continue
            a = [[s[q] for q in common] for s in scores[claim.a]]
            b = [[s[q] for q in common] for s in scores[claim.b]]
            diff, lo, hi = paired_bootstrap(a, b, resamples)
            rows.append({"claim": claim.text, "source": claim.source, "measure": claim.measure, "benchmark": bench,
                         "a": claim.a, "b": claim.b, "a_value": sum(map(sum, a)) / (len(a) * len(common)),
                         "b_value": sum(map(sum, b)) / (len(b) * len(common)), "a_seeds": len(a), "b_seeds": len(b),
                         "questions": len(common), "failed_samples": failed, "difference": diff, "ci95": [lo, hi], "verdict": verdict(lo, hi),
                         "interval": "bootstrap over questions and seeds" if len(a) + len(b) > 2 else
                                     "bootstrap over questions (one seed per set)"})
    # A file read for two claims reports its bad lines once.
    return {"claims": rows, "not_testable": untestable, "problems": list(dict.fromkeys(problems)), "resamples": resamples}


def _pct(x: float, sign: bool = False) -> str:
    return "–" if x is None or not math.isfinite(x) else (f"{100 * x:+.1f}" if sign else f"{100 * x:.1f}")


def claim_cells(row: dict) -> list[str]:
    """A claim's table cells as plain text, in CLAIM_HEADERS order (report.md and report.html)."""
    lo, hi = row["ci95"]
    measure = "accuracy" if row["measure"] == "accuracy" else "critique-format share"
    return [f"{row['claim']} ({row['source']})", measure, row["benchmark"], f"{row['a']} {_pct(row['a_value'])}",
            f"{row['b']} {_pct(row['b_value'])}", f"{_pct(row['difference'], True)} [{_pct(lo, True)}, {_pct(hi, True)}]",
            f"{row['a_seeds']} + {row['b_seeds']}, {row['questions']}", row["verdict"]]


def claim_rows(found, problems: list[str]) -> list[list[str]]:
    """The cells of each claim in a claims.json's content (report.html); a malformed entry is
    reported in `problems` and left out."""
    rows = []
    for k, row in enumerate(found.get("claims", []) if isinstance(found, dict) else []):
        try:
            rows.append(claim_cells(row))
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"claims.json: claims[{k}]: {type(exc).__name__} {exc}; not shown")
    return rows


def claims_section(eval_root: Path, sets: dict[str, list[str]], benchmarks: list[str], out_dir: Path) -> list[str]:
    """Test the claims, write out_dir/claims.json, and return report.md's "Claims" section; nothing
    (and no file) when the run has no claim's two sets."""
    path = out_dir / "claims.json"
    if not any(claim.a in sets and claim.b in sets for claim in CLAIMS):
        path.unlink(missing_ok=True)  # a rerun with other sets leaves no stale verdicts behind
        return []
    found = evaluate_claims(eval_root, sets, benchmarks)
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=1))
    lines = ["", "## Claims", "", CLAIMS_NOTE, "", "| " + " | ".join(CLAIM_HEADERS) + " |", "|" + "---|" * len(CLAIM_HEADERS)]
    for row in found["claims"]:
        cells = claim_cells(row)
        cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    failed = [f"{row['failed_samples']} in {row['a']} vs {row['b']} on {row['benchmark']}"
              for row in found["claims"] if row["failed_samples"]]
    if failed:
        lines += ["", "Samples whose request failed are left out, not counted wrong (their questions are not compared): "
                  + "; ".join(failed) + "."]
    if found["not_testable"]:
        lines += ["", "Not tested in this run: " + "; ".join(f"{u['claim']} ({u['reason']})" for u in found["not_testable"]) + "."]
    if found["problems"]:
        lines += ["", f"Lines left out of the claims ({len(found['problems'])}): " + "; ".join(found["problems"][:5])
                  + (" …" if len(found["problems"]) > 5 else "")]
    return lines
