"""Checkpoint selection on a disjoint validation split, and the cross-run report table."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from critkit.cli import main


@pytest.fixture(scope="module")
def run_with_checkpoints(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    cfg = {
        "name": "sel", "output_dir": str(root / "run"), "model": tiny_model,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 8, "test": 4, "validation": 4}},
        "synth": {"teacher": "reference", "student": {"max_new_tokens": 4, "batch_size": 8}},
        "methods": ["sft-gold"],
        "train": {"sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 128, "num_train_epochs": 1,
                          "save_strategy": "steps", "save_steps": 1}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 4, "batch_size": 4},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root / "run.yaml")]) == 0
    return root / "run"


def test_select_scores_every_checkpoint_and_records_the_choice(run_with_checkpoints):
    run = run_with_checkpoints
    assert main(["select", str(run), "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    selection = json.loads((run / "models" / "sft-gold" / "selection.json").read_text())
    assert set(selection["scores"]) == {"checkpoint-1", "checkpoint-2", "final"}
    assert selection["best"] in selection["scores"]
    assert selection["scores"][selection["best"]] == max(selection["scores"].values())
    assert "test" in selection["disjoint_from"]  # the run's own test split was checked
    for name in selection["scores"]:
        assert (run / "select" / "sft-gold" / name / "validation" / "samples.jsonl").exists()
    assert (run / "select" / "accuracy.png").stat().st_size > 1000  # accuracy over checkpoints
    assert (run / "models" / "sft-gold" / "loss.png").exists() and (run / "loss.png").exists()  # loss curves


def test_select_refuses_a_validation_split_that_overlaps_a_test_set(run_with_checkpoints, shared_data):
    from critkit.evaluation.select import select_checkpoints

    with pytest.raises(ValueError, match="shares 4 question"):
        select_checkpoints(run_with_checkpoints, validation=str(run_with_checkpoints / "records" / "test.jsonl"), max_new_tokens=4)
    # A slice of GSM8K test used as validation collides with the gsm8k benchmark.
    rows = [json.loads(line) for line in (shared_data / "benchmarks/gsm8k/test.jsonl").read_text().splitlines()[:3]]
    leaky = run_with_checkpoints / "leaky.jsonl"
    leaky.write_text("".join(json.dumps({"id": str(i), "question": r["question"], "gold": "1"}) + "\n" for i, r in enumerate(rows)))
    with pytest.raises(ValueError, match="gsm8k"):
        select_checkpoints(run_with_checkpoints, validation=str(leaky), max_new_tokens=4)


def test_report_collects_runs_into_one_table(run_with_checkpoints, tmp_path):
    assert main(["report", str(run_with_checkpoints), "-o", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "table.md").read_text()
    assert "| model | test | avg |" in md and "| base |" in md and "| sft-gold |" in md
    rows = list(csv.reader(open(tmp_path / "rep" / "table.csv")))
    assert rows[0] == ["model", "test", "avg"] and {r[0] for r in rows[1:]} == {"base", "sft-gold"}
    scores = json.loads((run_with_checkpoints / "eval" / "base" / "test" / "scores.json").read_text())
    assert float(next(r for r in rows if r[0] == "base")[1]) == pytest.approx(100 * scores["accuracy"], abs=0.01)
    assert (tmp_path / "rep" / "table.png").stat().st_size > 1000
