"""Training sets beyond one method: mixtures, two-stage training, length-matched and right/wrong sets.

"Mixtures are data, not methods" (DESIGN.md): every entry here is built from the pairs of the
methods in `methods.METHODS`, chosen or combined differently. An entry of a run config's `methods`
list is either a method name or a mapping:

    - cft                                              # one method, all its pairs
    - {name: cft+sft, mix: [cft, sft]}                 # CFT Table 9: both methods' pairs, shuffled together
    - {name: cft-then-sft, stages: [cft, sft]}         # CFT Table 9: train on cft, then continue on sft
    - {name: cft-short, method: cft, length_match: sft}  # CFT Table 10: cft pairs with sft's completion lengths
    - {name: cgd-r50, method: cgd, right_fraction: 0.5, size: 64}  # CGD B.1.4 / Fig. 5

Specs are checked when the run config loads (`parse_sets`), so a typo stops the run before any
model is loaded. Building a set (`build_set`) is a pure function of the synthesized records.

A set that asks for more pairs than the data has (`size`, or `right_fraction` x `size` of one
verdict) is not cut short silently: `build_set` raises `Shortfall`, naming the field and the counts.
`critkit run` reports it, leaves that set untrained and goes on with the others, as it does for a
method without pairs; a smaller set would no longer be the fixed-size comparison asked for.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..config import ConfigError
from .methods import METHODS, build_pairs
from ..data.records import Record

__all__ = ["TrainingSet", "BuiltSet", "Shortfall", "parse_set", "parse_sets", "fields_read", "build_set", "mix_rows",
           "length_matched", "right_wrong", "take", "stages_needed"]

_FIELDS = ("name", "method", "mix", "stages", "length_match", "length_tolerance", "right_fraction", "size")


class Shortfall(ValueError):
    """The data has fewer pairs of some kind than a set's spec asks for."""


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

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method whose pairs this set uses."""
        if self.stages:
            return self.stages
        if self.mix:
            return self.mix
        return (self.method,) + ((self.length_match,) if self.length_match else ())


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
    return TrainingSet(**spec)


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
    """The record fields a set's pairs are built from (a right/wrong set also reads the verdict)."""
    fields: set[str] = set()
    for m in spec.methods:
        fields |= _NEEDS.get(m, set(_WRITTEN_BY))  # a method not listed here: assume it reads everything
    if spec.right_fraction is not None:
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


def mix_rows(row_lists: Sequence[list[dict]], seed: int = 0) -> list[dict]:
    """All rows of every list in one seeded shuffle, so no method's pairs come in a block."""
    rows = [row for rows in row_lists for row in rows]
    random.Random(seed).shuffle(rows)
    return rows


def take(rows: list[dict], size: int, seed: int = 0, what: str = "pairs") -> list[dict]:
    """Exactly `size` rows, a seeded sample in their original order; Shortfall when there are fewer."""
    if len(rows) < size:
        raise Shortfall(f"size {size} asks for more {what} than there are ({len(rows)}): lower `size` or add data")
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
              lengths: Callable[[list[str]], list[int]] | None = None) -> BuiltSet:
    """The pairs of one training set. `lengths` counts tokens (needed only for length_match).

    Raises Shortfall when the data cannot fill a fixed `size` or a right/wrong split.
    """
    records = list(records)
    if spec.stages or spec.mix:
        built = [build_pairs(m, records) for m in spec.methods]
        skipped = sum((_prefixed(sk, m) for m, (_, sk) in zip(spec.methods, built)), Counter())
        counts = " + ".join(f"{len(rows)} {m}" for m, (rows, _) in zip(spec.methods, built))
        if spec.stages:
            return BuiltSet([rows for rows, _ in built], skipped, [f"{spec.name}: stages {counts} pairs, in this order"])
        rows = mix_rows([rows for rows, _ in built], seed)
        if spec.size is not None:
            rows = take(rows, spec.size, seed, f"{' and '.join(spec.mix)} pairs")
        return BuiltSet([rows], skipped, [f"{spec.name}: {counts} pairs, shuffled together ({len(rows)} used)"])
    rows, skipped = build_pairs(spec.method, records)
    notes, stats = [], {}
    if spec.length_match:
        if lengths is None:
            raise ValueError("length_match needs a token counter (`lengths`)")
        targets, _ = build_pairs(spec.length_match, records)
        rows, stats = length_matched(rows, targets, lengths, spec.length_tolerance, seed=seed)
        notes.append(f"{spec.name}: {stats['chosen']} of {stats['candidates']} {spec.method} pairs matched to "
                     f"{stats['targets']} {spec.length_match} pairs by completion tokens (within "
                     f"{100 * spec.length_tolerance:g}% or 2 tokens; {stats['unmatched_targets']} unmatched); mean "
                     f"completion tokens: {spec.length_match} {stats['mean_tokens_targets']}, {spec.method} "
                     f"{stats['mean_tokens_candidates']}, {spec.name} {stats['mean_tokens_chosen']}")
    if spec.right_fraction is not None:
        verdicts = {r.id: r.verdict for r in records}
        rows = right_wrong(rows, verdicts, spec.right_fraction, spec.size, seed)
        n_right = sum(verdicts.get(r["id"]) == "right" for r in rows)
        stats = {"right": n_right, "wrong": len(rows) - n_right}
        notes.append(f"{spec.name}: {len(rows)} {spec.method} pairs, {n_right} from right and {len(rows) - n_right} "
                     f"from wrong first answers")
    elif spec.size is not None:
        rows = take(rows, spec.size, seed, f"{spec.method} pairs")
    return BuiltSet([rows], skipped, notes, stats)
