"""Grader quality on the real benchmark files and real model outputs.

1. Reference acceptance: per benchmark, a correct answer written the way a solver writes it,
   graded by critkit (extraction + the benchmark's grading rule) and by the harness rules of
   harness_rules.py (the Qwen2.5-Math harness; TheoremQA's own checker for TheoremQA):
   - gsm8k, math500, minerva_math, aime24: the file's reference solution;
   - theoremqa: the gold as a solver computes it, unrounded: the gold moved by 0.4 of a unit
     in its last printed digit (at most in its third significant digit: "0.5" is taken as
     0.500), so that it still rounds to the gold; integers, bools, options as they are;
   - olympiadbench: the gold without its $, boxed; a multi-answer gold's answers in reverse
     order (a set is a set);
   - amc23: the gold, boxed (the file has no solutions: trivially accepted).
2. Agreement of critkit's verdict with the harness rules' on the same references, on the GSM8K
   paper's 5,276 model solutions in ../shared/data/noisy (and with their is_correct labels),
   and on any eval samples passed with --samples. Every disagreement is listed in the output.

    python benchmarks/grader_quality.py [--samples runs/*/eval/*/*/samples.jsonl] [--before before.json] [-o grader_quality.json]

`--before` takes the output of a run of this script on other code (e.g. the previous commit:
`git archive HEAD~1 src | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/src python
benchmarks/grader_quality.py -o before.json`) and adds its critkit figures as a "before" column.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness_rules import harness_extract, harness_gold, math_equal, theoremqa_equal  # noqa: E402

from critkit.data.records import read_rows  # noqa: E402
from critkit.data.sources import load_source  # noqa: E402
from critkit.evaluation.benchmarks import BENCHMARKS, Problem, data_dir, load_benchmark  # noqa: E402
from critkit.evaluation.evaluate import _grade  # noqa: E402
from critkit.grading import grade  # noqa: E402

REFERENCE_FIELD = {"gsm8k": "answer", "math500": "solution", "minerva_math": "solution", "aime24": "solution"}
SOURCE = {**{name: "reference solution" for name in REFERENCE_FIELD}, "amc23": "gold, boxed (trivial)",
          "theoremqa": "gold unrounded (within its rounding)", "olympiadbench": "gold without $; sets reversed"}


def _top_level_parts(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in parts + [current.strip()] if p]


def unrounded(gold: str) -> str:
    """A value that rounds to `gold`: 0.4 of a unit of its last printed digit added to its
    magnitude, the unit at most one of its third significant digit."""
    value = Decimal(gold)
    if value == 0:
        return gold
    last = Decimal(1).scaleb(value.as_tuple().exponent)
    third = Decimal(1).scaleb(value.adjusted() - 2)
    step = min(last, third) * Decimal("0.4")
    return str(value + step if value > 0 else value - step)


def theoremqa_reference(gold: str) -> str:
    text = gold.strip()
    if re.fullmatch(r"-?\d+", text) or text in ("True", "False") or text.startswith("("):
        return text
    if text.startswith("["):
        items = _top_level_parts(text[1:-1])
        return "[" + ", ".join(i if re.fullmatch(r"-?\d+", i) else unrounded(i) for i in items) + "]"
    return unrounded(text)


def _rows_by_id(name: str) -> dict[str, dict]:
    spec = BENCHMARKS[name]
    rows = {}
    for number, row in read_rows(data_dir() / spec.path):
        rid = str(row.get(spec.id_field)) if spec.id_field and row.get(spec.id_field) is not None else str(number)
        rows[f"{spec.name}-{rid}"] = row
    return rows


def reference_cases(name: str) -> list[dict]:
    """{problem, text, harness_gold, rule} per row: the reference text and what the harness compares it with."""
    spec = BENCHMARKS[name]
    problems, _ = load_benchmark(spec)
    rows = _rows_by_id(name)
    cases = []
    for p in problems:
        row = rows[p.id]
        if name in REFERENCE_FIELD:
            text = row[REFERENCE_FIELD[name]].replace("####", "The answer is")
        elif name == "theoremqa":
            text = f"The answer is $\\boxed{{{theoremqa_reference(row['answer'])}}}$."
        elif name == "olympiadbench":
            answer = row["final_answer"][0].replace("$", "").strip().rstrip(".")
            if row.get("is_multiple_answer"):
                answer = ", ".join(reversed(_top_level_parts(answer)))
            text = f"The answer is $\\boxed{{{answer}}}$."
        else:
            text = f"The answer is $\\boxed{{{p.gold}}}$."
        if name == "gsm8k":
            raw = harness_gold(row["answer"].split("####")[-1].strip())
        elif name == "minerva_math":
            raw = harness_extract(row["solution"], "minerva_math")
        elif name == "olympiadbench":
            raw = harness_gold(row["final_answer"][0].strip("$"))
        elif name == "theoremqa":
            raw = row["answer"]
        else:
            raw = harness_gold(str(p.gold))
        cases.append({"problem": p, "text": text, "harness_gold": raw, "rule": "theoremqa" if name == "theoremqa" else name})
    return cases


def harness_verdict(text: str, gold: str, rule: str) -> tuple[str, bool]:
    if rule == "theoremqa":
        pred = harness_extract(text, "theoremqa")
        return pred, theoremqa_equal(pred, gold)
    pred = harness_extract(text, rule)
    return pred, math_equal(pred, gold)


def compare(source: str, cases: list[dict]) -> dict:
    """critkit's and the harness rules' verdicts on each case, and where they differ."""
    critkit_ok = harness_ok = agree = 0
    disagreements = []
    for case in cases:
        p = case["problem"]
        extracted, ours = _grade(p, case["text"])
        theirs_pred, theirs = harness_verdict(case["text"], case["harness_gold"], case["rule"])
        critkit_ok += ours
        harness_ok += theirs
        if ours == theirs:
            agree += 1
        else:
            disagreements.append({"source": source, "id": p.id, "gold": p.gold, "grading": getattr(p, "grading", "math"),
                                  "critkit_extracted": extracted, "critkit": ours, "harness_extracted": theirs_pred,
                                  "harness_gold": case["harness_gold"], "harness": theirs, "text_end": case["text"][-160:]})
    n = len(cases)
    return {"n": n, "critkit_accepted": critkit_ok, "harness_accepted": harness_ok, "agree": agree,
            "disagreements": disagreements}


def samples_cases(path: str) -> list[dict]:
    """Eval samples (real model outputs): each response with its problem as the eval graded it."""
    benchmark = Path(path).parent.name
    known = {}
    if benchmark in BENCHMARKS and (data_dir() / BENCHMARKS[benchmark].path).exists():
        known = {p.id: p for p in load_benchmark(BENCHMARKS[benchmark])[0]}
    rule = "theoremqa" if benchmark == "theoremqa" else benchmark
    cases = []
    for _, row in read_rows(path):
        p = known.get(row["id"]) or Problem(row["id"], row.get("question", ""), row["gold"])
        for k, response in enumerate(row.get("responses") or []):
            cases.append({"problem": p, "text": response, "harness_gold": row["gold"] if rule == "theoremqa" else harness_gold(row["gold"], rule),
                          "rule": rule, "stored": (row.get("correct") or [None] * (k + 1))[k], "tag": f"{path}#{k}"})
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", nargs="*", default=[], help="critkit eval samples.jsonl files (real model outputs)")
    parser.add_argument("--before", help="this script's JSON output from other code: shown as the 'before' column")
    parser.add_argument("-o", "--output", default="grader_quality.json")
    args = parser.parse_args()
    t0 = time.time()
    result: dict = {"references": {}, "samples": {}}
    for name, spec in BENCHMARKS.items():
        if spec.answer_type != "math" or not (data_dir() / spec.path).exists():
            continue
        result["references"][name] = {"source": SOURCE[name], **compare(name, reference_cases(name))}
    olympiad = data_dir() / BENCHMARKS["olympiadbench"].path
    if olympiad.exists():
        result["olympiadbench_rows_with_several_final_answers"] = sum(len(r.get("final_answer") or []) > 1 for _, r in read_rows(olympiad))
    for path in args.samples:
        cases = samples_cases(path)
        summary = compare(path, cases)
        summary["stored_correct"] = sum(bool(c["stored"]) for c in cases)  # as graded when the samples were written
        result["samples"][path] = summary
    noisy = data_dir() / "noisy" / "gsm8k_test_model_solutions.jsonl"
    if noisy.exists():
        records = load_source(noisy, "gsm8k-noisy")
        cases = [{"problem": Problem(r.id, r.question, r.gold), "text": r.response, "harness_gold": harness_gold(r.gold),
                  "rule": "gsm8k"} for r in records]
        result["gsm8k_noisy"] = compare("gsm8k-noisy", cases)
        hits = sum(grade(r.response, r.gold) == r.meta["is_correct"] for r in records)
        result["gsm8k_noisy"]["agree_with_labels"] = hits
    result["seconds"] = round(time.time() - t0, 1)
    Path(args.output).write_text(json.dumps(result, indent=1, default=str))

    before = json.loads(Path(args.before).read_text()) if args.before else None
    print("| benchmark | checked with | before | critkit accepted | harness rules accepted | critkit = harness |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in result["references"].items():
        b = before["references"].get(name) if before else None
        shown = f"{b['critkit_accepted']}/{b['n']}" if b else "-"
        print(f"| {name} | {r['source']} | {shown} | {r['critkit_accepted']}/{r['n']} | {r['harness_accepted']}/{r['n']} | {r['agree']}/{r['n']} |")
    if "olympiadbench_rows_with_several_final_answers" in result:
        print(f"\nolympiadbench rows whose final_answer lists several answers: {result['olympiadbench_rows_with_several_final_answers']}")
    for path, r in result["samples"].items():
        print(f"\n{path}: stored verdicts {r['stored_correct']}/{r['n']} correct; now critkit {r['critkit_accepted']}, "
              f"harness rules {r['harness_accepted']}; critkit = harness on {r['agree']}/{r['n']}")
    if "gsm8k_noisy" in result:
        g = result["gsm8k_noisy"]
        print(f"\nGSM8K paper's model solutions: critkit = harness rules on {g['agree']}/{g['n']}; "
              f"critkit = is_correct labels on {g['agree_with_labels']}/{g['n']}")
    listed = [d for part in (result["references"], result["samples"]) for r in part.values() for d in r["disagreements"]]
    listed += result.get("gsm8k_noisy", {}).get("disagreements", [])
    print(f"\n{len(listed)} disagreements (all listed in {args.output}):")
    for d in listed:
        print(f"- {d['source'].split('/runs/')[-1]} {d['id']}: gold {d['gold']!r}; critkit {d['critkit_extracted']!r} -> {d['critkit']}; "
              f"harness {d['harness_extracted']!r} vs {d['harness_gold']!r} -> {d['harness']}")
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
