"""What the offline reference teacher's critique contains (synth.reference_critique): the verdict
only (the default), the verdict and the correct final answer, or the worked reference solution; its
refined answer is the reference solution in every case.

The point of the setting is CGD's input: a critique that holds the target lets CGD copy it. Each
level is checked on real GSM8K rows and on the demo task, with the level that does put the
target in the input as the control that the check can fail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from critkit.config import ConfigError
from critkit.data.demo import make_demo
from critkit.data.records import Record
from critkit.data.sources import load_source
from critkit.engine.backends import Sampling
from critkit.synth.stages import REFERENCE, REFERENCE_CRITIQUES, critique, parse_verdict, refine
from critkit.training.methods import build_pairs


@pytest.fixture(scope="module")
def gsm8k_records(shared_data) -> list[Record]:
    """Three real GSM8K rows, each answered once rightly (the reference) and once wrongly (gold + 1)."""
    out = []
    for rec in load_source(shared_data / "train" / "gsm8k_train.jsonl", "gsm8k", limit=3):
        out.append(replace(rec, id=f"{rec.id}-right", response=rec.reference))
        wrong = int(rec.gold) + 1
        out.append(replace(rec, id=f"{rec.id}-wrong", response=f"I think it is {wrong}.\nThe answer is \\boxed{{{wrong}}}."))
    return out


def _numbers(text: str) -> set[str]:
    import re

    return set(re.findall(r"\d+(?:\.\d+)?", text))


@pytest.mark.parametrize("contains", REFERENCE_CRITIQUES)
def test_each_level_says_what_it_promises_and_refines_to_the_reference(gsm8k_records, contains):
    out, report = critique(gsm8k_records, REFERENCE, Sampling(), style="cft", reference_critique=contains)
    assert report["done"] == len(gsm8k_records)
    for before, rec in zip(gsm8k_records, out):
        expected = "right" if before.id.endswith("-right") else "wrong"
        # The verdict is math-verify's grade whatever the critique holds, and parses back from the text.
        assert rec.verdict == expected == parse_verdict(rec.critique)
        assert rec.critique.endswith(f"\nConclusion: {expected} [END]")
        assert rec.meta["critique"] == {"teacher": "reference", "style": "cft", "output": rec.critique, "contains": contains}
        if expected == "wrong":
            # The gold answer is a number the wrong answer never mentions (it says gold + 1).
            assert (rec.gold in _numbers(rec.critique)) == (contains in ("answer", "solution")), rec.critique
            assert (rec.reference in rec.critique) == (contains == "solution")
        assert rec.reference not in rec.critique or contains == "solution"
    refined, _ = refine(out, REFERENCE, Sampling())
    assert all(r.refined == r.reference for r in refined)  # the target stays the reference solution


def test_the_default_critique_holds_the_verdict_only(gsm8k_records):
    default, _ = critique(gsm8k_records, REFERENCE, Sampling())
    verdict_only, _ = critique(gsm8k_records, REFERENCE, Sampling(), reference_critique="verdict")
    assert [r.critique for r in default] == [r.critique for r in verdict_only]
    wrong = default[1]
    assert wrong.critique == "The solution's final answer is 73, which is not correct.\nConclusion: wrong [END]"
    assert default[0].critique == "The solution's final answer, 72, is correct.\nConclusion: right [END]"
    no_answer, _ = critique([replace(gsm8k_records[1], response="I do not know.")], REFERENCE, Sampling(), style="cgd")
    assert no_answer[0].critique == "The solution gives no final answer.\nConclusion: wrong"


def _cgd_pairs(contains: str) -> list[dict]:
    """CGD's training pairs on demo problems the student got wrong, with the reference teacher."""
    train, _ = make_demo(train=12, test=0)
    answered = [replace(r, response=f"The answer is \\boxed{{{int(r.gold) + 100}}}.") for r in train]
    critiqued, _ = critique(answered, REFERENCE, Sampling(), reference_critique=contains)
    refined, _ = refine(critiqued, REFERENCE, Sampling())
    rows, skipped = build_pairs("cgd", refined)
    assert len(rows) == 12 and not skipped
    return rows


@pytest.mark.parametrize("contains, target_in_input, answer_in_input",
                         [("verdict", False, False), ("answer", False, True), ("solution", True, True)])
def test_cgd_input_holds_its_target_only_when_the_critique_quotes_the_solution(contains, target_in_input, answer_in_input):
    """The confound the setting removes: with `solution` CGD's target is a copy of part of its input
    (the control that this check fails when it should); with `verdict` neither the target nor its
    final answer is in the input."""
    for row in _cgd_pairs(contains):
        prompt = row["prompt"][-1]["content"]
        gold = row["completion"].rsplit("\\boxed{", 1)[1].rstrip("}")
        assert (row["completion"] in prompt) == target_in_input, prompt
        assert (gold in _numbers(prompt.split("Critique:", 1)[1])) == answer_in_input, prompt


