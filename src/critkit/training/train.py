"""Fine-tuning on (prompt, completion) pairs with TRL's SFTTrainer.

The config (train_config.py) is a small dataclass (model, data, output_dir, peft) plus `sft`, a
mapping of TRL `SFTConfig` fields passed through unchanged, so a TRL user already knows every
training option.
Pairs are conversational prompt/completion rows; TRL renders them with the model's chat template
and computes the loss on completion tokens only. The weights load in the dtype precision.py plans
for the launch, so that the optimizer always updates fp32 master weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import yaml

from ..config import ConfigError
from .train_config import TrainConfig, load_train_config, read_pairs, sft_defaults, validate

__all__ = ["TrainConfig", "load_train_config", "train", "build_trainer", "merge_saved_adapter", "ConfigError"]


def _load_pairs(path: str, limit: int | None):
    from datasets import Dataset

    rows, problems = read_pairs(path, limit)
    for problem in problems[:20]:
        print(f"[critkit] skipped {problem}", flush=True)
    if len(problems) > 20:
        print(f"[critkit] ... and {len(problems) - 20} more bad rows in {path}", flush=True)
    return Dataset.from_list([{"prompt": row["prompt"], "completion": [{"role": "assistant", "content": row["completion"]}]}
                              for row in rows])


def completion_loss(model, inputs, num_items_in_batch=None):
    """Mean cross-entropy over supervised (label != -100) tokens, projecting only those tokens.

    The LM head is the single largest matrix of a small model (49152 x 576 of SmolLM2-135M's
    135M parameters); running it only where there is a label skips it on prompt and padding
    tokens, which are most of a CFT or CGD sequence.
    """
    import torch
    import torch.nn.functional as F

    labels = inputs["labels"]
    # Everything but the labels reaches the model: a padding-free batch carries its sequence
    # boundaries (position_ids, cu_seq_lens_q/k, max_length_q/k) for the attention function.
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    # The forward must go through `model` itself, not its decoder: under DDP (several processes)
    # `model` is the DistributedDataParallel wrapper, whose forward arms the gradient all-reduce;
    # calling the inner decoder would train each process on its own gradients, silently.
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    head = inner.get_output_embeddings()
    captured = []

    def keep_hidden_project_nothing(module, args):
        captured.append(args[0])
        return (args[0][..., :0, :],)  # the head runs on an empty slice; supervised tokens are projected below

    hook = head.register_forward_pre_hook(keep_hidden_project_nothing)
    try:
        model(**model_inputs, use_cache=False)
    finally:
        hook.remove()
    if len(captured) != 1:
        raise RuntimeError(f"completion_loss: expected the model to call its output embeddings once, saw {len(captured)} calls")
    hidden = captured[0]
    targets = labels[:, 1:]
    mask = targets != -100
    logits = head(hidden[:, :-1][mask])
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

        It also allows `padding_free` together with `max_length`. TRL 1.16 refuses the pair unless
        packing ("max_length is not enforced"), yet its dataset preparation truncates to max_length
        before any collation. So the trainer is built with padded collation and then given TRL's
        own padding-free collator, which also masks the label at each sequence start.
        """

        def __init__(self, *args, **kwargs):
            from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

            config = kwargs["args"]
            padding_free = config.padding_free and not config.packing and config.max_length is not None
            if padding_free:
                config.padding_free = False
            super().__init__(*args, **kwargs)
            if padding_free:
                config.padding_free = self.padding_free = True
                self.data_collator = DataCollatorForLanguageModeling(
                    pad_token_id=self._tokenizer.pad_token_id, padding_free=True,
                    pad_to_multiple_of=config.pad_to_multiple_of)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or next(model.parameters()).is_cuda:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = completion_loss(model, inputs, num_items_in_batch)
            # As in TRL's and Trainer's compute_loss: `num_items_in_batch` counts the supervised
            # tokens of every process, and DDP averages the gradients over processes, so without
            # this factor N processes would train with 1/N of the gradient (and log 1/N of the loss).
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            return loss

    return CritkitSFTTrainer


