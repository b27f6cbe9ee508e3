"""Per-sample rows of a run folder: one row per question, joining what synthesis made of it (the
student's answer, the teacher's critique and verdict with the verifier's grade, the refinement) with
every evaluated model's output on it.

Rows come from the benchmarks' samples (eval/<model>/<benchmark>/samples.jsonl, one row per
benchmark question, every model side by side) and from the last synthesis file (synth/*.jsonl, one
row per training record). A synthesized record whose question is also a benchmark question joins
that benchmark's row; in the usual run they are different questions (train vs test split).

The JSONL files are indexed by byte offset in one pass that keeps only a few numbers per line (the
verdict, the verifier's agreement, each model's score), so filters run on the index and only the
rows shown are read back: `critkit view` pages over a 50K-record synthesis without holding it in
memory, and report.html takes a seeded sample of the same rows. Fields are read defensively: a
missing one is absent, an unknown one is kept under "other" (shown as raw JSON), and a bad line is
reported with its file and line while the other lines go on.
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..evaluation.evaluate import CRITIQUE_MARKERS

__all__ = ["RunSamples", "Filters", "SYNTH_STAGES", "SYNTHESIS", "BASE"]

SYNTH_STAGES = ("respond", "critique", "refine", "solve")  # pipeline order: the last file present holds every field
SYNTHESIS = "synthesis"  # the set name of rows that only synthesis has
BASE = "base"  # the model that "gained" and "lost" compare against (run.py evaluates it as "base")
SYNTH_SHOWN = ("id", "question", "gold", "reference", "response", "critique", "verdict", "refined", "teacher_solution")
EVAL_SHOWN = ("id", "question", "gold", "responses", "extracted", "correct")
OUTCOMES = ("right", "wrong", "gained", "lost")
FLAGS = ("disagree", "unparsed", "critique_format", "failed")
SEARCHED = 8  # text searches whose candidate rows are kept, so paging through one does not scan again


@dataclass(slots=True)
class RowRef:
    """What the index keeps of one row: where its lines are, and what the filters need."""

    key: str
    set: str
    synth: int | None = None  # byte offset of its line in the synthesis file
    evals: dict = field(default_factory=dict)  # model -> byte offset in eval/<model>/<set>/samples.jsonl
    scores: dict = field(default_factory=dict)  # model -> fraction of its samples graded correct (None: unknown)
    critique_format: set = field(default_factory=set)  # models whose output looks like a critique
    verdict: str | None = None
    agrees: bool | None = None  # the teacher's verdict against the verifier's grade
    failed: bool = False  # a synthesis job or an eval sample marked failed


@dataclass
class Filters:
    """The browser's filters; the page's JavaScript applies the same rules to the rows it holds."""

    set: str = ""
    model: str = ""  # "": any model
    outcome: str = ""  # right | wrong | gained | lost (of `model`, or of any model)
    flags: tuple = ()  # each of FLAGS that must hold
    q: str = ""  # case-insensitive text search

    @classmethod
    def from_query(cls, query: dict[str, list[str]]) -> "Filters":
        one = lambda k: (query.get(k) or [""])[0]  # noqa: E731
        flags = tuple(f for f in one("flags").split(",") if f in FLAGS)
        return cls(set=one("set"), model=one("model"), outcome=one("outcome") if one("outcome") in OUTCOMES else "",
                   flags=flags, q=one("q").strip())


def _score(sample: dict) -> float | None:
    correct = sample.get("correct")
    if not isinstance(correct, list) or not correct:
        return None
    return sum(bool(c) for c in correct) / len(correct)


def _looks_like_critique(sample: dict) -> bool:
    responses = sample.get("responses")
    return isinstance(responses, list) and any(isinstance(r, str) and any(m in r for m in CRITIQUE_MARKERS) for r in responses)


def _failed_jobs(meta) -> bool:
    jobs = meta.get("jobs") if isinstance(meta, dict) else None
    return isinstance(jobs, dict) and any(isinstance(b, dict) and b.get("status") == "failed" for b in jobs.values())


def _verify(meta) -> dict:
    verify = meta.get("verify") if isinstance(meta, dict) else None
    return verify if isinstance(verify, dict) else {}


def lines(path: Path, problems: list[str]):
    """(line number, byte offset, object) for each non-blank line; a bad line goes to `problems`."""
    with open(path, "rb") as fh:
        offset = 0
        for number, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
                problems.append(f"{path}:{number}: malformed JSON ({getattr(exc, 'msg', exc)}); line skipped")
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{number}: expected a JSON object, got {type(row).__name__}; line skipped")
                continue
            yield number, start, row


def _read_at(path: Path, offset: int) -> dict:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            row = json.loads(fh.readline())
        return row if isinstance(row, dict) else {"error": f"{path} at byte {offset}: not a JSON object"}
    except (OSError, ValueError) as exc:  # the file changed since it was indexed (a run still going)
        return {"error": f"{path} at byte {offset}: {exc}; reload the page to index the files again"}


def synth_file(root: Path) -> Path | None:
    """The last synthesis stage file of a run (it carries every earlier stage's fields)."""
    present = [root / "synth" / f"{s}.jsonl" for s in SYNTH_STAGES if (root / "synth" / f"{s}.jsonl").is_file()]
    return present[-1] if present else None


def model_order(labels: list[str], results: dict | None = None) -> list[str]:
    """base first, then the order of results.json (the run's methods), then the rest by name."""
    listed = [m for m in (results or {}) if m in labels]
    rest = sorted(m for m in labels if m not in listed and m != BASE)
    return ([BASE] if BASE in labels else []) + [m for m in listed if m != BASE] + rest


class RunSamples:
    """The index of a run's per-sample rows. Build once; `rows` and `sample` read lines back."""

    def __init__(self, run_dir: str | Path, results: dict | None = None,
                 on_synth: Callable[[int, dict], None] | None = None):
        """on_synth(line, record) sees each synthesized record as it is indexed (summary.SynthStats
        counts them in the same pass, so the file is parsed once)."""
        self.root = Path(run_dir)
        self.on_synth = on_synth
        self._searched: dict[str, frozenset] = {}
        self._lock = threading.Lock()
        self.problems: list[str] = []
        self.synth_path = synth_file(self.root)
        found = sorted(self.root.glob("eval/*/*/samples.jsonl"))
        self.models = model_order(sorted({p.parent.parent.name for p in found}), results)
        self.benchmarks = list(dict.fromkeys(p.parent.name for p in found))
        self.eval_paths = {(p.parent.parent.name, p.parent.name): p for p in found}
        self.refs: list[RowRef] = []
        self._by_key: dict[str, int] = {}
        questions: dict[str, int] = {}
        for bench in self.benchmarks:
            for model in self.models:
                if (model, bench) in self.eval_paths:
                    self._index_eval(model, bench, questions)
        if self.synth_path:
            self._index_synth(questions)
        self.sets = [s for s in (SYNTHESIS, *self.benchmarks) if any(r.set == s for r in self.refs)]

    def _ref(self, key: str, set_name: str) -> RowRef:
        if key not in self._by_key:
            self._by_key[key] = len(self.refs)
            self.refs.append(RowRef(key, set_name))
        return self.refs[self._by_key[key]]

    def _index_eval(self, model: str, bench: str, questions: dict[str, int]) -> None:
        path = self.eval_paths[(model, bench)]
        for number, offset, row in lines(path, self.problems):
            if row.get("id") is None:
                self.problems.append(f"{path}:{number}: no 'id' field; line skipped")
                continue
            ref = self._ref(f"{bench}/{row['id']}", bench)
            if model in ref.evals:
                self.problems.append(f"{path}:{number}: duplicate id {row['id']!r}; line skipped")
                continue
            ref.evals[model] = offset
            ref.scores[model] = _score(row)
            if _looks_like_critique(row):
                ref.critique_format.add(model)
            ref.failed = ref.failed or bool(row.get("failed") or row.get("error"))
            if isinstance(row.get("question"), str):
                questions.setdefault(row["question"].strip(), self._by_key[ref.key])

    def _index_synth(self, questions: dict[str, int]) -> None:
        seen: set[str] = set()
        for number, offset, row in lines(self.synth_path, self.problems):
            if row.get("id") is None:
                self.problems.append(f"{self.synth_path}:{number}: no 'id' field; line skipped")
                continue
            rid = str(row["id"])
            if rid in seen:
                self.problems.append(f"{self.synth_path}:{number}: duplicate id {rid!r}; line skipped")
                continue
            seen.add(rid)
            question = row.get("question").strip() if isinstance(row.get("question"), str) else None
            joined = questions.get(question) if question else None
            ref = self.refs[joined] if joined is not None and self.refs[joined].synth is None else \
                self._ref(f"{SYNTHESIS}/{rid}", SYNTHESIS)
            ref.synth = offset
            ref.verdict = row.get("verdict") if isinstance(row.get("verdict"), str) else None
            agrees = _verify(row.get("meta")).get("agrees")
            ref.agrees = agrees if isinstance(agrees, bool) else None
            ref.failed = ref.failed or _failed_jobs(row.get("meta"))
            if self.on_synth:
                self.on_synth(number, row)

    # ------------------------------------------------------------------------------ filtering

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in self.sets}
        for ref in self.refs:
            out[ref.set] += 1
        return out

    def matches(self, ref: RowRef, f: Filters) -> bool:
        """Every filter except the text search, on the index alone."""
        if f.set and ref.set != f.set:
            return False
        if f.model and f.model not in ref.evals:
            return False
        models = [f.model] if f.model else list(ref.evals)
        if f.outcome and not any(_outcome(ref.scores.get(m), ref.scores.get(BASE), m, f.outcome) for m in models):
            return False
        for flag in f.flags:
            if flag == "disagree" and ref.agrees is not False:
                return False
            if flag == "unparsed" and ref.verdict != "unparsed":
                return False
            if flag == "critique_format" and not any(m in ref.critique_format for m in models):
                return False
            if flag == "failed" and not ref.failed:
                return False
        return True

    def rows(self, f: Filters, offset: int = 0, limit: int = 50) -> dict:
        """A page of matching rows. Without a text search the total is known from the index;
        with one, lines are read until the page is full and `total` is None."""
        limit = max(1, min(int(limit), 500))
        if not f.q:
            matching = [ref for ref in self.refs if self.matches(ref, f)]
            return {"rows": [self.load(r) for r in matching[offset:offset + limit]], "offset": offset,
                    "total": len(matching), "more": offset + limit < len(matching)}
        needle, page, seen = f.q.lower(), [], 0
        candidates = self._candidates(needle)
        for index, ref in enumerate(self.refs):
            if index not in candidates or not self.matches(ref, f):
                continue
            row = self.load(ref)
            if needle not in search_text(row):
                continue
            if seen == offset + limit:  # a match past the page: say there is more, stop reading
                return {"rows": page, "offset": offset, "total": None, "more": True}
            if seen >= offset:
                page.append(row)
            seen += 1
        return {"rows": page, "offset": offset, "total": seen, "more": False}

    def _candidates(self, needle: str) -> frozenset:
        """Rows with a line that contains `needle`: each file read once, in order (a seek per row is
        far slower), and only the lines that contain it parsed. A superset of the matches (the
        needle may stand in a field search_text does not look at): `rows` checks each candidate."""
        with self._lock:
            if needle in self._searched:
                return self._searched[needle]
        # The needle as it stands in a JSON line: LaTeX's backslashes and quotes are escaped there.
        forms = {needle, json.dumps(needle, ensure_ascii=False)[1:-1], json.dumps(needle)[1:-1]}
        found: set[int] = set()
        synth_rows = {ref.synth: i for i, ref in enumerate(self.refs) if ref.synth is not None}
        files = [(self.synth_path, None)] if self.synth_path else []
        files += [(path, bench) for (_, bench), path in self.eval_paths.items()]
        for path, bench in files:
            with open(path, "rb") as fh:
                offset = 0
                for raw in fh:
                    start, offset = offset, offset + len(raw)
                    text = raw.decode("utf-8", "replace").lower()
                    if not any(form in text for form in forms):
                        continue
                    if bench is None:
                        index = synth_rows.get(start)
                    else:
                        try:
                            index = self._by_key.get(f"{bench}/{json.loads(raw).get('id')}")
                        except (ValueError, AttributeError):
                            index = None
                    if index is not None:
                        found.add(index)
        with self._lock:
            if len(self._searched) >= SEARCHED:
                self._searched.pop(next(iter(self._searched)))
            self._searched[needle] = frozenset(found)
        return self._searched[needle]

    def row(self, key: str) -> dict | None:
        index = self._by_key.get(key)
        return self.load(self.refs[index]) if index is not None else None

    def sample(self, per_set: int, seed: int = 0) -> list[dict]:
        """Up to `per_set` rows of each set, drawn with `seed`, in the run's order."""
        chosen: list[int] = []
        for s in self.sets:
            indices = [i for i, r in enumerate(self.refs) if r.set == s]
            chosen += indices if len(indices) <= per_set else random.Random(f"{seed}:{s}").sample(indices, per_set)
        return [self.load(self.refs[i]) for i in sorted(chosen)]

    # -------------------------------------------------------------------------------- reading

    def load(self, ref: RowRef) -> dict:
        """The full row: texts read back from the files at the indexed offsets."""
        row: dict = {"key": ref.key, "set": ref.set, "id": None, "question": None, "gold": None, "synth": None,
                     "models": {}, "failed": ref.failed}
        if ref.synth is not None:
            rec = _read_at(self.synth_path, ref.synth)
            meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
            verify = _verify(meta)
            texts = {rec[k]: k for k in SYNTH_SHOWN if isinstance(rec.get(k), str) and len(rec[k]) > 40}
            row["synth"] = {**{k: rec.get(k) for k in SYNTH_SHOWN}, "graded": verify.get("graded"), "agrees": ref.agrees,
                            "other": _same_as({k: v for k, v in rec.items() if k not in SYNTH_SHOWN}, texts)}
            row.update(id=rec.get("id"), question=rec.get("question"), gold=rec.get("gold"))
        for model in self.models:
            if model not in ref.evals:
                continue
            sample = _read_at(self.eval_paths[(model, ref.set)], ref.evals[model])
            row["models"][model] = {"responses": sample.get("responses"), "extracted": sample.get("extracted"),
                                    "correct": sample.get("correct"), "score": ref.scores.get(model),
                                    "critique_format": model in ref.critique_format,
                                    "other": {k: v for k, v in sample.items() if k not in EVAL_SHOWN}}
            for k in ("question", "gold"):
                if row[k] is None and sample.get(k) is not None:
                    row[k] = sample[k]
        if ref.set != SYNTHESIS:
            row["id"] = ref.key.partition("/")[2]  # the benchmark's id; a joined record keeps its own in synth.id
        return row


