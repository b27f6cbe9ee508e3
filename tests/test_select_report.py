"""Checkpoint selection on a disjoint validation split, and the cross-run report table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

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
        "select": True,  # the run itself selects among the checkpoints the trainer saved
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(root / "run.yaml")]) == 0
    return root / "run"


def test_select_scores_every_checkpoint_and_records_the_choice(run_with_checkpoints):
    run = run_with_checkpoints
    selection = json.loads((run / "models" / "sft-gold" / "selection.json").read_text())
    held = json.loads((run / "eval" / "sft-gold" / "model.json").read_text())
    assert held["model"] == f"models/sft-gold/{selection['best']}"  # the run evaluated the chosen checkpoint
    assert main(["select", str(run), "--max-new-tokens", "4", "--batch-size", "4"]) == 0
    assert json.loads((run / "models" / "sft-gold" / "selection.json").read_text()) == selection  # same settings: kept
    assert list(selection["scores"]) == ["checkpoint-1", "checkpoint-2", "final"]
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


# ------------------------------------------------------------ checkpoints that score differently
#
# A random tiny model scores 0 on every checkpoint, so any rule "chooses the best". Here the
# checkpoints are real model folders with known answers: an "answering model" writes the same
# answer to every question, so its accuracy on a split is the share of golds equal to that answer.

VALIDATION = [("What is the smallest prime above 5?", "7"), ("How many days has a week?", "7"),
              ("What is 21 / 3?", "7"), ("What is 1 + 2?", "3")]  # "7" scores 0.75, "3" 0.25, random 0
TEST = [("What is 49 / 7?", "7"), ("How many colours has a rainbow?", "7"), ("What is 9 / 3?", "3"),
        ("What is 2 + 3?", "5")]  # "7" scores 0.5, "3" 0.25, random 0


def answering_model(path: Path, tokenizer_dir: str, answer: str) -> str:
    """A real one-layer Llama that writes `\\boxed{answer}` and ends its turn, whatever it is asked.

    Its attention and MLP outputs are zero, so each next token depends on the current token alone
    (a bigram table in the embedding and output matrices): after the last token of the assistant
    header comes the answer, token by token, then <|im_end|>.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from critkit.engine.backends import chat_ids
    from critkit.prompts import answer_prompt

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    header = chat_ids(tokenizer, answer_prompt("any question"))
    chain = [header[-1], *tokenizer(f"\\boxed{{{answer}}}", add_special_tokens=False)["input_ids"],
             tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert len(set(chain[:-1])) == len(chain) - 1  # a bigram table needs each token once
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in [model.model.norm, *(m for layer in model.model.layers for m in (layer.input_layernorm,
                                                                                      layer.post_attention_layernorm))]:
            norm.weight.fill_(1.0)
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed[:, 0] = 1.0  # any token off the chain: direction 0, which ends the turn
        head[chain[-1], 0] = 10.0
        for k, (token, following) in enumerate(zip(chain, chain[1:]), start=1):
            embed[token].zero_()
            embed[token, k] = 1.0
            head[following, k] = 10.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory, tiny_model) -> dict[str, str]:
    root = tmp_path_factory.mktemp("scripted")
    models = {"seven": answering_model(root / "seven", tiny_model, "7"), "three": answering_model(root / "three", tiny_model, "3"),
              "random": tiny_model}
    for name, rows in (("validation", VALIDATION), ("test", TEST)):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"id": f"{name[:3]}{i}", "question": q, "gold": g}) + "\n"
                                                    for i, (q, g) in enumerate(rows)))
    return {**models, "root": str(root)}


def place(folder: Path, checkpoints: dict[str, str]) -> None:
    """Checkpoint folders as the trainer leaves them: the model's files, and trainer_state.json
    (written last, so a checkpoint without it was cut off while saving) in checkpoint-* folders."""
    for name, model in checkpoints.items():
        target = folder / name
        target.mkdir(parents=True)
        for f in Path(model).iterdir():
            (target / f.name).symlink_to(f)
        if name.startswith("checkpoint-"):
            (target / "trainer_state.json").write_text(json.dumps({"global_step": int(name.split("-")[1])}))


