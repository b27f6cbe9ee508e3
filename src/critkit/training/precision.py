"""The dtype a training loads its weights in, and what each way of launching it then keeps in memory.

Why it matters: AdamW applied to bf16 weights loses small updates. bf16 keeps 8 significant bits,
so a weight of 0.02 can only move in steps of 1.2e-4; at the papers' learning rates (5e-6, CFT
section 3 "Training Details"; 1e-6, CGD Table 5) an Adam step moves a weight by about the learning
rate, far under half a step, and rounds back to the same bf16 value. Every scheme below therefore
updates fp32 master weights; only the forward and backward compute runs in bf16 (or fp16).

- One process, or DDP (accelerate MULTI_GPU): nothing converts the weights, so critkit loads them
  in fp32 and transformers' Trainer, through accelerate's native AMP, runs the forward under
  torch.autocast(bf16); gradients and AdamW state are fp32 like the weights. This is what TRL's
  SFTTrainer does when it loads a model from a name (its dtype default is float32), and what
  `bf16: true` means in TRL and transformers.
- FSDP (1 or 2) with mixed precision: accelerate upcasts every trainable parameter to fp32 before
  sharding (fsdp2_prepare_model: "Upcast to fp32 master weights; MixedPrecisionPolicy.param_dtype
  handles compute cast"; FSDP1 likewise in Accelerator.prepare_model), and FSDP gathers them in
  bf16 for compute. critkit loads them in fp32 anyway: a model saved in fp32 (an earlier stage of
  a two-stage set) would otherwise be rounded to bf16 before the upcast.
- DeepSpeed (any ZeRO stage) with bf16: zero.Init partitions the weights in the dtype of the
  DeepSpeed config's bf16/fp16 section whatever dtype they were loaded in (its _set_dtype), the
  engine casts a model built without zero.Init the same way, and the ZeRO optimizer keeps fp32
  partitions of the trainable weights (the master weights, fp32_partitioned_groups_flat) next to
  the fp32 AdamW moments. Loading in bf16 is what DeepSpeed will hold anyway, at half the host
  memory of an fp32 load.
- LoRA, outside DeepSpeed: the base weights are frozen, never updated, so they load in the compute
  dtype (half the memory of fp32); PEFT keeps the adapters in fp32 (get_peft_model's
  autocast_adapter_dtype), and train.py upcasts any other trainable tensor (e.g. a copied lm_head
  in modules_to_save). Under DeepSpeed TRL keeps the adapters in bf16 (ZeRO-3 needs one dtype) and
  DeepSpeed holds their fp32 masters.

`plan` decides from the SFTConfig values and the launch (accelerate's environment in the launched
processes, or the accelerate config file a run names), so the estimate printed before training
and the training itself read the same decision.

bf16 only where the GPU computes it natively (compute capability 8.0, Ampere, and later): a V100
or T4 reports bf16 support through emulation (torch.cuda.is_bf16_supported's including_emulation)
and runs it several times slower than fp16, so there `native_half` turns a bf16 request (critkit's
GPU default, a recipe's `bf16: true`, an accelerate config's mixed_precision) into fp16 autocast,
with the same fp32 master weights and transformers' loss scaling, and says so.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

__all__ = ["Precision", "plan", "launch_from_env", "launch_from_file", "native_half"]

HALF = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class Precision:
    scheme: str  # "fp32", "autocast" (one process / DDP), "fsdp", "deepspeed"
    compute: str  # "bf16", "fp16" or "fp32": the dtype of the matmuls
    load_dtype: str  # the torch dtype train() loads the weights in
    trainable_bytes: int  # per trainable weight, as the model holds it during training
    frozen_bytes: int  # per frozen weight (LoRA's base)
    gradient_bytes: int  # per trainable weight
    optimizer_bytes: int  # per trainable weight: AdamW's two fp32 moments, plus a separate fp32 master copy
    autocast_copy_bytes: int  # per trainable weight: the half copy autocast makes for the matmuls and keeps for backward
    activation_bytes: int
    summary: str


def launch_from_env(environ: Mapping[str, str] = os.environ) -> dict:
    """The launch as accelerate describes it to the processes it starts (accelerate/utils/launch.py)."""
    true = lambda name: environ.get(name, "false").lower() == "true"  # noqa: E731
    if true("ACCELERATE_USE_DEEPSPEED"):
        kind = "DEEPSPEED"
    elif true("ACCELERATE_USE_FSDP"):
        kind = "FSDP"
    else:
        kind = "MULTI_GPU" if int(environ.get("WORLD_SIZE", "1")) > 1 else "NO"
    stage = environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    return {"distributed_type": kind, "mixed_precision": environ.get("ACCELERATE_MIXED_PRECISION", "no"),
            "zero_stage": int(stage) if stage and stage.isdigit() else None,
            "num_processes": int(environ["WORLD_SIZE"]) if environ.get("WORLD_SIZE", "").isdigit() else None}


def launch_from_file(launch: str) -> dict:
    """The same description from an accelerate config file (a path, or a packaged name such as accelerate/zero3)."""
    from ..config import find_config, load_yaml

    raw = load_yaml(Path(find_config(launch)).read_text(encoding="utf-8")) or {}
    deepspeed = raw.get("deepspeed_config") or {}
    return {"distributed_type": str(raw.get("distributed_type", "NO")).upper(),
            "mixed_precision": str(raw.get("mixed_precision", "no")),
            "zero_stage": deepspeed.get("zero_stage"), "num_processes": raw.get("num_processes")}


def native_half(sft: Mapping, launch: Mapping, capability: tuple[int, int] | None = None) -> tuple[dict, str | None]:
    """SFTConfig values that replace bf16 by fp16 on a GPU without native bf16, and why; ({}, None)
    elsewhere (bf16 not asked for, an Ampere or later GPU, no GPU). `capability` defaults to GPU 0's."""
    import torch

    from ..engine.models import gpu_half_dtype

    asked = "bf16" if sft.get("bf16") else "fp16" if sft.get("fp16") else str(launch.get("mixed_precision") or "no")
    if asked != "bf16" or gpu_half_dtype(capability) != "float16":
        return {}, None
    if capability is None:
        capability = torch.cuda.get_device_capability(0)
        where = f"{torch.cuda.get_device_name(0)} (compute capability {capability[0]}.{capability[1]})"
    else:
        where = f"a compute capability {capability[0]}.{capability[1]} GPU"
    return {"bf16": False, "fp16": True}, (f"bf16 was asked for, and {where} only emulates it (native from 8.0, "
                                            f"Ampere): fp16 autocast with loss scaling instead")


