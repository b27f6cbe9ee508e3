"""Distributed training through accelerate: the packaged launch configs, and 2 processes that
train exactly like 1.

The 1- vs 2-process test runs real `critkit train` processes on CPU: one plain process with a
per-device batch of 4, and two processes started by `accelerate launch` (gloo) with a per-device
batch of 2, the same seed and so the same global batch of 4. It fails without the loss factor in
CritkitSFTTrainer.compute_loss (2 processes then log half the loss and train with half the
gradient) and without running the forward through the DDP wrapper (which crashed, and would
otherwise have left the gradients un-averaged).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch

from critkit.config import ConfigError, packaged_config_text, packaged_configs
from critkit.data.records import write_jsonl
from conftest import varied_pairs  # tests/conftest.py, on the path pytest sets up

ACCELERATE_DIR = Path(str(resources.files("critkit").joinpath("configs", "accelerate")))


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "ACCELERATE_USE_CPU")}
    # One thread per process: two processes share this machine's 2 cores instead of oversubscribing them.
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------ packaged accelerate configs


def _launcher_env(path: Path) -> dict:
    """The environment `accelerate launch --config_file PATH` gives the training processes.

    Goes through accelerate's own launcher code (private functions of accelerate 1.15, which
    pyproject pins), so a key accelerate ignores or misreads shows up here, not on a GPU cluster.
    """
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "critkit", "train", "CONFIG"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)  # as launch_command() sets it
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name, distributed_type, processes, precision", [
    ("ddp", "MULTI_GPU", 8, "bf16"),
    ("fsdp", "FSDP", 8, "bf16"),
    ("zero3", "DEEPSPEED", 8, "bf16"),
    # MULTI_GPU is accelerate's torchrun launcher; the processes run on CPU with use_cpu=true.
    ("cpu-2proc", "MULTI_GPU", 2, "no"),
])
def test_packaged_accelerate_config_loads_with_accelerate(name, distributed_type, processes, precision):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_DIR / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type == distributed_type
    assert config.num_processes == processes and config.num_machines == 1
    assert config.mixed_precision == precision
    env = _launcher_env(path)
    assert env["ACCELERATE_MIXED_PRECISION"] == precision
    assert ("ACCELERATE_USE_FSDP" in env) == (name == "fsdp")
    assert ("ACCELERATE_USE_DEEPSPEED" in env) == (name == "zero3")


def test_fsdp_config_is_full_shard_with_transformer_wrapping():
    from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    env = _launcher_env(ACCELERATE_DIR / "fsdp.yaml")
    with patch_environment(**{k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_"))}):
        plugin = FullyShardedDataParallelPlugin()  # what accelerate builds in each training process
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is True  # FSDP2's FULL_SHARD
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert not plugin.activation_checkpointing  # critkit's gradient_checkpointing does that on GPUs


def test_zero3_config_is_stage_3_and_saves_a_16bit_model():
    from accelerate.utils import DeepSpeedPlugin, patch_environment

    env = _launcher_env(ACCELERATE_DIR / "zero3.yaml")
    with patch_environment(**{k: v for k, v in env.items() if k.startswith("ACCELERATE_")}):
        plugin = DeepSpeedPlugin()  # builds the DeepSpeed config; DeepSpeed itself is not needed for that
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and plugin.zero3_init_flag
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert zero["offload_optimizer"]["device"] == "none" and zero["offload_param"]["device"] == "none"
    # Batch sizes, accumulation and clipping stay "auto": transformers fills them from the training config.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert plugin.deepspeed_config[key] == "auto"


def test_critkit_configs_lists_and_prints_packaged_configs(capsys):
    from critkit.cli import main

    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    for name in ("quickstart", "cft-7b", "accelerate/ddp", "accelerate/fsdp", "accelerate/zero3", "accelerate/cpu-2proc"):
        assert f"  {name} " in listing
        assert str(packaged_configs()[name]) in listing
    assert main(["configs", "accelerate/zero3"]) == 0
    assert capsys.readouterr().out == (ACCELERATE_DIR / "zero3.yaml").read_text(encoding="utf-8")
    assert main(["configs", "nope"]) == 2
    assert "no packaged config 'nope'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="accelerate/zero3"):  # the error lists what exists
        packaged_config_text("accelerate/zero4")


def test_python_dash_m_critkit_is_the_accelerate_launch_target():
    # `accelerate launch -m critkit train ...` runs `python -m critkit train ...` in each process.
    done = subprocess.run([sys.executable, "-m", "critkit", "configs", "accelerate/cpu-2proc"], env=_child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (ACCELERATE_DIR / "cpu-2proc.yaml").read_text(encoding="utf-8")


# ------------------------------------------------------------------ 1 process vs 2 processes


def _log(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "train_log.json").read_text())["log_history"] if "loss" in e]


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_two_processes_train_like_one(tiny_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, varied_pairs())
    config = tmp_path / "train.yaml"
    # Full fine-tuning on CPU, fp32, 6 optimizer steps of a global batch of 4 (16 pairs: into a
    # second epoch). use_cpu also puts the 2 processes in one gloo group (see cpu-2proc.yaml).
    config.write_text(json.dumps({"model": tiny_model, "data": str(data), "sft": {
        "learning_rate": 1e-2, "max_steps": 6, "max_length": 128, "seed": 1, "disable_tqdm": True, "use_cpu": True}}))
    one, two = tmp_path / "one", tmp_path / "two"
    single = [sys.executable, "-m", "critkit", "train", str(config), f"output_dir={one}", "per_device_train_batch_size=4"]
    double = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "cpu-2proc.yaml"),
              "-m", "critkit", "train", str(config), f"output_dir={two}", "per_device_train_batch_size=2"]
    # Both at once: each spends most of its time importing, which overlaps well on 2 cores.
    runs = [subprocess.Popen(cmd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for cmd in (single, double)]
    for run in runs:
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output[-3000:]

    log1, log2 = _log(one), _log(two)
    assert [e["step"] for e in log1] == [e["step"] for e in log2] == [1, 2, 3, 4, 5, 6]
    # Same epoch at every step: the 2 processes together took a global batch of 4, not 2 each.
    assert [e["epoch"] for e in log1] == [e["epoch"] for e in log2]
    # accelerate (split_batches=False) gives process r the per-device batches r, r+2, ... of one
    # permutation drawn from the seed (a SeedableRandomSampler in both runs), so step k of the
    # pair sees exactly the rows of the single run's step k. The rows differ in length and text:
    # other rows would change the loss in its first digits, far beyond the tolerance.
    # Tolerances: measured on this machine, the per-step losses and grad norms agree to 1.8e-7
    # (relative) and each weight tensor to 2.3e-6 of its largest entry after the 6 steps (fp32;
    # the sums run in another order: other batch shapes, gloo's all-reduce). The test allows
    # 1e-5 and 5e-5. Without the loss factor every logged loss and grad norm is halved; with the
    # forward bypassing the DDP wrapper, the grad norm of step 1 is 1.905 instead of 1.676.
    for a, b in zip(log1, log2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), (a, b)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5), (a, b)
    w1, w2, w0 = _weights(one / "final"), _weights(two / "final"), _weights(Path(tiny_model))
    assert w1.keys() == w2.keys()
    for name in w1:
        scale = w1[name].abs().max()
        assert (w1[name] - w2[name]).abs().max() <= 5e-5 * scale, name
        # Training moved every tensor far more than the tolerance, so the comparison means something.
        assert (w1[name] - w0[name]).abs().max() > 100 * 5e-5 * scale, name


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the processes do form a group")
def test_processes_that_do_not_form_a_group_are_refused(tiny_model, tmp_path):
    """Without use_cpu=true on a CPU machine, torchrun's processes would each train alone on all
    the data and write the same output folder; critkit stops with the fix in the message."""
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, varied_pairs(4))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "cpu-2proc.yaml"),
           "-m", "critkit", "train", f"model={tiny_model}", f"data={data}", f"output_dir={tmp_path / 'out'}", "max_steps=1"]
    done = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "did not join one process group: without a GPU add use_cpu=true" in done.stderr
    assert not (tmp_path / "out" / "final").exists()


def test_run_trains_under_accelerate_launch_and_does_the_rest_in_process(tiny_model, tmp_path, monkeypatch):
    """`launch:` in a run config: only the training step runs as `accelerate launch -m critkit
    train` (2 gloo processes here); data, synthesis and evaluation stay in the calling process."""
    from critkit.run import load_run_config, run

    for key, value in _child_env().items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "run.yaml"
    config.write_text(f"""
