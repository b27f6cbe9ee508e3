"""Truncation that changes what is learned is counted (truncation.py): the pairs whose completion's
last line (CFT's "Conclusion: wrong [END]") TRL cuts at max_length, and the pairs it drops, exactly
as TRL's own dataset preparation decides with the embedded model's tokenizer."""

from __future__ import annotations

import json

import pytest
import yaml

from critkit.data.records import write_jsonl
from critkit.training.train import TrainConfig, _load_pairs, _make_trainer_class, sft_defaults

CONCLUSION = "Conclusion: wrong [END]"
MAX_LENGTH = 96


def _pair(name: str, steps: int, padding: int) -> dict:
    """A CFT-style pair: `steps` critique lines (12 tokens each) before the conclusion line, and
    `padding` words (3 tokens each) lengthening the prompt."""
    return {"id": name, "prompt": [{"role": "user", "content": "Critique the answer to: what is 2 + 2?" + " Hm." * padding}],
            "completion": "".join(f"Step {k}: the student adds two and two.\n" for k in range(steps)) + CONCLUSION}


def _pairs() -> list[dict]:
    # Lengths in the embedded tokenizer (prompt, prompt + completion) around MAX_LENGTH = 96: whole
    # pairs, pairs cut inside or before the conclusion, pairs that keep the conclusion but lose the
    # end-of-turn token after it, and pairs whose prompt alone is longer than 96 tokens.
    return [_pair(f"p{steps}-{padding}", steps, padding) for steps in range(5) for padding in (0, 3, 6, 15, 19)]


def _trl_dataset(model: str, path, tokenizer, **sft) -> dict[str, dict]:
    """TRL's prepared training rows (tokenized, truncated, fully masked rows dropped), by pair id."""
    cfg = TrainConfig(model=model, data=str(path), output_dir=str(path.parent / "out"), sft=sft)
    from critkit.engine.models import load_model
    from trl import SFTConfig

    trainer = _make_trainer_class()(model=load_model(model), args=SFTConfig(**sft_defaults(cfg)),
                                    train_dataset=_load_pairs(str(path), None), processing_class=tokenizer)
    ids = {(json.dumps(row["prompt"]), row["completion"]): row["id"] for row in _pairs()}
    return {ids[json.dumps(row["prompt"]), row["completion"][0]["content"]]: row for row in trainer.train_dataset}


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_counts_equal_what_trl_trains(tiny_model, embedded_model, tmp_path, mode):
    """Per pair, truncation.py's verdict equals TRL's: dropped, trained without the whole conclusion
    line, or truncated (e.g. only the end-of-turn token) with the conclusion kept."""
    from critkit.engine.models import load_tokenizer
    from critkit.training.estimate import estimate
    from critkit.training.truncation import count_truncation, measure

    tokenizer = load_tokenizer(embedded_model, padding_side="right")  # tiny_model carries the same tokenizer
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    whole = _trl_dataset(tiny_model, path, tokenizer, max_length=None)
    cut = _trl_dataset(tiny_model, path, tokenizer, max_length=MAX_LENGTH, truncation_mode=mode)
    supervised = {name: tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
                  for name, row in cut.items()}
    dropped = {name for name in whole if name not in cut}
    loses_conclusion = {name for name, text in supervised.items() if CONCLUSION not in text}
    truncated = {name for name in whole if len(whole[name]["input_ids"]) > MAX_LENGTH}
    if mode == "keep_start":  # the pairs cover every case
        assert dropped and loses_conclusion and truncated - dropped - loses_conclusion and set(whole) - truncated
    else:  # keep_end cuts the prompt's start: every pair keeps its conclusion
        assert not dropped and not loses_conclusion and truncated

    lengths = {row["id"]: measure(tokenizer, row["prompt"], row["completion"]) for row in _pairs()}
    assert {name: n.total for name, n in lengths.items()} == {name: len(row["input_ids"]) for name, row in whole.items()}
    assert {name for name, n in lengths.items() if n.kept(MAX_LENGTH, mode)[1] == 0} == dropped
    assert {name for name, n in lengths.items() if n.loses_last_line(MAX_LENGTH, mode)} == loses_conclusion
    counted = count_truncation(_pairs(), tokenizer, MAX_LENGTH, mode)
    assert (counted.pairs, counted.dropped, counted.cut_last_line, counted.truncated) == \
           (len(_pairs()), len(dropped), len(loses_conclusion), len(truncated))
    assert set(counted.examples) <= loses_conclusion and len(counted.examples) == min(3, len(loses_conclusion))
    # The estimate counts the same, and its tokens are those TRL keeps.
    e = estimate(TrainConfig(model=tiny_model, data=str(path), sft={"max_length": MAX_LENGTH, "truncation_mode": mode}))
    assert (e.dropped, e.cut_last_line, e.truncated, e.examples) == \
           (len(dropped), len(loses_conclusion), len(truncated), len(cut))
    assert e.tokens == sum(len(row["input_ids"]) for row in cut.values())
    assert e.supervised_tokens == sum(sum(label != -100 for label in row["labels"]) for row in cut.values())


