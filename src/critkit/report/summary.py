"""The numbers report.html shows above its sample browser, read from a run folder.

Accuracy and the paired difference from the base model use tables.py's paired_difference (the
function behind report.md and results.json) on the same per-question scores; the synthesis
statistics are `critkit stats`'s compute_stats, run over chunks of records so a 50K-record file is
never held whole, with lengths in whitespace words (no tokenizer to load). Anything unreadable is
reported in `problems` with its file and line, and the rest goes on.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ..data.records import Record
from ..synth.stats import PERCENTILES, _percentile, compute_stats, token_counter
from .samples import SYNTH_STAGES, BASE, RunSamples, lines
from .tables import paired_difference

__all__ = ["read_json", "accuracy_table", "SynthStats", "synth_stats", "stage_counts", "build_info", "step_times"]

TEXT_FIELDS = ("gold", "reference", "response", "critique", "refined", "teacher_solution")


def read_json(path: Path, problems: list[str]):
    """A JSON file's content, or None (with the reason in `problems`) when it is missing or bad."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable JSON ({exc}); not shown")
        return None


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def accuracy_table(samples: RunSamples, problems: list[str]) -> dict:
    """{model: {bench: cell}}: accuracy with its 95% interval (normal approximation, as report.png
    draws it) and the paired difference from base with its 95% interval (as results.json has it)."""
    per_question: dict = {}
    for ref in samples.refs:
        for model, score in ref.scores.items():
            if score is not None:
                per_question.setdefault((model, ref.set), {})[ref.key] = score
    table: dict = {}
    for model in samples.models:
        for bench in samples.benchmarks:
            scores = read_json(samples.root / "eval" / model / bench / "scores.json", problems)
            if not isinstance(scores, dict):
                continue
            # Accuracy is over the answered questions: a failed request is not a wrong answer. scores.json
            # files from before failures were counted have no `answered`: all of n were answered.
            acc, n, failed = _num(scores.get("accuracy")), _num(scores.get("n")), _num(scores.get("failed")) or 0
            answered = _num(scores.get("answered"))
            answered = answered if answered is not None else (n - failed if n is not None else None)
            cell = {"scores": scores, "accuracy": acc, "n": n, "answered": answered, "failed": failed,
                    "correct": scores.get("correct")}
            if acc is not None and answered:
                cell["ci95"] = 1.96 * math.sqrt(max(0.0, acc * (1 - acc)) / answered)
            if model != BASE and (BASE, bench) in per_question and (model, bench) in per_question:
                d, hw, m = paired_difference(per_question[(model, bench)], per_question[(BASE, bench)])
                cell["delta"] = {"difference": d, "ci95_half_width": hw, "n": m, "significant": bool(abs(d) > hw)}
            table.setdefault(model, {})[bench] = cell
    return table


class SynthStats:
    """compute_stats over a stream of records, `chunk` at a time, merged: the same numbers as
    `critkit stats FILE --tokenizer whitespace` without holding the file. Feed it rows with add()
    (RunSamples does, as it indexes), then read result()."""

    def __init__(self, chunk: int = 5000):
        self.chunk, self.batch, self.records = chunk, [], 0
        self.status, self.verdicts, self.verify, self.labels = Counter(), Counter(), Counter(), Counter()
        self.raw: dict[str, list[int]] = {}
        self.count = token_counter("whitespace")

    def add(self, line: int, row: dict) -> None:
        # The fields compute_stats reads, type-checked here rather than through Record.from_dict
        # (a third of the time on a 50K-record file); fields added later are not needed here.
        texts = {k: row[k] for k in TEXT_FIELDS if isinstance(row.get(k), str)}
        meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
        self.batch.append(Record(id=str(row.get("id")), question="", verdict=row.get("verdict"), meta=meta, **texts))
        if len(self.batch) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self.batch:
            return
        s = compute_stats(self.batch, self.count)
        self.batch = []
        self.records += s["records"]
        self.status.update(s["status"])
        self.verdicts.update(s["verdicts"])
        self.verify.update({k: v for k, v in s["verify"].items() if k != "agreement"})
        self.labels.update({k: v for k, v in (s["labels"] or {}).items() if isinstance(v, int)})
        for name, values in s["_raw_lengths"].items():
            self.raw.setdefault(name, []).extend(values)

    def result(self) -> dict:
        self._flush()
        verify, verdicts, labels = self.verify, self.verdicts, dict(self.labels)
        compared = verify["agrees"] + verify["disagrees"]
        said = verdicts["right"] + verdicts["wrong"]
        lengths = {}
        for name, values in self.raw.items():
            values.sort()
            lengths[name] = {"n": len(values), "mean": sum(values) / len(values), "max": values[-1],
                             **{f"p{q}": _percentile(values, q) for q in PERCENTILES}}
        if labels:
            labels["agreement_of_parsed"] = labels["agree"] / labels["parsed"] if labels["parsed"] else None
            labels["agreement_of_all"] = labels["agree"] / labels["labelled"]
        return {"records": self.records, "status": dict(self.status), "verdicts": dict(verdicts),
                "right_share": verdicts["right"] / said if said else None,
                "verify": {**verify, "agreement": verify["agrees"] / compared if compared else None},
                "labels": labels or None, "lengths": lengths, "_raw_lengths": self.raw}


def synth_stats(path: Path, problems: list[str], chunk: int = 5000) -> dict:
    """SynthStats over every line of one file (bad lines go to `problems`)."""
    stats = SynthStats(chunk)
    for number, _, row in lines(path, problems):
        stats.add(number, row)
    return stats.result()


def stage_counts(root: Path) -> list[tuple[str, int]]:
    """(stage file, lines) for each synthesis file present; counted without parsing."""
    out = []
    for stage in SYNTH_STAGES:
        path = root / "synth" / f"{stage}.jsonl"
        if path.is_file():
            count, last = 0, b"\n"
            with open(path, "rb") as fh:  # newlines, counted in 1 MB blocks: 1 GB of stage files in a second
                for block in iter(lambda: fh.read(1 << 20), b""):
                    count, last = count + block.count(b"\n"), block[-1:]
            out.append((f"synth/{stage}.jsonl", count + (last != b"\n")))  # a last line without its newline
    return out


def build_info(root: Path, problems: list[str]) -> list[tuple[str, dict]]:
    """(training set, pairs/<set>.build.json) for each set the run built."""
    found = [(p.name.removesuffix(".build.json"), read_json(p, problems)) for p in sorted(root.glob("pairs/*.build.json"))]
    return [(name, info) for name, info in found if isinstance(info, dict)]


def step_times(root: Path, problems: list[str]) -> list[tuple[str, float, int]]:
    """(step, seconds summed over resumed runs, times run) from steps.jsonl, in first-run order."""
    path = root / "steps.jsonl"
    totals: dict[str, list] = {}
    if path.is_file():
        for _, _, row in lines(path, problems):
            seconds = _num(row.get("seconds"))
            entry = totals.setdefault(str(row.get("step", "?")), [0.0, 0])
            entry[0] += seconds or 0.0
            entry[1] += 1
    return [(name, s, k) for name, (s, k) in totals.items()]