def build_trainer(cfg: TrainConfig):
    """The trainer `train` runs: the pairs, the tokenizer, the model loaded in the dtype the
    precision plan says (precision.py) and TRL's trainer around them. Returns (trainer, precision)."""
    from peft import LoraConfig
    from trl import SFTConfig

    from .attention import register as register_varlen, training_attention
    from .precision import launch_from_env, native_half, plan
    from ..engine.models import load_model, load_tokenizer

    dataset = _load_pairs(cfg.data, cfg.max_examples)
    tokenizer = load_tokenizer(cfg.model, padding_side="right")
    sft = sft_defaults(cfg)
    launch = launch_from_env()
    half, note = native_half(sft, launch)  # fp16 where the GPU only emulates bf16 (V100, T4)
    if note:
        print(f"[critkit] {note}", flush=True)
    sft = {**sft, **half}
    args = SFTConfig(**sft)
    precision = plan(sft, launch, lora=cfg.peft is not None, note=note)
    # The plan reads the config and accelerate's environment as TrainingArguments does; if the two
    # ever disagree, the weights would be loaded for another scheme than the one that trains them.
    # (Under DeepSpeed only the scheme must agree: DeepSpeed converts the weights to its own dtype.)
    if (args.deepspeed_plugin is not None) != (precision.scheme == "deepspeed") or (
            precision.scheme != "deepspeed" and args.mixed_precision.replace("no", "fp32") != precision.compute):
        raise RuntimeError(f"precision plan {precision.scheme}/{precision.compute} disagrees with transformers' "
                           f"(deepspeed={args.deepspeed_plugin is not None}, mixed_precision={args.mixed_precision})")
    rows_of_sequences = args.padding_free or args.packing
    attention = cfg.attn_implementation or (register_varlen() if rows_of_sequences else None)
    # device=None: the Trainer moves the model to its device (one process, DDP); FSDP shards it and
    # moves each rank's shard, DeepSpeed partitions it. Moved whole to every GPU here first, each
    # rank would hold a full replica (in fp32 for full fine-tuning) before sharding.
    model = load_model(cfg.model, dtype=precision.load_dtype, attn_implementation=attention, device=None).train()
    if rows_of_sequences and not cfg.attn_implementation and training_attention(model) != attention:
        model.set_attn_implementation(training_attention(model))  # flash-attention's varlen kernel on CUDA
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size != launched:
        # Without a GPU, processes started by torchrun (accelerate launch) fall back to one
        # process each unless told to use the CPU; each would then train alone on all the data.
        raise ConfigError(f"launched as {launched} processes, but they did not join one process group: "
                          "without a GPU add use_cpu=true (gloo on CPU)")
    peft_config = LoraConfig(task_type="CAUSAL_LM", **cfg.peft) if cfg.peft is not None else None
    trainer = _make_trainer_class()(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                                    peft_config=peft_config)
    if precision.scheme in ("autocast", "fp32"):
        _trainable_in_fp32(trainer.model)
    return trainer, precision


