"""Grader quality on the real benchmark files and real model outputs.

1. Self-acceptance: each benchmark's reference solution (or, where a file has none, its gold
   answer written as `\\boxed{gold}`) graded against its own gold answer. Anything under 99%
   is a grader or a spec problem.
2. Agreement with a rule-based grader of the Qwen2.5-Math kind (string normalization plus
   numeric comparison with tolerance, no sympy) on real model outputs: the GSM8K paper's 5,276
   model solutions in ../shared/data/noisy, and any eval samples passed on the command line.
   Disagreements are listed in the output JSON.

    python benchmarks/grader_quality.py [--samples runs/*/eval/*/*/samples.jsonl] [-o grader_quality.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from critkit.evaluation.benchmarks import BENCHMARKS, data_dir, load_benchmark
from critkit.grading import answers_match, extract_answer, grade
from critkit.data.records import read_rows
from critkit.data.sources import load_source

# OlympiadBench's solutions state the answer in prose, never boxed: its gold list is graded instead.
REFERENCE_FIELD = {"gsm8k": "answer", "math500": "solution", "minerva_math": "solution", "aime24": "solution"}


def _reference_text(name: str, row: dict, gold: str) -> str:
    field = REFERENCE_FIELD.get(name)
    if field is None or not row.get(field):
        return f"The answer is \\boxed{{{gold}}}."  # no solution in the file: the gold itself
    text = row[field]
    if isinstance(text, list):
        text = text[0]
    return text.replace("####", "The answer is")


def self_acceptance() -> dict:
    out = {}
    for name, spec in BENCHMARKS.items():
        path = data_dir() / spec.path
        if not path.exists():
            continue
        problems, _ = load_benchmark(spec)
        rows = {}
        for number, row in read_rows(path):
            rid = str(row.get(spec.id_field)) if spec.id_field and row.get(spec.id_field) is not None else str(number)
            rows[f"{spec.name}-{rid}"] = row
        failures = []
        for p in problems:
            text = _reference_text(name, rows[p.id], p.gold)
            if not grade(text, p.gold):
                failures.append({"id": p.id, "gold": p.gold, "extracted": extract_answer(text)})
        out[name] = {"n": len(problems), "accepted": len(problems) - len(failures),
                     "rate": 1 - len(failures) / max(1, len(problems)),
                     "source": "reference solution" if name in REFERENCE_FIELD else "boxed gold",
                     "failures": failures[:50]}
    return out


def _strip(s: str) -> str:
    """Qwen2.5-Math-style normalization (strip_string), reduced to its common rules."""
    s = str(s).strip().replace("\n", "").rstrip(".")
    s = re.sub(r"\\text\{\s*([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|!|,|;|:)", "", s)
    s = s.replace("dfrac", "frac").replace("tfrac", "frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("\\%", "").replace("%", "").replace("$", "").replace(" ", "")
    s = re.sub(r"(\d),(\d{3})", r"\1\2", s)
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    if s.startswith("0.") is False and re.fullmatch(r"\.\d+", s):
        s = "0" + s
    return s


def _number(s: str) -> float | None:
    m = re.fullmatch(r"-?\d+(?:\.\d+)?", s)
    if m:
        return float(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m and float(m.group(3)) != 0:
        return (-1 if m.group(1) else 1) * float(m.group(2)) / float(m.group(3))
    return None


def rule_based_equal(pred: str | None, gold: str) -> bool:
    if pred is None:
        return False
    a, b = _strip(pred), _strip(gold)
    if a == b:
        return True
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return abs(x - y) <= 1e-4 * max(1.0, abs(y))  # Qwen2.5-Math: isclose(rel_tol=1e-4)
    return False


def agreement(outputs: list[dict]) -> dict:
    disagreements, agree = [], 0
    for o in outputs:
        pred = extract_answer(o["response"])
        ours = answers_match(pred, o["gold"])
        rule = rule_based_equal(pred, o["gold"])
        if ours == rule:
            agree += 1
        else:
            disagreements.append({"id": o["id"], "gold": o["gold"], "extracted": pred, "critkit": ours, "rule_based": rule})
    return {"n": len(outputs), "agree": agree, "rate": agree / max(1, len(outputs)), "disagreements": disagreements}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", nargs="*", default=[], help="critkit eval samples.jsonl files (real model outputs)")
    parser.add_argument("-o", "--output", default="grader_quality.json")
    args = parser.parse_args()
    t0 = time.time()
    result = {"self_acceptance": self_acceptance()}
    noisy = data_dir() / "noisy" / "gsm8k_test_model_solutions.jsonl"
    outputs = [{"id": r.id, "response": r.response, "gold": r.gold, "is_correct": r.meta["is_correct"]}
               for r in load_source(noisy, "gsm8k-noisy")] if noisy.exists() else []
    for path in args.samples:
        for _, row in read_rows(path):
            for k, resp in enumerate(row.get("responses") or [row.get("response", "")]):
                outputs.append({"id": f"{path}:{row['id']}#{k}", "response": resp, "gold": row["gold"]})
    result["agreement_with_rule_based"] = agreement(outputs)
    labelled = [o for o in outputs if "is_correct" in o]
    if labelled:
        hits = sum(grade(o["response"], o["gold"]) == o["is_correct"] for o in labelled)
        result["agreement_with_gsm8k_labels"] = {"n": len(labelled), "agree": hits, "rate": hits / len(labelled)}
    result["seconds"] = round(time.time() - t0, 1)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print("| benchmark | reference accepted | rate | from |\n|---|---|---|---|")
    for name, r in result["self_acceptance"].items():
        print(f"| {name} | {r['accepted']}/{r['n']} | {100 * r['rate']:.1f}% | {r['source']} |")
    a = result["agreement_with_rule_based"]
    print(f"\nagreement with the rule-based grader on {a['n']} real outputs: {100 * a['rate']:.2f}% "
          f"({len(a['disagreements'])} disagreements, listed in {args.output})")
    if labelled:
        g = result["agreement_with_gsm8k_labels"]
        print(f"critkit's grade vs the GSM8K paper's is_correct labels: {100 * g['rate']:.2f}% of {g['n']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
