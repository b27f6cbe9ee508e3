"""Durable synthesis: the runner behind `critkit respond / critique / refine / solve`.

A stage over a large file runs for hours; calls fail, processes die, the bill matters. So:

- **Work items.** Each input record is one item, keyed by sha256 of (stage, record id, prompt
  messages, model, sampling, options). Identical requests (same messages, model and sampling) are
  sent once: the first item with that request leads, the others reuse its answer.
- **Journal = output.** `OUTPUT.jsonl` is append-only while the stage runs: one line per finished
  item (done, failed with its reason, skipped or kept), each a full record whose
  meta["jobs"][stage] holds the key and the bookkeeping. Lines are written with one `write` call
  per item and fsync'd at least once a second, so `kill -9` loses at most the items in flight
  (the file handling, shared with evaluation's journal, is data/journal.py).
- **Resume.** A rerun reads the journal, drops a torn last line (and says so), and skips every
  key that is already there; `retry_failed` takes up the failed ones again. When all items are
  through, the file is rewritten in input order with one group of lines per item (the latest),
  so the result is the same however often the run was interrupted.
- **Sharding.** `shard=(i, n)` keeps the records whose stable id hash falls in shard i; each shard
  writes its own file and `merge_shards` joins them, refusing gaps and overlaps.
- **Accounting.** Token usage per stage and model (from the API, or the local tokenizer), a cost
  from per-million-token prices, written to `OUTPUT.usage.json` with the run's counts.

Nothing is dropped silently: bad input lines are reported with file and line, failed requests end
as records with `status: failed` and the error, and the summary counts every outcome. A reply
whose thinking never closes (a reasoning model cut at the token limit, see grading/thinking.py)
is failed too, with its raw text kept in meta[stage]["output"] and its tokens billed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import stages as synth
from ..engine.backends import Reply, Sampling
from ..data.journal import JobError, JournalFile, replace_file, scan_lines, stable_hash as _hash
from ..data.records import Record, scan_records
from .stages import REFERENCE

__all__ = ["run_stage", "merge_shards", "read_journal", "parse_shard", "shard_of", "usage_table", "format_summary",
           "JobError", "load_prices", "generate_each"]


# ------------------------------------------------------------------------------------ keys


def shard_of(record_id: str, n: int) -> int:
    """A record's shard: stable across machines, Python versions and runs (unlike hash())."""
    return int(hashlib.sha256(record_id.encode()).hexdigest()[:16], 16) % n


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n), with 0 <= i < n."""
    if not text:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise JobError(f"--shard must be i/n with 0 <= i < n, e.g. 0/4; got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclass
class Item:
    """One input record's work in one stage."""

    pos: int  # index among the input's good records: the output's order
    line: int  # line (row) in the input file, for messages
    record: Record
    key: str
    skip: str | None = None  # why there is nothing to generate (kept / skipped), else None
    messages: list | None = None  # the prompt, for a model teacher
    request: str | None = None  # hash of what is sent: items with equal requests share one answer


def _settings(stage: str, teacher, sampling: Sampling, style: str, prompt: str,
              reference_critique: str = synth.REFERENCE_CRITIQUES[0]) -> dict:
    settings = {"stage": stage, "model": synth._teacher_name(teacher)}
    if stage == "critique" and teacher == REFERENCE:  # what its critique holds: a journal of another kind is refused
        settings["contains"] = reference_critique
    if teacher != REFERENCE:  # sampling means nothing to the offline teacher
        settings["sampling"] = synth.stage_sampling(stage, sampling).as_dict()
    if stage == "critique":
        settings["style"] = style
    if stage == "respond":
        settings["prompt"] = prompt
    return settings


_CONTENT = ("question", "gold", "reference", "response", "critique", "verdict", "refined", "teacher_solution")


