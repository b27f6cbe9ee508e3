"""Memory and time a training config will need, before any weight is loaded.

Counted from the model's config on the meta device (no weights read) and the tokenized pairs:
- weights, gradients and AdamW state per trainable parameter (LoRA: only the adapters train);
- activations kept for the backward pass, per sequence length, for a Llama-style decoder with
  SDPA attention (no stored attention matrix), with and without gradient checkpointing;
- tokens in the data, and training FLOPs (6 per parameter per token for full fine-tuning, 4 when
  the base is frozen, plus causal attention).
Memory is given per device for DDP (everything replicated) and for ZeRO-3 / FSDP full shard
(weights, gradients and optimizer state divided by the number of devices), in the dtypes of the
precision scheme that applies (precision.py: fp32 master weights with bf16 compute, held the way
the launch holds them). These are estimates: allocator overhead, CUDA context and temporary
buffers come on top.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Estimate", "estimate", "format_estimate", "run_launch"]

GIB = 1024 ** 3
# Dense bf16 peak TFLOP/s of common training GPUs; time is given at 40% of it (a typical MFU).
GPU_PEAK_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10G": 125, "L4": 121, "A6000": 155,
                   "4090": 165, "3090": 71, "V100": 125, "T4": 65}
MFU = 0.4
# Measured here: full fine-tuning of SmolLM2-135M on 2 EPYC cores sustains ~0.4 of the fp32
# matmul rate (see README); used for the CPU time estimate.
CPU_EFFICIENCY = 0.4


@dataclass
class Estimate:
    parameters: int
    trainable: int
    weight_bytes: int  # bytes per trainable weight as the training holds it
    precision: str  # the scheme (precision.py): "fp32", "autocast", "fsdp" or "deepspeed"
    precision_summary: str
    load_dtype: str  # what train() loads the weights in
    devices: int
    micro_batch: int
    max_length: int
    examples: int  # trainable examples: those with a completion token left after truncation
    dropped: int  # examples whose prompt alone fills max_length (TRL drops them)
    truncated: int  # examples that lose at least one token to max_length
    cut_last_line: int  # trained examples whose completion's last line does not fit (truncation.py)
    truncates_at: int | None  # TRL's max_length; None: nothing is cut
    sampled: bool  # the token counts come from a sample of the pairs, scaled up
    tokens: int  # all tokens of all examples (prompt + completion, after truncation)
    supervised_tokens: int
    epochs: float
    weights_gib: float
    gradients_gib: float
    optimizer_gib: float
    autocast_copies_gib: float  # half copies of the trainable weights that autocast keeps for backward
    activations_gib: float  # for one micro-batch of max_length sequences
    activations_checkpointed_gib: float
    per_device_ddp_gib: float
    per_device_sharded_gib: float
    train_flops: float
    hardware: str
    seconds: float | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _meta_model(name: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..engine.models import resolve_model

    path = resolve_model(name)
    adapter = Path(path) / "adapter_config.json"
    if adapter.exists():  # a LoRA folder: its base model's shape
        path = json.loads(adapter.read_text())["base_model_name_or_path"]
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


def _lora_parameters(model, peft: dict) -> int:
    """Adapter parameters r * (in + out) of each linear layer PEFT would target."""
    import re

    import torch

    r = int(peft.get("r", 8))
    targets = peft.get("target_modules")
    head = model.get_output_embeddings()

    def targeted(name: str) -> bool:
        leaf = name.rsplit(".", 1)[-1]
        if targets == "all-linear":  # every linear layer but the output head
            return True
        if targets is None:  # PEFT's default for Llama-style models
            return leaf in ("q_proj", "v_proj")
        if isinstance(targets, str):  # PEFT: a string is a regex over the full module name
            return re.fullmatch(targets, name) is not None
        return leaf in targets or any(name.endswith(f".{t}") for t in targets)

    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not head and targeted(name))


def _activation_bytes_per_token(config, bytes_per: int, checkpointed: bool) -> float:
    """Bytes kept for backward per token, for a Llama-style decoder layer stack with SDPA.

    Per layer: the two norm inputs and outputs, q/k/v, the attention output and o_proj input
    (~ 6h + 2 kv), the MLP's gate, up, activation and down-projection input (~ 4 x intermediate).
    With checkpointing only each layer's input is kept, plus one layer recomputed at a time.
    """
    h = config.hidden_size
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * (getattr(config, "head_dim", None) or h // heads)
    inter = getattr(config, "intermediate_size", 4 * h)
    per_layer = 6 * h + 2 * kv + 4 * inter
    if checkpointed:
        return (layers * h + per_layer) * bytes_per
    return layers * per_layer * bytes_per


def _count_tokens(pairs_path: str, model: str, max_length: int | None, limit: int | None, mode: str = "keep_start",
                  sample: int = 2000) -> dict:
    """Examples kept, tokens, supervised tokens and what truncation cuts (truncation.py), tokenizing
    up to `sample` pairs and scaling up; `in_file` is the number of pairs."""
    from ..engine.models import load_tokenizer
    from ..data.records import read_jsonl
    from .truncation import measure_all

    tokenizer = load_tokenizer(model, padding_side="right")
    rows = [row for _, row in read_jsonl(pairs_path) if isinstance(row.get("prompt"), list)]
    if limit:
        rows = rows[:limit]
    counts = dict(examples=0, tokens=0, supervised=0, truncated=0, cut_last_line=0)
    if not rows:
        return {**counts, "in_file": 0, "sampled": False}
    step = max(1, math.ceil(len(rows) / sample))
    sampled = rows[::step]
    for length in measure_all(tokenizer, [(row["prompt"], row["completion"]) for row in sampled]):
        kept, completion_kept = length.kept(max_length, mode)
        counts["truncated"] += kept < length.total
        if completion_kept == 0:  # truncation left no completion token: TRL drops the example
            continue
        counts["examples"] += 1
        counts["tokens"] += kept
        counts["supervised"] += completion_kept
        counts["cut_last_line"] += length.loses_last_line(max_length, mode)
    scale = len(rows) / len(sampled)
    return {**{k: round(v * scale) for k, v in counts.items()}, "in_file": len(rows), "sampled": step > 1}


def _hardware() -> tuple[str, float]:
    """A name and the training FLOP/s assumed for it."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        for key, tflops in GPU_PEAK_TFLOPS.items():
            if key in name:
                return f"{name} at {MFU:.0%} of {tflops} TFLOP/s", tflops * 1e12 * MFU
        return name, float("nan")
    # On CPU, time a float32 matmul of training size (~0.3 s) for this machine's rate.
    import time

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    start, reps = time.perf_counter(), 8
    for _ in range(reps):
        a @ b
    rate = reps * 2 * 1024 ** 3 / (time.perf_counter() - start)
    return f"CPU ({torch.get_num_threads()} threads) at {CPU_EFFICIENCY:.0%} of {rate / 1e9:.0f} GFLOP/s fp32 matmul", rate * CPU_EFFICIENCY


