"""MT-Bench (Zheng et al. 2023, FastChat llm_judge): two-turn chat graded by an LLM judge.

As FastChat's single-answer grading does it (gen_model_answer.py, gen_judgment.py, common.py):

- The model under test answers both turns of each of the 80 questions; the second turn sees the
  question, its own first answer and the follow-up.
- A judge (any OpenAI-compatible server) grades each turn with a `[[rating]]` prompt from
  judge_prompts.jsonl: `single-v1` for turn 1, `single-v1-multi-turn` for turn 2, and the
  reference-answer prompts (`single-math-v1`, `single-math-v1-multi-turn`, GPT-4's answers from
  reference_answer_gpt-4.jsonl) for the math, reasoning and coding categories. The judge is asked
  with temperature 0 and up to 2048 new tokens.
- A rating is read with FastChat's patterns (`[[8]]`, else `[8]`). A judgment without one, or with
  a number outside 1-10, is counted in `unparsable` and left out of the means, never guessed
  (FastChat records -1 and drops it too). The score is the mean rating per turn and overall.

Deviation: the model answers with the caller's sampling (greedy by default), not FastChat's
per-category temperatures (0.7 for writing and roleplay, 0.1 for stem and humanities, else 0).

Every request, the model's and the judge's, goes through the durable journal (durable.py), as
synthesis does: each answer and judgment is written as it ends, a rerun sends only what is
missing, a request that fails after the backend's retries fails its sample (counted, not scored,
sent again with `retry_failed`). The judge's model and sampling are part of the run's settings: a
samples.jsonl judged by another judge is refused instead of mixed in.

Bad input: a question without two turns, a math/reasoning/coding question without a reference
answer: reported with file, line and field, counted in `bad_rows`; the others go on.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..engine.backends import Sampling
from .benchmarks import data_dir, read_objects
from .durable import Item, SampleJournal, Step, write_scores
from .drift import critique_share

__all__ = ["MT_BENCH", "JUDGE_SAMPLING", "load_mt_bench", "judge_prompts", "parse_rating", "evaluate_mt_bench"]

MT_BENCH = "mt_bench"
FOLDER = "benchmarks/mt_bench"  # under data_dir(): question.jsonl, reference_answer_gpt-4.jsonl, judge_prompts.jsonl
NEED_REFERENCE = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS
JUDGE_SAMPLING = Sampling(temperature=0.0, max_new_tokens=2048)  # FastChat: temperature 0, max_tokens 2048
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # FastChat's one_score_pattern
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")  # ... and its one_score_pattern_backup


def parse_rating(judgment: str) -> float | None:
    """The judge's rating (1-10) as FastChat reads it, or None: never a guess."""
    found = _RATING.search(judgment) or _RATING_BACKUP.search(judgment)
    if not found:
        return None
    rating = float(found.group(1))
    return rating if 1 <= rating <= 10 else None


def judge_prompts(folder: Path | None = None) -> dict[str, dict]:
    """{name: {"system_prompt", "prompt_template"}} of the four single-answer prompts."""
    folder = folder or data_dir() / FOLDER
    found = {row.get("name"): row for _, row in read_objects(folder / "judge_prompts.jsonl", [])}
    names = ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"{folder / 'judge_prompts.jsonl'}: no judge prompt named {', '.join(missing)}")
    return {n: found[n] for n in names}