def test_an_unknown_level_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown reference critique 'all'; use one of verdict, answer, solution"):
        critique([], REFERENCE, Sampling(), reference_critique="all")
    from critkit.run import load_run_config

    with pytest.raises(ConfigError, match=r"synth\.reference_critique: expected one of verdict, answer, solution, got 'full'"):
        load_run_config(_packaged("quickstart"), ["synth.reference_critique=full"])


def _packaged(name: str) -> str:
    from critkit.config import find_config

    return str(find_config(name))


def test_the_quickstart_and_the_study_use_the_verdict_only_critique():
    from critkit.run import load_run_config

    quick = load_run_config(_packaged("quickstart"))
    assert quick.synth["reference_critique"] == "verdict"
    assert quick.methods[:2] == ["sft", "cft"]  # CFT next to imitation of the same noisy answers
    study = load_run_config(_packaged("study"))
    assert study.synth["reference_critique"] == "verdict" and study.seeds == 3
    assert study.methods == ["sft", "sft-verified", "sft-gold", "cft", "distilled-sft", "cgd", "cgd-no-critique"]


def test_the_critique_ablation_runs_the_three_levels_on_the_study():
    from critkit.ablate import load_ablation
    from critkit.config import find_config

    cfg, runs = load_ablation(find_config("study-critique", "ablations"))
    assert {name: run.synth["reference_critique"] for name, run in runs.items()} == {
        "verdict": "verdict", "answer": "answer", "solution": "solution"}
    assert all(run.methods == ["distilled-sft", "cgd", "cft"] and run.seeds == 1 for run in runs.values())


def test_the_run_config_setting_reaches_the_critique_stage(tiny_model, tmp_path):
    """`synth.reference_critique` in a run config is what `critkit run`'s critique stage uses: with
    `answer`, every wrong answer's critique names the gold answer and cgd's pairs carry it. A run
    that dropped the setting would write the default verdict-only critique and fail here."""
    import yaml

    from critkit.cli import main
    from critkit.data.records import read_records

    cfg = {"name": "tiny", "output_dir": str(tmp_path / "run"), "model": tiny_model, "seed": 0,
           "data": {"train": "demo", "test": "demo", "demo": {"train": 8, "test": 2}},
           "synth": {"teacher": "reference", "reference_critique": "answer",
                     "student": {"max_new_tokens": 6, "batch_size": 8, "temperature": 1.0}},
           "methods": ["cgd"],
           "train": {"sft": {"per_device_train_batch_size": 8, "max_length": 256, "max_steps": 1, "disable_tqdm": True}},
           "eval": {"benchmarks": ["test"], "max_new_tokens": 4, "batch_size": 2}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 0
    records = read_records(tmp_path / "run" / "synth" / "critique.jsonl")
    assert len(records) == 8 and all(r.meta["critique"]["contains"] == "answer" for r in records)
    wrong = [r for r in records if r.verdict == "wrong"]
    assert wrong  # the random tiny model's six tokens never answer a demo question
    assert all(f"the correct answer is {r.gold}." in r.critique for r in wrong)


def test_the_stage_command_writes_each_level_and_refuses_to_mix_them(tmp_path, capsys):
    """`critkit critique --teacher reference --reference-critique LEVEL`: the level reaches the
    journal's critiques, and resuming the same output with another level is refused (the level is
    one of the run's settings), instead of mixing two kinds of critique in one file."""
    from critkit.cli import main
    from critkit.data.records import read_records, write_records

    train, _ = make_demo(train=6, test=0)
    answered = [replace(r, response=f"So the answer is \\boxed{{{int(r.gold) + 1}}}.") for r in train]  # all wrong
    src = tmp_path / "respond.jsonl"
    write_records(src, answered)
    for level in REFERENCE_CRITIQUES:
        out = tmp_path / f"{level}.jsonl"
        assert main(["critique", "-i", str(src), "-o", str(out), "--teacher", "reference",
                     "--reference-critique", level]) in (None, 0)
        critiques = {r.id: r for r in read_records(out)}
        for rec in answered:
            made = critiques[rec.id]
            assert made.meta["critique"]["contains"] == level
            assert (f"correct answer is {rec.gold}" in made.critique) == (level != "verdict")
            assert (rec.reference in made.critique) == (level == "solution")
    assert main(["critique", "-i", str(src), "-o", str(tmp_path / "verdict.jsonl"), "--teacher", "reference",
                 "--reference-critique", "solution"]) == 2
    assert "verdict.jsonl:1: record 'demo-train-0' was made by reference with other settings" in capsys.readouterr().err