def plan_items(stage: str, numbered: list[tuple[int, Record]], teacher, sampling: Sampling, style: str = "cft",
               prompt: str = "plain", shard: tuple[int, int] | None = None,
               reference_critique: str = synth.REFERENCE_CRITIQUES[0]) -> tuple[list[Item], str]:
    """Items for the records of this shard, and the hash of the run's settings."""
    settings = _settings(stage, teacher, sampling, style, prompt, reference_critique)
    settings_hash = _hash(settings)[:16]
    used = synth.stage_sampling(stage, sampling).as_dict()
    items = []
    for pos, (line, rec) in enumerate(numbered):
        if shard and shard_of(rec.id, shard[1]) != shard[0]:
            continue
        skip = synth.skip_reason(stage, rec, teacher)
        messages = request = None
        if skip is None and teacher != REFERENCE:
            messages = synth.prompt_for(stage, rec, style, prompt)
            request = _hash({"model": settings["model"], "sampling": used, "messages": messages})
            payload = {"request": request, "gold": rec.gold}  # gold: the critique's verification uses it
        else:
            payload = {f: getattr(rec, f) for f in _CONTENT}
        key = _hash({"stage": stage, "id": rec.id, "settings": settings_hash, "input": payload})
        items.append(Item(pos, line, rec, key, skip, messages, request))
    return items, settings_hash


# --------------------------------------------------------------------------------- journal


@dataclass
class Line:
    """What the summary and the checks need of one output line, kept instead of the line itself."""

    stage: str
    id: str
    job: dict  # this stage's block, meta["jobs"][stage]
    verdict: str | None
    verify: dict | None
    earlier: tuple  # (stage, model, status, cached, prompt_tokens, completion_tokens) of earlier stages


def _line_info(row: dict, stage: str, job: dict) -> Line:
    meta = row.get("meta") or {}
    earlier = []
    for name, block in (meta.get("jobs") or {}).items():
        if name != stage and isinstance(block, dict) and block.get("part", 0) == 0:
            usage = block.get("usage") or {}
            earlier.append((name, block.get("model", "?"), block.get("status"), bool(block.get("cached")),
                            int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)))
    return Line(stage, row.get("id"), job, row.get("verdict"), meta.get("verify"), tuple(earlier))


@dataclass
class Group:
    """The lines of one item in a journal (several for respond with n samples)."""

    spans: list[tuple[int, int]]  # (byte offset, length) of each line in the file
    lines: list[Line]
    first_line: int  # 1-based line number, for messages

    @property
    def job(self) -> dict:
        return self.lines[0].job

    @property
    def status(self) -> str:
        return self.job["status"]

    @property
    def ids(self) -> list[str]:
        return [line.id for line in self.lines]


@dataclass
class JournalView:
    groups: dict[str, Group] = field(default_factory=dict)  # key -> latest complete group
    problems: list[str] = field(default_factory=list)  # torn or unreadable lines, with their location
    torn_at: int | None = None  # byte offset where a torn last line starts
    size: int = 0  # bytes of complete lines
    lines: int = 0  # complete lines
    partial: dict = field(default_factory=dict)

    def add(self, row: dict, stage: str, job: dict, span: tuple[int, int]) -> None:
        """Take one line; a group becomes visible once all its parts are there."""
        self.lines += 1
        key, part, parts = job["key"], int(job.get("part", 0)), int(job.get("parts", 1))
        if part == 0:
            self.partial[key] = ([], [], self.lines)
        group = self.partial.get(key)
        if group is None or len(group[0]) != part:  # a part without its beginning: a torn group
            return
        group[0].append(span)
        group[1].append(_line_info(row, stage, job))
        if len(group[0]) == parts:
            self.groups[key] = Group(*group)
            del self.partial[key]


def _job_block(row: dict, stage: str | None) -> tuple[str | None, dict | None]:
    jobs = (row.get("meta") or {}).get("jobs") if isinstance(row, dict) else None
    if not isinstance(jobs, dict) or not jobs:
        return None, None
    if stage is None:
        stage = list(jobs)[-1]  # a stage's own block is written last (see _line)
    block = jobs.get(stage)
    return (stage, block) if isinstance(block, dict) and "key" in block else (stage, None)


def read_journal(path: str | os.PathLike, stage: str | None = None) -> tuple[JournalView, str | None]:
    """Index a journal: the latest complete group of lines per key; and the stage that wrote it.

    A last line without its newline was cut off by a crash: it is reported and left out (the
    writer truncates it before appending). A line in the middle that is not JSON is reported and
    left out; its item is simply done again. A line that no critkit stage wrote is an error: the
    file is someone else's and must not be rewritten.
    """
    view = JournalView()
    path = Path(path)
    if not path.exists():
        return view, stage
    for number, start, length, row in scan_lines(path, view):
        if row is None:  # not JSON: reported by scan_lines
            view.lines += 1
            continue
        found_stage, job = _job_block(row, stage)
        if job is None:
            raise JobError(f"{path}:{number}: this line was not written by `critkit {stage or 'STAGE'}` (no "
                           f"meta.jobs.{stage or 'STAGE'}); refusing to rewrite the file: use a new output file")
        stage = stage or found_stage
        view.add(row, stage, job, (start, length))
    return view, stage


