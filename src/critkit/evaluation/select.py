"""Checkpoint selection on a validation split that shares no question with any test set.

CFT reports, per model, the checkpoint with the best validation score (CFT "Training Details",
Table 2 and 3 captions). Its released code picks that checkpoint on MATH-500 and then reports the
full MATH test, which contains MATH-500: the selection leaks into the score. Here the validation
questions are compared (normalized text) with every benchmark file found and with the run's own
test split before anything is evaluated, and an overlap stops the selection.

A model folder holds `checkpoint-<step>/` folders (full models or LoRA adapters, as the trainer
saved them) and `final/`; with several training seeds each seed has its own folder
(models/<set>/seed<k>/). Every complete candidate is evaluated on the validation split with the
run's evaluation settings; the best accuracy wins, ties go to the earliest candidate (fewest
steps, `final` last), and the choice is written to the folder's `selection.json`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from collections.abc import Callable

from ..engine.backends import Sampling, make_backend
from .benchmarks import BENCHMARKS, data_dir, get_benchmark, load_benchmark
from .evaluate import evaluate_benchmark, format_accuracy

__all__ = ["select_checkpoints", "select_checkpoint", "check_disjoint", "shared_questions", "candidates", "best_of",
           "model_folders", "current_selection", "record_model", "holds_model", "set_aside"]


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _questions(benchmark: str) -> set[str]:
    return {_norm(p.question) for p in load_benchmark(get_benchmark(benchmark))[0]}


def check_disjoint(validation: str, tests: list[str]) -> list[str]:
    """The test sets checked; raises ValueError naming the overlap if any question is shared."""
    questions = _questions(validation)
    checked = []
    for test in tests:
        spec = get_benchmark(test)
        path = Path(spec.path) if Path(spec.path).is_absolute() else data_dir() / spec.path
        if not path.exists():
            continue
        shared = [p.question for p in load_benchmark(spec)[0] if _norm(p.question) in questions]
        if shared:
            raise ValueError(f"validation {validation} shares {len(shared)} question(s) with test set {spec.name}, "
                             f"e.g. {shared[0][:80]!r}: choose a disjoint validation split")
        if spec.name not in checked:
            checked.append(spec.name)
    return checked


def shared_questions(validation: str, questions: list[str]) -> int:
    """How many validation questions are among `questions` (e.g. the training records').

    Not an error: the test scores stay clean. But a checkpoint that memorized its training data
    then looks better on validation than it is, so the run reports the count.
    """
    seen = {_norm(q) for q in questions}
    return sum(q in seen for q in _questions(validation))


# ----------------------------------------------------------------------------- candidates


def _step(folder: Path) -> int | None:
    tail = folder.name.removeprefix("checkpoint-")
    return int(tail) if folder.name.startswith("checkpoint-") and tail.isdigit() else None


def _weights(folder: Path) -> list[Path]:
    return sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin"), *folder.glob("adapter_model.bin")])


def candidates(folder: Path) -> tuple[list[Path], dict[str, str]]:
    """The folder's complete checkpoints in step order, then `final`; and the incomplete ones with why.

    A checkpoint is complete when it has a model or adapter config, weights and (for
    checkpoint-*) trainer_state.json, which the trainer writes last: a run killed while saving
    leaves a folder without it, and that one is not a candidate.
    """
    found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir() and _step(p) is not None), key=_step)
    if (folder / "final").is_dir():
        found.append(folder / "final")
    complete, skipped = [], {}
    for cand in found:
        if not ((cand / "config.json").exists() or (cand / "adapter_config.json").exists()):
            skipped[cand.name] = "no config.json or adapter_config.json"
        elif not _weights(cand):
            skipped[cand.name] = "no weights (*.safetensors or *.bin)"
        elif cand.name != "final" and not (cand / "trainer_state.json").exists():
            skipped[cand.name] = "no trainer_state.json (saving was interrupted)"
        else:
            complete.append(cand)
    return complete, skipped


def best_of(scores: dict[str, float]) -> str:
    """The candidate with the highest score; on a tie the first in order, i.e. the earliest checkpoint.

    Earliest, because a later checkpoint that is no better on validation has only had more
    chances to overfit (and `final` repeats the last checkpoint when the step count divides evenly).
    """
    best = None
    for name, score in scores.items():
        if score is not None and (best is None or score > scores[best]):  # None: no sample answered
            best = name
    if best is None:
        raise ValueError("no candidate to choose from" + (" (none answered a validation question)" if scores else ""))
    return best


def model_folders(run_dir: Path, method: str | None = None) -> list[tuple[str, Path]]:
    """(label, folder) for each trained model of a run: models/<set>/ with one seed, and
    models/<set>/seed<k>/ (labelled <set>@seed<k>, as its eval/ folder is) with several."""
    models = run_dir / "models"
    if not models.is_dir():
        raise FileNotFoundError(f"{run_dir}: no models/ folder (train first: critkit run)")
    sets = [models / method] if method else sorted(p for p in models.iterdir() if p.is_dir())
    found = []
    for folder in sets:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such model folder")
        seeds = sorted((p for p in folder.glob("seed*") if p.is_dir() and p.name[4:].isdigit()), key=lambda p: int(p.name[4:]))
        if (folder / "final").is_dir() or any(folder.glob("checkpoint-*")) or not seeds:
            found.append((folder.name, folder))
        found += [(f"{folder.name}@{p.name}", p) for p in seeds]
    return found


# ------------------------------------------------------------------ what a folder of outputs holds


def _model_id(model: str | Path) -> str:
    """A model's path relative to the run folder when it is a run's checkpoint (so a moved run
    folder still matches), else the path or name as given."""
    parts = Path(model).parts
    if "models" not in parts:
        return str(model)
    return str(Path(*parts[len(parts) - 1 - parts[::-1].index("models"):]))


def _fingerprint(model: str | Path) -> list:
    """The weight files' names, sizes and modification times: a set trained again writes new
    files under the same checkpoint names, and their old validation samples must not be reused."""
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in _weights(Path(model))] if Path(model).is_dir() else []


def record_model(out_dir: Path, model: str | Path, **settings) -> None:
    """Write out_dir/model.json: which model (its weights, and the settings) the outputs there are of."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.json").write_text(json.dumps({"model": _model_id(model), "path": str(model),
                                                     "fingerprint": _fingerprint(model), **settings}, indent=1))


