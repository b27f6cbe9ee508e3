"""Training on a tiny real Llama: completion-only masking, a loss that falls, saved models that load."""

from __future__ import annotations

import json

import pytest
import torch

from critkit.data.records import write_jsonl
from critkit.config import ConfigError
from critkit.training.train import TrainConfig, _load_pairs, _make_trainer_class, load_train_config, sft_defaults, train

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _pairs(n: int = 16) -> list[dict]:
    return [{"id": str(i), "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"What is {i} + 1?"}],
             "completion": f"{i} + 1 = {i + 1}.\n\\boxed{{{i + 1}}}"} for i in range(n)]


@pytest.fixture()
def pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    return path


def test_prompt_tokens_are_masked(tiny_model, pairs_file, tmp_path):
    from trl import SFTConfig

    from critkit.engine.models import load_model, load_tokenizer

    cfg = TrainConfig(model=tiny_model, data=str(pairs_file), output_dir=str(tmp_path / "out"),
                      sft={"max_length": 256, "padding_free": False})
    tokenizer = load_tokenizer(tiny_model, padding_side="right")
    trainer = _make_trainer_class()(model=load_model(tiny_model).train(), args=SFTConfig(**sft_defaults(cfg)),
                                    train_dataset=_load_pairs(str(pairs_file), None), processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(2)]
    batch = trainer.data_collator(rows)
    for k, row in enumerate(rows):
        ids = torch.tensor(row["input_ids"])
        labels = batch["labels"][k][: len(ids)]
        kept = labels != -100
        # Everything up to and including "<|im_start|>assistant\n" is masked ...
        prompt_text = tokenizer.apply_chat_template(_pairs()[k]["prompt"], tokenize=False, add_generation_prompt=True)
        n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
        assert not kept[:n_prompt].any()
        # ... and the loss sees exactly the completion and its end-of-turn token.
        assert kept[n_prompt:].all()
        assert torch.equal(labels[kept], ids[kept])
        supervised = tokenizer.decode(ids[kept])
        assert supervised.startswith(_pairs()[k]["completion"])
        assert supervised.removeprefix(_pairs()[k]["completion"]).strip().startswith("<|im_end|>")
        # Padding beyond the row is masked too.
        assert (batch["labels"][k][len(ids):] == -100).all()


def test_full_training_changes_weights_and_logs_loss(tiny_model, pairs_file, tmp_path):
    from critkit.engine.models import load_model

    before = {k: v.clone() for k, v in load_model(tiny_model).state_dict().items()}
    cfg = load_train_config(None, [f"model={tiny_model}", f"data={pairs_file}", f"output_dir={tmp_path / 'out'}",
                                   "learning_rate=1e-2", "per_device_train_batch_size=4", "num_train_epochs=2",
                                   "max_length=128", "seed=1"])
    final = train(cfg)
    log = json.loads((tmp_path / "out" / "train_log.json").read_text())
    losses = [e["loss"] for e in log["log_history"] if "loss" in e]
    assert len(losses) == 8 and all(l == l for l in losses)  # 16 pairs / 4 x 2 epochs, no NaN
    assert losses[-1] < losses[0]
    after = load_model(str(final)).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)  # full fine-tuning touches every tensor


def test_lora_training_saves_an_adapter_that_loads(tiny_model, pairs_file, tmp_path):
    from critkit.engine.models import load_model

    cfg = load_train_config(None, [f"model={tiny_model}", f"data={pairs_file}", f"output_dir={tmp_path / 'lora'}",
                                   "peft.r=4", "peft.lora_alpha=8", "peft.target_modules=all-linear",
                                   "learning_rate=1e-2", "per_device_train_batch_size=8", "max_length=128"])
    final = train(cfg)
    assert (final / "adapter_config.json").exists()
    merged = load_model(str(final))
    base = load_model(tiny_model)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[name], base.state_dict()[name])