def _same_as(value, texts: dict[str, str]):
    """meta repeats the stage outputs (the teacher's raw output is the critique): name the field
    instead of showing the text twice."""
    if isinstance(value, str):
        return f"(same as {texts[value]})" if value in texts else value
    if isinstance(value, dict):
        return {k: _same_as(v, texts) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_as(v, texts) for v in value]
    return value


def _outcome(score: float | None, base: float | None, model: str, outcome: str) -> bool:
    """right: at least half of the model's samples graded correct; gained / lost: a higher / lower
    fraction correct than the base model on the same question."""
    if score is None:
        return False
    if outcome == "right":
        return score >= 0.5
    if outcome == "wrong":
        return score < 0.5
    if model == BASE or base is None:
        return False
    return score > base if outcome == "gained" else score < base


def search_text(row: dict) -> str:
    """The texts the search looks in, lower-cased (report.js's searchText joins the same ones)."""
    parts = [row.get("id"), row.get("question"), row.get("gold")]
    synth = row.get("synth") or {}
    parts += [synth.get(k) for k in ("response", "critique", "refined", "teacher_solution")]
    for out in (row.get("models") or {}).values():
        for k in ("responses", "extracted"):
            parts += out.get(k) if isinstance(out.get(k), list) else [out.get(k)]
    return "\n".join(str(p) for p in parts if p is not None).lower()
