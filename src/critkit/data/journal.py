"""Append-only JSON-lines journals: the file handling both durable runners share.

Synthesis (synth/jobs.py) and evaluation (evaluation/durable.py) write each finished item as one
line of their output while they run, so that `kill -9` or a crash loses at most what was in
flight. What that takes of the file is here; what a line holds is each runner's own business.

- One `write` call per item: a crash can tear only the last line. Readers drop a last line
  without its newline (and say so), and the writer cuts it off before appending again, so the
  next line is never glued onto half of one.
- fsync at least once a second while lines are written (a background thread), and on close:
  what a power cut can take is bounded too.
- An exclusive flock per file: a second process writing the same file stops with a clear
  message. The kernel releases the lock when its holder dies, even by kill -9.
- The final rewrite (input order, one entry per item) goes to a temporary file that replaces
  the journal atomically, so a kill during it leaves the old journal or the new file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .records import atomic_path

__all__ = ["JobError", "JournalFile", "Scan", "scan_lines", "replace_file", "stable_hash", "SYNC_SECONDS"]

SYNC_SECONDS = 1.0  # fsync a journal at least this often while it grows


class JobError(ValueError):
    """A job that cannot start or finish safely: bad arguments, a lock held, changed settings,
    shards that do not fit. The CLI prints it as an error (no traceback)."""


def stable_hash(value) -> str:
    """sha256 of a JSON value: the same across machines, Python versions and runs (unlike hash())."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclass
class Scan:
    """What reading a journal found besides its lines."""

    problems: list[str] = field(default_factory=list)  # torn or unreadable lines, with file and line
    torn_at: int | None = None  # byte offset where a torn last line starts
    size: int = 0  # bytes of complete lines


def scan_lines(path: str | os.PathLike, found) -> Iterator[tuple[int, int, int, object]]:
    """(line number, byte offset, length, parsed JSON or None) for each complete line of a journal.

    A last line without its newline was cut off by a crash: it is reported and not yielded, and
    `found.torn_at` says where it starts. A line in the middle that is not JSON is reported and
    yielded as None (its item is simply done again). `found` is a Scan, or any object with the
    same three fields (synthesis's journal view has them).
    """
    offset = 0
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.endswith(b"\n"):
                found.torn_at = start
                found.problems.append(f"{path}:{number}: torn last line ({len(raw)} bytes, no newline) dropped; "
                                      "its item is done again")
                return
            found.size = offset
            try:
                row = json.loads(raw)
            except ValueError:
                found.problems.append(f"{path}:{number}: not JSON, ignored; its item is done again")
                row = None
            yield number, start, len(raw), row


class JournalFile:
    """A journal opened for appending under an exclusive lock, synced in the background."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise JobError(f"{self.path} is being written by another critkit process; wait for it or use another "
                           "output") from None
        # A run killed during the final rewrite leaves its temporary file; under the lock no other
        # writer can own one, so any left over is garbage.
        for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        self.dirty = False
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.syncer = threading.Thread(target=self._sync_every_second, name=f"fsync {self.path.name}", daemon=True)
        self.syncer.start()

    def cut(self, offset: int) -> None:
        """Drop everything from `offset` on: a torn last line, before anything is appended after it."""
        os.ftruncate(self.fd, offset)
        os.fsync(self.fd)

    def write(self, data: bytes) -> None:
        """Append `data` (one item's lines) with one write call; a short write is finished, not split."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        self.dirty = True

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def sync(self) -> None:
        with self.lock:
            if self.fd >= 0 and self.dirty:
                self.dirty = False  # first: a write during the fsync marks the file again
                os.fsync(self.fd)

    def _sync_every_second(self) -> None:
        # A timer, not a check in write(): a line written just before a long generation would
        # otherwise wait for the next line to be synced.
        while not self.closed.wait(SYNC_SECONDS):
            self.sync()

    def close(self) -> None:
        self.closed.set()
        with self.lock:
            if self.fd >= 0:
                os.fsync(self.fd)
                os.close(self.fd)
                self.fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Make `path` what `write(out)` writes, atomically and durably: a temporary file in the same
    folder, fsync'd, renamed over `path`, and the folder fsync'd so the rename survives a power cut."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
    _fsync_dir(path.parent)