def _deepspeed_stage(value) -> int | None:
    """ZeRO stage of an SFTConfig `deepspeed` value (a JSON path or a dict), when it says."""
    try:
        config = value if isinstance(value, dict) else json.loads(Path(value).read_text(encoding="utf-8"))
        return int(config["zero_optimization"]["stage"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plan(sft: Mapping, launch: Mapping, lora: bool, note: str | None = None) -> Precision:
    """The precision of a training with these SFTConfig values (sft_defaults and `native_half`
    applied) and this launch; `note` (native_half's) ends the summary.

    Mixed precision follows TrainingArguments: bf16 or fp16 in the config, else the launch's
    mixed_precision (ACCELERATE_MIXED_PRECISION), else none.
    """
    chosen = _plan(sft, launch, lora)
    return dataclasses.replace(chosen, summary=f"{chosen.summary} ({note})") if note else chosen


def _plan(sft: Mapping, launch: Mapping, lora: bool) -> Precision:
    mixed = "bf16" if sft.get("bf16") else "fp16" if sft.get("fp16") else str(launch.get("mixed_precision") or "no")
    compute = mixed if mixed in HALF else "fp32"
    half = HALF.get(mixed, "float32")
    half_bytes = 2 if mixed in HALF else 4
    kind = str(launch.get("distributed_type") or "NO").upper()
    if sft.get("deepspeed") or kind == "DEEPSPEED":
        stage = _deepspeed_stage(sft["deepspeed"]) if sft.get("deepspeed") else launch.get("zero_stage")
        name = f"DeepSpeed ZeRO-{stage}" if stage is not None else "DeepSpeed"
        if mixed not in HALF:
            return Precision("deepspeed", "fp32", "float32", 4, 4, 4, 8, 0, 4,
                             f"fp32 ({name}, no mixed precision): weights, gradients and AdamW state in fp32")
        return Precision("deepspeed", compute, half, half_bytes, half_bytes, half_bytes, 12, 0, half_bytes,
                         f"{compute} weights and gradients, fp32 master weights and AdamW state in the optimizer "
                         f"({name}, which holds the weights in {compute} whatever dtype they load in)")
    sharded = bool(sft.get("fsdp")) or kind == "FSDP"
    where = "FSDP" if sharded else ("DDP" if kind == "MULTI_GPU" else "one process")
    if mixed not in HALF:
        return Precision("fp32", "fp32", "float32", 4, 4, 4, 8, 0, 4,
                         f"fp32 ({where}, no mixed precision): weights, gradients, AdamW state and compute in fp32")
    frozen = half_bytes if lora else 4
    load = half if lora else "float32"
    what = "fp32 adapters over a frozen " + compute + " base" if lora else "fp32 weights"
    if sharded:
        return Precision("fsdp", compute, load, 4, frozen, 4, 8, 0, half_bytes,
                         f"{what}, gathered in {compute} for compute ({where} mixed precision): the optimizer "
                         f"updates fp32 master weights")
    return Precision("autocast", compute, load, 4, frozen, 4, 8, half_bytes, half_bytes,
                     f"{what} with {compute} autocast ({where}): the optimizer updates fp32 master weights, "
                     f"matmuls run in {compute}")