def holds_model(out_dir: Path, model: str | Path, legacy: str | Path | None = None, exact: bool = False, **settings) -> bool:
    """Whether out_dir's outputs are `model`'s. A folder without model.json (written before
    critkit recorded it) holds `legacy`: for a trained set's eval folder, its final model.
    `exact` also compares the weights' fingerprint, and `settings` the recorded settings."""
    path = out_dir / "model.json"
    if not path.exists():
        return legacy is not None and _model_id(legacy) == _model_id(model)
    held = json.loads(path.read_text())
    return (held.get("model") == _model_id(model) and (not exact or held.get("fingerprint") == _fingerprint(model))
            and all(held.get(k) == v for k, v in _as_json(settings).items()))


def set_aside(out_dir: Path, into: Path) -> Path:
    """Move a folder of outputs that belong to another model out of the way (kept, not deleted)."""
    held = json.loads((out_dir / "model.json").read_text()).get("model", "?") if (out_dir / "model.json").exists() else "final"
    target = into / f"{out_dir.name}--{Path(held).name}"
    n = 1
    while target.exists():
        n += 1
        target = into / f"{out_dir.name}--{Path(held).name}.{n}"
    into.mkdir(parents=True, exist_ok=True)
    shutil.move(str(out_dir), str(target))
    return target


# ---------------------------------------------------------------------------------- selection


def _as_json(value):
    """`value` as it reads back from a JSON file (tuples become lists), for comparing with one."""
    return json.loads(json.dumps(value))


def _validation_id(validation: str) -> str:
    """A file by its absolute path (the run's records/validation.jsonl from any working directory), a benchmark by name."""
    return str(Path(validation).resolve()) if Path(validation).exists() else str(validation)


def current_selection(folder: Path, validation: str, sampling: Sampling, limit: int | None = None) -> dict | None:
    """The folder's selection.json when it was made on this validation split, with these
    settings, over exactly the checkpoints the folder holds now; else None (select again)."""
    path = folder / "selection.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    names = [c.name for c in candidates(folder)[0]]
    same = (record.get("validation_id") == _validation_id(validation) and record.get("sampling") == _as_json(sampling.as_dict())
            and record.get("limit") == limit and list(record.get("scores", {})) == names)
    return record if same else None