class Journal:
    """The output file, opened for appending under an exclusive lock (data/journal.py), and what it holds."""

    def __init__(self, path: Path, stage: str):
        self.path, self.stage = path, stage
        self.file = JournalFile(path)
        try:
            self.view, _ = read_journal(path, stage)
        except BaseException:
            self.file.close()
            raise
        if self.view.torn_at is not None:
            self.file.cut(self.view.torn_at)  # appending after half a line would glue the next record onto it

    @property
    def fd(self) -> int:
        return self.file.fd

    def append(self, rows: list[dict]) -> None:
        """One write per item: a crash can tear only the last item, which the reader then drops."""
        encoded = [(json.dumps(row, ensure_ascii=False) + "\n").encode() for row in rows]
        self.file.write(b"".join(encoded))
        for row, raw in zip(rows, encoded):  # indexed as the reader would, without reading back
            self.view.add(row, self.stage, row["meta"]["jobs"][self.stage], (self.view.size, len(raw)))
            self.view.size += len(raw)

    def sync(self) -> None:
        self.file.sync()

    def close(self) -> None:
        self.file.close()


def _rewrite(path: Path, chunks: list[tuple[Path, int, int]]) -> None:
    """Write the given byte ranges (of this or other files) as the new `path`, atomically."""
    handles: dict[Path, object] = {}

    def copy(out) -> None:
        for source, offset, length in chunks:
            if source not in handles:
                handles[source] = open(source, "rb")
            fh = handles[source]
            fh.seek(offset)
            out.write(fh.read(length))

    try:
        replace_file(path, copy)
    finally:
        for fh in handles.values():
            fh.close()


# ----------------------------------------------------------------------------------- lines


_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def _line(item: Item, rec: Record, stage: str, block: dict) -> dict:
    # A shallow dict: it is serialized at once, so asdict's deep copy of meta would be wasted work.
    row = {name: getattr(rec, name) for name in _FIELDS}
    jobs = {k: v for k, v in (rec.meta.get("jobs") or {}).items() if k != stage}
    jobs[stage] = block  # last, so a reader can tell which stage wrote the file
    row["meta"] = {**rec.meta, "jobs": jobs}
    return row


def generate_each(backend, conversations, sampling, on_result, desc: str | None = None) -> None:
    """backend.generate_each when it has one; otherwise `generate` in small batches, each batch's
    failure turned into error replies so that one bad batch does not end the run. Evaluation
    (evaluation/durable.py) sends its requests through here too. `desc` labels a progress bar."""
    if hasattr(backend, "generate_each"):
        backend.generate_each(conversations, sampling, on_result=on_result, **({"desc": desc} if desc else {}))
        return
    step = 16
    for start in range(0, len(conversations), step):
        chunk = conversations[start : start + step]
        try:
            replies = [Reply(texts=t) for t in backend.generate(chunk, sampling, **({"desc": desc} if desc else {}))]
        except Exception as exc:  # noqa: BLE001 - recorded as the items' failure reason
            replies = [Reply(error=f"{type(exc).__name__}: {exc}") for _ in chunk]
        for j, reply in enumerate(replies):
            on_result(start + j, reply)


# ------------------------------------------------------------------------------ the runner