def test_control_counting_truncated_pairs_is_not_counting_lost_conclusions(embedded_model):
    """The negative control: a pair cut only in its end-of-turn token is truncated but keeps its
    conclusion, so a count of truncated pairs (what a length check gives) is not this count."""
    from critkit.engine.models import load_tokenizer
    from critkit.training.truncation import measure

    tokenizer = load_tokenizer(embedded_model)
    boundary = [p for p in _pairs() if (n := measure(tokenizer, p["prompt"], p["completion"])).total > MAX_LENGTH
                and not n.loses_last_line(MAX_LENGTH) and n.prompt < MAX_LENGTH]
    assert boundary  # e.g. p3-3: 95 tokens to the end of the conclusion, 97 with <|im_end|> and "\n"


def _cft_records(path, n: int = 6) -> None:
    critique = "Step {k}: the student's arithmetic is checked and it is wrong here.\n"
    rows = [{"id": f"r{i}", "question": f"What is {i} + {i}?", "gold": str(2 * i), "response": f"{i} + {i} = {2 * i + 1}",
             "critique": "".join(critique.format(k=k) for k in range(i)) + CONCLUSION, "verdict": "wrong"} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_build_reports_pairs_that_lose_their_last_line(embedded_model, tmp_path, capsys):
    from critkit.cli import main
    from critkit.engine.models import load_tokenizer
    from critkit.training.truncation import measure

    records, pairs = tmp_path / "records.jsonl", tmp_path / "cft.jsonl"
    _cft_records(records)
    assert main(["build", "-m", "cft", "-i", str(records), "-o", str(pairs)]) == 0
    assert "max_length" not in capsys.readouterr().out  # without --max-length: nothing new
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    tokenizer = load_tokenizer(embedded_model)
    lengths = [measure(tokenizer, row["prompt"], row["completion"]) for row in rows]
    # A max_length that keeps the longest prompt and cuts the conclusion of the longest critiques.
    cap = max(n.prompt for n in lengths) + 20
    expected = sum(n.loses_last_line(cap) for n in lengths)
    assert 0 < expected < len(rows)
    assert main(["build", "-m", "cft", "-i", str(records), "-o", str(pairs), "--max-length", str(cap),
                 "--model", embedded_model]) == 0
    out = capsys.readouterr().out
    assert f"max_length {cap} ({embedded_model}'s tokens): " in out
    assert f"of {len(rows)} pairs truncated; {expected} lose their completion's last line" in out


def test_run_build_step_reports_truncation(tiny_model, tmp_path, capsys):
    """`critkit run` counts with the run's student and train.sft.max_length: in the log, in
    pairs/<set>.build.json and in the report's notes."""
    from critkit.cli import main

    config = {
        "name": "cut", "output_dir": str(tmp_path / "run"), "model": tiny_model, "seed": 0,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 6, "test": 2}},
        "synth": {"teacher": "reference", "critique_style": "cft", "reference_critique": "solution",
                  "student": {"max_new_tokens": 4, "batch_size": 6, "temperature": 1.0}},
        "methods": ["cft"],
        # Short enough to cut the reference teacher's critiques before their conclusion line.
        "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 6, "max_length": 120, "max_steps": 1}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 2, "batch_size": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["run", str(path)]) == 0
    info = json.loads((tmp_path / "run" / "pairs" / "cft.build.json").read_text())
    (counted,) = info["truncation"]
    assert counted["max_length"] == 120 and counted["pairs"] == 6 and counted["cut_last_line"] > 0
    line = next(n for n in info["notes"] if n.startswith("cft: max_length 120"))
    assert f"{counted['cut_last_line']} lose their completion's last line" in line
    assert line in capsys.readouterr().out
    assert line in (tmp_path / "run" / "report.md").read_text()
