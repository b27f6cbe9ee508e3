"""A LoRA stage's merge (train.merge_adapter, used between the stages of two-stage sets) is made from
the saved adapter on CPU after training, by one process with no process group left.

Under ZeRO-3 (partitioned placeholders) or FSDP2 (DTensor shards) the training's own model
cannot be merged, and a merge on rank 0 alone kept the other ranks at a barrier until the NCCL
timeout. accelerate shards only on accelerators, so this test runs the path that replaces it under
the 2-process CPU launch (gloo): both processes must end, and `merged/` must be the base weights
as saved plus the saved adapter's update, exactly. The old merge, into the model as trained, gave
bf16 weights here: a bf16 LoRA loads its frozen base in bf16 (precision.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from safetensors.torch import load_file

from critkit.data.records import write_jsonl
from conftest import varied_pairs
from test_distributed import ACCELERATE_DIR, _child_env

PEFT = {"r": 4, "lora_alpha": 16, "target_modules": "all-linear"}


def _reference_merge(base: dict, adapter: dict) -> dict:
    """W + (alpha / r) * B @ A for every adapted weight, in fp32 (PEFT's merge without rslora)."""
    merged = dict(base)
    scale = PEFT["lora_alpha"] / PEFT["r"]
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
        merged[name] = base[name] + scale * (b.double() @ a.double()).float()
    return merged


def test_two_processes_merge_the_saved_adapter_on_cpu(tiny_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, varied_pairs(8))
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"model": tiny_model, "data": str(data), "peft": PEFT, "merge_adapter": True, "sft": {
        "bf16": True, "use_cpu": True, "learning_rate": 5e-2, "max_steps": 2, "per_device_train_batch_size": 2,
        "max_length": 128, "disable_tqdm": True, "report_to": []}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_DIR / "cpu-2proc.yaml"),
           "-m", "critkit", "train", str(config), f"output_dir={out}"]
    done = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    base = load_file(f"{tiny_model}/model.safetensors")
    adapter = load_file(str(out / "final" / "adapter_model.safetensors"))
    merged = load_file(str(out / "merged" / "model.safetensors"))
    want = _reference_merge(base, adapter)
    assert merged.keys() == base.keys()
    moved = 0.0
    for name, weight in merged.items():
        assert weight.dtype == torch.float32, name  # the base's saved dtype
        torch.testing.assert_close(weight, want[name], rtol=0, atol=1e-6)
        moved = max(moved, float((want[name] - base[name]).abs().max()))
    assert moved > 1e-3  # the adapter changed the weights far beyond the tolerance
    assert not (out / "merged.partial").exists()
    assert json.loads((out / "merged" / "config.json").read_text())["num_hidden_layers"] == 2