def run_stage(stage: str, input_path: str | os.PathLike, output_path: str | os.PathLike, teacher, sampling: Sampling,
              *, style: str = "cft", prompt: str = "plain", retry_failed: bool = False,
              shard: tuple[int, int] | None = None, prices: dict | None = None, progress: bool = True,
              reference_critique: str = synth.REFERENCE_CRITIQUES[0]) -> dict:
    """Run one synthesis stage durably; returns the summary (also saved as OUTPUT.usage.json).

    `teacher` is a backend (the student, for respond) or "reference"; `reference_critique` is what
    the reference teacher's critique holds (synth.REFERENCE_CRITIQUES). Rerunning the same command
    resumes; `retry_failed` also redoes items that failed before.
    """
    from tqdm.auto import tqdm

    if stage not in synth.STAGE_FIELDS:
        raise JobError(f"unknown stage {stage!r}; known: {', '.join(synth.STAGE_FIELDS)}")
    if stage == "critique":
        synth.check_style(style)
        synth.check_reference_critique(reference_critique)
    if stage == "respond" and teacher == REFERENCE:
        raise JobError("respond needs a model: the reference teacher only critiques, refines and solves")
    if stage == "respond" and prompt not in synth.RESPOND_PROMPTS:
        raise JobError(f"unknown respond prompt {prompt!r}; use one of {', '.join(synth.RESPOND_PROMPTS)}")
    output = Path(output_path)
    if output.suffix != ".jsonl":
        raise JobError(f"{output}: a stage writes JSON lines (its journal); name the output .jsonl")
    if Path(input_path).resolve() == output.resolve():
        raise JobError("the output must be another file than the input")
    started = time.time()

    numbered, bad_input = scan_records(input_path)
    items, settings_hash = plan_items(stage, numbered, teacher, sampling, style, prompt, shard, reference_critique)
    shard_text = f"{shard[0]}/{shard[1]}" if shard else None
    model = synth._teacher_name(teacher)
    used = synth.stage_sampling(stage, sampling)
    meta_sampling = used if stage == "respond" else sampling
    total = len(numbered)
    # The whole input's fingerprint, in every line: `critkit merge` refuses shards made from different
    # inputs, which a record count alone cannot tell apart (a changed question keeps the count).
    fingerprint = _hash([[rec.id, {f: getattr(rec, f) for f in _CONTENT}] for _, rec in numbered])[:16]

    journal = Journal(output, stage)
    view = journal.view
    try:
        for key, group in view.groups.items():
            job = group.job
            if job.get("settings") != settings_hash:
                raise JobError(f"{output}:{group.first_line}: record {group.ids[0]!r} was made by {job.get('model')} with "
                               f"other settings (model, sampling, prompt style or reference critique) than this run ({model}); "
                               "continue with the same settings, or write to a new output file")
            if job.get("shard") != shard_text:
                raise JobError(f"{output}:{group.first_line}: record {group.ids[0]!r} belongs to shard "
                               f"{job.get('shard') or 'none (unsharded run)'}, this run is shard {shard_text or 'none'}; "
                               "give each shard its own output file")

        finished = {k for k, g in view.groups.items() if g.status != "failed" or not retry_failed}
        todo = [it for it in items if it.key not in finished]
        # Done answers already in the journal, by request: a cache that survives restarts.
        answered = {g.job["request"]: key for key, g in view.groups.items() if g.status == "done" and g.job.get("request")}
        run = Counter(resumed=len(items) - len(todo))

        def block(item: Item, status: str, part: int = 0, parts: int = 1, **extra) -> dict:
            b = {"status": status, "key": item.key, "settings": settings_hash, "model": model, "pos": item.pos,
                 "total": total, "input": fingerprint, "part": part, "parts": parts}
            if item.request:
                b["request"] = item.request
            if shard_text:
                b["shard"] = shard_text
            return {**b, **extra}

        def lines_for(item: Item, texts: list[str] | None, extra: dict, graded: str | None = None,
                      error: str | None = None) -> list[dict]:
            if error is not None:
                rec = item.record
                if texts is not None:  # a reply that came back but cannot be used: keep what it says
                    raw = ({"model": model, "prompt": prompt, "output": texts} if stage == "respond" else
                           {"teacher": model, "messages": item.messages, "output": texts[0]})
                    rec = dataclasses.replace(rec, meta={**rec.meta, stage: {**raw, "error": error}})
                return [_line(item, rec, stage, block(item, "failed", error=error, **extra))]
            made, _ = synth.apply(stage, item.record, texts, teacher, meta_sampling, item.messages, style=style,
                                  prompt=prompt, graded=graded, reference_critique=reference_critique)
            rows = []
            for k, rec in enumerate(made):
                part_extra = extra if k == 0 else {x: v for x, v in extra.items() if x not in ("usage", "tries")}
                if rec.id != item.record.id:
                    part_extra = {**part_extra, "id": item.record.id}
                rows.append(_line(item, rec, stage, block(item, "done", k, len(made), **part_extra)))
            return rows

        bar = tqdm(total=len(todo), desc=stage, unit="record", disable=not progress)
        leaders: list[Item] = []
        followers: dict[str, list[Item]] = defaultdict(list)
        from_journal: list[Item] = []
        for item in todo:
            if item.skip is not None:
                status = "kept" if item.skip.startswith("kept") else "skipped"
                journal.append([_line(item, item.record, stage, block(item, status, reason=item.skip))])
                bar.update(1)
            elif teacher == REFERENCE:
                text, graded = synth.reference_output(stage, item.record, style, reference_critique)
                journal.append(lines_for(item, [text], {}, graded=graded))
                run["done"] += 1
                bar.update(1)
            elif item.request in answered:
                from_journal.append(item)
            elif item.request in followers:
                followers[item.request].append(item)
            else:
                followers[item.request] = []
                leaders.append(item)

        if from_journal:
            # Identical requests answered in an earlier run: read the answer back, send nothing.
            with open(output, "rb") as fh:
                for item in from_journal:
                    group = view.groups[answered[item.request]]
                    recs = []
                    for offset, length in group.spans:
                        fh.seek(offset)
                        recs.append(Record.from_dict(json.loads(fh.read(length))))
                    journal.append(lines_for(item, synth.raw_texts(stage, recs), {"cached": True}))
                    run["cached"] += 1
                    run["done"] += 1
                    bar.update(1)

        def on_result(j: int, reply: Reply) -> None:
            leader = leaders[j]
            rows: list[dict] = []
            unusable = None
            if reply.ok:
                texts = reply.texts if stage == "respond" else reply.texts[:1]
                extra = {"tries": reply.tries, "usage": {k: reply.usage.get(k) for k in ("prompt_tokens", "completion_tokens")
                                                          if reply.usage.get(k) is not None}}
                odd = [r for r in reply.finish_reasons if r and r != "stop"]
                if odd:
                    extra["finish_reason"] = odd[0]  # e.g. "length": the answer was cut at max_tokens
                # A reply cut inside its thinking is paid for but not used: failed, for --retry-failed.
                unusable = synth.thinking_error(stage, texts)
                rows += lines_for(leader, texts, extra, error=unusable)
                for other in followers[leader.request]:
                    rows += lines_for(other, texts, {"cached": True}, error=unusable)
                    run["cached"] += 1
            else:
                rows += lines_for(leader, None, {"tries": reply.tries}, error=reply.error)
                for other in followers[leader.request]:
                    rows += lines_for(other, None, {"cached": True}, error=reply.error)
            group_size = 1 + len(followers[leader.request])
            run["done" if reply.ok and not unusable else "failed"] += group_size
            run["sent"] += 1
            run["retries"] += reply.tries - 1
            journal.append(rows)  # the leader and the items that share its request: one write
            bar.update(group_size)

        if leaders:
            generate_each(teacher, [it.messages for it in leaders], used, on_result)
        bar.close()
        journal.sync()

        # Every item is through: rewrite the file in input order, one group per item.
        keep, final_lines, missing = [], [], []
        for item in items:
            group = view.groups.get(item.key)
            if group is None:
                missing.append(item)
                continue
            keep.extend((output, offset, length) for offset, length in group.spans)
            final_lines.extend(group.lines)
        if missing:  # cannot happen unless the file was changed under us: say so, do not hide it
            raise JobError(f"{output}: {len(missing)} items have no line after the run (e.g. input line "
                           f"{missing[0].line}, id {missing[0].record.id!r}); run the command again")
        current = {it.key for it in items}
        stale = [g for k, g in view.groups.items() if k not in current]
        superseded = output.with_name(output.stem + ".superseded.jsonl") if stale else None
        if stale:
            # Lines made from an input that has since changed (or records no longer in it): not part
            # of this output any more, but paid for, so moved aside rather than deleted.
            with open(superseded, "ab") as out, open(output, "rb") as fh:
                for group in stale:
                    for offset, length in group.spans:
                        fh.seek(offset)
                        out.write(fh.read(length))
                out.flush()
                os.fsync(out.fileno())
        # A resume with nothing to do finds the file already in order: no need to copy it.
        in_order = all(a[1] + a[2] == b[1] for a, b in zip(keep, keep[1:])) and \
            (not keep or (keep[0][1] == 0 and keep[-1][1] + keep[-1][2] == view.size == os.fstat(journal.fd).st_size))
        if not in_order:
            _rewrite(output, keep)
    finally:
        journal.close()

    summary = summarize(output, stage, final_lines, prices)
    summary.update({
        "input": str(input_path), "shard": shard_text, "seconds": round(time.time() - started, 2),
        "bad_input": [str(e) for e in bad_input],
        "journal_problems": view.problems,
        "this_run": dict(run),
        "superseded": {"records": sum(len(g.spans) for g in stale), "file": str(superseded)} if stale else None,
    })
    usage_path = output.with_suffix(".usage.json")
    usage_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary["usage_file"] = str(usage_path)
    return summary