def scripted_config(scripted: dict, root: Path, **extra) -> Path:
    cfg = {
        "name": "scripted", "output_dir": str(root / "run"), "model": scripted["random"],
        "data": {"train": "demo", "test": f"{scripted['root']}/test.jsonl", "validation": f"{scripted['root']}/validation.jsonl",
                 "demo": {"train": 8, "test": 4}},
        "synth": {"teacher": "reference"}, "methods": ["sft-gold"],
        "train": {"sft": {"save_strategy": "steps", "save_steps": 1}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 12, "batch_size": 8},
        "select": True, **extra,
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root / "run.yaml"


def test_run_selects_the_best_checkpoint_on_validation_and_reports_its_test_scores(scripted, tmp_path, capsys):
    path = scripted_config(scripted, tmp_path)
    run = tmp_path / "run"
    # Two checkpoints tie at the top (0.75): the earliest by step wins, and step 2 is earlier
    # than step 10 (which sorts first as text). checkpoint-30 was cut off while saving.
    place(run / "models" / "sft-gold", {"checkpoint-1": scripted["random"], "checkpoint-2": scripted["seven"],
                                        "checkpoint-10": scripted["seven"], "checkpoint-20": scripted["three"],
                                        "final": scripted["three"]})
    place(run / "models" / "sft-gold", {"checkpoint-30": scripted["seven"]})
    (run / "models" / "sft-gold" / "checkpoint-30" / "trainer_state.json").unlink()
    assert main(["run", str(path)]) == 0

    selection = json.loads((run / "models" / "sft-gold" / "selection.json").read_text())
    assert selection["scores"] == {"checkpoint-1": 0.0, "checkpoint-2": 0.75, "checkpoint-10": 0.75, "checkpoint-20": 0.25,
                                   "final": 0.25}
    assert selection["best"] == "checkpoint-2" and "checkpoint-30" in selection["skipped"]
    assert "test" in selection["disjoint_from"] and "math500" in selection["disjoint_from"]
    # The test scores are the chosen checkpoint's (the final model would score 0.25).
    scores = json.loads((run / "eval" / "sft-gold" / "test" / "scores.json").read_text())
    assert scores["accuracy"] == 0.5
    samples = [json.loads(line) for line in (run / "eval" / "sft-gold" / "test" / "samples.jsonl").read_text().splitlines()]
    assert {s["responses"][0] for s in samples} == {"\\boxed{7}"}
    report = (run / "report.md").read_text()
    assert "| model | checkpoint | test |" in report and "| sft-gold | checkpoint-2 (val 75.0) | 50.0 (2/4) |" in report
    assert "## Checkpoint selection" in report and "**checkpoint-2 75.0**" in report
    results = json.loads((run / "results.json").read_text())
    assert results["sft-gold"]["checkpoint"]["name"] == "checkpoint-2"
    assert results["sft-gold"]["checkpoint"]["validation_accuracy"]["final"] == 0.25
    assert results["sft-gold"]["scores"]["test"]["accuracy"] == 0.5
    assert (run / "select" / "accuracy.png").stat().st_size > 1000

    # Resuming: selection and evaluation are found done.
    steps = [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()]
    assert "select sft-gold" in steps and "eval sft-gold" in steps
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "select sft-gold: already done, skipped" in out and "eval sft-gold: already done, skipped" in out

    # The checkpoints change (here two are deleted): the selection runs again, and the test
    # scores of the checkpoint chosen before are moved aside, not reported for the new choice.
    for name in ("checkpoint-2", "checkpoint-10"):
        for f in (run / "models" / "sft-gold" / name).iterdir():
            f.unlink()
        (run / "models" / "sft-gold" / name).rmdir()
    assert main(["run", str(path)]) == 0
    selection = json.loads((run / "models" / "sft-gold" / "selection.json").read_text())
    assert selection["best"] == "checkpoint-20"  # ties final at 0.25, and is earlier
    assert json.loads((run / "eval" / "sft-gold" / "test" / "scores.json").read_text())["accuracy"] == 0.25
    moved = run / "eval-replaced" / "sft-gold--checkpoint-2" / "test" / "scores.json"
    assert json.loads(moved.read_text())["accuracy"] == 0.5
    assert "| sft-gold | checkpoint-20 (val 25.0) | 25.0 (1/4) |" in (run / "report.md").read_text()


def test_selection_with_seeds_in_the_run_and_in_critkit_select(scripted, tmp_path, capsys):
    path = scripted_config(scripted, tmp_path, seeds=2)
    run = tmp_path / "run"
    place(run / "models" / "sft-gold" / "seed0", {"checkpoint-1": scripted["random"], "checkpoint-2": scripted["seven"],
                                                  "final": scripted["three"]})
    place(run / "models" / "sft-gold" / "seed1", {"checkpoint-1": scripted["three"], "final": scripted["seven"]})
    assert main(["run", str(path)]) == 0
    chosen = {k: json.loads((run / "models" / "sft-gold" / f"seed{k}" / "selection.json").read_text())["best"] for k in (0, 1)}
    assert chosen == {0: "checkpoint-2", 1: "final"}
    for k in (0, 1):
        assert json.loads((run / "eval" / f"sft-gold@seed{k}" / "test" / "scores.json").read_text())["accuracy"] == 0.5
    report = (run / "report.md").read_text()
    assert "| model | seed | checkpoint | test |" in report
    assert "| sft-gold | 0 | checkpoint-2 (val 75.0) | 50.0 (2/4) |" in report
    assert "| sft-gold | 1 | final (val 75.0) | 50.0 (2/4) |" in report
    assert "| sft-gold | 2 | 50.0 ± 0.0 |" in report  # mean over the seeds' chosen checkpoints
    results = json.loads((run / "results.json").read_text())
    assert [results["sft-gold"]["seeds"][k]["checkpoint"]["name"] for k in ("0", "1")] == ["checkpoint-2", "final"]
    with open(run / "seeds.csv", newline="") as fh:
        assert {(r["seed"], r["checkpoint"]) for r in csv.DictReader(fh) if r["model"] == "sft-gold"} == {("0", "checkpoint-2"),
                                                                                                          ("1", "final")}

    # `critkit select` finds the seed folders, and with the run's own settings keeps its choice.
    capsys.readouterr()
    assert main(["select", str(run)]) == 0
    out = capsys.readouterr().out
    assert "sft-gold@seed0: best checkpoint-2 (checkpoint-1 0.0%, checkpoint-2 75.0%, final 25.0%)" in out
    assert "sft-gold@seed1: best final (checkpoint-1 25.0%, final 75.0%)" in out
    assert "on validation" not in out  # nothing evaluated again


def test_a_validation_split_that_leaks_stops_the_run_before_training(scripted, tmp_path, capsys):
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(Path(scripted["root"], "test.jsonl").read_text())
    path = scripted_config(scripted, tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["validation"] = str(leaky)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path)]) == 2
    assert "shares 4 question(s) with test set test" in capsys.readouterr().err
    assert not (tmp_path / "run" / "models").exists() and not (tmp_path / "run" / "synth").exists()