def estimate(cfg, devices: int | None = None, launch: str | None = None,
             capability: tuple[int, int] | None = None) -> Estimate:
    """Estimate for a TrainConfig (its pairs file must exist for the token counts).

    `launch`: the accelerate config the training will run under (a path or a packaged name such
    as accelerate/zero3); without it, the environment accelerate gives the processes it launched.
    It decides the precision scheme and, unless `devices` is given, the number of devices.
    `capability`: the GPU's compute capability (default: this machine's GPU, if any); before 8.0
    (Ampere) a bf16 training runs in fp16, as train.py does, and the precision line says why.
    """
    from .precision import launch_from_env, launch_from_file, native_half, plan
    from .train_config import sft_defaults, sft_value

    sft = sft_defaults(cfg)
    how = launch_from_file(launch) if launch else launch_from_env()
    half, note = native_half(sft, how, capability)
    sft = {**sft, **half}
    devices = devices or int(how.get("num_processes") or 1)
    model, config = _meta_model(cfg.model)
    parameters = sum(p.numel() for p in model.parameters())
    trainable = _lora_parameters(model, cfg.peft) if cfg.peft is not None else parameters
    precision = plan(sft, how, lora=cfg.peft is not None, note=note)
    cap = sft_value(sft, "max_length")  # TRL's default (1024) when the config does not say
    max_length = cap or 1024
    micro_batch = int(sft_value(sft, "per_device_train_batch_size"))
    counts = _count_tokens(cfg.data, cfg.model, cap, cfg.max_examples, sft_value(sft, "truncation_mode")) \
        if cfg.data and Path(cfg.data).exists() else None
    counts = counts or dict(examples=0, tokens=0, supervised=0, truncated=0, cut_last_line=0, in_file=0, sampled=False)
    examples, tokens = counts["examples"], counts["tokens"]
    epochs = float(sft_value(sft, "num_train_epochs"))
    if sft.get("max_steps", -1) and sft.get("max_steps", -1) > 0 and examples:
        global_batch = micro_batch * devices * int(sft.get("gradient_accumulation_steps", 1))
        epochs = sft["max_steps"] * global_batch / examples

    # Bytes per weight in the scheme's dtypes (precision.py); frozen weights (LoRA's base) hold no
    # gradient or optimizer state.
    weights = trainable * precision.trainable_bytes + (parameters - trainable) * precision.frozen_bytes
    gradients = trainable * precision.gradient_bytes
    optimizer = trainable * precision.optimizer_bytes
    copies = trainable * precision.autocast_copy_bytes
    act = micro_batch * max_length * _activation_bytes_per_token(config, precision.activation_bytes, checkpointed=False)
    act_ckpt = micro_batch * max_length * _activation_bytes_per_token(config, precision.activation_bytes, checkpointed=True)
    use_ckpt = bool(sft.get("activation_checkpointing", sft.get("gradient_checkpointing")))
    activations = act_ckpt if use_ckpt else act
    # The loss adds fp32 logits over the vocabulary for the supervised tokens of one micro-batch.
    logits = micro_batch * max_length * config.vocab_size * 4 * 0.5
    ddp = weights + gradients + optimizer + copies + activations + logits
    # Sharded, a layer's weights are gathered in the compute dtype one at a time: no whole-model copy.
    sharded = (weights + gradients + optimizer) / devices + activations + logits

    avg_len = tokens / examples if examples else max_length
    attention = 6 * config.num_hidden_layers * config.hidden_size * avg_len  # causal QK^T and AV, fwd + bwd
    per_token = (6 if trainable == parameters else 4) * parameters + attention
    flops = per_token * tokens * epochs
    hardware, rate = _hardware()
    seconds = flops / (rate * devices) if rate == rate and rate > 0 and tokens else None
    return Estimate(parameters=parameters, trainable=trainable, weight_bytes=precision.trainable_bytes,
                    precision=precision.scheme, precision_summary=precision.summary, load_dtype=precision.load_dtype,
                    devices=devices, micro_batch=micro_batch, max_length=max_length, examples=examples,
                    dropped=counts["in_file"] - examples, truncated=counts["truncated"],
                    cut_last_line=counts["cut_last_line"], truncates_at=cap, sampled=counts["sampled"], tokens=tokens,
                    supervised_tokens=counts["supervised"], epochs=epochs, weights_gib=weights / GIB,
                    gradients_gib=gradients / GIB, optimizer_gib=optimizer / GIB, autocast_copies_gib=copies / GIB,
                    activations_gib=act / GIB, activations_checkpointed_gib=act_ckpt / GIB,
                    per_device_ddp_gib=ddp / GIB, per_device_sharded_gib=sharded / GIB, train_flops=flops,
                    hardware=hardware, seconds=seconds)


