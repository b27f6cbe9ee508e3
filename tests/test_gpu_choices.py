"""Choices critkit makes for a GPU it may not have here: where a training model is placed, and which
half precision a GPU gets. The hardware facts (CUDA present, compute capability) are given to the
same functions the GPU path calls; everything else is real."""

from __future__ import annotations

import pytest
import torch

from critkit.data.records import write_jsonl
from critkit.engine.models import load_model


def test_training_leaves_the_model_where_it_loaded(tiny_model, monkeypatch):
    """For training, critkit does not move the model to the GPU: the Trainer does (one process,
    DDP), FSDP moves each rank's shard, DeepSpeed partitions it. Moved first, every rank held a
    full replica (14B+ ran out of memory on 80 GB), and FSDP's cpu_ram_efficient_loading ranks,
    whose weights are meta tensors, could not be moved at all."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = load_model(tiny_model, dtype="float32", device=None)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    # Control: the inference default moves the model, which this CPU-only torch cannot do.
    with pytest.raises((AssertionError, RuntimeError), match="CUDA"):
        load_model(tiny_model, dtype="float32")


def test_build_trainer_asks_for_no_placement(tiny_model, tmp_path, monkeypatch):
    import critkit.engine.models as models
    from critkit.training.train import TrainConfig, build_trainer

    asked = []
    real = models.load_model

    def spy(*args, **kwargs):
        asked.append(kwargs.get("device", "auto"))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_model", spy)
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [{"prompt": [{"role": "user", "content": "1 + 1?"}], "completion": "\\boxed{2}"}])
    build_trainer(TrainConfig(model=tiny_model, data=str(data), output_dir=str(tmp_path / "out"),
                              sft={"max_steps": 1, "report_to": []}))
    assert asked == [None]


@pytest.mark.parametrize("capability, dtype", [((7, 0), "float16"), ((7, 5), "float16"), ((8, 0), "bfloat16"),
                                               ((8, 9), "bfloat16"), ((9, 0), "bfloat16")])
def test_bf16_only_where_native(capability, dtype):
    """V100 (7.0) and T4 (7.5) report bf16 support through emulation; A100 (8.0) on compute it."""
    from critkit.engine.models import gpu_half_dtype

    assert gpu_half_dtype(capability) == dtype


def test_a_bf16_training_on_a_pre_ampere_gpu_runs_fp16_and_the_estimate_says_so(tiny_model, tmp_path):
    from critkit.training.estimate import estimate, format_estimate
    from critkit.training.precision import native_half
    from critkit.training.train import TrainConfig

    assert native_half({"bf16": True}, {}, (7, 0))[0] == {"bf16": False, "fp16": True}
    assert native_half({}, {"mixed_precision": "bf16"}, (7, 5))[0] == {"bf16": False, "fp16": True}  # accelerate's
    assert native_half({"bf16": True}, {}, (8, 0)) == ({}, None)
    assert native_half({"fp16": True}, {}, (7, 0)) == ({}, None)  # fp16 asked: kept
    assert native_half({}, {}, (7, 0)) == ({}, None)  # fp32: kept
    data = tmp_path / "pairs.jsonl"
    write_jsonl(data, [{"prompt": [{"role": "user", "content": "1 + 1?"}], "completion": "\\boxed{2}"}])
    cfg = TrainConfig(model=tiny_model, data=str(data), peft={"r": 8}, sft={"bf16": True})
    old = estimate(cfg, capability=(7, 0))
    assert old.load_dtype == "float16" and "fp16" in old.precision_summary  # LoRA's frozen base in fp16
    assert "compute capability 7.0" in format_estimate(old) and "only emulates" in format_estimate(old)
    new = estimate(cfg, capability=(9, 0))
    assert new.load_dtype == "bfloat16" and "emulates" not in format_estimate(new)