@pytest.mark.parametrize("change, message", [
    ({"data": {"train": "demo", "test": "demo"}}, "select: true needs a validation split"),
    ({"train": {"sft": {"learning_rate": 1e-3}}}, "save_strategy is 'no'"),
    ({"select": "yes"}, "select: expected true or false"),
])
def test_select_settings_are_checked_when_the_config_loads(tmp_path, change, message):
    from critkit.config import ConfigError
    from critkit.run import load_run_config

    cfg = {"output_dir": str(tmp_path / "run"), "methods": ["sft-gold"], "select": True,
           "data": {"train": "demo", "test": "demo", "demo": {"validation": 4}},
           "train": {"sft": {"save_strategy": "steps", "save_steps": 1}}, **change}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=message):
        load_run_config(tmp_path / "run.yaml")
    cfg = {**cfg, "data": {"train": "demo", "test": "demo", "demo": {"validation": 4}},
           "train": {"sft": {"save_strategy": "steps", "save_steps": 1}}, "select": True}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    load_run_config(tmp_path / "run.yaml")  # the control: the same config without the fault loads


def test_lora_checkpoints_are_adapter_folders_and_are_selected(tiny_model, tmp_path):
    cfg = {
        "name": "lora", "output_dir": str(tmp_path / "run"), "model": tiny_model,
        "data": {"train": "demo", "test": "demo", "demo": {"train": 8, "test": 2, "validation": 2}},
        "synth": {"teacher": "reference"}, "methods": ["sft-gold"],
        "train": {"peft": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                  "sft": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 128, "max_steps": 2,
                          "save_strategy": "steps", "save_steps": 1}},
        "eval": {"benchmarks": ["test"], "max_new_tokens": 4, "batch_size": 4},
        "select": True,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "run.yaml")]) == 0
    models = tmp_path / "run" / "models" / "sft-gold"
    selection = json.loads((models / "selection.json").read_text())
    assert list(selection["scores"]) == ["checkpoint-1", "checkpoint-2", "final"]
    assert all((models / name / "adapter_config.json").exists() for name in selection["scores"])
    held = json.loads((tmp_path / "run" / "eval" / "sft-gold" / "model.json").read_text())
    assert held["model"] == f"models/sft-gold/{selection['best']}"
    assert (tmp_path / "run" / "eval" / "sft-gold" / "test" / "scores.json").exists()