def run_launch(config: str | None) -> str | None:
    """The `launch` of a run config (a path or packaged name), or None: a training config, no
    config, or a `key=value` override in its place."""
    from ..config import ConfigError, find_config, load_yaml

    if not config or "=" in config:
        return None
    try:
        raw = load_yaml(find_config(config).read_text(encoding="utf-8"))
    except (ConfigError, OSError):
        return None
    return raw.get("launch") if isinstance(raw, dict) and "train" in raw else None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown (no data yet, or an unknown GPU)"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_estimate(e: Estimate) -> str:
    about = "about " if e.sampled else ""
    lines = [
        f"precision       {e.precision_summary}; weights loaded in {e.load_dtype}",
        f"parameters      {e.parameters / 1e6:,.1f}M ({e.trainable / 1e6:,.2f}M trainable), {e.weight_bytes} bytes per trainable weight",
        f"weights         {e.weights_gib:.2f} GiB   gradients {e.gradients_gib:.2f} GiB   AdamW state {e.optimizer_gib:.2f} GiB"
        + (f"   autocast copies {e.autocast_copies_gib:.2f} GiB" if e.autocast_copies_gib else ""),
        f"activations     {e.activations_gib:.2f} GiB per micro-batch of {e.micro_batch} x {e.max_length} tokens "
        f"({e.activations_checkpointed_gib:.2f} GiB with gradient checkpointing)",
        f"per device      {e.per_device_ddp_gib:.2f} GiB with DDP on {e.devices} device(s); "
        f"{e.per_device_sharded_gib:.2f} GiB with ZeRO-3/FSDP full shard",
        f"data            {e.examples:,} examples, {e.tokens:,} tokens ({e.supervised_tokens:,} supervised), "
        f"{e.epochs:g} epoch(s)" + (f"; {e.dropped:,} dropped: the prompt alone fills max_length" if e.dropped else ""),
        f"truncation      " + (f"{about}{e.truncated:,} examples cut at max_length {e.truncates_at}; {about}{e.cut_last_line:,} "
                                 f"lose their completion's last line (e.g. CFT's conclusion) and train without it"
                                 if e.truncates_at else "max_length null: no example is cut"),
        f"compute         {e.train_flops:.2e} FLOPs; about {_duration(e.seconds)} on {e.devices} x {e.hardware}",
    ]
    return "\n".join(lines)