def load_mt_bench(folder: Path | None = None, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """(rows, problems): each question with its two turns, category and (where needed) the reference's two turns."""
    folder = Path(folder) if folder else data_dir() / FOLDER
    bad: list[str] = []
    references = {}
    for number, row in read_objects(folder / "reference_answer_gpt-4.jsonl", bad):
        try:
            references[str(row["question_id"])] = [str(t) for t in row["choices"][0]["turns"]]
        except (KeyError, IndexError, TypeError):
            bad.append(f"{folder / 'reference_answer_gpt-4.jsonl'}:{number}: choices[0].turns: missing")
    rows = []
    for number, row in read_objects(folder / "question.jsonl", bad):
        if limit is not None and len(rows) >= limit:
            break
        where = f"{folder / 'question.jsonl'}:{number}"
        turns, qid = row.get("turns"), row.get("question_id")
        if qid is None:
            bad.append(f"{where}: question_id: missing")
        elif not isinstance(turns, list) or len(turns) != 2 or not all(isinstance(t, str) and t.strip() for t in turns):
            bad.append(f"{where}: turns: not two questions")
        elif row.get("category") in NEED_REFERENCE and len(references.get(str(qid), [])) < 2:
            bad.append(f"{where}: reference: a {row['category']} question without a reference answer of two turns")
        else:
            rows.append({"id": str(qid), "category": row.get("category"), "turns": turns,
                         **({"reference": references[str(qid)][:2]} if row.get("category") in NEED_REFERENCE else {})})
    return rows, bad


def _judge_messages(prompts: dict, row: dict, turn: int) -> list[dict]:
    """FastChat's judge conversation for one turn: the prompt's system message, then the filled template."""
    name = ("single-math-v1" if "reference" in row else "single-v1") + ("-multi-turn" if turn == 2 else "")
    fields = {"question": row["turns"][0], "answer": row["answers"][0],
              "question_1": row["turns"][0], "question_2": row["turns"][1]}
    if turn == 2:
        fields.update(answer_1=row["answers"][0], answer_2=row["answers"][1])
    if "reference" in row:
        fields.update(ref_answer_1=row["reference"][0], ref_answer_2=row["reference"][1])
    prompt = prompts[name]
    return [{"role": "system", "content": prompt["system_prompt"]},
            {"role": "user", "content": prompt["prompt_template"].format(**fields)}]


def _steps(prompts: dict, sampling: Sampling, judge_sampling: Sampling):
    """next_step / take for durable.py: answer turn 1, answer turn 2, judge turn 1, judge turn 2."""

    def next_step(row: dict) -> Step | None:
        answers, judgments = row.get("answers", []), row.get("judgments", [])
        if len(answers) < 2:
            messages = [{"role": "user", "content": row["turns"][0]}]
            if answers:
                messages += [{"role": "assistant", "content": answers[0]}, {"role": "user", "content": row["turns"][1]}]
            return Step(f"answer turn {len(answers) + 1}", messages, sampling)
        if len(judgments) < 2:
            turn = len(judgments) + 1
            return Step(f"judge turn {turn}", _judge_messages(prompts, row, turn), judge_sampling, who="judge")
        return None

    def take(row: dict, step: Step, texts: list[str]) -> None:
        if step.who == "judge":
            row.setdefault("judgments", []).append(texts[0])
            row["ratings"] = [parse_rating(j) for j in row["judgments"]]
        else:
            row.setdefault("answers", []).append(texts[0])

    return next_step, take


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def mt_bench_scores(samples: list[dict], failed: int) -> dict:
    """Mean rating per turn and overall over the parsed ratings; unparsable ones counted apart."""
    per_turn = [[s["ratings"][t] for s in samples if s["ratings"][t] is not None] for t in (0, 1)]
    answers = [a for s in samples for a in s["answers"]]
    unparsable = [{"id": s["id"], "turn": t + 1, "judgment": s["judgments"][t][:300]}
                  for s in samples for t in (0, 1) if s["ratings"][t] is None]
    return {"n": len(samples) + failed, "answered": len(samples), "failed": failed,
            # Not an accuracy: the report shows `score` (1-10) instead; `accuracy` None keeps it out of accuracy plots.
            "accuracy": None, "correct": None,
            "score": _mean(per_turn[0] + per_turn[1]), "turn_1": _mean(per_turn[0]), "turn_2": _mean(per_turn[1]),
            "ratings": len(per_turn[0]) + len(per_turn[1]), "unparsable": len(unparsable),
            "unparsable_examples": unparsable[:5],
            "no_answer": _mean([not a.strip() for a in answers]),
            "critique_format": critique_share(answers),
            "by_category": {c: _mean([r for s in samples if s["category"] == c for r in s["ratings"] if r is not None])
                            for c in sorted({s["category"] for s in samples})}}


def evaluate_mt_bench(backend, judge, out_dir: str | Path, sampling: Sampling, limit: int | None = None,
                      retry_failed: bool = False, folder: str | Path | None = None,
                      judge_sampling: Sampling = JUDGE_SAMPLING) -> dict:
    """Scores (also in <out_dir>/mt_bench/scores.json), with `this_run` as evaluate_benchmark has it."""
    if judge is None:
        raise ValueError("mt_bench is graded by a judge: give one (critkit eval --judge MODEL --judge-base-url URL)")
    if sampling.n != 1:
        raise ValueError("MT-Bench grades one answer per turn; use n=1")
    folder = Path(folder) if folder else data_dir() / FOLDER
    rows, bad = load_mt_bench(folder, limit=limit)
    next_step, take = _steps(judge_prompts(folder), sampling, judge_sampling)
    name, judge_name = getattr(backend, "name", None), getattr(judge, "name", None)
    settings = {"model": name, "benchmark": MT_BENCH, "sampling": sampling.as_dict(), "judge": judge_name,
                "judge_sampling": judge_sampling.as_dict()}
    out = Path(out_dir) / MT_BENCH
    with SampleJournal(out / "samples.jsonl", [Item(r["id"], r) for r in rows], settings, next_step, take,
                       retry_failed=retry_failed, desc=f"eval {MT_BENCH}") as journal:
        if journal.pending:
            journal.run({"model": backend, "judge": judge})
        journal.finish()
        this_run = journal.summary()
    answered, failed = journal.outcome()
    scores = {"benchmark": MT_BENCH, "model": name, "judge": judge_name, "mode": "chat", "sampling": sampling.as_dict(),
              "judge_sampling": judge_sampling.as_dict(), **mt_bench_scores(answered, len(failed)),
              "failed_examples": failed[:5], "bad_rows": len(bad), "bad_examples": bad[:5]}
    write_scores(out, scores)
    return {**scores, "this_run": this_run}
