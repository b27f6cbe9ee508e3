"""Training sets beyond one method: mixtures, two-stage training, length-matched and right/wrong sets.

"Mixtures are data, not methods" (DESIGN.md): every entry here is built from the pairs of the
methods in `methods.METHODS`, chosen or combined differently. An entry of a run config's `methods`
list is either a method name or a mapping:

    - cft                                              # one method, all its pairs
    - {name: cft+sft, mix: [cft, sft]}                 # CFT Table 9: both methods' pairs, shuffled together
    - {name: cft-then-sft, stages: [cft, sft]}         # CFT Table 9: train on cft, then continue on sft
    - {name: cft-short, method: cft, length_match: sft}  # CFT Table 10: cft pairs with sft's completion lengths
    - {name: cgd-r50, method: cgd, right_fraction: 0.5, size: 64}  # CGD B.1.4 / Fig. 5
    - {name: cft+acemath, mix: [cft, sft-gold], records: {sft-gold: data/AceMath-SFT-50K.jsonl}}  # CFT Table 9
    - {name: sft-verified, method: sft-verified, size: 50000, records: {sft-verified: pool.json}}  # CFT 2.1
    - {name: cft-checked, method: cft, verified_only: true}  # only critiques whose verdict math-verify confirms

`records` takes one method's pairs from another records file instead of the run's data: a path,
or {path, source} with `source` a mapping of sources.SOURCES (default: auto, as data.train). Those
records are used as they are: critkit synthesizes only the run's own data, so the file must hold
what the method reads (a reference solution for sft-gold, a verdict for sft-verified, ...).
`verified_only` keeps only records whose teacher verdict math-verify's grade of the response agrees
with (`critkit build --verified-only`); it needs critkit's own critiques of records with a gold answer.

Specs are checked when the run config loads (`parse_sets`, then `check_records_files` reads each
records file up to its first usable pair), so a typo or a missing file stops the run before any
model is loaded. Building a set (`build_set`) is a pure function of the synthesized records and
the records files.

A set that asks for more pairs than the data has (`size`, or `right_fraction` x `size` of one
verdict) is not cut short silently: `build_set` raises `Shortfall`, naming the field and the counts.
`critkit run` reports it, leaves that set untrained and goes on with the others, as it does for a
method without pairs; a smaller set would no longer be the fixed-size comparison asked for.

`size` on sft-verified is CFT's "top 50K verified" (CFT 2.1): N pairs among the records the teacher
judged right, from a judged pool that must be larger than N (about 56% of WebInstruct-CFT's responses
are judged right), hence usually a `records` pool bigger than the run's data. The paper does not say
how it ranked its "top" samples and critkit's verdicts carry no score, so the N are a seeded sample of
the verified ones.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..config import ConfigError
from .methods import METHODS, build_pairs
from ..data.records import Record, RecordError
from ..data.sources import SOURCES, iter_source, load_source

__all__ = ["TrainingSet", "RecordsFile", "BuiltSet", "Shortfall", "parse_set", "parse_sets", "check_records_files",
           "read_records_files", "fields_read", "build_set", "mix_rows", "length_matched", "right_wrong", "take",
           "stages_needed"]

_FIELDS = ("name", "method", "mix", "stages", "length_match", "length_tolerance", "right_fraction", "size",
           "verified_only", "records")


class Shortfall(ValueError):
    """The data has fewer pairs of some kind than a set's spec asks for."""


@dataclass(frozen=True)
class RecordsFile:
    """Where one method of a set takes its records from instead of the run's data."""

    method: str
    path: str
    source: str = "auto"  # a mapping of sources.SOURCES, or auto


@dataclass(frozen=True)
class TrainingSet:
    """One entry of `methods`: what one model is trained on (see the module docstring)."""

    name: str
    method: str | None = None  # one method's pairs (optionally length-matched, ratio-chosen or sized)
    mix: tuple[str, ...] = ()  # several methods' pairs in one shuffled set
    stages: tuple[str, ...] = ()  # one training per method, each starting from the previous model
    length_match: str | None = None  # choose `method` pairs whose completion lengths match this method's
    length_tolerance: float = 0.1  # a match is within this share of the target length (at least 2 tokens)
    right_fraction: float | None = None  # share of pairs whose record verdict is "right"; needs `size`
    size: int | None = None  # exact number of pairs (a seeded sample)
    verified_only: bool = False  # keep records whose teacher verdict math-verify agrees with
    records: tuple[RecordsFile, ...] = ()  # methods whose records come from their own file

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method whose pairs this set uses."""
        if self.stages:
            return self.stages
        if self.mix:
            return self.mix
        return (self.method,) + ((self.length_match,) if self.length_match else ())

    def file_for(self, method: str) -> RecordsFile | None:
        return next((f for f in self.records if f.method == method), None)

    @property
    def data_methods(self) -> tuple[str, ...]:
        """The methods whose pairs come from the run's own (synthesized) records."""
        return tuple(m for m in self.methods if self.file_for(m) is None)


