"""The pre-run estimate against what the trainer really builds, the curves a run writes, and bad
training data stopped before any model is loaded."""

from __future__ import annotations

import json

import pytest
import torch

from critkit.config import ConfigError
from critkit.data.records import write_jsonl
from critkit.training.train import TrainConfig, _load_pairs, _make_trainer_class, load_train_config, sft_defaults, train

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _pairs(n: int = 12) -> list[dict]:
    return [{"id": str(i), "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {i} + {i}?" + " Hm." * i}],
             "completion": f"{i} + {i} = {2 * i}. " * (1 + i % 3) + f"\\boxed{{{2 * i}}}"} for i in range(n)]


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    return path


def test_estimate_counts_what_the_trainer_builds(tiny_model, pairs_file, tmp_path):
    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig

    from critkit.training.estimate import estimate
    from critkit.engine.models import load_model, load_tokenizer

    cfg = TrainConfig(model=tiny_model, data=str(pairs_file), output_dir=str(tmp_path / "o"),
                      sft={"max_length": 64, "per_device_train_batch_size": 4, "num_train_epochs": 2})
    e = estimate(cfg, devices=8)
    model = load_model(tiny_model)
    assert e.parameters == sum(p.numel() for p in model.parameters())
    assert e.trainable == e.parameters
    # Tokens: the same count the trainer's tokenized (and truncated) dataset holds.
    trainer = _make_trainer_class()(model=model, args=SFTConfig(**sft_defaults(cfg)), processing_class=load_tokenizer(tiny_model, "right"),
                                    train_dataset=_load_pairs(str(pairs_file), None))
    rows = list(trainer.train_dataset)
    assert e.examples == len(rows) and e.dropped == 12 - len(rows) > 0  # prompts that fill max_length are dropped
    assert e.tokens == sum(len(r["input_ids"]) for r in rows)
    assert e.supervised_tokens == sum(sum(1 for label in r["labels"] if label != -100) for r in rows)
    assert any(len(r["input_ids"]) == 64 for r in rows)  # truncation happened and was counted
    # Memory: fp32 weights, gradients and two AdamW moments; sharding divides them by the devices.
    assert e.weights_gib * 1024 ** 3 == pytest.approx(4 * e.parameters)
    assert e.optimizer_gib == pytest.approx(2 * e.weights_gib)
    assert e.per_device_sharded_gib < e.per_device_ddp_gib
    assert e.activations_checkpointed_gib < e.activations_gib
    assert e.train_flops >= 6 * e.parameters * e.tokens * 2

    # LoRA: the adapter count is PEFT's own.
    lora = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
    e_lora = estimate(TrainConfig(model=tiny_model, data=str(pairs_file), peft=lora), devices=1)
    peft_model = get_peft_model(load_model(tiny_model), LoraConfig(task_type="CAUSAL_LM", **lora))
    assert e_lora.trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    e_qv = estimate(TrainConfig(model=tiny_model, data=str(pairs_file), peft={"r": 2, "target_modules": ["q_proj", "v_proj"]}))
    peft_qv = get_peft_model(load_model(tiny_model), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "v_proj"]))
    assert e_qv.trainable == sum(p.numel() for p in peft_qv.parameters() if p.requires_grad)


def test_estimate_of_a_paper_recipe_model_shape(embedded_model, pairs_file, capsys):
    """The CLI prints the estimate; the embedded model's 134.5M parameters are counted on the meta device."""
    from critkit.cli import main

    assert main(["estimate", f"model={embedded_model}", f"data={pairs_file}", "per_device_train_batch_size=4",
                 "max_length=2048", "--devices", "8"]) == 0
    out = capsys.readouterr().out
    assert "134.5M" in out and "ZeRO-3/FSDP" in out and "12 examples" in out


def test_training_writes_loss_curve_estimate_and_tensorboard_logs(tiny_model, pairs_file, tmp_path):
    out = tmp_path / "out"
    cfg = load_train_config(None, [f"model={tiny_model}", f"data={pairs_file}", f"output_dir={out}",
                                   "per_device_train_batch_size=4", "max_length=64", "learning_rate=1e-3"])
    train(cfg)
    assert (out / "loss.png").stat().st_size > 1000
    planned = json.loads((out / "estimate.json").read_text())
    assert planned["examples"] + planned["dropped"] == 12 and planned["tokens"] > 0
    from critkit.training.train_config import _has_tensorboard

    if _has_tensorboard():
        assert list(out.glob("runs/**/events.out.tfevents.*")), "TensorBoard event files missing"


def test_checkpoint_accuracy_plot(tmp_path):
    from critkit.training.curves import plot_checkpoint_accuracy, plot_losses

    path = plot_checkpoint_accuracy({"cgd": {"checkpoint-10": 0.2, "checkpoint-20": 0.35, "final": 0.35},
                                     "cft": {"checkpoint-10": 0.1, "checkpoint-20": 0.15}}, tmp_path / "acc.png")
    assert path.stat().st_size > 1000
    assert plot_losses({"x": [{"epoch": 1}]}, tmp_path / "none.png") is None  # no loss logged: no empty plot


def test_bad_pair_rows_are_reported_and_skipped(tiny_model, tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    good = _pairs(2)
    path.write_text("\n".join([json.dumps(good[0]), "{not json", json.dumps({"prompt": "text", "completion": "x"}),
                               json.dumps({"prompt": good[1]["prompt"], "completion": ""}), json.dumps(good[1])]) + "\n")
    dataset = _load_pairs(str(path), None)
    assert len(dataset) == 2
    out = capsys.readouterr().out
    assert f"{path}:2: malformed JSON" in out
    assert f"{path}:3: field 'prompt'" in out and f"{path}:4: field 'completion'" in out


def test_data_with_no_usable_pair_stops_before_loading(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ConfigError, match=r"data: .*no usable training pair.*bad.jsonl:1: field 'prompt'"):
        load_train_config(None, ["model=/nonexistent/model", f"data={path}"])


def test_run_stops_before_loading_when_a_method_cannot_get_data(tmp_path):
    from critkit.run import load_run_config, run

    records = tmp_path / "train.jsonl"
    write_jsonl(records, [{"id": str(i), "question": f"What is {i}+1?", "gold": str(i + 1)} for i in range(3)])
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path / 'run'}\nmodel: /nonexistent/model\n"
                      f"data: {{train: {records}, test: null, source: critkit}}\nmethods: [cft, sft-gold]\n")
    cfg = load_run_config(config)
    with pytest.raises(ConfigError, match=r"methods\[1\] \(sft-gold\).*'reference'"):
        run(cfg)