output_dir: {tmp_path / 'run'}
model: {tiny_model}
launch: accelerate/cpu-2proc
data: {{train: demo, test: demo, demo: {{train: 8, test: 2}}}}
methods: [sft-gold]
train:
  sft: {{per_device_train_batch_size: 2, max_length: 128, learning_rate: 1.0e-3, use_cpu: true, disable_tqdm: true}}
eval: {{benchmarks: [test], max_new_tokens: 4, limit: 2}}
""")
    run(load_run_config(config))
    out = tmp_path / "run" / "models" / "sft-gold"
    assert (out / "launch_train.yaml").exists() and (out / "final" / "config.json").exists()
    steps = [e["step"] for e in _log(out) if "loss" in e]
    # 8 pairs / (2 processes x 2 per device) x 3 epochs (TRL default); one process would take 12 steps
    assert steps == [1, 2, 3, 4, 5, 6]
    assert (tmp_path / "run" / "eval" / "sft-gold" / "test" / "scores.json").exists()


def test_unknown_launch_config_is_refused_when_the_config_loads(tmp_path):
    from critkit.config import ConfigError
    from critkit.run import load_run_config

    config = tmp_path / "run.yaml"
    config.write_text("launch: accelerate/zero9\nmethods: [cft]\n")
    with pytest.raises(ConfigError, match="launch: no file 'accelerate/zero9'"):
        load_run_config(config)