# ------------------------------------------------------------------------------ accounting


def load_prices(path: str | os.PathLike | None = None, model: str | None = None, prompt: float | None = None,
                completion: float | None = None) -> dict:
    """Prices in currency units per million tokens: {model: {"prompt": p, "completion": c}}.

    From a YAML file of that shape, and/or flags for one model (the flags win).
    """
    prices: dict = {}
    if path:
        import yaml

        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise JobError(f"{path}: expected 'model: {{prompt: ..., completion: ...}}' entries")
        for name, entry in raw.items():
            if not isinstance(entry, dict) or set(entry) - {"prompt", "completion"}:
                raise JobError(f"{path}: {name}: expected {{prompt: ..., completion: ...}} per million tokens")
            prices[str(name)] = {k: float(v) for k, v in entry.items()}
    if model and (prompt is not None or completion is not None):
        entry = prices.setdefault(model, {})
        if prompt is not None:
            entry["prompt"] = float(prompt)
        if completion is not None:
            entry["completion"] = float(completion)
    return prices


def _price(prices: dict | None, model: str) -> dict | None:
    if not prices:
        return None
    # "OpenAIBackend:gpt-4o" is priced as "gpt-4o" unless the full name has its own entry.
    return prices.get(model) or prices.get(model.split(":", 1)[-1])