def _where(index: int, entry) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"methods[{index}]" + (f" ({name})" if isinstance(name, str) else "")


def _known_method(value, where: str) -> str:
    if not isinstance(value, str) or value not in METHODS:
        raise ConfigError(f"{where}: unknown method {value!r}; known: {', '.join(METHODS)}")
    return value


def _method_list(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise ConfigError(f"{where}: expected a list of at least two method names, got {value!r}")
    return tuple(_known_method(m, f"{where}[{i}]") for i, m in enumerate(value))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_set(entry, index: int = 0) -> TrainingSet:
    """A TrainingSet from one `methods` entry; ConfigError naming the entry and field when it is wrong."""
    where = _where(index, entry)
    if isinstance(entry, str):
        return TrainingSet(name=_known_method(entry, where), method=entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a method name or a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {', '.join(_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: missing (every mapping in `methods` names its model)")
    # The name becomes a folder (models/<name>, eval/<name>) and a report label.
    if name != name.strip() or any(c in name for c in "/\\@") or name.startswith(".") or name == "base":
        raise ConfigError(f"{where}.name: {name!r} cannot name a folder (no '/', '\\', '@', leading '.', or 'base')")
    kinds = [k for k in ("method", "mix", "stages") if k in entry]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of method, mix or stages (got {kinds or 'none'})")
    options = {k: entry[k] for k in ("length_match", "right_fraction", "size") if k in entry}
    spec: dict = {"name": name}
    if "mix" in entry:
        spec["mix"] = _method_list(entry["mix"], f"{where}.mix")
    elif "stages" in entry:
        spec["stages"] = _method_list(entry["stages"], f"{where}.stages")
        if options:
            raise ConfigError(f"{where}: {', '.join(options)} cannot apply to stages; give each stage's method as is")
    else:
        spec["method"] = _known_method(entry["method"], f"{where}.method")
    if "length_match" in entry:
        if "method" not in entry:
            raise ConfigError(f"{where}.length_match: needs `method` (the pairs to choose from)")
        spec["length_match"] = _known_method(entry["length_match"], f"{where}.length_match")
    if "length_tolerance" in entry:
        tol = entry["length_tolerance"]
        if "length_match" not in entry:
            raise ConfigError(f"{where}.length_tolerance: only with length_match")
        if not _is_number(tol) or tol < 0:
            raise ConfigError(f"{where}.length_tolerance: expected a number >= 0, got {tol!r}")
        spec["length_tolerance"] = float(tol)
    if "right_fraction" in entry:
        frac = entry["right_fraction"]
        if "method" not in entry:
            raise ConfigError(f"{where}.right_fraction: needs `method` (the pairs to choose from)")
        if "length_match" in entry:
            raise ConfigError(f"{where}.right_fraction: cannot be combined with length_match")
        if not _is_number(frac) or not 0 <= frac <= 1:
            raise ConfigError(f"{where}.right_fraction: expected a number from 0 to 1, got {frac!r}")
        if "size" not in entry:
            raise ConfigError(f"{where}.size: missing (right_fraction compares sets of one fixed total size)")
        spec["right_fraction"] = float(frac)
    if "size" in entry:
        size = entry["size"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"{where}.size: expected a whole number >= 1, got {size!r}")
        spec["size"] = size
    if "verified_only" in entry:
        if not isinstance(entry["verified_only"], bool):
            raise ConfigError(f"{where}.verified_only: expected true or false, got {entry['verified_only']!r}")
        spec["verified_only"] = entry["verified_only"]
    if "records" in entry:
        spec["records"] = _records_files(entry["records"], TrainingSet(**spec).methods, f"{where}.records")
    return TrainingSet(**spec)


def _records_files(value, methods: tuple[str, ...], where: str) -> tuple[RecordsFile, ...]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{where}: expected a mapping of method -> records file, e.g. {{sft-gold: data/sft.jsonl}}")
    files = []
    for method, spec in value.items():
        at = f"{where}.{method}"
        if method not in methods:
            raise ConfigError(f"{at}: {method!r} is not one of this set's methods ({', '.join(methods)})")
        if isinstance(spec, str):
            spec = {"path": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"{at}: expected a path or {{path, source}}, got {spec!r}")
        unknown = sorted(set(spec) - {"path", "source"})
        if unknown:
            raise ConfigError(f"{at}: unknown field(s) {unknown}; known: path, source")
        path, source = spec.get("path"), spec.get("source", "auto")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{at}.path: expected a file path, got {path!r}")
        if source != "auto" and source not in SOURCES:
            raise ConfigError(f"{at}.source: unknown source {source!r}; known: {', '.join(SOURCES)} or auto")
        files.append(RecordsFile(method, path, source))
    return tuple(files)


def _skips(skipped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())


def check_records_files(sets: list[TrainingSet]) -> None:
    """ConfigError naming the entry when a set's records file is missing, or its rows cannot be read,
    or none of them gives the method a pair. A file is read only up to its first usable pair: mapping
    one short WebInstruct-CFT row took 0.11 ms here, so reading a 600K-row pool to the end would hold
    up every config load by a minute or more. A later bad row is reported, with its file and line, when
    the set is built, and a pool too small for `size` is a Shortfall then (that set is left untrained,
    the others go on)."""
    for index, spec in enumerate(sets):
        for f in spec.records:
            where = f"methods[{index}] ({spec.name}).records.{f.method}"
            skipped = Counter()
            try:
                for rec in iter_source(f.path, f.source):
                    rows, why = build_pairs(f.method, [rec], verified_only=spec.verified_only)
                    if rows:
                        break
                    skipped += why
                else:
                    raise ConfigError(f"{where}: {f.path} gives no {f.method} pair ({_skips(skipped) or 'no records'}); "
                                      f"records from another file are used as they are (critkit synthesizes only the "
                                      f"run's data)")
            except RecordError as exc:
                raise ConfigError(f"{where}: {exc}") from None


def read_records_files(spec: TrainingSet) -> dict[str, list[Record]]:
    """The records of each method `spec.records` names, read from their files."""
    return {f.method: load_source(f.path, f.source) for f in spec.records}


def parse_sets(entries) -> list[TrainingSet]:
    """Every entry of `methods`, checked; names must be unique (each is a model folder)."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"methods: expected a non-empty list of method names or mappings, got {entries!r}")
    sets = [parse_set(entry, i) for i, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for i, s in enumerate(sets):
        if s.name in seen:
            raise ConfigError(f"methods[{i}].name: {s.name!r} is already methods[{seen[s.name]}]'s name")
        seen[s.name] = i
    return sets


# What each method reads from a record, and which synthesis stage writes it. A run synthesizes only
# what its sets need: a CFT-only ablation with a paid teacher should not pay for refinements.
_NEEDS = {
    "sft": {"response"}, "sft-verified": {"response", "verdict"}, "sft-teacher": {"teacher_solution"},
    "sft-gold": {"reference"}, "cft": {"response", "critique"}, "distilled-sft": {"refined"},
    "cgd": {"response", "critique", "refined"}, "cgd-no-critique": {"response", "refined"},
}
_WRITTEN_BY = {"response": "respond", "critique": "critique", "verdict": "critique", "refined": "refine",
               "teacher_solution": "solve"}
_STAGE_INPUTS = {"respond": set(), "critique": {"respond"}, "refine": {"respond", "critique"}, "solve": set()}


def fields_read(spec: TrainingSet) -> set[str]:
    """The fields of the run's records a set's pairs are built from (a right/wrong or verified_only
    set also reads the verdict); methods whose records come from their own file read none."""
    fields: set[str] = set()
    for m in spec.data_methods:
        fields |= _NEEDS.get(m, set(_WRITTEN_BY))  # a method not listed here: assume it reads everything
    if spec.data_methods and (spec.right_fraction is not None or spec.verified_only):
        fields.add("verdict")
    return fields


def stages_needed(sets: Iterable[TrainingSet]) -> set[str]:
    """The synthesis stages whose output some set reads."""
    fields = set().union(*(fields_read(s) for s in sets))
    stages = {_WRITTEN_BY[f] for f in fields if f in _WRITTEN_BY}
    for stage in list(stages):
        stages |= _STAGE_INPUTS[stage]
    return stages


# ---------------------------------------------------------------------------------- building


@dataclass
class BuiltSet:
    """The pairs of one training set: one list per training stage (one, unless `stages`)."""

    stages: list[list[dict]]
    skipped: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    parts: list[dict] = field(default_factory=list)  # per method: where its records came from, pairs built and used


def mix_rows(row_lists: Sequence[list[dict]], seed: int = 0) -> list[dict]:
    """All rows of every list in one seeded shuffle, so no method's pairs come in a block."""
    rows = [row for rows in row_lists for row in rows]
    random.Random(seed).shuffle(rows)
    return rows


def take(rows: list[dict], size: int, seed: int = 0, what: str = "pairs", why: str = "") -> list[dict]:
    """Exactly `size` rows, a seeded sample in their original order; Shortfall when there are fewer."""
    if len(rows) < size:
        raise Shortfall(f"size {size} asks for more {what} than there are ({len(rows)}{why}): lower `size` or add data")
    keep = sorted(random.Random(seed).sample(range(len(rows)), size))
    return [rows[i] for i in keep]


def length_matched(candidates: list[dict], targets: list[dict], lengths: Callable[[list[str]], list[int]],
                   tolerance: float = 0.1, min_tokens: int = 2, seed: int = 0) -> tuple[list[dict], dict]:
    """Candidates chosen so that their completion lengths follow the targets' (CFT Table 10).

    For each target (in a seeded order) the unused candidate nearest in completion length is taken
    when it is within `tolerance` of the target's length (at least `min_tokens`); a target without
    one is left unmatched. Without a tolerance the nearest-unused rule would, on sets of equal size,
    take every candidate and match nothing. Returns the chosen rows (in candidate order) and the
    mean lengths of all targets, all candidates, the matched targets and the chosen rows.
    """
    cand_len = lengths([r["completion"] for r in candidates])
    targ_len = lengths([r["completion"] for r in targets])
    pool = sorted((n, i) for i, n in enumerate(cand_len))
    keys = [n for n, _ in pool]
    order = list(range(len(targets)))
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    matched: list[int] = []
    for t in order:
        want = targ_len[t]
        j = bisect.bisect_left(keys, want)
        best = None
        for k in (j - 1, j):  # the nearest lengths are just below and at/above; a tie takes the shorter
            if 0 <= k < len(keys) and (best is None or abs(keys[k] - want) < abs(keys[best] - want)):
                best = k
        if best is None or abs(keys[best] - want) > max(min_tokens, tolerance * want):
            continue
        chosen.append(pool[best][1])
        matched.append(want)
        del keys[best], pool[best]
    mean = lambda xs: round(sum(xs) / len(xs), 2) if xs else None
    stats = {"targets": len(targets), "candidates": len(candidates), "chosen": len(chosen),
             "unmatched_targets": len(targets) - len(chosen), "mean_tokens_targets": mean(targ_len),
             "mean_tokens_candidates": mean(cand_len), "mean_tokens_matched_targets": mean(matched),
             "mean_tokens_chosen": mean([cand_len[i] for i in chosen]), "tolerance": tolerance, "min_tokens": min_tokens}
    return [candidates[i] for i in sorted(chosen)], stats


def right_wrong(rows: list[dict], verdicts: dict[str, str | None], fraction: float, size: int, seed: int = 0) -> list[dict]:
    """`size` rows of which round(fraction x size) come from records judged right, the rest wrong.

    The verdict is the teacher's on the student's first answer (the record's `verdict`); records
    with another verdict (unparsed, none) are in neither group. Shortfall when a group is too small.
    """
    n_right = int(fraction * size + 0.5)  # half rounds up: 0.5 x 5 -> 3 right, 2 wrong
    n_wrong = size - n_right
    right = [r for r in rows if verdicts.get(r["id"]) == "right"]
    wrong = [r for r in rows if verdicts.get(r["id"]) == "wrong"]
    if len(right) < n_right or len(wrong) < n_wrong:
        other = len(rows) - len(right) - len(wrong)
        raise Shortfall(f"right_fraction {fraction:g} of size {size} needs {n_right} pairs from records with verdict "
                        f"'right' and {n_wrong} with 'wrong'; there are {len(right)} right and {len(wrong)} wrong"
                        f"{f' ({other} with another verdict)' if other else ''}: lower `size` or add data")
    rng = random.Random(seed)
    picked = rng.sample(right, n_right) + rng.sample(wrong, n_wrong)
    rng.shuffle(picked)
    return picked


def _prefixed(skipped: Counter, method: str) -> Counter:
    return Counter({f"{method}: {reason}": n for reason, n in skipped.items()})


def build_set(spec: TrainingSet, records: Iterable[Record], seed: int = 0,
              lengths: Callable[[list[str]], list[int]] | None = None,
              files: dict[str, list[Record]] | None = None) -> BuiltSet:
    """The pairs of one training set. `lengths` counts tokens (needed only for length_match);
    `files` holds the records of the methods `spec.records` names (read from their files when None).

    Raises Shortfall when the data cannot fill a fixed `size` or a right/wrong split.
    """
    records = list(records)
    files = read_records_files(spec) if files is None else files
    pool = lambda method: files.get(method, records)  # noqa: E731
    pairs = lambda method: build_pairs(method, pool(method), verified_only=spec.verified_only)  # noqa: E731

    def label(method: str) -> str:
        f = spec.file_for(method)
        return f"{method} (from {f.path})" if f else method

    def part(method: str, built: list[dict], used: int) -> dict:
        # build.json keeps where each part of the set came from, so a table row can be traced to its data.
        f = spec.file_for(method)
        origin = {"from": f.path, "source": f.source} if f else {"from": "the run's records"}
        return {"method": method, **origin, "records": len(pool(method)), "pairs": len(built), "used": used}

    if spec.stages or spec.mix:
        built = [pairs(m) for m in spec.methods]
        skipped = sum((_prefixed(sk, m) for m, (_, sk) in zip(spec.methods, built)), Counter())
        counts = " + ".join(f"{len(rows)} {label(m)}" for m, (rows, _) in zip(spec.methods, built))
        if spec.stages:
            parts = [part(m, rows, len(rows)) for m, (rows, _) in zip(spec.methods, built)]
            return BuiltSet([rows for rows, _ in built], skipped, [f"{spec.name}: stages {counts} pairs, in this order"],
                            parts=parts)
        rows = mix_rows([rows for rows, _ in built], seed)
        if spec.size is not None:
            rows = take(rows, spec.size, seed, f"{' and '.join(spec.mix)} pairs")
        used = Counter(r["method"] for r in rows)
        parts = [part(m, built_rows, used[m]) for m, (built_rows, _) in zip(spec.methods, built)]
        return BuiltSet([rows], skipped, [f"{spec.name}: {counts} pairs, shuffled together ({len(rows)} used)"],
                        parts=parts)
    rows, skipped = pairs(spec.method)
    all_rows = rows
    notes, stats = [], {}
    if spec.length_match:
        if lengths is None:
            raise ValueError("length_match needs a token counter (`lengths`)")
        targets, _ = build_pairs(spec.length_match, pool(spec.length_match))  # lengths only: nothing is trained on them
        rows, stats = length_matched(rows, targets, lengths, spec.length_tolerance, seed=seed)
        notes.append(f"{spec.name}: {stats['chosen']} of {stats['candidates']} {spec.method} pairs matched to "
                     f"{stats['targets']} {spec.length_match} pairs by completion tokens (within "
                     f"{100 * spec.length_tolerance:g}% or 2 tokens; {stats['unmatched_targets']} unmatched); mean "
                     f"completion tokens: {spec.length_match} {stats['mean_tokens_targets']}, {spec.method} "
                     f"{stats['mean_tokens_candidates']}, {spec.name} {stats['mean_tokens_chosen']}")
    if spec.right_fraction is not None:
        verdicts = {r.id: r.verdict for r in pool(spec.method)}
        rows = right_wrong(rows, verdicts, spec.right_fraction, spec.size, seed)
        n_right = sum(verdicts.get(r["id"]) == "right" for r in rows)
        stats = {"right": n_right, "wrong": len(rows) - n_right}
        notes.append(f"{spec.name}: {len(rows)} {spec.method} pairs, {n_right} from right and {len(rows) - n_right} "
                     f"from wrong first answers")
    elif spec.size is not None:
        why = f" of {len(pool(spec.method))} records; skipped {_skips(skipped)}" if skipped else ""
        if spec.method == "sft-verified" and len(rows) < spec.size:
            why += "; CFT's verified set is the top N of a larger judged pool" + \
                   ("" if spec.file_for(spec.method) else ": records: {sft-verified: POOL}")
        rows = take(rows, spec.size, seed, f"{label(spec.method)} pairs", why)
    if spec.file_for(spec.method):
        notes.append(f"{spec.name}: {len(rows)} of {len(all_rows)} {spec.method} pairs from "
                     f"{spec.file_for(spec.method).path}")
    parts = [part(spec.method, all_rows, len(rows))]
    if spec.length_match:
        parts.append(part(spec.length_match, targets, 0))
    return BuiltSet([rows], skipped, notes, stats, parts)
