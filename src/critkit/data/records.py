"""The one record type that flows through every stage, and its file formats.

A record starts as (id, question, gold, reference) from a source; synthesis stages fill in
response, critique, verdict, refined and teacher_solution, and keep the raw teacher input and
output under meta. Every file is written to a temporary name and renamed into place, so an
interrupted write never leaves a half-written file where a finished one is expected.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = ["Record", "RecordError", "read_records", "scan_records", "write_records", "read_jsonl", "write_jsonl", "atomic_path"]

VERDICTS = ("right", "wrong", "unparsed")


class RecordError(ValueError):
    """Bad input, with the file and line (1-based) where it was found."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


@dataclass
class Record:
    id: str
    question: str
    gold: str | None = None  # final answer only, e.g. "18"
    reference: str | None = None  # a reference (gold) solution, when the source has one
    response: str | None = None  # the answer being critiqued: noisy, or the student's own y'
    critique: str | None = None  # the teacher's critique of `response`
    verdict: str | None = None  # "right" | "wrong" | "unparsed" (teacher's conclusion, never guessed)
    refined: str | None = None  # the teacher's refined answer given (question, response, critique)
    teacher_solution: str | None = None  # the teacher's own solution (SFT-teacher baseline)
    meta: dict[str, Any] = field(default_factory=dict)  # provenance, raw teacher I/O, scores

    @classmethod
    def from_dict(cls, row: dict, path: str | os.PathLike = "<dict>", line: int | None = None) -> "Record":
        if not isinstance(row, dict):
            raise RecordError(path, line, f"expected a JSON object, got {type(row).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(row) - names
        if unknown:
            raise RecordError(path, line, f"unknown field(s) {sorted(unknown)}; a record has {sorted(names)}")
        for required in ("id", "question"):
            if required not in row or row[required] is None:
                raise RecordError(path, line, f"missing field '{required}'")
        if not isinstance(row["question"], str) or not row["question"].strip():
            raise RecordError(path, line, "field 'question' is empty")
        if row.get("meta") is not None and not isinstance(row["meta"], dict):
            raise RecordError(path, line, f"field 'meta' must be an object, got {type(row['meta']).__name__}")
        verdict = row.get("verdict")
        if verdict is not None and verdict not in VERDICTS:
            raise RecordError(path, line, f"field 'verdict' is {verdict!r}, expected one of {VERDICTS}")
        values = {k: row.get(k) for k in names if k in row}
        values["id"] = str(values["id"])
        if values.get("gold") is not None:
            values["gold"] = str(values["gold"])
        values["meta"] = dict(values.get("meta") or {})
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------- files


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; malformed JSON raises with file and line."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(path, number, f"malformed JSON ({exc.msg} at column {exc.colno})") from None


def scan_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object, str | None]]:
    """(line number, value, None) for each non-blank line of a JSONL file, or (line number, None,
    why) for a line that is not JSON: the caller reports it with the file and line and goes on.

    Read as bytes and split on b"\n" only, as the writers write: a JSON string may hold U+2028
    unescaped, and a byte that is not UTF-8 spoils its own line, not the whole read.
    """
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield number, json.loads(raw), None
            except json.JSONDecodeError as exc:
                yield number, None, f"{exc.msg} at column {exc.colno}"
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 ({exc.reason} at byte {exc.start})"


class atomic_path:
    """Context manager yielding a temporary path in the target's folder, renamed on success.

    On an exception the temporary file is removed, so the target is either the old file or the
    complete new one.
    """

    def __init__(self, target: str | os.PathLike):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp", dir=self.target.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            # mkstemp creates 0600 files; outputs should get the usual mode (0666 less the umask).
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.target)
        else:
            self.tmp.unlink(missing_ok=True)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _format(path: Path) -> str:
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix == ".json" and _starts_with_bracket(path):
        return "json-array"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    raise RecordError(path, None, f"unknown file type '{suffix}': use .jsonl, .parquet or a saved HF dataset folder")


def _starts_with_bracket(path: Path) -> bool:
    """A .json file that holds one JSON array (the released WebInstruct-CFT files) rather than lines."""
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _json_array(path: Path) -> list:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RecordError(path, exc.lineno, f"malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(rows, list):
        raise RecordError(path, None, f"expected a JSON array of objects, got {type(rows).__name__}")
    return rows


def read_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(row number, dict) from JSONL, a .json array, parquet or a `datasets.save_to_disk` folder.

    Row numbers are line numbers for JSONL and 1-based element numbers for a JSON array."""
    path = Path(path)
    if not path.exists():
        raise RecordError(path, None, "file not found")
    kind = _format(path)
    if kind == "jsonl":
        for number, row in read_jsonl(path):
            # Checked here, not only in Record.from_dict: every source mapping indexes rows as dicts.
            if not isinstance(row, dict):
                raise RecordError(path, number, f"expected a JSON object, got {type(row).__name__}")
            yield number, row
        return
    if kind == "json-array":
        rows = _json_array(path)
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise RecordError(path, number, f"element {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row
        return
    if kind == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        import datasets

        rows = datasets.load_from_disk(str(path))
    for number, row in enumerate(rows, start=1):
        yield number, dict(row)


def read_records(path: str | os.PathLike) -> list[Record]:
    """All records of a file; the first bad row stops the read with its file and row number."""
    return [Record.from_dict(decode_meta(row), path, number) for number, row in read_rows(path)]


def scan_records(path: str | os.PathLike) -> tuple[list[tuple[int, Record]], list[RecordError]]:
    """Every good record with its line (or row) number, and an error for each bad one.

    For long jobs: one bad line (not JSON, no question, a duplicate id) is reported with its
    location and the rest still run. `read_records` is the strict version for small files.
    """
    path = Path(path)
    good: list[tuple[int, Record]] = []
    problems: list[RecordError] = []
    seen: dict[str, int] = {}

    def take(number: int, row) -> None:
        try:
            rec = Record.from_dict(decode_meta(row) if isinstance(row, dict) else row, path, number)
        except RecordError as exc:
            problems.append(exc)
            return
        if rec.id in seen:
            problems.append(RecordError(path, number, f"duplicate id {rec.id!r} (first at line {seen[rec.id]}); skipped"))
            return
        seen[rec.id] = number
        good.append((number, rec))

    if path.exists() and _format(path) == "jsonl":
        for number, row, why in scan_jsonl(path):
            if why is not None:
                problems.append(RecordError(path, number, f"malformed JSON ({why})"))
            else:
                take(number, row)
    else:
        for number, row in read_rows(path):  # parquet / HF rows cannot be torn or half-written
            take(number, row)
    return good, problems


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write records as JSONL, parquet or an HF dataset folder, chosen by the path's suffix."""
    path = Path(path)
    rows = [r.to_dict() for r in records]
    kind = "hf" if path.suffix == "" else _format(path)
    if kind == "jsonl":
        return write_jsonl(path, rows)
    # meta is free-form; parquet and Arrow want one schema, so it travels as a JSON string there.
    flat = [{**r, "meta": json.dumps(r["meta"], ensure_ascii=False)} for r in rows]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pylist(flat), tmp)
    else:
        import datasets

        datasets.Dataset.from_list(flat).save_to_disk(str(path))
    return len(rows)


def decode_meta(row: dict) -> dict:
    """Parquet / HF rows carry meta as a JSON string (see write_records)."""
    if isinstance(row.get("meta"), str):
        try:
            row = {**row, "meta": json.loads(row["meta"]) if row["meta"] else {}}
        except json.JSONDecodeError:
            pass  # left as a string: Record.from_dict rejects it with the file and row
    return row