def usage_table(lines: list[Line], prices: dict | None = None) -> list[dict]:
    """Requests, cache hits, failures and tokens per (stage, model), over every stage the records went through."""
    table: dict[tuple[str, str], Counter] = defaultdict(Counter)

    def add(stage, model, status, cached, prompt_tokens, completion_tokens):
        counts = table[(stage, model)]
        if status == "failed":
            counts["failed"] += 1
            # A reply that came back unusable (thinking cut at the token limit) was still billed.
            counts["prompt_tokens"] += prompt_tokens
            counts["completion_tokens"] += completion_tokens
        elif status != "done":
            return
        elif cached:
            counts["cached"] += 1
        else:
            counts["requests"] += 0 if model == REFERENCE else 1
            counts["prompt_tokens"] += prompt_tokens
            counts["completion_tokens"] += completion_tokens

    for line in lines:
        job = line.job
        if job.get("part", 0) == 0:  # respond's n samples share one request, counted on the first
            usage = job.get("usage") or {}
            add(line.stage, job.get("model", "?"), job.get("status"), bool(job.get("cached")),
                int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        for entry in line.earlier:
            add(*entry)
    out = []
    for (stage, model), c in sorted(table.items()):
        entry = {"stage": stage, "model": model, "requests": c["requests"], "cached": c["cached"], "failed": c["failed"],
                 "prompt_tokens": c["prompt_tokens"], "completion_tokens": c["completion_tokens"], "cost": None}
        price = _price(prices, model)
        if price:
            entry["cost"] = round(c["prompt_tokens"] / 1e6 * price.get("prompt", 0.0)
                                  + c["completion_tokens"] / 1e6 * price.get("completion", 0.0), 6)
        out.append(entry)
    return out


def _failure_kind(error: str) -> str:
    """A short class for grouping failures: 'HTTP 429', 'TimeoutError', 'reply is not JSON', ..."""
    for pattern in (r"^unclosed thinking", r"HTTP \d{3}", r"reply is not JSON", r"reply has no choices", r"\b[A-Z]\w*(?:Error|Exception|Read|Disconnected)\b"):
        m = re.search(pattern, error)
        if m:
            return m.group(0)
    return error[:60]


def summarize(path: str | os.PathLike, stage: str, lines: list[Line], prices: dict | None = None) -> dict:
    """Counts, failures, verdicts, verifier agreement and usage of a stage output, line by line."""
    counts, skipped, failures, verdicts, verify = Counter(), Counter(), Counter(), Counter(), Counter()
    examples: dict[str, str] = {}
    unparsed, failed_at, truncated = [], [], 0
    for number, line in enumerate(lines, start=1):
        job = line.job
        status = job["status"]
        counts[status] += 1
        where = f"{path}:{number} (id {line.id!r})"
        if status in ("skipped", "kept"):
            skipped[job.get("reason", status)] += 1
        elif status == "failed":
            kind = _failure_kind(job.get("error", ""))
            failures[kind] += 1
            examples.setdefault(kind, job.get("error", ""))
            failed_at.append(where)
        if status == "done" and job.get("finish_reason") == "length":
            truncated += 1
        if stage == "critique" and status == "done":
            verdicts[line.verdict] += 1
            if line.verdict == "unparsed":
                unparsed.append(where)
            check = line.verify or {}
            verify["graded" if check.get("graded") else "no gold"] += 1
            if check.get("agrees") is True:
                verify["agrees"] += 1
            elif check.get("agrees") is False:
                verify["disagrees"] += 1
    summary = {
        "stage": stage, "output": str(path), "records": sum(counts.values()),
        "counts": {k: counts[k] for k in ("done", "failed", "skipped", "kept")},
        "skipped": dict(skipped), "failures": {k: {"count": v, "example": examples[k]} for k, v in failures.items()},
        "failed_at": failed_at[:20], "truncated_at_max_tokens": truncated,
        "usage": usage_table(lines, prices), "prices": prices or None,
    }
    if stage == "critique":
        compared = verify["agrees"] + verify["disagrees"]
        summary["verdicts"] = dict(verdicts)
        summary["unparsed_at"] = unparsed[:20]
        summary["verify"] = {**verify, "agreement": round(verify["agrees"] / compared, 4) if compared else None}
    return summary


def format_summary(s: dict) -> str:
    c = s["counts"]
    out = [f"{s['stage']}: {s['records']} records in {s['output']}: done {c['done']}, failed {c['failed']}, "
           f"skipped {c['skipped'] + c['kept']}" + (f" (shard {s['shard']})" if s.get("shard") else "")]
    for reason, n in sorted(s["skipped"].items()):
        out.append(f"  {reason}: {n}")
    for kind, info in sorted(s["failures"].items()):
        out.append(f"  failed, {kind}: {info['count']}, e.g. {info['example'][:160]}")
    if c["failed"]:
        out.append(f"  first failed record: {s['failed_at'][0]}; rerun with --retry-failed to try the failed ones again")
    for problem in s.get("bad_input", [])[:10]:
        out.append(f"  bad input: {problem}")
    if len(s.get("bad_input", [])) > 10:
        out.append(f"  ... {len(s['bad_input']) - 10} more bad input lines (all in {s.get('usage_file', 'the usage file')})")
    for problem in s.get("journal_problems", []):
        out.append(f"  journal: {problem}")
    run = s.get("this_run") or {}
    if run:
        out.append(f"  this run: {run.get('sent', 0)} requests sent ({run.get('retries', 0)} retries), "
                   f"{run.get('cached', 0)} answered from cache, {run.get('resumed', 0)} already done before, "
                   f"{s.get('seconds', 0):.1f} s")
    if s.get("superseded"):
        out.append(f"  {s['superseded']['records']} lines from earlier runs no longer match the input; "
                   f"moved to {s['superseded']['file']}")
    if s.get("truncated_at_max_tokens"):
        out.append(f"  {s['truncated_at_max_tokens']} answers stopped at max_tokens (finish_reason=length)")
    if "verdicts" in s:
        v = s["verdicts"]
        out.append(f"  verdicts: right {v.get('right', 0)}, wrong {v.get('wrong', 0)}, unparsed {v.get('unparsed', 0)}"
                   + (f" (first: {s['unparsed_at'][0]})" if s["unparsed_at"] else ""))
        check = s["verify"]
        if check.get("agreement") is not None:
            out.append(f"  teacher vs math-verify: {100 * check['agreement']:.1f}% agree "
                       f"({check.get('agrees', 0)} of {check.get('agrees', 0) + check.get('disagrees', 0)} graded with a verdict)")
    for u in s["usage"]:
        if u["model"] == REFERENCE:
            continue  # the offline teacher sends nothing and costs nothing
        cost = f", cost {u['cost']:.4f}" if u["cost"] is not None else ""
        out.append(f"  tokens, {u['stage']} by {u['model']}: {u['requests']} requests, prompt {u['prompt_tokens']:,}, "
                   f"completion {u['completion_tokens']:,}{cost}" + (f", {u['cached']} cached" if u["cached"] else ""))
    if s.get("usage_file"):
        out.append(f"  saved {s['usage_file']}")
    return "\n".join(out)


# ----------------------------------------------------------------------------------- merge


def merge_shards(paths: list[str | os.PathLike], output: str | os.PathLike, stage: str | None = None,
                 prices: dict | None = None) -> dict:
    """Join the outputs of `--shard i/n` runs into one file in input order.

    Refuses (JobError listing every problem) when a shard is missing or given twice, when two
    files hold the same record, or when records are missing inside a shard (an unfinished run).
    """
    output = Path(output)
    problems: list[str] = []
    notes: list[str] = []
    by_index: dict[int, list[str]] = defaultdict(list)
    ns, totals = set(), set()
    seen_pos: dict[tuple[int, int], str] = {}
    seen_ids: dict[str, str] = {}
    inputs: dict[str, str] = {}  # input fingerprint -> the first file made from it
    chunks = []
    for path in map(Path, paths):
        if not path.exists():
            problems.append(f"{path}: file not found")
            continue
        try:
            view, stage = read_journal(path, stage)  # the first file names the stage; the others must match
        except JobError as exc:
            problems.append(str(exc))
            continue
        notes += view.problems
        shards = {g.job.get("shard") for g in view.groups.values()}
        if not view.groups:
            problems.append(f"{path}: no records")
            continue
        if len(shards) != 1 or None in shards:
            problems.append(f"{path}: not the output of one --shard run (shards found: {sorted(map(str, shards))})")
            continue
        (spec,) = shards
        # The input of the run that wrote last (an earlier run may have been resumed on an edited input).
        last = max(view.groups.values(), key=lambda g: g.first_line).job.get("input")
        if last is not None:  # files from before fingerprints were written have none
            inputs.setdefault(last, str(path))
        i, n = parse_shard(spec)
        by_index[i].append(str(path))
        ns.add(n)
        for group in view.groups.values():
            job = group.job
            totals.add(job.get("total"))
            source_id = job.get("id", group.ids[0])
            if shard_of(source_id, n) != i:
                problems.append(f"{path}:{group.first_line}: record {source_id!r} belongs to shard {shard_of(source_id, n)}/{n}, "
                                f"not {spec}")
            for part, ((offset, length), line) in enumerate(zip(group.spans, group.lines)):
                pos = (int(job["pos"]), part)
                where = f"{path}:{group.first_line}"
                if line.id in seen_ids or pos in seen_pos:
                    problems.append(f"overlap: record {line.id!r} is in {seen_ids.get(line.id) or seen_pos.get(pos)} and {where}")
                seen_ids[line.id] = seen_pos[pos] = where
                chunks.append((pos, (path, offset, length), line))
    if len(ns) > 1:
        problems.append(f"the files come from different splits: n = {sorted(ns)}")
    if len(totals) > 1:
        problems.append(f"the files were made from different inputs ({sorted(map(str, totals))} records)")
    elif len(inputs) > 1:
        problems.append(f"the files were made from different inputs (same number of records, other contents: "
                        f"{', '.join(inputs.values())} differ)")
    for i, files in sorted(by_index.items()):
        if len(files) > 1:
            problems.append(f"overlap: shard {i}/{next(iter(ns))} is given {len(files)} times: {', '.join(files)}")
    if len(ns) == 1:
        (n,) = ns
        absent = [f"{i}/{n}" for i in range(n) if i not in by_index]
        if absent:
            problems.append(f"gap: shard(s) {', '.join(absent)} missing")
        elif len(totals) == 1:
            (total,) = totals
            have = {pos for pos, _ in seen_pos}
            lost = [p for p in range(total) if p not in have]
            if lost:
                problems.append(f"gap: {len(lost)} of {total} input records have no line in any shard (input positions "
                                f"{lost[:5]}{'...' if len(lost) > 5 else ''}): a shard run did not finish; rerun it")
    if problems:
        raise JobError("cannot merge:\n  " + "\n  ".join(problems))
    chunks.sort(key=lambda c: c[0])
    _rewrite(output, [span for _, span, _ in chunks])
    summary = summarize(output, stage, [line for _, _, line in chunks], prices)
    summary["merged"] = [str(p) for p in paths]
    summary["journal_problems"] = notes
    usage_path = output.with_suffix(".usage.json")
    usage_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    summary["usage_file"] = str(usage_path)
    return summary