def _trainable_in_fp32(model) -> None:
    """Upcast every trainable tensor that is not fp32 (e.g. an lm_head PEFT copied into
    modules_to_save from a bf16 base): the optimizer must update fp32 master weights.
    FSDP does this itself when it wraps the model, DeepSpeed keeps its own fp32 copies."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def train(cfg: TrainConfig) -> Path:
    """Train and save to cfg.output_dir; returns the folder of the model to evaluate."""
    validate(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    first_process = int(os.environ.get("RANK", "0")) == 0
    if first_process:  # what the run will need, before the weights are loaded (estimate.py)
        from .estimate import estimate, format_estimate

        planned = estimate(cfg)
        (out / "estimate.json").write_text(json.dumps(planned.to_json(), indent=1))
        print(f"[critkit] estimate for {cfg.output_dir}:\n" + format_estimate(planned), flush=True)
    trainer, precision = build_trainer(cfg)
    tokenizer = trainer.processing_class
    args = trainer.args
    # A weights-only checkpoint (save_only_model) has no optimizer state to go on from: start again.
    resume = _last_checkpoint(out) if args.save_strategy != "no" and not args.save_only_model else None
    if resume and trainer.is_world_process_zero():
        print(f"resuming from {resume}")
    if os.environ.get(KILL_WHILE_SAVING):  # tests only: a kill at a known point of a save
        trainer.add_callback(_kill_while_saving(int(os.environ[KILL_WHILE_SAVING])))
    result = trainer.train(resume_from_checkpoint=resume)
    final = out / "final"
    if precision.scheme == "autocast" and cfg.peft is None:
        # final/ in the compute dtype, as before fp32 master weights and as ZeRO-3 saves it
        # (zero3_save_16bit_model): half the size, and vLLM's dtype "auto" serves an fp32 config in
        # fp16. The fp32 weights round once, after the last step (checkpoints keep them in fp32).
        import torch

        from .precision import HALF

        trainer.model.to(getattr(torch, HALF[precision.compute]))
    trainer.save_model(str(final))  # every process: FSDP and ZeRO-3 gather the weights collectively
    first_process = trainer.is_world_process_zero()
    if first_process:  # one writer per file when several processes train
        tokenizer.save_pretrained(str(final))
        # After a resume, log_history holds the checkpoint's earlier steps too (from its trainer_state.json).
        log = {"metrics": result.metrics, "log_history": trainer.state.log_history, "examples": len(trainer.train_dataset),
               "resumed_from": resume, "precision": precision.summary}
        (out / "train_log.json").write_text(json.dumps(log, indent=1))
        from .curves import plot_losses

        plot_losses({out.name: trainer.state.log_history}, out / "loss.png", title=f"training loss: {out}")
    del trainer  # and with it the model, optimizer state and gradients: the caller may load the next model
    _leave_process_group()
    from ..engine.models import release_memory

    release_memory()
    if first_process and cfg.peft is not None and cfg.merge_adapter:
        merge_saved_adapter(final, out / "merged")
    return final


def merge_saved_adapter(adapter: Path, target: Path) -> Path:
    """The saved LoRA adapter `adapter` merged into its base model, on CPU, saved as a full model in
    `target` (with the adapter folder's tokenizer); returns `target`.

    From the saved files, after training, by one process: the training's own model cannot be
    merged under ZeRO-3 (its parameters are partitioned placeholders) or FSDP (DTensor shards), and
    a merge on rank 0 alone would leave the other ranks at the next collective until the NCCL
    timeout. The base loads in the dtype it was saved in, not in the training's compute dtype (a
    LoRA base trains in bf16), so the merge adds the adapter to the weights as they are on disk.
    Written to a temporary folder and renamed: a merge cut short never looks finished.
    """
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..engine.models import release_memory, resolve_model

    base_name = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForCausalLM.from_pretrained(resolve_model(base_name), dtype="auto", device_map="cpu")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(str(partial))
    AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(str(partial))
    del base, merged
    release_memory()
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    return target


def _leave_process_group() -> None:
    """Under `accelerate launch`: wait until the first process has written its files, then leave
    the process group. A process that exits while the gloo group is still alive can abort in
    teardown ("terminate called without an active exception", exit -6, after training and saving
    had succeeded); a clean CI run failed that way once."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# Test-only (tests/test_train_resume.py, tests/test_run.py): the step N whose checkpoint save is cut short.
KILL_WHILE_SAVING = "CRITKIT_TEST_KILL_WHILE_SAVING"


def _kill_while_saving(step: int):
    """A callback that SIGKILLs this process while `checkpoint-<step>` is being saved: after its
    weights, optimizer, scheduler and RNG states are written, before trainer_state.json.

    That is the torn checkpoint a kill leaves and `_last_checkpoint` must skip; a kill timed from
    outside the process lands there only by chance. Trainer._save_checkpoint asks each
    ExportableState callback for its state() at exactly that point (TrainerState also asks once
    when training starts, before any step has ended).
    """
    import signal

    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class KillWhileSaving(TrainerCallback, ExportableState):
        ended = 0  # the last step that ended

        def on_step_end(self, args, state, control, **kwargs):
            self.ended = state.global_step

        def state(self) -> dict:
            if self.ended == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return {}

    return KillWhileSaving()


def _last_checkpoint(out: Path) -> str | None:
    """The newest `checkpoint-N` folder in `out` that was saved completely, or None.

    transformers' get_last_checkpoint takes the highest N even when a kill cut its save short, and
    resuming from it then fails ("Can't find a valid checkpoint") or loads half-written files.
    Trainer._save_checkpoint writes trainer_state.json last (after the model, optimizer, scheduler
    and RNG states), so a folder counts only if that file is there and parses.
    """
    import re

    from transformers.trainer import TRAINER_STATE_NAME

    if not out.exists():
        return None
    complete = []
    for folder in out.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if not (match and folder.is_dir()):
            continue
        try:
            state = json.loads((folder / TRAINER_STATE_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, or cut short by the kill
            continue
        if isinstance(state, dict) and "global_step" in state:
            complete.append((int(match.group(1)), str(folder)))
    return max(complete)[1] if complete else None
