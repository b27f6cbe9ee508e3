"""Durable evaluation: each sample is written as soon as it ends; a rerun sends only what is missing.

An evaluation of a 7B model with `--n 8` or eight self-critique rounds runs for hours, and a
request to a server can fail. So, with the guarantees of the synthesis journal (synth/jobs.py; the
file handling both share is data/journal.py):

- **Steps.** A sample is worked through in steps, one request each: the answer; or solve,
  critique, solve again... in self-critique-2stage; or an answer and then a judge's verdict.
  `next_step(row)` says what a sample asks next (None once it is complete) and `take(row, step,
  texts)` puts a reply into the row. Both are the caller's; this module only runs them.
- **Journal = output.** After each reply the sample's line is appended to the output with one
  `write`: its state so far (`job.status` "open"), or its end ("done", or "failed" with the
  error in the line's `error`). fsync at least once a second; `kill -9` loses at most the
  requests in flight, never a finished step.
- **Resume.** A rerun takes each sample's latest line, drops a torn last line (and says so), and
  goes on from there: done samples are kept, open ones continue with their next step, failed ones
  are kept as failed unless `retry_failed` (then the step that failed is sent again). A line
  written before evaluation kept a journal (no `job` block) is taken as its sample's answer.
- **Keys.** sha256 of the run's settings (model, sampling, mode, rounds, a judge's model and
  sampling...: whatever the caller names), the sample's id and its first prompt. A line made with
  other settings is refused (JobError) instead of mixed in. Lines of samples the run no longer has
  (a changed question or prompt) are moved to `<name>.superseded.jsonl`, not deleted.
- **Failures.** A request that fails after its backend's retries (OpenAIBackend retries 429,
  5xx, timeouts, cut or garbled bodies and empty replies) ends its sample as failed, with the
  step and the reason; every other sample goes on.
- **The end.** `finish(rows)` rewrites the file in item order, one line per sample, atomically.

How a caller uses it (evaluate.py per benchmark, the counterfactual probe per model; a judged
benchmark adds a second backend, its steps and its settings):

    def next_step(row):
        if "answer" not in row:
            return Step("answer", [{"role": "user", "content": row["question"]}], sampling)
        if "verdict" not in row:
            return Step("judge", judge_prompt(row), judge_sampling, who="judge")
        return None

    def take(row, step, texts):
        row["answer" if step.name == "answer" else "verdict"] = texts[0]

    items = [Item(q.id, {"id": q.id, "question": q.text}) for q in questions]
    settings = {"model": model.name, "sampling": sampling.as_dict(), "judge": judge.name,
                "judge_sampling": judge_sampling.as_dict()}
    with SampleJournal(path, items, settings, next_step, take) as journal:
        journal.run({"model": model, "judge": judge})   # sends nothing when nothing is pending
        journal.finish([grade(row) if status == "done" else row
                        for row, status in zip(journal.rows, journal.status)])
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..data.journal import JobError, JournalFile, Scan, replace_file, scan_lines, stable_hash
from ..data.records import atomic_path
from ..engine.backends import Reply, Sampling
from ..synth.jobs import generate_each

__all__ = ["Step", "Item", "SampleJournal", "OPEN", "DONE", "FAILED"]

OPEN, DONE, FAILED = "open", "done", "failed"
_BOOKKEEPING = ("job", "error")  # what a line adds to the sample's own fields


def write_scores(out: Path, scores: dict) -> None:
    """A benchmark's scores.json, written atomically: its presence marks the benchmark done (critkit run)."""
    with atomic_path(out / "scores.json") as tmp:
        tmp.write_text(json.dumps(scores, indent=1))


def _copy(row: dict) -> dict:
    """A copy as it would read back from its line (tuples become lists), so that a sample run in
    one go and one resumed from the file are the same value and write the same bytes."""
    return json.loads(json.dumps(row, ensure_ascii=False))


@dataclass(frozen=True)
class Step:
    """One request of a sample: its name (recorded when it fails), what is sent, and to whom."""

    name: str  # e.g. "answer", "solve 2", "critique 2", "judge"
    messages: list
    sampling: Sampling
    who: str = "model"  # which of run()'s backends answers