@pytest.mark.parametrize("override, message", [
    ("learning_rate=0", "learning_rate"),
    ("learning_rate=-1e-5", "learning_rate"),
    ("not_a_field=3", "not_a_field"),
])
def test_bad_config_values_name_the_field(pairs_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_train_config(None, [f"data={pairs_file}", override])


def test_missing_or_empty_data_is_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(None, [f"data={tmp_path / 'nope.jsonl'}"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match="no usable training pair"):
        load_train_config(None, [f"data={empty}"])


def test_packaged_recipes_parse_with_paper_hyperparameters():
    from importlib import resources

    from critkit.run import load_run_config

    lr = {"cft-7b": 5e-6, "cft-32b": 5e-6, "cgd-8b": 1e-6, "quickstart": 1e-3}
    for name, expected in lr.items():
        cfg = load_run_config(str(resources.files("critkit").joinpath("configs", f"{name}.yaml")))
        assert cfg.train["sft"]["learning_rate"] == expected
        if name != "quickstart":
            sft = cfg.train["sft"]
            assert sft["warmup_steps"] == 0.1 and sft["lr_scheduler_type"] == "cosine"
            assert sft["num_train_epochs"] == 1
            global_batch = 8 * sft["per_device_train_batch_size"] * sft["gradient_accumulation_steps"]
            assert global_batch == (64 if name == "cgd-8b" else 512)


def test_completion_loss_equals_the_models_own_loss(tiny_model):
    """critkit's CPU loss projects only supervised tokens; it must equal the full-logits loss."""
    from critkit.engine.models import load_model
    from critkit.training.train import completion_loss

    model = load_model(tiny_model)
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 12))
    labels = ids.clone()
    labels[0, :5] = -100
    labels[1, :9] = -100
    labels[2, 8:] = -100  # right padding
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    expected = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    assert torch.allclose(completion_loss(model, inputs), expected, atol=1e-5)


def _varied_pairs() -> list[dict]:
    """Pairs of very different lengths, so a padded batch is mostly padding."""
    return [{"id": str(i), "prompt": [{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": f"What is {i} + 1? " + "Think. " * (7 * i)}],
             "completion": f"{i} + 1 = {i + 1}. " * (1 + 3 * i) + f"\\boxed{{{i + 1}}}"} for i in range(4)]


def test_padding_free_loss_equals_padded_loss_and_never_crosses_sequences(tiny_model, tmp_path):
    """critkit's default batch is one row of back-to-back sequences. Its loss must equal the padded
    batch's: no attention and no label across a sequence boundary (attention.py)."""
    from trl import SFTConfig

    from critkit.training.attention import register
    from critkit.engine.models import load_model, load_tokenizer
    from critkit.training.train import completion_loss

    path = tmp_path / "varied.jsonl"
    write_jsonl(path, _varied_pairs())
    cfg = TrainConfig(model=tiny_model, data=str(path), output_dir=str(tmp_path / "out"), sft={"max_length": 512})
    args = SFTConfig(**sft_defaults(cfg))
    assert args.padding_free  # the default
    tokenizer = load_tokenizer(tiny_model, padding_side="right")
    model = load_model(tiny_model, attn_implementation=register())
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=_load_pairs(str(path), None),
                                    processing_class=tokenizer)
    rows = [trainer.train_dataset[i] for i in range(4)]
    packed = trainer.data_collator(rows)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    starts = (packed["position_ids"][0] == 0).nonzero().flatten()
    assert len(starts) == 4 and (packed["labels"][0, starts] == -100).all()
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum()
    with torch.no_grad():
        loss_packed = completion_loss(model, dict(packed))
        loss_padded = completion_loss(model, dict(padded))
        assert torch.allclose(loss_packed, loss_padded, atol=1e-5), (loss_packed, loss_padded)
        # Each sequence's hidden states in the packed row equal the sequence run alone. The control:
        # the same row with its boundaries erased (one long sequence) does not.
        bounds = packed["cu_seq_lens_q"].tolist()
        inputs = {k: v for k, v in packed.items() if k not in ("labels", "position_ids")}
        alone = torch.cat([model.model(input_ids=torch.tensor([row["input_ids"]])).last_hidden_state[0] for row in rows])
        together = model.model(**inputs, position_ids=packed["position_ids"]).last_hidden_state[0]
        assert bounds[-1] == len(alone) and torch.allclose(together, alone, atol=1e-5)
        one = torch.tensor([0, bounds[-1]], dtype=torch.int32)
        leaky = model.model(**{**inputs, "cu_seq_lens_q": one, "cu_seq_lens_k": one, "max_length_q": bounds[-1],
                               "max_length_k": bounds[-1]}, position_ids=packed["position_ids"]).last_hidden_state[0]
    assert (leaky - alone)[bounds[1]:].abs().max() > 1e-3
