"""bf16 training keeps fp32 master weights (precision.py): one optimizer step at the CGD learning
rate moves the weights, where the same step on bf16 weights (the GPU path before) rounds away."""

from __future__ import annotations

import pytest
import torch

from critkit.data.records import write_jsonl
from critkit.training.train import TrainConfig, _load_pairs, _make_trainer_class, build_trainer, sft_defaults

LR = 1e-6  # CGD Table 5; CFT trains at 5e-6


def _pairs(n: int = 8) -> list[dict]:
    return [{"id": str(i), "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
             "completion": f"{i} + 1 = {i + 1}.\n\\boxed{{{i + 1}}}"} for i in range(n)]


def _bf16_config(tiny_model, tmp_path, **extra) -> TrainConfig:
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, _pairs())
    # critkit leaves bf16 off on CPU (autocast is slow there), so the test turns it on; transformers
    # accepts bf16 on CPU with use_cpu. On a GPU the same test runs the GPU path.
    sft = {"bf16": True, "use_cpu": not torch.cuda.is_available(), "learning_rate": LR, "max_steps": 1,
           "per_device_train_batch_size": 8, "max_length": 128, "report_to": [], "disable_tqdm": True}
    return TrainConfig(model=tiny_model, data=str(path), output_dir=str(tmp_path / "out"), sft=sft, **extra)


def _one_step(trainer) -> tuple[float, int]:
    """Train one step; the fraction of the weights that received a gradient (AdamW's first moment
    is not zero) and changed, and the bytes of AdamW's state."""
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    got = changed = state_bytes = 0
    for name, p in trainer.model.named_parameters():
        if not p.requires_grad:
            continue
        state = optimizer.state[p]
        received = state["exp_avg"] != 0
        got += int(received.sum())
        changed += int(((p.detach() != before[name]) & received).sum())
        state_bytes += sum(t.numel() * t.element_size() for t in state.values() if t.dim())
    assert got > 0.9 * sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return changed / got, state_bytes


def test_bf16_training_updates_fp32_master_weights(tiny_model, tmp_path):
    from critkit.training.estimate import estimate

    cfg = _bf16_config(tiny_model, tmp_path)
    trainer, precision = build_trainer(cfg)
    assert precision.scheme == "autocast" and precision.load_dtype == "float32"
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    # The matmuls run in bf16 all the same: accelerate's autocast wraps the forward.
    seen = []
    hook = trainer.model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    fraction, state_bytes = _one_step(trainer)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}
    assert fraction > 0.99, fraction  # measured 0.999999
    # The estimate counts what this trainer holds: fp32 weights, two fp32 AdamW moments.
    e = estimate(cfg)
    assert e.precision == "autocast" and e.weight_bytes == 4
    assert e.weights_gib * 1024 ** 3 == pytest.approx(sum(p.numel() * p.element_size() for p in trainer.model.parameters()))
    assert e.optimizer_gib * 1024 ** 3 == pytest.approx(state_bytes)
    assert e.autocast_copies_gib == pytest.approx(e.weights_gib / 2)


def test_control_bf16_weights_lose_the_same_step(tiny_model, tmp_path):
    """The negative control: the trainer as the GPU path built it before (weights loaded in bf16,
    AdamW updating them in place) leaves almost every weight where it was."""
    from trl import SFTConfig

    from critkit.engine.models import load_model, load_tokenizer

    cfg = _bf16_config(tiny_model, tmp_path)
    trainer = _make_trainer_class()(model=load_model(tiny_model, dtype="bfloat16").train(),
                                    args=SFTConfig(**sft_defaults(cfg)), train_dataset=_load_pairs(cfg.data, None),
                                    processing_class=load_tokenizer(tiny_model, padding_side="right"))
    fraction, _ = _one_step(trainer)
    assert fraction < 0.1, fraction  # measured 0.02: only weights within ~2.6e-4 of zero can move by 1e-6


def test_lora_keeps_a_bf16_base_and_trains_fp32(tiny_model, tmp_path):
    """LoRA: the frozen base loads in bf16 (half the memory), every trainable tensor is fp32, even
    the lm_head copy PEFT makes for modules_to_save, which PEFT alone leaves in bf16 (the control)."""
    from peft import LoraConfig, get_peft_model

    from critkit.engine.models import load_model

    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]}
    trainer, precision = build_trainer(_bf16_config(tiny_model, tmp_path, peft=lora))
    assert precision.load_dtype == "bfloat16"
    trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    control = get_peft_model(load_model(tiny_model, dtype="bfloat16"), LoraConfig(task_type="CAUSAL_LM", **lora))
    assert torch.bfloat16 in {p.dtype for p in control.parameters() if p.requires_grad}


def _accelerate_env(name: str) -> dict:
    """The environment `accelerate launch --config_file NAME` gives the processes it starts, from
    accelerate's own launcher code (plus WORLD_SIZE, which torchrun sets)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    from critkit.config import find_config

    args = launch_command_parser().parse_args(["--config_file", str(find_config(name)), "-m", "critkit", "train"])
    args, defaults, mixed_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {**env, "WORLD_SIZE": str(args.num_processes)}


@pytest.mark.parametrize("launch, lora, scheme, load_dtype", [
    ("accelerate/ddp", False, "autocast", "float32"),
    ("accelerate/ddp", True, "autocast", "bfloat16"),
    ("accelerate/fsdp", False, "fsdp", "float32"),
    ("accelerate/fsdp", True, "fsdp", "bfloat16"),
    ("accelerate/zero3", False, "deepspeed", "bfloat16"),
    ("accelerate/cpu-2proc", False, "fp32", "float32"),
])
def test_each_packaged_launch_has_its_scheme(launch, lora, scheme, load_dtype):
    """The scheme read from the launched processes' environment (what training sees) equals the one
    read from the config file (what `critkit estimate` sees)."""
    from critkit.training.precision import launch_from_env, launch_from_file, plan

    from_env, from_file = launch_from_env(_accelerate_env(launch)), launch_from_file(launch)
    assert from_env == from_file
    precision = plan({}, from_env, lora=lora)  # bf16 from the launch's mixed_precision
    assert (precision.scheme, precision.load_dtype) == (scheme, load_dtype)
    # Every scheme gives the optimizer fp32 weights: fp32 parameters, or DeepSpeed's fp32 copies.
    assert precision.trainable_bytes == 4 or precision.optimizer_bytes == 12


def test_estimate_names_the_scheme_of_a_run_configs_launch(embedded_model, tmp_path, capsys):
    """`critkit estimate cft-7b` follows the recipe's `launch: accelerate/zero3`: DeepSpeed's bf16
    weights and gradients with fp32 masters (2 + 2 + 12 bytes per weight), on its 8 processes."""
    from critkit.cli import main

    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, _pairs())
    assert main(["estimate", "cft-7b", f"model={embedded_model}", f"data={pairs}"]) == 0
    out = capsys.readouterr().out
    assert "DeepSpeed ZeRO-3" in out and "fp32 master weights" in out and "8 device(s)" in out
    assert "2 bytes per trainable weight" in out
    assert main(["estimate", "cft-7b", f"model={embedded_model}", f"data={pairs}", "--launch", "none"]) == 0
    out = capsys.readouterr().out
    assert "bf16 autocast (one process)" in out and "4 bytes per trainable weight" in out and "1 device(s)" in out