def select_checkpoint(folder: Path, label: str, validation: str, out_dir: Path, load: Callable[[str], object],
                      sampling: Sampling, limit: int | None = None, disjoint_from: list[str] = (),
                      shared_with_train: int | None = None) -> dict:
    """Evaluate each candidate of one model folder on `validation`; write and return the selection.

    `load(path)` gives a backend for a candidate (the run's evaluation backend and batch size).
    Per-candidate outputs go to out_dir/<candidate>/ and are reused when the same weights were
    evaluated with the same settings, so an interrupted selection resumes: a finished candidate
    is not evaluated again, and one interrupted midway goes on from its samples.jsonl.
    """
    found, skipped = candidates(folder)
    if not found:
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items()) or "no checkpoint-* or final folder"
        raise FileNotFoundError(f"{folder}: nothing to select from ({why})")
    for name, why in skipped.items():
        print(f"  {label}: {name} left out: {why}", flush=True)
    if len(found) == 1:
        print(f"  {label}: only {found[0].name} to choose from (train.sft.save_steps saves checkpoints)", flush=True)
    settings = {"sampling": sampling.as_dict(), "validation": _validation_id(validation), "limit": limit}
    scores = {}
    for cand in found:
        cand_out = out_dir / cand.name
        saved = cand_out / get_benchmark(validation).name / "scores.json"
        same = holds_model(cand_out, cand, exact=True, **settings)
        if same and saved.exists():
            result = json.loads(saved.read_text())  # evaluated before this selection was interrupted
        else:
            if cand_out.exists() and not same:
                shutil.rmtree(cand_out)  # outputs of other weights or settings: selection's own, made again
            # With the same weights and settings, samples.jsonl holds what was evaluated before an
            # interruption (evaluation/durable.py), and only the rest is generated.
            record_model(cand_out, cand, **settings)
            backend = load(str(cand))
            backend.name = f"{label}/{cand.name}"
            try:
                result = evaluate_benchmark(backend, validation, cand_out, sampling, limit=limit)
            finally:
                if hasattr(backend, "close"):  # vLLM holds the GPU until told otherwise
                    backend.close()
        scores[cand.name] = result["accuracy"]
        print(f"  {label} {cand.name}: {format_accuracy(result)} on validation", flush=True)
    best = best_of(scores)
    record = {"label": label, "validation": str(validation), "validation_id": _validation_id(validation), "n": result["n"], "limit": limit, "disjoint_from": list(disjoint_from),
              "shared_with_train": shared_with_train, "sampling": sampling.as_dict(), "scores": scores, "skipped": skipped,
              "best": best, "best_path": str(folder / best), "tie_rule": "earliest"}
    (folder / "selection.json").write_text(json.dumps(record, indent=1))
    return record


def plot_selections(selections: dict[str, dict], path: Path) -> Path | None:
    """Validation accuracy over training (CGD Figures 6 and 8), one line per set and seed."""
    from ..training.curves import plot_checkpoint_accuracy

    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_checkpoint_accuracy({label: s["scores"] for label, s in selections.items()}, path)


def select_checkpoints(run_dir: Path, method: str | None = None, validation: str | None = None, limit: int | None = None,
                       sampling: Sampling | None = None, load: Callable[[str], object] | None = None,
                       tests: list[str] = (), max_new_tokens: int = 512, batch_size: int = 32) -> dict:
    """`critkit select RUN_DIR`: select a checkpoint for every set (and seed) of a run.

    `tests`: the run's own evaluation sets, checked for overlap besides every built-in benchmark
    and records/test.jsonl. `sampling` and `load` default to greedy decoding of `max_new_tokens`
    with the transformers backend; `critkit select` passes the run's own evaluation settings.
    """
    validation = validation or str(run_dir / "records" / "validation.jsonl")
    if not Path(validation).exists() and validation not in BENCHMARKS:
        raise FileNotFoundError(f"no validation split at {validation}: pass --validation, or set data.validation "
                                f"(or data.demo.validation)")
    own_test = run_dir / "records" / "test.jsonl"
    checked = check_disjoint(validation, [*BENCHMARKS, *tests, *([str(own_test)] if own_test.exists() else [])])
    train = run_dir / "records" / "train.jsonl"
    shared = None
    if train.exists():
        from ..data.records import read_records

        shared = shared_questions(validation, [r.question for r in read_records(train)])
        if shared:
            print(f"[critkit] warning: {shared} validation question(s) are also training questions", flush=True)
    sampling = sampling or Sampling(max_new_tokens=max_new_tokens)
    load = load or (lambda path: make_backend(path, "transformers", batch_size=batch_size))
    choice = {}
    for label, folder in model_folders(run_dir, method):
        if not candidates(folder)[0]:
            print(f"  {label}: no complete checkpoint-* or final folder, skipped", flush=True)
            continue
        record = current_selection(folder, validation, sampling, limit)
        if record is None:
            record = select_checkpoint(folder, label, validation, run_dir / "select" / label, load, sampling, limit=limit,
                                       disjoint_from=checked, shared_with_train=shared)
        choice[label] = {**record, "path": str(folder / "selection.json")}
    if not choice:
        raise FileNotFoundError(f"{run_dir / 'models'}: no trained model with a checkpoint-* or final folder")
    plot_selections(choice, run_dir / "select" / "accuracy.png")
    return choice