def test_validation_split_has_its_own_source_mapping(tmp_path):
    """The CFT recipes train on WebInstruct-CFT (no gold answers) and validate on MATH train rows."""
    from critkit.data.records import RecordError, read_records
    from critkit.run import RunConfig, load_data

    train = tmp_path / "cft.jsonl"
    train.write_text(json.dumps({"instruction": "Critique the solution.", "input": "Question:\nWhat is 2 + 2?\n\nSolution:\n4",
                                 "output": "The solution is right.\nConclusion: right [END]"}) + "\n")
    validation = tmp_path / "math-train.jsonl"
    validation.write_text(json.dumps({"problem": "What is $3^2$?", "level": "Level 1", "type": "Algebra",
                                      "solution": "$3^2 = \\boxed{9}$."}) + "\n")
    data = {"train": str(train), "source": "webinstruct-cft", "test": None, "validation": str(validation)}
    with pytest.raises(RecordError, match="math-train.jsonl"):  # the control: the training data's mapping cannot read it
        load_data(RunConfig(output_dir=str(tmp_path / "a"), data=data), tmp_path / "a")
    load_data(RunConfig(output_dir=str(tmp_path / "b"), data={**data, "validation_source": "math"}), tmp_path / "b")
    assert [(r.question, r.gold) for r in read_records(tmp_path / "b" / "records" / "validation.jsonl")] == [("What is $3^2$?", "9")]
    assert read_records(tmp_path / "b" / "records" / "train.jsonl")[0].verdict == "right"


@pytest.mark.parametrize("recipe", ["cft-7b", "cft-32b", "cgd-8b"])
def test_paper_recipes_select_on_a_split_of_their_own(recipe):
    from critkit.config import find_config
    from critkit.run import load_run_config

    cfg = load_run_config(find_config(recipe))
    assert cfg.select is True and cfg.data["validation_source"] == "math"
    assert "math500" in cfg.eval["benchmarks"] and cfg.data["validation"] != "math500"
    # Enough optimizer steps saved to choose among: pairs / global batch (8 GPUs) over save_steps.
    sft = cfg.train["sft"]
    pairs = {"cft-7b": 50_000, "cft-32b": 4_000, "cgd-8b": 100_000}[recipe]
    steps = pairs // (8 * sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"])
    assert steps // sft["save_steps"] >= 2