@dataclass
class Item:
    """A sample to evaluate: its id and the row its line starts from (id, question, gold, ...)."""

    id: str
    row: dict


class SampleJournal:
    """One output file of samples, opened under its lock; see the module's description."""

    def __init__(self, path: str | Path, items: list[Item], settings: dict, next_step: Callable[[dict], Step | None],
                 take: Callable[[dict, Step, list[str]], None], retry_failed: bool = False, desc: str | None = None):
        self.path = Path(path)
        self.next_step, self.take, self.desc = next_step, take, desc
        self.settings = stable_hash(settings)[:16]
        self.model = settings.get("model")
        self.keys = [self._key(item) for item in items]
        self.counts = Counter()
        self.scan = Scan()
        self.lengths: dict[int, int] = {}  # byte offset -> length of each sample line read
        self.file = JournalFile(self.path)
        try:
            latest, legacy = self._read()
        except BaseException:
            self.file.close()
            raise
        if self.scan.torn_at is not None:
            self.file.cut(self.scan.torn_at)  # appending after half a line would glue the next one onto it
        self.rows: list[dict] = []
        self.status: list[str] = []
        self.errors: list[str | None] = []
        used: set[int] = set()  # byte offsets of the lines this run continues from
        for item, key in zip(items, self.keys):
            found = latest.get(key) or legacy.get(item.id)
            if found is None:
                row, status, error = _copy(item.row), OPEN, None
            else:
                offset, line = found
                used.add(offset)
                row = {k: v for k, v in line.items() if k not in _BOOKKEEPING}
                # A line from before the journal is done when the caller finds nothing left to ask.
                status = line["job"]["status"] if "job" in line else DONE if self.next_step(_copy(row)) is None else OPEN
                error = line.get("error") if status == FAILED else None
                if status == FAILED and retry_failed:
                    status, error = OPEN, None
                    self.counts["retried"] += 1
                elif status != OPEN:
                    self.counts["resumed"] += 1
            self.rows.append(row)
            self.status.append(status)
            self.errors.append(error)
        # Lines of samples this run does not have: paid for, so moved aside when the file is rewritten.
        self.stale = sorted(offset for offset, _ in [*latest.values(), *legacy.values()] if offset not in used)

    # --------------------------------------------------------------------------------- reading

    def _key(self, item: Item) -> str:
        first = self.next_step(_copy(item.row))
        return stable_hash({"settings": self.settings, "id": item.id, "prompt": first.messages if first else None})

    def _read(self) -> tuple[dict, dict]:
        """{key: (offset, line)} of the latest line per key, and {id: (offset, line)} of lines without a key."""
        latest: dict[str, tuple[int, dict]] = {}
        legacy: dict[str, tuple[int, dict]] = {}
        if not self.path.stat().st_size:
            return latest, legacy
        for number, offset, length, line in scan_lines(self.path, self.scan):
            if line is None:
                continue  # not JSON: reported by scan_lines
            where = f"{self.path}:{number}"
            if not isinstance(line, dict) or line.get("id") is None:
                self.scan.problems.append(f"{where}: not a sample (a JSON object with an id), ignored")
                continue
            self.lengths[offset] = length
            job = line.get("job")
            if not isinstance(job, dict) or "key" not in job:
                legacy[str(line["id"])] = (offset, line)  # written before evaluation kept a journal
                continue
            if job.get("settings") != self.settings:
                raise JobError(f"{where}: sample {line['id']!r} was made by {job.get('model')} with other settings "
                               f"(model, sampling, mode or rounds) than this run ({self.model}); continue with the same "
                               f"settings, or write to another output folder")
            if job.get("status") not in (OPEN, DONE, FAILED):
                self.scan.problems.append(f"{where}: unknown status {job.get('status')!r}, ignored; its sample is done again")
                continue
            latest[job["key"]] = (offset, line)
        return latest, legacy

    @property
    def problems(self) -> list[str]:
        return self.scan.problems

    @property
    def pending(self) -> list[int]:
        """Indexes of the samples that still have a step to send."""
        return [i for i, status in enumerate(self.status) if status == OPEN]

    # -------------------------------------------------------------------------------- running

    def run(self, backends: dict) -> None:
        """Send every open sample's next step until none is left; each reply is journaled at once.

        The steps due at one time are sent together, one batch per backend and sampling, so the
        transformers backend batches them and the HTTP backend keeps its requests in flight.
        """
        while True:
            batches: dict[tuple, list[tuple[int, Step]]] = {}
            for i in self.pending:
                step = self.next_step(self.rows[i])
                if step is None:  # complete without another request (e.g. a line written just before the end)
                    self._end(i, DONE)
                    continue
                batch = (step.who, json.dumps(step.sampling.as_dict(), sort_keys=True))
                batches.setdefault(batch, []).append((i, step))
            if not batches:
                return
            for (who, _), batch in batches.items():
                self._send(backends[who], batch)

    def _send(self, backend, batch: list[tuple[int, Step]]) -> None:
        answered: set[int] = set()

        def on_result(j: int, reply: Reply) -> None:
            i, step = batch[j]
            answered.add(j)
            self.counts["sent"] += 1
            self.counts["retries"] += max(0, reply.tries - 1)
            if not reply.ok:
                self._end(i, FAILED, f"{step.name}: {reply.error}")
                return
            self.take(self.rows[i], step, reply.texts)
            self._end(i, OPEN if self.next_step(self.rows[i]) is not None else DONE)

        names = {step.name for _, step in batch}  # one name in a run that was not interrupted: "solve 2", ...
        desc = f"{self.desc}: {names.pop()}" if self.desc and len(names) == 1 else self.desc
        generate_each(backend, [step.messages for _, step in batch], batch[0][1].sampling, on_result, desc=desc)
        for j, (i, step) in enumerate(batch):
            if j not in answered:  # a backend that skipped one would otherwise have it asked forever
                self._end(i, FAILED, f"{step.name}: the backend returned no reply for this request")

    def _end(self, i: int, status: str, error: str | None = None) -> None:
        """Record sample i's new state: one line, one write."""
        self.status[i], self.errors[i] = status, error
        if status != OPEN:
            self.counts[status] += 1
        self.file.write(self._line(self.rows[i], i))

    def _line(self, row: dict, i: int) -> bytes:
        line = {**row, **({"error": self.errors[i]} if self.status[i] == FAILED else {}),
                "job": {"key": self.keys[i], "settings": self.settings, "model": self.model, "status": self.status[i]}}
        return (json.dumps(line, ensure_ascii=False) + "\n").encode()

    # ------------------------------------------------------------------------------- the end

    def finish(self, rows: list[dict] | None = None) -> None:
        """Rewrite the file in item order, one line per sample (`rows`, e.g. graded; default: as run);
        `rows` become the journal's rows."""
        rows = self.rows = self.rows if rows is None else rows
        self.file.sync()
        if self.stale:
            aside = self.path.with_name(self.path.stem + ".superseded.jsonl")
            with open(self.path, "rb") as fh, open(aside, "ab") as out:
                for offset in self.stale:
                    fh.seek(offset)
                    out.write(fh.read(self.lengths[offset]))
            self.counts["superseded"] = len(self.stale)
        replace_file(self.path, lambda out: out.writelines(self._line(row, i) for i, row in enumerate(rows)))

    def outcome(self) -> tuple[list[dict], list[dict]]:
        """The rows of the samples that ended done, and {"id", "error"} of each that failed."""
        answered = [row for row, status in zip(self.rows, self.status) if status == DONE]
        failed = [{"id": row["id"], "error": error} for row, status, error in zip(self.rows, self.status, self.errors)
                  if status == FAILED]
        return answered, failed

    def summary(self) -> dict:
        """What this run did: samples resumed from earlier runs, requests sent (and retries), failures."""
        aside = self.path.with_name(self.path.stem + ".superseded.jsonl")
        return {"samples": len(self.rows), "resumed": self.counts["resumed"], "retried_failed": self.counts["retried"],
                "sent": self.counts["sent"], "retries": self.counts["retries"], "failed": self.status.count(FAILED),
                "superseded": self.counts["superseded"], "superseded_file": str(aside) if self.counts["superseded"] else None,
                "journal_problems": list(self.problems)}

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "SampleJournal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
